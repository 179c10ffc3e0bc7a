//! State shared by the coordinator's services: the store, the live worker sessions and the
//! signals that wake dispatchers and watchers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use domain::{Assignment, JobId, RunId, WorkerId};
use proto::v1;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::batch::Batcher;
use crate::config::Settings;
use crate::store::{RevokedLease, Store};

/// Messages to one worker session.
pub(crate) type SessionSender = mpsc::Sender<Result<v1::CoordinatorMessage, tonic::Status>>;

/// Workers connected at once at most: each session holds a little memory and a task.
pub(crate) const MAX_SESSIONS: usize = 4096;

/// Client log requests a worker serves at once at most; each waits for one chunk of at most
/// 1 MiB at a time, so a worker sends at most this many MiB of logs at once.
pub(crate) const MAX_LOG_REQUESTS_PER_WORKER: usize = 4;

/// Why a chunk of a log could not be asked of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogAskRefused {
    /// No session of that worker is live.
    NotConnected,
    /// The session's outbound queue is full: it is far behind.
    Busy,
}

/// Why a session was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionRefused {
    /// A live session of the same worker exists and may not be replaced.
    Connected,
    /// [`MAX_SESSIONS`] workers are connected.
    Full,
}

/// What every service holds.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) store: Arc<dyn Store>,
    /// Claims and outcomes of all sessions, batched into store transactions.
    pub(crate) batcher: Batcher,
    pub(crate) settings: Settings,
    /// Live sessions by worker id, each with a number that tells a session from its replacement.
    sessions: Mutex<HashMap<WorkerId, (u64, SessionSender)>>,
    next_session: Mutex<u64>,
    /// Woken when jobs may have become claimable.
    pub(crate) jobs_available: Notify,
    /// Carries the id of every run whose progress changed.
    pub(crate) run_changed: broadcast::Sender<RunId>,
    /// What `GetStatus` shows of each connected worker.
    workers: Mutex<HashMap<WorkerId, v1::WorkerStatus>>,
    /// Workers an operator drained: their sessions get no new jobs.
    draining: Mutex<HashSet<WorkerId>>,
    /// Jobs handed to a live session and not yet reported, for the watch stream's "running"
    /// list. Kept in memory only: after a restart, jobs adopted through heartbeats are not
    /// listed, which only makes the progress display less detailed.
    in_flight: Mutex<HashMap<JobId, InFlight>>,
    /// Chunks of logs asked of workers and not yet answered, by request id.
    log_asks: Mutex<HashMap<u64, LogAsk>>,
    next_log_ask: Mutex<u64>,
    /// Client log requests being served, per worker.
    log_requests: Mutex<HashMap<WorkerId, usize>>,
}

/// A chunk of a log asked of a worker's session, waiting for its answer.
#[derive(Debug)]
struct LogAsk {
    worker_id: WorkerId,
    /// The session that was asked: when it ends, the ask is dropped and its waiter hears so.
    session: u64,
    answer: oneshot::Sender<v1::LogChunk>,
}

/// One client log request served from a worker; counts toward that worker's
/// [`MAX_LOG_REQUESTS_PER_WORKER`] until dropped.
#[derive(Debug)]
pub(crate) struct LogRequestSlot {
    hub: Arc<Hub>,
    worker_id: WorkerId,
}

impl Drop for LogRequestSlot {
    fn drop(&mut self) {
        let mut requests = self.hub.log_requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = requests.get_mut(&self.worker_id) {
            *count -= 1;
            if *count == 0 {
                requests.remove(&self.worker_id);
            }
        }
    }
}

/// A job a worker is running, as watchers are told of it.
#[derive(Debug, Clone)]
struct InFlight {
    run_id: RunId,
    package: String,
    mode: String,
    iteration: u32,
    worker_id: String,
    started_at_ms: i64,
}

