//! The worker-facing service: one bidirectional session per worker, as the contract in
//! `worker.proto` describes.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::{InterpreterProfile, JobId, LeaseToken, WorkerId};
use futures::Stream;
use proto::auth::ProvenCaller;
use proto::v1;
use proto::v1::coordinator_message::Msg as Out;
use proto::v1::worker_message::Msg as In;
use proto::v1::worker_service_server::WorkerService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::clock::now_ms;
use crate::hub::{Hub, MAX_SESSIONS, SessionRefused, SessionSender};
use crate::service::session::Session;

/// The `WorkerService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Workers {
    pub(crate) hub: Arc<Hub>,
    pub(crate) shutdown: CancellationToken,
    /// Worker ids that have a token of their own: they connect with it or not at all.
    pub(crate) bound_ids: Arc<HashSet<WorkerId>>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

/// A session must say Hello this soon after opening.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl WorkerService for Workers {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = Identity {
            proven: request
                .extensions()
                .get::<ProvenCaller>()
                .map(|caller| caller.0.clone()),
            bound_ids: self.bound_ids.clone(),
        };
        let inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(256);
        tokio::spawn(run_session(
            self.hub.clone(),
            inbound,
            sender,
            identity,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// What a session's credential says about who may open it.
struct Identity {
    /// The worker whose own token opened the session, if one did.
    proven: Option<String>,
    bound_ids: Arc<HashSet<WorkerId>>,
}

impl Identity {
    /// Why a session of this credential may not be `worker_id`, if it may not.
    fn refuses(&self, worker_id: &WorkerId) -> Option<Status> {
        match &self.proven {
            Some(proven) if proven != worker_id.as_str() => Some(Status::permission_denied(format!(
                "this token is worker {proven}'s, not {worker_id}'s"
            ))),
            None if self.bound_ids.contains(worker_id) => Some(Status::permission_denied(format!(
                "worker {worker_id} has a token of its own and must connect with it"
            ))),
            _ => None,
        }
    }
}

async fn run_session(
    hub: Arc<Hub>,
    mut inbound: Streaming<v1::WorkerMessage>,
    sender: SessionSender,
    identity: Identity,
    shutdown: CancellationToken,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(v1::WorkerMessage {
            msg: Some(In::Hello(hello)),
        }))) => hello,
        Ok(Ok(Some(_))) => return reject(&sender, "the first message of a session must be Hello").await,
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => return reject(&sender, "no Hello within 30 seconds").await,
    };
    let worker_id = match WorkerId::parse(&hello.worker_id) {
        Ok(id) => id,
        Err(e) => return reject(&sender, &format!("invalid field hello.worker_id: {e}")).await,
    };
    let profile = match hello.interpreter.map(InterpreterProfile::try_from) {
        Some(Ok(profile)) => profile,
        Some(Err(e)) => return reject(&sender, &e.to_string()).await,
        None => return reject(&sender, "missing field hello.interpreter").await,
    };
    if let Some(refusal) = identity.refuses(&worker_id) {
        tracing::warn!(worker.id = %worker_id, reason = %refusal.message(), "a session was refused");
        let _ = sender.send(Err(refusal)).await;
        return;
    }
    // Only a worker that proved its name with its own token takes over a live session of that
    // name (a restarted worker whose old connection has not closed yet): with a shared token,
    // anyone holding it could otherwise end any worker's session and take its leases.
    let (number, replaced) = match hub.register_session(&worker_id, sender.clone(), identity.proven.is_some()) {
        Ok(registered) => registered,
        Err(refused) => {
            let refusal = match refused {
                SessionRefused::Connected => Status::already_exists(format!(
                    "worker {worker_id} is connected already; a second session needs its own token"
                )),
                SessionRefused::Full => Status::resource_exhausted(format!(
                    "{MAX_SESSIONS} workers are connected, the most this coordinator serves"
                )),
            };
            tracing::warn!(worker.id = %worker_id, reason = %refusal.message(), "a session was refused");
            let _ = sender.send(Err(refusal)).await;
            return;
        }
    };
    if let Some(old) = replaced {
        let _ = old.try_send(Err(Status::aborted("replaced by a newer session of the same worker")));
    }
    tracing::info!(worker.id = %worker_id, slots = hello.slots, interpreter = %profile.summary(), "worker connected");
    hub.update_worker(
        &worker_id,
        v1::WorkerStatus {
            worker_id: worker_id.to_string(),
            interpreter: profile.summary(),
            slots: hello.slots,
            running_jobs: 0,
            last_heartbeat_ms: now_ms(),
            connected_at_ms: now_ms(),
            refusing: String::new(),
        },
    );
    let settings = hub.settings.clone();
    let welcome = v1::Welcome {
        heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u32,
        lease_duration_ms: settings.lease_duration.as_millis() as u32,
    };
    if sender
        .send(Ok(v1::CoordinatorMessage {
            msg: Some(Out::Welcome(welcome)),
        }))
        .await
        .is_err()
    {
        hub.unregister_session(&worker_id, number);
        return;
    }
    let mut session = Session::new(
        hub.clone(),
        worker_id.clone(),
        profile,
        sender.clone(),
        hello.slots,
        hello.warm_packages,
    );
    let end = session.serve(&mut inbound, &shutdown).await;
    if let Err(status) = &end {
        let _ = sender.send(Err(status.clone())).await;
    }
    let leases = session.take_leases();
    hub.jobs_ended(leases.iter().map(|(job_id, _)| *job_id));
    // A worker that went away gives its jobs back at once. When the coordinator itself stops,
    // the workers are fine: their leases stay, their heartbeats keep them after the restart,
    // and expiry reclaims those of workers that do not come back.
    if !shutdown.is_cancelled() {
        abandon(&hub, &worker_id, &leases).await;
    }
    hub.unregister_session(&worker_id, number);
    hub.jobs_available.notify_waiters();
    tracing::info!(worker.id = %worker_id, released = leases.len(), "worker disconnected");
}

/// Ends the leases of a worker that went away: each job goes back to the queue at once, or is
/// lost once it has ended `max_attempts` sessions; on failure the leases expire instead.
async fn abandon(hub: &Hub, worker_id: &WorkerId, leases: &[(JobId, LeaseToken)]) {
    match hub
        .store
        .abandon_jobs(leases, hub.settings.max_attempts, now_ms())
        .await
    {
        Ok(report) => {
            if report.lost > 0 {
                tracing::warn!(worker.id = %worker_id, lost = report.lost, "jobs lost: their last attempt ended with the session");
            }
            report.runs_touched.iter().for_each(|run| hub.notify_run(*run));
        }
        Err(error) => tracing::error!(worker.id = %worker_id, error = %error, "could not give back the leases"),
    }
}

async fn reject(sender: &SessionSender, reason: &str) {
    let _ = sender.send(Err(Status::invalid_argument(reason.to_string()))).await;
}
