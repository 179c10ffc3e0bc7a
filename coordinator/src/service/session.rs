//! One worker's session once it said Hello: credits and claims, assignments, heartbeats,
//! outcomes committed beside the stream and acknowledged, until the worker leaves.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::{Assignment, InterpreterProfile, IterationOutcome, JobId, JobResult, LeaseToken, WorkerId};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proto::convert::parse_lease_token;
use proto::v1;
use proto::v1::coordinator_message::Msg as Out;
use proto::v1::worker_message::Msg as In;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::batch::BatchError;
use crate::clock::now_ms;
use crate::hub::{Hub, SessionSender};
use crate::service::{status_from_batch, status_from_wire};
use crate::store::Completion;

/// How often an idle session with credits looks for work even without a wake-up. A claim
/// the store failed is tried again after this too.
const DISPATCH_POLL: Duration = Duration::from_millis(500);
/// An outcome the store failed to record is tried again after this, doubling up to
/// [`RECORD_RETRY_MAX`], for as long as the session lasts.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(250);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
/// A worker may say it has no more slots than this: no worker runs that many jobs at once.
const MAX_SLOTS: u32 = 1024;
/// The most bytes kept of a heartbeat's reason for refusing new jobs.
const MAX_REFUSING_BYTES: usize = 1024;
/// Outcomes of one session being committed at once at most: beyond them, the session reads
/// nothing more from its worker until one is done, and the worker's sends wait.
const MAX_OUTCOMES_IN_FLIGHT: usize = 64;
/// A claim prefers jobs of this many of the worker's most recently set-up packages; the
/// session remembers no more than these.
const WARM_PER_CLAIM: usize = 4;

/// One session's state, owned by its task.
pub(super) struct Session {
    hub: Arc<Hub>,
    worker_id: WorkerId,
    profile: Arc<InterpreterProfile>,
    sender: SessionSender,
    /// The jobs the worker runs at once, as it said in its Hello (at most [`MAX_SLOTS`]).
    slots: u32,
    credits: u32,
    /// Leases handed out in this session and not yet reported.
    running: HashMap<JobId, LeaseToken>,
    /// Jobs of `running` whose outcome is being committed: their slots are free again.
    reported: HashSet<JobId>,
    warm_packages: Vec<String>,
    /// Cancelled when the session stops serving: outcomes still failing stop being retried.
    ending: CancellationToken,
}

impl Session {
    /// The session of a worker that said Hello with its `slots` and `warm_packages`, with no
    /// credit yet.
    pub(super) fn new(
        hub: Arc<Hub>,
        worker_id: WorkerId,
        profile: InterpreterProfile,
        sender: SessionSender,
        slots: u32,
        mut warm_packages: Vec<String>,
    ) -> Self {
        warm_packages.drain(..warm_packages.len().saturating_sub(WARM_PER_CLAIM));
        Session {
            hub,
            worker_id,
            profile: Arc::new(profile),
            sender,
            slots: slots.min(MAX_SLOTS),
            credits: 0,
            running: HashMap::new(),
            reported: HashSet::new(),
            warm_packages,
            ending: CancellationToken::new(),
        }
    }

    /// Takes the leases the session still holds, to end them.
    pub(super) fn take_leases(&mut self) -> Vec<(JobId, LeaseToken)> {
        self.running.drain().collect()
    }
}

/// Gives leases that never reached the worker back to the queue and tells the watchers of
/// their runs; on failure the leases expire instead.
async fn release(hub: &Hub, worker_id: &WorkerId, leases: &[(JobId, LeaseToken)]) {
    match hub.store.release_jobs(leases, now_ms()).await {
        Ok(runs) => runs.into_iter().for_each(|run| hub.notify_run(run)),
        Err(error) => tracing::error!(worker.id = %worker_id, error = %error, "could not release leases"),
    }
}

/// A store call the session waits for without blocking its stream.
type InFlight<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An outcome committed, or given up: its job and lease, what the store said, and why the
/// outcome was rejected if it was.
struct Recorded {
    job_id: JobId,
    /// `None` when the outcome named no valid lease: nothing was recorded.
    token: Option<LeaseToken>,
    completion: Result<Completion, BatchError>,
    rejected: Option<String>,
}

