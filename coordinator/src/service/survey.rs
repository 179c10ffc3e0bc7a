//! The client-facing service: submit, list, cancel, archive, purge and watch runs; read package
//! results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::{RunId, RunSpec, WorkerId};
use futures::Stream;
use proto::convert::parse_run_id;
use proto::v1;
use proto::v1::survey_service_server::SurveyService;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::hub::Hub;
use crate::service::feed::{self, Feeds, Reading, RunState};
use crate::service::{answer, logs, results, status_from_wire};

/// The `SurveyService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct Survey {
    pub(crate) hub: Arc<Hub>,
    pub(crate) shutdown: CancellationToken,
    /// One store reader per watched run, however many watch it.
    pub(crate) feeds: Arc<Feeds>,
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

    async fn archive_run(
        &self,
        request: Request<v1::ArchiveRunRequest>,
    ) -> Result<Response<v1::ArchiveRunResponse>, Status> {
        let run_id = parse_run_id("run_id", &request.into_inner().run_id).map_err(status_from_wire)?;
        let summary = answer(self.hub.store.archive_run(run_id, now_ms()), &self.hub).await?;
        tracing::info!(run.id = %run_id, jobs = summary.jobs_total, "run archived");
        Ok(Response::new(v1::ArchiveRunResponse {
            run: Some((&summary).into()),
        }))
    }

    async fn purge_run(&self, request: Request<v1::PurgeRunRequest>) -> Result<Response<v1::PurgeRunResponse>, Status> {
        let run_id = parse_run_id("run_id", &request.into_inner().run_id).map_err(status_from_wire)?;
        let jobs_deleted = answer(self.hub.store.purge_run(run_id), &self.hub).await?;
        tracing::info!(run.id = %run_id, jobs = jobs_deleted, "run purged");
        Ok(Response::new(v1::PurgeRunResponse { jobs_deleted }))
    }

    type WatchRunStream = RunEventStream;

    async fn watch_run(&self, request: Request<v1::WatchRunRequest>) -> Result<Response<Self::WatchRunStream>, Status> {
        let request = request.into_inner();
        let run_id = parse_run_id("run_id", &request.run_id).map_err(status_from_wire)?;
        // An unknown run is an error of the call, not of the stream.
        answer(self.hub.store.get_run(run_id), &self.hub).await?;
        let feed = feed::follow(&self.hub, &self.feeds, run_id, &self.shutdown);
        // One event waiting while one is written: a slow watcher holds two events' memory.
        let (sender, receiver) = mpsc::channel(1);
        let watcher = Watcher {
            hub: self.hub.clone(),
            run_id,
            with_output: request.with_output && !request.verdicts_only,
            verdicts_only: request.verdicts_only,
            sender,
            last_sent: tokio::time::Instant::now(),
        };
        tokio::spawn(watcher.run(feed, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn query_package_results(
        &self,
        request: Request<v1::QueryPackageResultsRequest>,
    ) -> Result<Response<v1::QueryPackageResultsResponse>, Status> {
        results::query_page(&self.hub, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_iteration_output(
        &self,
        request: Request<v1::GetIterationOutputRequest>,
    ) -> Result<Response<v1::GetIterationOutputResponse>, Status> {
        results::iteration_output(&self.hub, request.into_inner())
            .await
            .map(Response::new)
    }

    type GetIterationLogStream = logs::LogChunkStream;

    async fn get_iteration_log(
        &self,
        request: Request<v1::GetIterationLogRequest>,
    ) -> Result<Response<Self::GetIterationLogStream>, Status> {
        logs::iteration_log(&self.hub, request.into_inner(), &self.shutdown)
            .await
            .map(Response::new)
    }
}

/// Running jobs an event lists at most, longest-running first.
const MAX_RUNNING_LISTED: usize = 50;

/// How often a watcher hears of the running jobs when nothing else changes.
const RUNNING_EVERY: Duration = Duration::from_secs(1);

/// Feeds one WatchRun stream from its run's feed: the finished packages it has not sent yet,
/// read from the store a page at a time, and the summary when it moved, until the run ends.
#[derive(Debug)]
struct Watcher {
    hub: Arc<Hub>,
    run_id: RunId,
    with_output: bool,
    /// Finished packages are sent without their iterations.
    verdicts_only: bool,
    sender: mpsc::Sender<Result<v1::RunEvent, Status>>,
    /// When the last event went: the running jobs' event waits for a second without one.
    last_sent: tokio::time::Instant,
}

impl Watcher {
    async fn run(mut self, mut feed: watch::Receiver<Reading>, shutdown: CancellationToken) {
        // How much of the feed's finished list this stream has sent.
        let mut sent = 0;
        let mut last_summary: Option<domain::RunSummary> = None;
        let mut running = tokio::time::interval_at(tokio::time::Instant::now() + RUNNING_EVERY, RUNNING_EVERY);
        running.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reading = feed.borrow_and_update().clone();
            match reading {
                Reading::Pending => {}
                Reading::Failed(code, message) => {
                    let _ = self.sender.send(Err(Status::new(code, message))).await;
                    return;
                }
                Reading::Read(state) => {
                    let summary = &state.summary;
                    match self.send_finished(&state, sent).await {
                        Ok(0) if last_summary.as_ref() != Some(summary) => {
                            if !self.send(summary, Vec::new()).await {
                                return;
                            }
                        }
                        Ok(n) => sent += n,
                        Err(()) => return,
                    }
                    last_summary = Some(summary.clone());
                    if summary.state.is_terminal() {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.sender.closed() => return,
                changed = feed.changed() => if changed.is_err() {
                    // The feed ended without a last word: the coordinator is shutting down.
                    return;
                },
                _ = running.tick() => {
                    if let Some(summary) = &last_summary
                        && self.last_sent.elapsed() >= RUNNING_EVERY
                        && !self.send(summary, Vec::new()).await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the results of the feed's finished packages from `from` on, in events that each
    /// stay under MAX_EVENT_BYTES: those the feed keeps from it, the rest (and all, with
    /// output) from the store. Returns how many packages were sent, or `Err` when the stream
    /// is over.
    async fn send_finished(&mut self, state: &RunState, from: usize) -> Result<usize, ()> {
        let finished = &state.finished[from..];
        let chunk = if self.with_output {
            results::OUTPUT_READ
        } else {
            results::DEFAULT_PAGE
        } as usize;
        let mut event = results::Event::default();
        for indexes in finished.chunks(chunk) {
            let kept = !self.with_output && indexes.iter().all(|idx| state.recent.contains_key(idx));
            let read = if kept {
                Vec::new()
            } else {
                match results::read_at(&self.hub, self.run_id, indexes, self.with_output).await {
                    Ok(read) => read,
                    Err(status) => {
                        let _ = self.sender.send(Err(status)).await;
                        return Err(());
                    }
                }
            };
            // Kept results are copied one at a time, as the event takes them.
            let verdicts_only = self.verdicts_only;
            let copy = |result: &v1::PackageResult| {
                if verdicts_only {
                    results::verdict_of(result)
                } else {
                    result.clone()
                }
            };
            let results = indexes
                .iter()
                .filter_map(|idx| state.recent.get(idx).filter(|_| kept).map(|r| copy(r)))
                .chain(read.into_iter().map(|(_, result)| copy(&result)));
            for result in results {
                if let Some(full) = event.add(result, proto::MAX_EVENT_BYTES)
                    && !self.send(&state.summary, full).await
                {
                    return Err(());
                }
            }
        }
        let last = event.take();
        if !last.is_empty() && !self.send(&state.summary, last).await {
            return Err(());
        }
        Ok(finished.len())
    }

    /// Sends one event; false when the stream is over.
    async fn send(&mut self, summary: &domain::RunSummary, finished_packages: Vec<v1::PackageResult>) -> bool {
        let mut running = self.hub.running_jobs(self.run_id, now_ms());
        running.truncate(MAX_RUNNING_LISTED);
        let event = v1::RunEvent {
            run: Some(summary.into()),
            finished_packages,
            running,
        };
        self.last_sent = tokio::time::Instant::now();
        self.sender.send(Ok(event)).await.is_ok()
    }
}
