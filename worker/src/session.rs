//! The worker side of the session protocol in `worker.proto`: hello, credits, assignments,
//! heartbeats, outcomes until acknowledged, cancels, drain, and reconnects with backoff.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::{Assignment, InterpreterProfile, JobId, JobResult, LeaseToken};
use proto::v1;
use proto::v1::coordinator_message::Msg as In;
use proto::v1::worker_message::Msg as Out;
use proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::disk::Housekeeper;
use crate::log_requests::LogAnswer;
use crate::outbound::{outcome_message, within_limits};
use crate::setup::Setups;
use crate::spool::{Spool, SpooledOutcome};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Log requests read at once at most, each a chunk of at most 1 MiB; more wait their turn.
const LOG_READS: usize = 4;

/// A job running on this worker.
#[derive(Debug)]
struct Running {
    lease_token: LeaseToken,
    cancel: CancellationToken,
    /// Its logs, which no cleaning removes while it runs.
    log_dir: PathBuf,
}

/// A finished job, from its task to the session loop.
#[derive(Debug)]
struct Finished {
    job_id: JobId,
    /// `None` when the job was cancelled: nothing to report.
    spooled: Option<SpooledOutcome>,
}

/// The worker's state across sessions.
#[derive(Debug)]
pub(crate) struct Worker {
    config: WorkerConfig,
    profile: InterpreterProfile,
    setups: Arc<Setups>,
    spool: Spool,
    running: Arc<Mutex<HashMap<JobId, Running>>>,
    tasks: JoinSet<()>,
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    /// Why the worker takes no new jobs (its disk is short); `None` while it takes them.
    refusing: watch::Receiver<Option<String>>,
    /// Keeps the disk, until the worker stops; taken when the worker starts.
    housekeeper: Option<Housekeeper>,
    /// Wakes the housekeeper when a job ends.
    housekeeping: Arc<Notify>,
    /// Log requests being read, at most [`LOG_READS`].
    log_reads: Arc<Semaphore>,
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Drained,
    Lost(anyhow::Error),
    /// The coordinator refuses this worker (a wrong token): retrying cannot help.
    Refused(anyhow::Error),
}

impl Worker {
    pub(crate) fn new(config: WorkerConfig, profile: InterpreterProfile, setups: Setups, spool: Spool) -> Self {
        let (finished_tx, finished_rx) = mpsc::channel(1024);
        let setups = Arc::new(setups);
        let running: Arc<Mutex<HashMap<JobId, Running>>> = Arc::new(Mutex::new(HashMap::new()));
        let in_use_logs = {
            let running = running.clone();
            Box::new(move || {
                let running = running.lock().unwrap_or_else(|e| e.into_inner());
                running.values().map(|job| job.log_dir.clone()).collect()
            })
        };
        let (housekeeper, refusing) = Housekeeper::new(
            config.disk.clone(),
            config.work_dir.clone(),
            setups.clone(),
            in_use_logs,
        );
        Worker {
            config,
            profile,
            setups,
            spool,
            running,
            tasks: JoinSet::new(),
            finished_tx,
            finished_rx,
            refusing,
            housekeeper: Some(housekeeper),
            housekeeping: Arc::new(Notify::new()),
            log_reads: Arc::new(Semaphore::new(LOG_READS)),
        }
    }