impl Hub {
    pub(crate) fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        Hub {
            batcher: Batcher::start(&store, &settings),
            store,
            settings,
            sessions: Mutex::new(HashMap::new()),
            next_session: Mutex::new(0),
            jobs_available: Notify::new(),
            run_changed: broadcast::channel(1024).0,
            workers: Mutex::new(HashMap::new()),
            draining: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            log_asks: Mutex::new(HashMap::new()),
            next_log_ask: Mutex::new(0),
            log_requests: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `assignment` went to `worker_id` at `now_ms`.
    pub(crate) fn job_started(&self, assignment: &Assignment, worker_id: &WorkerId, now_ms: i64) {
        let job = InFlight {
            run_id: assignment.run_id,
            package: assignment.package.name.clone(),
            mode: assignment.mode.as_str().to_string(),
            iteration: assignment.iteration,
            worker_id: worker_id.to_string(),
            started_at_ms: now_ms,
        };
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(assignment.job_id, job);
    }

    /// Forgets a job that was reported; returns its run and package, when it was handed out
    /// by this coordinator.
    pub(crate) fn job_ended(&self, job_id: JobId) -> Option<(RunId, String)> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.remove(&job_id).map(|job| (job.run_id, job.package))
    }

    /// Forgets jobs that were reported, released or given up.
    pub(crate) fn jobs_ended(&self, job_ids: impl IntoIterator<Item = JobId>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for job_id in job_ids {
            in_flight.remove(&job_id);
        }
    }

    /// The jobs of `run_id` running at `now_ms`, longest-running first.
    pub(crate) fn running_jobs(&self, run_id: RunId, now_ms: i64) -> Vec<v1::ActiveJob> {
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let mut jobs: Vec<v1::ActiveJob> = in_flight
            .values()
            .filter(|job| job.run_id == run_id)
            .map(|job| v1::ActiveJob {
                package: job.package.clone(),
                mode: job.mode.clone(),
                iteration: job.iteration,
                worker_id: job.worker_id.clone(),
                running_ms: (now_ms - job.started_at_ms).max(0),
            })
            .collect();
        jobs.sort_by(|a, b| b.running_ms.cmp(&a.running_ms).then_with(|| a.package.cmp(&b.package)));
        jobs
    }

