//! The job store: runs, packages and jobs, behind one trait with a backend per database.
//!
//! Every method is one transaction. Claims are atomic in SQL, and every write that depends on
//! a lease names the lease token in its `WHERE`, so a worker holding an old lease cannot
//! change a job that has moved on. Time is an argument (`now_ms`), never read inside.

mod common;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use domain::{
    Assignment, InterpreterProfile, JobId, JobResult, LeaseToken, PackageResult, RunId, RunSpec, RunState, RunSummary,
    WorkerId,
};

pub(crate) use common::MAX_CLAIM_BATCH;
pub use postgres::PostgresStore;
pub(crate) use sqlite::SqliteStore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run {0} not found")]
    RunNotFound(RunId),
    #[error("invalid run: {0}")]
    InvalidRun(String),
    #[error(
        "run {0} is still {1}: only a finished or cancelled run is archived or purged (`ftsurvey runs cancel` ends it)"
    )]
    RunNotFinished(RunId, RunState),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the request that met this error may succeed sent again as it is: the
    /// database's failures (down, restarting, a connection lost) and the store's own faults
    /// may pass, while a missing or invalid run stays so. Services report the first kind as
    /// an internal error.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => true,
            StoreError::RunNotFound(_) | StoreError::InvalidRun(_) | StoreError::RunNotFinished(..) => false,
        }
    }
}

/// A job whose lease was taken away while a worker held it; that worker should stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedLease {
    pub job_id: JobId,
    pub worker_id: WorkerId,
}

/// What a worker asks for when it has free slots.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub worker_id: &'a WorkerId,
    pub profile: &'a InterpreterProfile,
    /// Packages this worker has already set up; their jobs come first.
    pub warm_packages: &'a [String],
    pub max_jobs: u32,
    pub lease_duration_ms: i64,
}

/// One worker's part of a batched claim.
#[derive(Debug, Clone)]
pub struct ClaimWant<'a> {
    pub worker_id: &'a WorkerId,
    /// Packages this worker has already set up; their jobs go to it first.
    pub warm_packages: &'a [String],
    pub max_jobs: u32,
}

/// Claims of several workers with the same interpreter, leased in one transaction.
#[derive(Debug, Clone)]
pub struct ClaimBatch<'a> {
    pub profile: &'a InterpreterProfile,
    pub wants: &'a [ClaimWant<'a>],
    pub lease_duration_ms: i64,
}

/// An outcome to record under the lease it was run with.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub job_id: JobId,
    pub lease_token: LeaseToken,
    pub result: &'a JobResult,
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub ack: domain::OutcomeAck,
    /// The job's run, when the job exists.
    pub run_id: Option<RunId>,
    /// Leases of the same package taken back because its setup failed.
    pub revoked: Vec<RevokedLease>,
    /// The job went back to the queue for another attempt instead: its setup failed for the
    /// infrastructure, not the package.
    pub requeued: bool,
}

/// How a job whose setup failed for the infrastructure (`SetupFailure::infrastructure`) is
/// tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Leases a job may get: the failure of the last is recorded, and settles its package as
    /// `infra_error`; an earlier one sends the job back to the queue.
    pub max_attempts: u32,
    /// How long a job sent back waits for a worker it has not failed on; after that any
    /// worker may take it.
    pub elsewhere_ms: i64,
}

/// What a reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Jobs back to pending for another attempt.
    pub requeued: u64,
    /// Jobs given up as lost.
    pub lost: u64,
    pub runs_touched: Vec<RunId>,
}