    /// Sessions until shutdown or drain, reconnecting with capped jittered backoff.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(mut housekeeper) = self.housekeeper.take() {
            // The first round before the first session, so a worker short of disk grants no
            // credit at all.
            let housekeeper = tokio::task::spawn_blocking(move || {
                housekeeper.pass();
                housekeeper
            })
            .await?;
            tokio::spawn(housekeeper.run(self.housekeeping.clone(), shutdown.child_token()));
        }
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            match self.session(&shutdown).await {
                SessionEnd::Shutdown | SessionEnd::Drained => break,
                SessionEnd::Refused(error) => {
                    self.stop_jobs().await;
                    return Err(error);
                }
                SessionEnd::Lost(error) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = BACKOFF_START;
                    }
                    tracing::warn!(worker.id = %self.config.worker_id, error = %format!("{error:#}"), "session lost; reconnecting");
                    let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff + jitter) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.stop_jobs().await;
        Ok(())
    }

    async fn stop_jobs(&mut self) {
        for job in self.running.lock().unwrap_or_else(|e| e.into_inner()).values() {
            job.cancel.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }

    async fn session(&mut self, shutdown: &CancellationToken) -> SessionEnd {
        let mut endpoint = match tonic::transport::Endpoint::from_shared(self.config.coordinator_url.clone()) {
            Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(10)),
            Err(error) => return SessionEnd::Refused(anyhow::anyhow!("bad coordinator url: {error}")),
        };
        if let Some(ca) = &self.config.ca_cert {
            let tls =
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
            endpoint = match endpoint.tls_config(tls) {
                Ok(endpoint) => endpoint,
                Err(error) => return SessionEnd::Refused(anyhow::anyhow!("invalid TLS settings: {error}")),
            };
        }
        let channel = endpoint;
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            connected = channel.connect() => match connected {
                Ok(channel) => channel,
                Err(error) => return SessionEnd::Lost(anyhow::anyhow!("cannot connect to {}: {error}", self.config.coordinator_url)),
            },
        };
        let token = match proto::auth::BearerToken::new(self.config.token.as_deref()) {
            Ok(token) => token,
            Err(error) => return SessionEnd::Refused(anyhow::anyhow!("invalid --token: {error}")),
        };
        let mut client = WorkerServiceClient::with_interceptor(channel, token)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        let (out_tx, out_rx) = mpsc::channel::<v1::WorkerMessage>(256);
        let hello = v1::Hello {
            worker_id: self.config.worker_id.to_string(),
            interpreter: Some((&self.profile).into()),
            slots: self.config.slots,
            warm_packages: self.setups.warm_packages(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let _ = out_tx.send(message(Out::Hello(hello))).await;
        let mut inbound = match client.session(ReceiverStream::new(out_rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unauthenticated => return refused(&status),
            Err(status) => return SessionEnd::Lost(anyhow::anyhow!("session refused: {status}")),
        };
        let welcome = match inbound.message().await {
            Ok(Some(v1::CoordinatorMessage {
                msg: Some(In::Welcome(welcome)),
            })) => welcome,
            Ok(other) => return SessionEnd::Lost(anyhow::anyhow!("expected Welcome, got {other:?}")),
            // This worker's token is not its own: retrying cannot help.
            Err(status) if status.code() == tonic::Code::PermissionDenied => return refused(&status),
            Err(status) => return SessionEnd::Lost(anyhow::anyhow!("session ended before Welcome: {status}")),
        };
        tracing::info!(worker.id = %self.config.worker_id, "connected to {}", self.config.coordinator_url);

        // Outcomes not yet acknowledged go first, then the free slots as credits.
        match self.spool.resend() {
            Ok(pending) => {
                for spooled in pending {
                    let _ = out_tx.send(outcome_message(&spooled)).await;
                }
            }
            Err(error) => tracing::error!(error = %error, "cannot read the outcome spool"),
        }
        // Jobs whose end gives a credit back in this session: those still running from an
        // earlier session (their slots are not granted below), then those assigned in this one.
        // A job that ended before this point is already counted as a free slot.
        let mut session_jobs: HashSet<JobId> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        let mut refusing = self.refusing.borrow_and_update().clone();
        let free = self.config.slots.saturating_sub(session_jobs.len() as u32);
        if free > 0 && refusing.is_none() {
            let _ = out_tx.send(message(Out::Credit(v1::Credit { count: free }))).await;
        }
        let mut draining = false;
        let heartbeat_every = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if draining && self.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                return SessionEnd::Drained;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = heartbeat.tick() => {
                    if out_tx.send(self.heartbeat(&refusing)).await.is_err() {
                        return SessionEnd::Lost(anyhow::anyhow!("session closed"));
                    }
                }
                Ok(()) = self.refusing.changed() => {
                    let now = self.refusing.borrow_and_update().clone();
                    let was_refusing = std::mem::replace(&mut refusing, now).is_some();
                    // A refusal takes back the credits granted (at once, with a heartbeat);
                    // once space is back, the free slots are granted again.
                    if refusing.is_some() {
                        if out_tx.send(self.heartbeat(&refusing)).await.is_err() {
                            return SessionEnd::Lost(anyhow::anyhow!("session closed"));
                        }
                    } else if was_refusing && !draining {
                        let busy = self.running.lock().unwrap_or_else(|e| e.into_inner()).len();
                        let free = self.config.slots.saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX));
                        if free > 0 {
                            let _ = out_tx.send(message(Out::Credit(v1::Credit { count: free }))).await;
                        }
                    }
                }
                Some(finished) = self.finished_rx.recv() => {
                    if let Some(spooled) = &finished.spooled
                        && out_tx.send(outcome_message(spooled)).await.is_err()
                    {
                        return SessionEnd::Lost(anyhow::anyhow!("session closed"));
                    }
                    // While refusing, the slot stays ungranted until space is back.
                    if session_jobs.remove(&finished.job_id) && !draining && refusing.is_none() {
                        let _ = out_tx.send(message(Out::Credit(v1::Credit { count: 1 }))).await;
                    }
                    self.housekeeping.notify_one();
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                received = inbound.message() => match received {
                    Ok(Some(v1::CoordinatorMessage { msg: Some(msg) })) => match msg {
                        In::Assignment(assignment) => {
                            let received_at = Instant::now();
                            match Assignment::try_from(assignment) {
                                Ok(assignment) => {
                                    session_jobs.insert(assignment.job_id);
                                    self.start(assignment, received_at);
                                }
                                Err(error) => tracing::error!(error = %error, "invalid assignment ignored"),
                            }
                        }
                        In::Ack(ack) => acknowledged(&self.spool, &ack),
                        In::Cancel(cancel) => {
                            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(job) = running.get(&JobId(cancel.job_id)) {
                                tracing::info!(job.id = cancel.job_id, reason = %cancel.reason, "job cancelled");
                                job.cancel.cancel();
                            }
                        }
                        In::Drain(drain) => {
                            tracing::info!(reason = %drain.reason, "draining");
                            draining = true;
                        }
                        In::LogRequest(request) => self.serve_log(request, out_tx.clone()),
                        In::Welcome(_) => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => return SessionEnd::Lost(anyhow::anyhow!("the coordinator ended the session")),
                    Err(status) => return SessionEnd::Lost(anyhow::anyhow!("session failed: {status}")),
                },
            }
        }
    }

    /// The heartbeat: the jobs running and why the worker refuses new ones, if it does.
    fn heartbeat(&self, refusing: &Option<String>) -> v1::WorkerMessage {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, job)| v1::RunningJob {
                job_id: id.0,
                lease_token: job.lease_token.to_string(),
            })
            .collect();
        message(Out::Heartbeat(v1::Heartbeat {
            running,
            refusing: refusing.clone().unwrap_or_default(),
        }))
    }

    /// Answers a request for a piece of an iteration's log with one `LogChunk`, read beside
    /// the session (at most [`LOG_READS`] at once) and sent when read.
    fn serve_log(&self, request: v1::LogRequest, out_tx: mpsc::Sender<v1::WorkerMessage>) {
        let logs_root = self.setups.logs_dir();
        let reads = self.log_reads.clone();
        tokio::spawn(async move {
            let request_id = request.request_id;
            let stream = request.stream;
            let offset = request.offset;
            let answer = match domain::LogRequest::try_from(request) {
                Ok(request) => {
                    let Ok(_permit) = reads.acquire_owned().await else {
                        return;
                    };
                    tokio::task::spawn_blocking(move || crate::log_requests::answer(&logs_root, &request))
                        .await
                        .unwrap_or_else(|error| LogAnswer::Refused(format!("the log's read failed: {error}")))
                }
                Err(error) => LogAnswer::Refused(format!("invalid log request: {error}")),
            };
            let mut chunk = v1::LogChunk {
                request_id,
                stream,
                offset,
                ..Default::default()
            };
            match answer {
                LogAnswer::Data { data, eof } => {
                    chunk.data = data;
                    chunk.eof = eof;
                }
                LogAnswer::Gone(reason) => {
                    chunk.error = reason;
                    chunk.gone = true;
                }
                LogAnswer::Refused(reason) => {
                    tracing::warn!(request_id, %reason, "a log request was refused");
                    chunk.error = reason;
                }
            }
            // A session that ended takes its requests with it: the coordinator gave them up.
            let _ = out_tx.send(message(Out::LogChunk(chunk))).await;
        });
    }

    fn start(&mut self, assignment: Assignment, received_at: Instant) {
        let cancel = CancellationToken::new();
        let job_id = assignment.job_id;
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(
            job_id,
            Running {
                lease_token: assignment.lease_token,
                cancel: cancel.clone(),
                log_dir: crate::job::log_dir_under(&self.setups.logs_dir(), &assignment),
            },
        );
        let setups = self.setups.clone();
        let spool = self.spool.clone();
        let running = self.running.clone();
        let finished_tx = self.finished_tx.clone();
        let worker_id = self.config.worker_id.to_string();
        self.tasks.spawn(async move {
            let result: Option<JobResult> =
                crate::job::execute(&assignment, received_at, &setups, &worker_id, &cancel).await;
            let spooled = result.map(|result| SpooledOutcome {
                job_id,
                lease_token: assignment.lease_token,
                result: within_limits(job_id, assignment.lease_token, result, proto::MAX_OUTCOME_BYTES),
                // Sent in this session, once spooled.
                sessions_sent: 1,
            });
            if let Some(spooled) = &spooled
                && let Err(error) = spool.put(spooled)
            {
                tracing::error!(job.id = %job_id, error = %error, "cannot spool an outcome; sending it anyway");
            }
            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&job_id);
            let _ = finished_tx.send(Finished { job_id, spooled }).await;
        });
    }
}

