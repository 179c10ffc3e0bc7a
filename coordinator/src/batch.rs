//! Group commit for the worker sessions: every claim goes through one queue and every outcome
//! through one of the outcome queues, and each store transaction serves everything waiting in
//! its queue. With one worker a batch is one request and adds no wait; with hundreds, one
//! transaction leases or records for many of them, which is what lets the store keep up. A
//! store that serves writers side by side ([`Store::parallel_transactions`]) gets that many
//! claim transactions in flight and that many outcome queues.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use domain::{Assignment, InterpreterProfile, JobId, JobResult, LeaseToken, WorkerId};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::store::{ClaimBatch, ClaimWant, Completion, MAX_CLAIM_BATCH, Report, RetryPolicy, Store, StoreError};

/// Requests one transaction serves at most.
const MAX_BATCH: usize = 256;

/// The two queues, and what went through them.
#[derive(Debug)]
pub(crate) struct Batcher {
    claims: mpsc::UnboundedSender<ClaimJob>,
    /// One queue per outcome transaction in flight; a package's outcomes all go through one.
    reports: Vec<mpsc::UnboundedSender<ReportJob>>,
    pub(crate) stats: Arc<BatchStats>,
}

/// Why the batcher did not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BatchError {
    /// The store transaction failed. Every request it served gets the one error, hence shared;
    /// it was logged where the transaction failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The queues' tasks are gone: the coordinator is stopping.
    #[error("coordinator shutting down")]
    ShuttingDown,
}

/// Counters of the batches, for the fleet status.
#[derive(Debug, Default)]
pub(crate) struct BatchStats {
    pub(crate) claim_batches: AtomicU64,
    pub(crate) jobs_claimed: AtomicU64,
    pub(crate) report_batches: AtomicU64,
    pub(crate) reports: AtomicU64,
    pub(crate) claim_micros: AtomicU64,
    pub(crate) report_micros: AtomicU64,
}