/// The job store. Implemented by each database backend; all backends pass one conformance suite.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Claim or outcome transactions worth running at once: more than one only where the
    /// database serves several writers side by side.
    fn parallel_transactions(&self) -> usize {
        1
    }

    /// Creates a run and its jobs (packages x modes x iterations). With a `client_token` that
    /// was used before, returns the run created then and creates nothing. A spec that fails
    /// [`RunSpec::validate`] is `InvalidRun`, whichever backend.
    async fn submit_run(
        &self,
        run_id: RunId,
        spec: &RunSpec,
        client_token: Option<&str>,
        now_ms: i64,
    ) -> Result<RunSummary, StoreError> {
        spec.validate().map_err(|e| StoreError::InvalidRun(e.to_string()))?;
        self.insert_run(run_id, spec, client_token, now_ms).await
    }

    /// [`Store::submit_run`]'s work once the spec is known valid: each backend's own SQL.
    async fn insert_run(
        &self,
        run_id: RunId,
        spec: &RunSpec,
        client_token: Option<&str>,
        now_ms: i64,
    ) -> Result<RunSummary, StoreError>;

    async fn get_run(&self, run_id: RunId) -> Result<(RunSummary, RunSpec), StoreError>;

    /// Asks the database the cheapest question there is: whether it answers at all.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Newest first.
    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>, StoreError>;

    /// Cancels the run's pending and leased jobs. Returns the run and the leases revoked.
    async fn cancel_run(&self, run_id: RunId, now_ms: i64) -> Result<(RunSummary, Vec<RevokedLease>), StoreError>;

    /// Moves a finished or cancelled run's jobs to the archive, out of the table that claims,
    /// heartbeats, the reaper and outcomes read; the run's summary, package results and
    /// output tails read the same after. Returns the summary, with `archived_at_ms` set. A run
    /// archived already is left as it was; one still queued or running is `RunNotFinished`.
    /// A report of an archived job is stale.
    async fn archive_run(&self, run_id: RunId, now_ms: i64) -> Result<RunSummary, StoreError>;

    /// Deletes a finished or cancelled run, its packages and its jobs, archived or not, and
    /// returns how many jobs it had; later reads of it are `RunNotFound`. A run still queued or
    /// running is `RunNotFinished`.
    async fn purge_run(&self, run_id: RunId) -> Result<u64, StoreError>;

    /// Runs finished or cancelled at `finished_before_ms` or before whose jobs are not archived
    /// yet, the longest finished first, at most `limit`.
    async fn runs_to_archive(&self, finished_before_ms: i64, limit: u32) -> Result<Vec<RunId>, StoreError>;

    /// Leases pending jobs whose run the batch's interpreter can serve: up to `max_jobs` for
    /// each want, returned in want order. A want's warm packages go to it first; the rest is
    /// shared between runs, those with the fewest running jobs first; within a run, first
    /// iterations first. A job whose setup failed for the infrastructure goes to none of the
    /// workers it failed on until its wait is over ([`RetryPolicy::elsewhere_ms`]), so another
    /// worker gets it first.
    async fn claim_batch(&self, batch: ClaimBatch<'_>, now_ms: i64) -> Result<Vec<Vec<Assignment>>, StoreError>;

    /// Leases up to `max_jobs` pending jobs for one worker: a batch of one.
    async fn claim_jobs(&self, request: ClaimRequest<'_>, now_ms: i64) -> Result<Vec<Assignment>, StoreError> {
        let want = ClaimWant {
            worker_id: request.worker_id,
            warm_packages: request.warm_packages,
            max_jobs: request.max_jobs,
        };
        let batch = ClaimBatch {
            profile: request.profile,
            wants: std::slice::from_ref(&want),
            lease_duration_ms: request.lease_duration_ms,
        };
        Ok(self.claim_batch(batch, now_ms).await?.pop().unwrap_or_default())
    }

    /// Extends the leases the worker still holds. Returns how many were extended.
    async fn heartbeat(
        &self,
        worker_id: &WorkerId,
        running: &[(JobId, LeaseToken)],
        lease_duration_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Records jobs' results under their leases, in one transaction; one completion per report,
    /// in order. Once per job: a second report is a duplicate, a report under a lease that is
    /// no longer current is stale; neither changes anything.
    ///
    /// A setup that failed for the infrastructure is recorded only on the job's last attempt
    /// (`retry.max_attempts`); before that the lease ends, its end is appended to the job's
    /// attempt ends with the failure's message, and the job goes back to pending, kept from
    /// the workers it failed on for `retry.elsewhere_ms` (see [`ClaimBatch`]). Its package is
    /// not settled, and its other jobs run on.
    async fn complete_batch(
        &self,
        reports: &[Report<'_>],
        retry: RetryPolicy,
        now_ms: i64,
    ) -> Result<Vec<Completion>, StoreError>;

    /// Records one job's result under its lease: a batch of one.
    async fn complete_job(
        &self,
        job_id: JobId,
        lease_token: LeaseToken,
        result: &JobResult,
        retry: RetryPolicy,
        now_ms: i64,
    ) -> Result<Completion, StoreError> {
        let report = Report {
            job_id,
            lease_token,
            result,
        };
        let mut completions = self.complete_batch(&[report], retry, now_ms).await?;
        completions
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no completion for a recorded report".into()))
    }

    /// Gives leased jobs that never reached a worker back to the queue at once (a claim that
    /// came back after its worker was drained). Only the named leases are touched. Returns the
    /// runs affected.
    async fn release_jobs(&self, leases: &[(JobId, LeaseToken)], now_ms: i64) -> Result<Vec<RunId>, StoreError>;

    /// Ends the named leases now, as if they had expired: the jobs of a worker whose session
    /// ended go back to the queue at once, and each such end counts as an attempt, so a job
    /// whose package kills or wedges every worker it reaches is lost after `max_attempts`
    /// instead of going round the fleet for ever.
    async fn abandon_jobs(
        &self,
        leases: &[(JobId, LeaseToken)],
        max_attempts: u32,
        now_ms: i64,
    ) -> Result<ReapReport, StoreError> {
        if leases.is_empty() {
            return Ok(ReapReport::default());
        }
        self.expire_leases(leases, "its worker's session ended", now_ms).await?;
        self.reap_expired(max_attempts, now_ms).await
    }

    /// Makes the named leases expire before `now_ms`, so the next reap takes them, and says
    /// why (`reason`) in the attempt's end.
    async fn expire_leases(&self, leases: &[(JobId, LeaseToken)], reason: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Returns expired leases to pending with one more attempt, or marks them lost once a job
    /// has been leased `max_attempts` times. Each end is appended to the job's attempt ends:
    /// the attempt, its worker and why (the reason its lease was expired with, a deadline
    /// passed, or no heartbeat), which a lost job's package result shows.
    async fn reap_expired(&self, max_attempts: u32, now_ms: i64) -> Result<ReapReport, StoreError>;

    /// A page of a run's package results in package order: those the query selects, after its
    /// cursor, at most its limit, each with its index. A verdict written once a package
    /// finished is read as it was stored; a package still going gets its verdict so far.
    async fn package_page(
        &self,
        run_id: RunId,
        query: PackageQuery<'_>,
    ) -> Result<Vec<(u32, PackageResult)>, StoreError>;

    /// Every package result of a run that `packages` and `finished_only` select, page after
    /// page. The whole run in memory: for tests and small runs; services read pages.
    async fn package_results(
        &self,
        run_id: RunId,
        packages: &[String],
        finished_only: bool,
    ) -> Result<Vec<PackageResult>, StoreError> {
        let mut results = Vec::new();
        let mut after = None;
        loop {
            let query = PackageQuery {
                packages: if packages.is_empty() {
                    Packages::All
                } else {
                    Packages::Named(packages)
                },
                finished_only,
                after,
                limit: 1000,
            };
            let page = self.package_page(run_id, query).await?;
            let Some((last, _)) = page.last() else {
                return Ok(results);
            };
            after = Some(*last);
            results.extend(page.into_iter().map(|(_, result)| result));
        }
    }

    /// The indexes of a run's finished packages, in package order: what a watcher compares
    /// with what it has sent, without reading a single result.
    async fn finished_packages(&self, run_id: RunId) -> Result<Vec<u32>, StoreError>;

    /// The stdout and stderr tails of the iterations of these packages of a run, which package
    /// results leave out: `package` is the index, and a package name with `Packages::Named`.
    async fn iteration_outputs(
        &self,
        run_id: RunId,
        packages: Packages<'_>,
    ) -> Result<Vec<IterationOutput>, StoreError>;

    /// The job of one iteration of a run's package, for fetching its logs from its worker:
    /// `None` when the run has no package of that name or no such iteration in that mode;
    /// `RunNotFound` when there is no such run.
    async fn iteration_job(
        &self,
        run_id: RunId,
        package: &str,
        mode: domain::Mode,
        iteration: u32,
    ) -> Result<Option<IterationJob>, StoreError>;
}

/// Which of a run's packages a read selects.
#[derive(Debug, Clone, Copy)]
pub enum Packages<'a> {
    All,
    /// By name; names the run does not have select nothing.
    Named(&'a [String]),
    /// By index in the run's package order.
    At(&'a [u32]),
}

/// A page of package results: which packages, after which index, how many at most.
#[derive(Debug, Clone, Copy)]
pub struct PackageQuery<'a> {
    pub packages: Packages<'a>,
    pub finished_only: bool,
    /// Only packages whose index is greater: the last index of the previous page.
    pub after: Option<u32>,
    pub limit: u32,
}

/// One iteration's output tails, as its worker reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IterationOutput {
    pub package: u32,
    pub mode: domain::Mode,
    pub iteration: u32,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// Where one iteration's job stands, and who ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IterationJob {
    pub job_id: JobId,
    /// The job's state as the store names it: `pending`, `leased`, `done`, `lost`, `cancelled`.
    pub state: String,
    /// The worker that holds the job's lease or held it last; `None` before any worker did, or
    /// once it went back to the queue.
    pub worker_id: Option<WorkerId>,
    /// The attempt the worker ran (or runs): its logs are that attempt's.
    pub attempt: u32,
}

/// Opens the store a URL names and brings its schema up to date: `sqlite://PATH` (created if
/// missing), `sqlite::memory:`, or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
pub async fn open(database_url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if database_url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(SqliteStore::open(database_url).await?));
    }
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresStore::open(database_url).await?));
    }
    Err(StoreError::InvalidRun(format!(
        "unsupported database url scheme in {:?}: expected sqlite://PATH or postgres://...",
        redact_url(database_url)
    )))
}

/// `url` with its password hidden, in the user info (`user:***@host`) and in the query
/// (`?password=***`, `sslpassword`), for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    };
    // The last `@` ends the user info, whatever a careless password holds (`/` included).
    let mut redacted = match base.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{base}"),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword") => {
                    format!("{key}=***")
                }
                _ => param.to_string(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&params.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=secret"),
            "postgres://u:***@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://h/db?PASSWORD=secret"),
            "postgres://h/db?PASSWORD=***"
        );
        assert_eq!(redact_url("postgres://u:se/cr@et@h/db"), "postgres://u:***@h/db");
    }
}