    /// Records or replaces what a connected worker looks like.
    pub(crate) fn update_worker(&self, worker_id: &WorkerId, status: v1::WorkerStatus) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.insert(worker_id.clone(), status);
    }

    /// Changes a connected worker's entry in place.
    pub(crate) fn touch_worker(&self, worker_id: &WorkerId, change: impl FnOnce(&mut v1::WorkerStatus)) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = workers.get_mut(worker_id) {
            change(status);
        }
    }

    /// Connected workers, by id.
    pub(crate) fn workers(&self) -> Vec<v1::WorkerStatus> {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<v1::WorkerStatus> = workers.values().cloned().collect();
        list.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        list
    }

    /// Registers a session; returns its number and the session it replaces, if any. A live
    /// session of the same worker is replaced only when `may_replace`, and a new worker only
    /// joins while there are fewer than [`MAX_SESSIONS`]; otherwise nothing changes. A session
    /// whose peer is gone is replaced always.
    pub(crate) fn register_session(
        &self,
        worker_id: &WorkerId,
        sender: SessionSender,
        may_replace: bool,
    ) -> Result<(u64, Option<SessionSender>), SessionRefused> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(worker_id) {
            Some((_, live)) if !may_replace && !live.is_closed() => return Err(SessionRefused::Connected),
            None if sessions.len() >= MAX_SESSIONS => return Err(SessionRefused::Full),
            _ => {}
        }
        let number = {
            let mut next = self.next_session.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let replaced = sessions.insert(worker_id.clone(), (number, sender)).map(|(_, s)| s);
        // A worker that says Hello again starts afresh: a drained one exited and was restarted.
        self.draining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(worker_id);
        Ok((number, replaced))
    }

    /// Tells a connected worker to drain; returns the jobs it still runs, or `None` when no
    /// worker of that id is connected.
    pub(crate) fn drain_worker(&self, worker_id: &WorkerId, reason: &str) -> Option<u32> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (_, sender) = sessions.get(worker_id)?;
        self.draining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker_id.clone());
        let drain = v1::Drain {
            reason: reason.to_string(),
        };
        let message = v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::Drain(drain)),
        };
        // A full channel: the session is far behind; it still gets no new jobs.
        let _ = sender.try_send(Ok(message));
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        Some(workers.get(worker_id).map_or(0, |status| status.running_jobs))
    }

    pub(crate) fn is_draining(&self, worker_id: &WorkerId) -> bool {
        self.draining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(worker_id)
    }

    /// Forgets a session unless it has already been replaced, and drops the log chunks asked
    /// of it, whose waiters hear that it ended.
    pub(crate) fn unregister_session(&self, worker_id: &WorkerId, number: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(worker_id).is_some_and(|(n, _)| *n == number) {
            sessions.remove(worker_id);
            self.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(worker_id);
        }
        drop(sessions);
        self.log_asks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, ask| ask.session != number);
    }

    /// Whether a session of `worker_id` is live.
    pub(crate) fn is_connected(&self, worker_id: &WorkerId) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(worker_id).is_some_and(|(_, sender)| !sender.is_closed())
    }

    /// A place among the client log requests `worker_id` serves, or `None` when it already
    /// serves [`MAX_LOG_REQUESTS_PER_WORKER`].
    pub(crate) fn log_request_slot(self: &Arc<Self>, worker_id: &WorkerId) -> Option<LogRequestSlot> {
        let mut requests = self.log_requests.lock().unwrap_or_else(|e| e.into_inner());
        let count = requests.entry(worker_id.clone()).or_insert(0);
        if *count >= MAX_LOG_REQUESTS_PER_WORKER {
            return None;
        }
        *count += 1;
        Some(LogRequestSlot {
            hub: self.clone(),
            worker_id: worker_id.clone(),
        })
    }

    /// Asks `worker_id`'s live session for a chunk of a log; returns the request's id, set
    /// here, and the receiver of the answer, which fails if the session ends first.
    pub(crate) fn ask_log(
        &self,
        worker_id: &WorkerId,
        mut request: v1::LogRequest,
    ) -> Result<(u64, oneshot::Receiver<v1::LogChunk>), LogAskRefused> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (session, sender) = sessions
            .get(worker_id)
            .filter(|(_, sender)| !sender.is_closed())
            .ok_or(LogAskRefused::NotConnected)?;
        request.request_id = {
            let mut next = self.next_log_ask.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let (answer, answered) = oneshot::channel();
        let ask = LogAsk {
            worker_id: worker_id.clone(),
            session: *session,
            answer,
        };
        let request_id = request.request_id;
        self.log_asks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request_id, ask);
        let message = v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::LogRequest(request)),
        };
        if sender.try_send(Ok(message)).is_err() {
            self.forget_log_ask(request_id);
            return Err(LogAskRefused::Busy);
        }
        Ok((request_id, answered))
    }

    /// Forgets a chunk asked and no longer waited for (its time ran out).
    pub(crate) fn forget_log_ask(&self, request_id: u64) {
        self.log_asks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request_id);
    }

    /// Hands a worker's answer to whoever asked; an answer to a request this worker was not
    /// asked, or no longer waited for, is dropped.
    pub(crate) fn log_answered(&self, worker_id: &WorkerId, chunk: v1::LogChunk) {
        let mut asks = self.log_asks.lock().unwrap_or_else(|e| e.into_inner());
        if asks
            .get(&chunk.request_id)
            .is_none_or(|ask| ask.worker_id != *worker_id)
        {
            tracing::debug!(worker.id = %worker_id, request_id = chunk.request_id, "an unasked log chunk dropped");
            return;
        }
        if let Some(ask) = asks.remove(&chunk.request_id) {
            // The asker may have given up since: nothing to do.
            let _ = ask.answer.send(chunk);
        }
    }

    /// Tells the workers holding revoked leases to stop those jobs.
    pub(crate) fn push_cancels(&self, revoked: &[RevokedLease], reason: &str) {
        self.jobs_ended(revoked.iter().map(|lease| lease.job_id));
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for lease in revoked {
            if let Some((_, sender)) = sessions.get(&lease.worker_id) {
                let cancel = v1::CancelJob {
                    job_id: lease.job_id.0,
                    reason: reason.to_string(),
                };
                let message = v1::CoordinatorMessage {
                    msg: Some(v1::coordinator_message::Msg::Cancel(cancel)),
                };
                // A full or closed channel means the session is going away; its leases are
                // released when it does, so the cancel is not needed.
                let _ = sender.try_send(Ok(message));
            }
        }
    }

    pub(crate) fn notify_run(&self, run_id: RunId) {
        // No receivers just means nobody is watching.
        let _ = self.run_changed.send(run_id);
    }
}