impl BatchStats {
    pub(crate) fn snapshot(&self) -> proto::v1::DispatchStats {
        proto::v1::DispatchStats {
            claim_batches: self.claim_batches.load(Ordering::Relaxed),
            jobs_claimed: self.jobs_claimed.load(Ordering::Relaxed),
            outcome_batches: self.report_batches.load(Ordering::Relaxed),
            outcomes: self.reports.load(Ordering::Relaxed),
            claim_micros: self.claim_micros.load(Ordering::Relaxed),
            outcome_micros: self.report_micros.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
struct ClaimJob {
    worker_id: WorkerId,
    profile: Arc<InterpreterProfile>,
    warm_packages: Vec<String>,
    max_jobs: u32,
    reply: oneshot::Sender<Result<Vec<Assignment>, BatchError>>,
}

#[derive(Debug)]
struct ReportJob {
    job_id: JobId,
    lease_token: LeaseToken,
    result: Arc<JobResult>,
    reply: oneshot::Sender<Result<Completion, BatchError>>,
}

impl Batcher {
    /// Starts the queues' tasks; they end when the batcher is dropped.
    pub(crate) fn start(store: &Arc<dyn Store>, settings: &Settings) -> Self {
        let stats = Arc::new(BatchStats::default());
        let parallel = store.parallel_transactions().max(1);
        let (claims, claim_queue) = mpsc::unbounded_channel();
        let lease_ms = settings.lease_duration.as_millis() as i64;
        let retry = RetryPolicy {
            max_attempts: settings.max_attempts,
            elsewhere_ms: i64::try_from(settings.retry_elsewhere.as_millis()).unwrap_or(i64::MAX),
        };
        tokio::spawn(claim_loop(
            store.clone(),
            claim_queue,
            parallel,
            lease_ms,
            stats.clone(),
        ));
        let reports = (0..parallel)
            .map(|_| {
                let (reports, report_queue) = mpsc::unbounded_channel();
                tokio::spawn(report_loop(store.clone(), report_queue, retry, stats.clone()));
                reports
            })
            .collect();
        Batcher { claims, reports, stats }
    }

    /// Leases up to `max_jobs` jobs for a worker, in the next claim transaction.
    pub(crate) async fn claim(
        &self,
        worker_id: &WorkerId,
        profile: Arc<InterpreterProfile>,
        warm_packages: Vec<String>,
        max_jobs: u32,
    ) -> Result<Vec<Assignment>, BatchError> {
        let (reply, answer) = oneshot::channel();
        let job = ClaimJob {
            worker_id: worker_id.clone(),
            profile,
            warm_packages,
            max_jobs,
            reply,
        };
        self.claims.send(job).map_err(|_| BatchError::ShuttingDown)?;
        answer.await.map_err(|_| BatchError::ShuttingDown)?
    }

    /// Records an outcome in the next outcome transaction; returns once it is committed.
    ///
    /// `package` (any value naming the job's package, when known) picks the queue. Two
    /// transactions settling jobs of one package take turns on its lock; with each package's
    /// outcomes in one queue, the queues' transactions do not wait for each other.
    pub(crate) async fn complete(
        &self,
        job_id: JobId,
        lease_token: LeaseToken,
        result: Arc<JobResult>,
        package: Option<&(impl Hash + ?Sized)>,
    ) -> Result<Completion, BatchError> {
        let (reply, answer) = oneshot::channel();
        let job = ReportJob {
            job_id,
            lease_token,
            result,
            reply,
        };
        let mut hasher = std::hash::DefaultHasher::new();
        match package {
            Some(package) => package.hash(&mut hasher),
            None => job_id.0.hash(&mut hasher),
        }
        let queue = (hasher.finish() % self.reports.len() as u64) as usize;
        self.reports[queue].send(job).map_err(|_| BatchError::ShuttingDown)?;
        answer.await.map_err(|_| BatchError::ShuttingDown)?
    }
}

/// Takes what is waiting in a queue, `first` included, up to `limit` requests.
fn drain<T>(first: T, queue: &mut mpsc::UnboundedReceiver<T>, limit: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < limit {
        match queue.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
    batch
}

/// Runs up to `parallel` claim transactions at once, each for everything waiting when it
/// starts.
async fn claim_loop(
    store: Arc<dyn Store>,
    mut queue: mpsc::UnboundedReceiver<ClaimJob>,
    parallel: usize,
    lease_ms: i64,
    stats: Arc<BatchStats>,
) {
    let in_flight = Arc::new(Semaphore::new(parallel));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else { return };
        let waiting = drain(first, &mut queue, MAX_BATCH);
        let (store, stats) = (store.clone(), stats.clone());
        tokio::spawn(async move {
            claim_all(store.as_ref(), waiting, lease_ms, &stats).await;
            drop(permit);
        });
    }
}

/// Serves waiting claims: one transaction per interpreter, and per MAX_CLAIM_BATCH jobs asked for.
async fn claim_all(store: &dyn Store, mut waiting: Vec<ClaimJob>, lease_ms: i64, stats: &BatchStats) {
    while !waiting.is_empty() {
        let profile = waiting[0].profile.clone();
        let mut group = Vec::new();
        let mut asked = 0u32;
        let mut rest = Vec::new();
        for job in waiting {
            let same = Arc::ptr_eq(&job.profile, &profile) || job.profile == profile;
            if same && (group.is_empty() || asked + job.max_jobs <= MAX_CLAIM_BATCH) {
                asked += job.max_jobs;
                group.push(job);
            } else {
                rest.push(job);
            }
        }
        waiting = rest;
        claim_group(store, &profile, group, lease_ms, stats).await;
    }
}

async fn claim_group(
    store: &dyn Store,
    profile: &InterpreterProfile,
    group: Vec<ClaimJob>,
    lease_ms: i64,
    stats: &BatchStats,
) {
    let wants: Vec<ClaimWant<'_>> = group
        .iter()
        .map(|job| ClaimWant {
            worker_id: &job.worker_id,
            warm_packages: &job.warm_packages,
            max_jobs: job.max_jobs,
        })
        .collect();
    let batch = ClaimBatch {
        profile,
        wants: &wants,
        lease_duration_ms: lease_ms,
    };
    let started = Instant::now();
    let result = store.claim_batch(batch, now_ms()).await;
    stats.claim_batches.fetch_add(1, Ordering::Relaxed);
    stats
        .claim_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    match result {
        Ok(per_want) => {
            let claimed: usize = per_want.iter().map(Vec::len).sum();
            stats.jobs_claimed.fetch_add(claimed as u64, Ordering::Relaxed);
            for (job, assignments) in group.into_iter().zip(per_want) {
                // A session that went away meanwhile: its leases expire or its replacement
                // reports them; nothing is lost.
                let _ = job.reply.send(Ok(assignments));
            }
        }
        Err(error) => {
            // Logged here, once for the batch; the sessions that asked only wait and try again.
            tracing::error!(error = %error, claims = group.len(), "a claim batch failed");
            let error = BatchError::Store(Arc::new(error));
            for job in group {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Records outcomes one transaction at a time, each for everything waiting when it starts.
async fn report_loop(
    store: Arc<dyn Store>,
    mut queue: mpsc::UnboundedReceiver<ReportJob>,
    retry: RetryPolicy,
    stats: Arc<BatchStats>,
) {
    while let Some(first) = queue.recv().await {
        report_batch(store.as_ref(), drain(first, &mut queue, MAX_BATCH), retry, &stats).await;
    }
}

async fn report_batch(store: &dyn Store, batch: Vec<ReportJob>, retry: RetryPolicy, stats: &BatchStats) {
    let (items, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| ((job.job_id, job.lease_token, job.result), job.reply))
        .unzip();
    let reports: Vec<Report<'_>> = items
        .iter()
        .map(|(job_id, lease_token, result)| Report {
            job_id: *job_id,
            lease_token: *lease_token,
            result: result.as_ref(),
        })
        .collect();
    stats.report_batches.fetch_add(1, Ordering::Relaxed);
    stats.reports.fetch_add(reports.len() as u64, Ordering::Relaxed);
    let started = Instant::now();
    let recorded = store.complete_batch(&reports, retry, now_ms()).await;
    stats
        .report_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    match recorded {
        Ok(completions) => {
            for (reply, completion) in replies.into_iter().zip(completions) {
                let _ = reply.send(Ok(completion));
            }
        }
        // One report must not fail the others: record them one by one.
        Err(error) if reports.len() > 1 => {
            tracing::warn!(error = %error, reports = reports.len(), "an outcome batch failed; recording one by one");
            for (reply, report) in replies.into_iter().zip(&reports) {
                let result = store
                    .complete_job(report.job_id, report.lease_token, report.result, retry, now_ms())
                    .await
                    .map_err(|error| {
                        tracing::error!(job.id = %report.job_id, error = %error, "an outcome was not recorded");
                        BatchError::Store(Arc::new(error))
                    });
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            tracing::error!(error = %error, reports = reports.len(), "an outcome batch failed");
            let error = BatchError::Store(Arc::new(error));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