impl Session {
    /// Serves the session until the worker leaves, the session is replaced or the
    /// coordinator stops. An error ends the session with that status.
    ///
    /// Claims and outcomes are in flight while the session goes on reading its stream: a
    /// worker's credit for a slot that just freed is served while that slot's outcome is
    /// still being committed. Before returning, the session waits for both, so every lease
    /// it got is in `running` and every outcome it took is committed or failed.
    pub(super) async fn serve(
        &mut self,
        inbound: &mut Streaming<v1::WorkerMessage>,
        shutdown: &CancellationToken,
    ) -> Result<(), Status> {
        let mut claiming: Option<InFlight<Result<Vec<Assignment>, BatchError>>> = None;
        let mut recording: FuturesUnordered<InFlight<Recorded>> = FuturesUnordered::new();
        let end = self
            .serve_streams(inbound, shutdown, &mut claiming, &mut recording)
            .await;
        self.ending.cancel();
        if let Some(claim) = claiming
            && let Ok(assignments) = claim.await
        {
            // Not sent: the session is over; they are released with its other leases.
            for assignment in assignments {
                self.running.insert(assignment.job_id, assignment.lease_token);
            }
        }
        while let Some(recorded) = recording.next().await {
            // The worker resends what was not acknowledged; a send that fails loses nothing.
            let _ = self.recorded(recorded).await;
        }
        end
    }

