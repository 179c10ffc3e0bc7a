//! The client-facing service: submit, list, cancel and watch runs; read package results.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::{RunId, RunSpec, WorkerId};
use futures::Stream;
use proto::convert::parse_run_id;
use proto::v1;
use proto::v1::survey_service_server::SurveyService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::hub::Hub;
use crate::service::{status_from_store, status_from_wire};
use crate::store::StoreError;

/// The `SurveyService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Survey {
    pub(crate) hub: Arc<Hub>,
    pub(crate) shutdown: CancellationToken,
}

type RunEventStream = Pin<Box<dyn Stream<Item = Result<v1::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SurveyService for Survey {
    async fn submit_run(
        &self,
        request: Request<v1::SubmitRunRequest>,
    ) -> Result<Response<v1::SubmitRunResponse>, Status> {
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| Status::invalid_argument("missing field spec"))?;
        let spec = RunSpec::try_from(spec).map_err(status_from_wire)?;
        let now = now_ms();
        let run_id = RunId::new_at(now as u64);
        let token = Some(request.client_token.as_str()).filter(|t| !t.is_empty());
        let summary = answer(self.hub.store.submit_run(run_id, &spec, token, now), &self.hub).await?;
        tracing::info!(run.id = %summary.run_id, packages = spec.packages.len(), jobs = summary.jobs_total, "run submitted");
        self.hub.jobs_available.notify_waiters();
        Ok(Response::new(v1::SubmitRunResponse {
            run: Some((&summary).into()),
        }))
    }

    async fn get_run(&self, request: Request<v1::GetRunRequest>) -> Result<Response<v1::GetRunResponse>, Status> {
        let run_id = parse_run_id("run_id", &request.into_inner().run_id).map_err(status_from_wire)?;
        let (summary, spec) = answer(self.hub.store.get_run(run_id), &self.hub).await?;
        Ok(Response::new(v1::GetRunResponse {
            run: Some((&summary).into()),
            spec: Some((&spec).into()),
        }))
    }

    async fn list_runs(&self, request: Request<v1::ListRunsRequest>) -> Result<Response<v1::ListRunsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 50,
            n => n.min(1000),
        };
        let runs = answer(self.hub.store.list_runs(limit), &self.hub).await?;
        Ok(Response::new(v1::ListRunsResponse {
            runs: runs.iter().map(Into::into).collect(),
        }))
    }

    async fn get_status(
        &self,
        _request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let runs = answer(self.hub.store.list_runs(1000), &self.hub).await?;
        Ok(Response::new(v1::GetStatusResponse {
            workers: self.hub.workers(),
            active_runs: runs
                .iter()
                .filter(|run| !run.state.is_terminal())
                .map(Into::into)
                .collect(),
            now_ms: now_ms(),
            dispatch: Some(self.hub.batcher.stats.snapshot()),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        let request = request.into_inner();
        let worker_id = WorkerId::parse(&request.worker_id)
            .map_err(|e| Status::invalid_argument(format!("invalid field worker_id: {e}")))?;
        let reason = if request.reason.is_empty() {
            "drained by an operator"
        } else {
            request.reason.as_str()
        };
        let running_jobs = self
            .hub
            .drain_worker(&worker_id, reason)
            .ok_or_else(|| Status::not_found(format!("no worker {worker_id} is connected")))?;
        tracing::info!(worker.id = %worker_id, running_jobs, reason, "worker drained");
        Ok(Response::new(v1::DrainWorkerResponse { running_jobs }))
    }

    async fn cancel_run(
        &self,
        request: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::CancelRunResponse>, Status> {
        let run_id = parse_run_id("run_id", &request.into_inner().run_id).map_err(status_from_wire)?;
        let (summary, revoked) = answer(self.hub.store.cancel_run(run_id, now_ms()), &self.hub).await?;
        self.hub.push_cancels(&revoked, "run cancelled");
        self.hub.notify_run(run_id);
        tracing::info!(run.id = %run_id, revoked = revoked.len(), "run cancelled");
        Ok(Response::new(v1::CancelRunResponse {
            run: Some((&summary).into()),
        }))
    }

    type WatchRunStream = RunEventStream;

    async fn watch_run(&self, request: Request<v1::WatchRunRequest>) -> Result<Response<Self::WatchRunStream>, Status> {
        let run_id = parse_run_id("run_id", &request.into_inner().run_id).map_err(status_from_wire)?;
        // Subscribe before the snapshot so no change between the two is missed.
        let changes = self.hub.run_changed.subscribe();
        let first = answer(self.hub.store.get_run(run_id), &self.hub).await?.0;
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(watch(
            self.hub.clone(),
            run_id,
            first,
            changes,
            sender,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn query_package_results(
        &self,
        request: Request<v1::QueryPackageResultsRequest>,
    ) -> Result<Response<v1::QueryPackageResultsResponse>, Status> {
        let request = request.into_inner();
        let run_id = parse_run_id("run_id", &request.run_id).map_err(status_from_wire)?;
        let results = answer(
            self.hub
                .store
                .package_results(run_id, &request.packages, request.finished_only),
            &self.hub,
        )
        .await?;
        Ok(Response::new(v1::QueryPackageResultsResponse {
            results: results.iter().map(Into::into).collect(),
        }))
    }
}

/// A unary call's store request, answered within the coordinator's `store_answer_timeout`: a
/// database that hangs answers the caller with `DeadlineExceeded` instead of holding the call
/// open for ever.
async fn answer<T>(request: impl Future<Output = Result<T, StoreError>>, hub: &Hub) -> Result<T, Status> {
    let timeout = hub.settings.store_answer_timeout;
    match tokio::time::timeout(timeout, request).await {
        Ok(answered) => answered.map_err(status_from_store),
        Err(_) => {
            tracing::error!(?timeout, "the store did not answer a call in time");
            Err(Status::deadline_exceeded(format!(
                "the store did not answer within {} s",
                timeout.as_secs_f64()
            )))
        }
    }
}

/// The shortest time between two reads of a watched run.
const WATCH_GAP: Duration = Duration::from_millis(250);

/// Feeds one WatchRun stream: a snapshot, then an event per change, until the run ends.
async fn watch(
    hub: Arc<Hub>,
    run_id: RunId,
    mut summary: domain::RunSummary,
    mut changes: broadcast::Receiver<RunId>,
    sender: mpsc::Sender<Result<v1::RunEvent, Status>>,
    shutdown: CancellationToken,
) {
    let mut sent: HashSet<String> = HashSet::new();
    let mut last_summary: Option<domain::RunSummary> = None;
    loop {
        let finished = match hub.store.package_results(run_id, &[], true).await {
            Ok(results) => results,
            Err(error) => {
                let _ = sender.send(Err(status_from_store(error))).await;
                return;
            }
        };
        let new: Vec<v1::PackageResult> = finished
            .iter()
            .filter(|r| sent.insert(r.package.clone()))
            .map(Into::into)
            .collect();
        if last_summary.as_ref() != Some(&summary) || !new.is_empty() {
            let event = v1::RunEvent {
                run: Some((&summary).into()),
                finished_packages: new,
                running: hub.running_jobs(run_id, now_ms()),
            };
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
            last_summary = Some(summary.clone());
        }
        if summary.state.is_terminal() {
            return;
        }
        // Wait for a change to this run; a periodic wake-up keeps summaries (running counts)
        // fresh even when no package finishes. Each read covers the whole run, so changes
        // that come quicker than WATCH_GAP are taken together: a busy fleet changes a run
        // hundreds of times a second.
        let read_at = tokio::time::Instant::now();
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sender.closed() => return,
                _ = &mut deadline => break,
                changed = changes.recv() => match changed {
                    Ok(id) if id != run_id => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let soon = deadline.deadline().min(read_at + WATCH_GAP);
                        deadline.as_mut().reset(soon);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        summary = match hub.store.get_run(run_id).await {
            Ok((summary, _)) => summary,
            Err(error) => {
                let _ = sender.send(Err(status_from_store(error))).await;
                return;
            }
        };
    }
}