/// The end of a session the coordinator refused for this worker's token.
fn refused(status: &tonic::Status) -> SessionEnd {
    SessionEnd::Refused(anyhow::anyhow!(
        "the coordinator refused this worker: {}",
        status.message()
    ))
}

fn message(msg: Out) -> v1::WorkerMessage {
    v1::WorkerMessage { msg: Some(msg) }
}

/// Forgets the outcome `ack` is for, whatever its status: recorded, duplicate and stale
/// outcomes are done with, and a rejected one, which the coordinator recorded as a harness
/// error, could only be rejected again; that one is logged.
fn acknowledged(spool: &Spool, ack: &v1::Ack) {
    if ack.status() == v1::AckStatus::Rejected {
        tracing::warn!(job.id = ack.job_id, reason = %ack.reason, "the coordinator rejected an outcome; dropped");
    }
    if let Err(error) = spool.remove(JobId(ack.job_id)) {
        tracing::error!(job.id = ack.job_id, error = %error, "cannot remove an acknowledged outcome from the spool");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_outcome_leaves_the_spool_as_any_acknowledged_one_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        for job_id in [1, 2] {
            spool.put(&crate::spool::tests::setup_failure(job_id)).expect("put");
        }
        let rejected = v1::Ack {
            job_id: 1,
            status: v1::AckStatus::Rejected as i32,
            reason: "outcome.stderr_tail is 20000 bytes, over the 16384-byte limit".into(),
        };
        acknowledged(&spool, &rejected);
        let left: Vec<JobId> = spool.pending().expect("pending").iter().map(|o| o.job_id).collect();
        assert_eq!(left, [JobId(2)]);
    }
}