    async fn serve_streams(
        &mut self,
        inbound: &mut Streaming<v1::WorkerMessage>,
        shutdown: &CancellationToken,
        claiming: &mut Option<InFlight<Result<Vec<Assignment>, BatchError>>>,
        recording: &mut FuturesUnordered<InFlight<Recorded>>,
    ) -> Result<(), Status> {
        let mut poll = tokio::time::interval(DISPATCH_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when a claim found nothing: the next waits for a wake-up, a poll or a message.
        let mut idle = false;
        loop {
            if self.credits > 0 && self.hub.is_draining(&self.worker_id) {
                self.credits = 0;
            }
            if self.credits > 0 && claiming.is_none() && !idle {
                *claiming = Some(self.claim());
            }
            let hub = self.hub.clone();
            let waiting = self.credits > 0 && claiming.is_none();
            tokio::select! {
                // Not a drain: the worker reconnects to the coordinator that comes back, and its
                // leases stay valid until then (see run_session).
                _ = shutdown.cancelled() => return Err(Status::unavailable("coordinator shutting down")),
                _ = self.sender.closed() => return Ok(()),
                message = inbound.message(), if recording.len() < MAX_OUTCOMES_IN_FLIGHT => match message {
                    Ok(Some(message)) => {
                        idle = false;
                        if let Some(record) = self.handle(message).await? {
                            recording.push(record);
                        }
                    }
                    Ok(None) => return Ok(()),
                    // A message that cannot be read (too large, not protobuf) ends the session
                    // saying why; a connection that broke hears nothing, and loses nothing.
                    Err(status) => {
                        tracing::debug!(worker.id = %self.worker_id, error = %status, "session stream failed");
                        return Err(Status::new(
                            status.code(),
                            format!("the worker's message could not be read: {}", status.message()),
                        ));
                    }
                },
                claimed = async { claiming.as_mut().expect("guarded by is_some").await }, if claiming.is_some() => {
                    *claiming = None;
                    // A claim the store failed is the store's trouble, not the worker's: the
                    // session goes on and claims again at the next poll.
                    let assignments = match claimed {
                        Ok(assignments) => assignments,
                        // The store's error is logged once per batch, where the batch failed.
                        Err(error) => {
                            tracing::debug!(worker.id = %self.worker_id, error = %error, "a claim failed; trying again");
                            idle = true;
                            continue;
                        }
                    };
                    idle = assignments.is_empty();
                    if self.hub.is_draining(&self.worker_id) {
                        self.give_back(&assignments);
                    } else {
                        self.assign(assignments).await?;
                    }
                }
                Some(recorded) = recording.next(), if !recording.is_empty() => self.recorded(recorded).await?,
                _ = hub.jobs_available.notified(), if waiting => idle = false,
                _ = poll.tick(), if waiting => idle = false,
            }
        }
    }

    /// Handles one message; an outcome comes back as the commit to wait for.
    async fn handle(&mut self, message: v1::WorkerMessage) -> Result<Option<InFlight<Recorded>>, Status> {
        match message.msg {
            Some(In::Credit(credit)) => {
                // A worker has a credit per free slot: credits beyond its slots, less the jobs
                // it still runs, are not slots but a flood, and are dropped.
                let busy = self.running.len().saturating_sub(self.reported.len());
                let free = self.slots.saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX));
                self.credits = self.credits.saturating_add(credit.count).min(free);
            }
            Some(In::Heartbeat(heartbeat)) => {
                if heartbeat.running.len() > MAX_SLOTS as usize {
                    return Err(Status::invalid_argument(format!(
                        "a heartbeat names {} jobs, more than any worker runs",
                        heartbeat.running.len()
                    )));
                }
                let mut running = Vec::with_capacity(heartbeat.running.len());
                for job in heartbeat.running {
                    let token = parse_lease_token("heartbeat.running.lease_token", &job.lease_token)
                        .map_err(status_from_wire)?;
                    running.push((JobId(job.job_id), token));
                }
                // Jobs from before a reconnect are this session's now: released if it drops.
                self.running.extend(running.iter().copied());
                let running_jobs = running.len() as u32;
                if !heartbeat.refusing.is_empty() {
                    // The worker is short of disk: it takes nothing more until it grants
                    // credits again.
                    self.credits = 0;
                }
                let refusing = domain::bound::cut_end(&heartbeat.refusing, MAX_REFUSING_BYTES);
                self.hub.touch_worker(&self.worker_id, |status| {
                    status.running_jobs = running_jobs;
                    status.last_heartbeat_ms = now_ms();
                    status.refusing = refusing;
                });
                let lease_ms = self.hub.settings.lease_duration.as_millis() as i64;
                // Leases not extended now are by the next heartbeat; the session goes on.
                if let Err(error) = self
                    .hub
                    .store
                    .heartbeat(&self.worker_id, &running, lease_ms, now_ms())
                    .await
                {
                    tracing::warn!(worker.id = %self.worker_id, error = %error, "a heartbeat's leases were not extended");
                }
            }
            Some(In::Outcome(outcome)) => return Ok(Some(self.record(outcome))),
            Some(In::LogChunk(chunk)) => self.hub.log_answered(&self.worker_id, chunk),
            Some(In::Hello(_)) => return Err(Status::invalid_argument("hello sent twice in one session")),
            None => return Err(Status::invalid_argument("empty worker message")),
        }
        Ok(None)
    }

    /// Checks an outcome and queues it for the next outcome transaction. An outcome that
    /// cannot be read is recorded as a harness error with the reason, and its ack says it was
    /// rejected, so the worker drops it instead of sending it again and again.
    fn record(&mut self, outcome: v1::JobOutcome) -> InFlight<Recorded> {
        let job_id = JobId(outcome.job_id);
        let token = match parse_lease_token("outcome.lease_token", &outcome.lease_token) {
            Ok(token) => token,
            // Nothing can be recorded without the lease; the lease expires and the job goes on.
            Err(error) => {
                let rejected = Recorded {
                    job_id,
                    token: None,
                    completion: Ok(Completion {
                        ack: domain::OutcomeAck::Stale,
                        run_id: None,
                        revoked: Vec::new(),
                        requeued: false,
                    }),
                    rejected: Some(error.to_string()),
                };
                return Box::pin(std::future::ready(rejected));
            }
        };
        let (result, rejected) = match read_result(outcome.result) {
            Ok(result) => (result, None),
            Err(reason) => {
                let refused = format!("the worker's outcome was refused: {reason}");
                // The store takes the iteration, mode, attempt and worker from the job's row.
                let result = JobResult::Iteration(IterationOutcome::harness_error(
                    0,
                    domain::Mode::Ft,
                    self.worker_id.as_str(),
                    0,
                    refused,
                ));
                (result, Some(reason))
            }
        };
        if self.running.get(&job_id) == Some(&token) {
            self.reported.insert(job_id);
        }
        // Forgotten before the commit, so no watcher sees the job both finished and running.
        let package = self.hub.job_ended(job_id);
        let (hub, ending) = (self.hub.clone(), self.ending.clone());
        let result = Arc::new(result);
        Box::pin(async move {
            let mut pause = RECORD_RETRY_FIRST;
            loop {
                let completion = hub
                    .batcher
                    .complete(job_id, token, result.clone(), package.as_ref())
                    .await;
                // A store error (the database down or restarting) is tried again while the
                // session lasts; when it ends unacknowledged, the worker sends it again.
                match completion {
                    Err(BatchError::Store(error)) if error.is_retryable() && !ending.is_cancelled() => {
                        // The store's error is logged where the batch failed.
                        tracing::debug!(job.id = %job_id, error = %error, retry_in = ?pause, "an outcome was not recorded");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = ending.cancelled() => break Recorded { job_id, token: Some(token), completion: Err(BatchError::Store(error)), rejected },
                        }
                        pause = (pause * 2).min(RECORD_RETRY_MAX);
                    }
                    completion => {
                        break Recorded {
                            job_id,
                            token: Some(token),
                            completion,
                            rejected,
                        };
                    }
                }
            }
        })
    }

    /// Acknowledges a committed outcome.
    async fn recorded(&mut self, recorded: Recorded) -> Result<(), Status> {
        let Recorded {
            job_id,
            token,
            completion,
            rejected,
        } = recorded;
        if let Some(token) = token
            && self.running.get(&job_id) == Some(&token)
        {
            self.reported.remove(&job_id);
            if completion.is_ok() {
                self.running.remove(&job_id);
                self.report_running();
            }
        }
        let completion = completion.map_err(status_from_batch)?;
        tracing::debug!(worker.id = %self.worker_id, job.id = %job_id, ack = ?completion.ack, "outcome");
        let ack = match rejected {
            Some(reason) => {
                tracing::warn!(worker.id = %self.worker_id, job.id = %job_id, %reason, "an outcome was rejected");
                v1::Ack {
                    job_id: job_id.0,
                    status: v1::AckStatus::Rejected as i32,
                    reason,
                }
            }
            None => v1::Ack {
                job_id: job_id.0,
                status: v1::AckStatus::from(completion.ack) as i32,
                reason: String::new(),
            },
        };
        self.sender
            .send(Ok(v1::CoordinatorMessage {
                msg: Some(Out::Ack(ack)),
            }))
            .await
            .map_err(|_| Status::cancelled("session closed"))?;
        if !completion.revoked.is_empty() {
            self.hub
                .push_cancels(&completion.revoked, "the package's other jobs are no longer needed");
        }
        if completion.requeued {
            tracing::info!(worker.id = %self.worker_id, job.id = %job_id, "setup failed for the infrastructure; the job goes back to the queue");
            self.hub.jobs_available.notify_waiters();
        }
        if let Some(run_id) = completion.run_id {
            self.hub.notify_run(run_id);
        }
        Ok(())
    }

    /// Shows the session's running jobs in the fleet status.
    fn report_running(&self) {
        let running = self.running.len() as u32;
        self.hub
            .touch_worker(&self.worker_id, |status| status.running_jobs = running);
    }

    /// Asks for as many jobs as the worker has credits for, up to 32.
    fn claim(&self) -> InFlight<Result<Vec<Assignment>, BatchError>> {
        let max_jobs = self.credits.min(32);
        // The packages set up most recently (the session keeps only those) are the ones worth
        // steering jobs to; asking for all of a long-lived worker's packages would make every
        // claim search them all.
        let recent = self.warm_packages.clone();
        let hub = self.hub.clone();
        let worker_id = self.worker_id.clone();
        let profile = self.profile.clone();
        Box::pin(async move { hub.batcher.claim(&worker_id, profile, recent, max_jobs).await })
    }

    /// Returns to the queue the jobs of a claim that came back after the worker was drained:
    /// a drained worker is given no new job. In its own task, as the session does not wait on
    /// the store.
    fn give_back(&self, assignments: &[Assignment]) {
        if assignments.is_empty() {
            return;
        }
        let leases: Vec<(JobId, LeaseToken)> = assignments.iter().map(|a| (a.job_id, a.lease_token)).collect();
        let (hub, worker_id) = (self.hub.clone(), self.worker_id.clone());
        tokio::spawn(async move {
            release(&hub, &worker_id, &leases).await;
            hub.jobs_available.notify_waiters();
        });
    }

    /// Sends leased jobs to the worker.
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<(), Status> {
        for assignment in assignments {
            self.credits = self.credits.saturating_sub(1);
            self.running.insert(assignment.job_id, assignment.lease_token);
            self.report_running();
            self.hub.job_started(&assignment, &self.worker_id, now_ms());
            self.warm_packages.retain(|name| *name != assignment.package.name);
            self.warm_packages.push(assignment.package.name.clone());
            if self.warm_packages.len() > WARM_PER_CLAIM {
                self.warm_packages.remove(0);
            }
            tracing::debug!(
                worker.id = %self.worker_id, job.id = %assignment.job_id, run.id = %assignment.run_id,
                package.name = %assignment.package.name, iteration = assignment.iteration, "job assigned"
            );
            self.hub.notify_run(assignment.run_id);
            let message = v1::CoordinatorMessage {
                msg: Some(Out::Assignment((&assignment).into())),
            };
            if self.sender.send(Ok(message)).await.is_err() {
                // The lease is in `running` and is released when the session ends.
                return Err(Status::cancelled("session closed"));
            }
        }
        Ok(())
    }
}

/// The reason a worker's outcome cannot be recorded as it is, if it cannot: missing, invalid,
/// larger than any outcome a worker sends, or with a part beyond its bound.
fn read_result(result: Option<v1::JobResult>) -> Result<JobResult, String> {
    use prost::Message;
    let result = result.ok_or_else(|| "missing field outcome.result".to_string())?;
    let size = result.encoded_len();
    if size > proto::MAX_OUTCOME_BYTES {
        return Err(format!(
            "the outcome is {size} bytes, over the {}-byte limit",
            proto::MAX_OUTCOME_BYTES
        ));
    }
    let result = JobResult::try_from(result).map_err(|error| error.to_string())?;
    domain::bound::checked(result)
}
