//! What the backends share besides SQL: row values to domain types, JSON columns, and
//! rebuilding a package's verdict and a run's summary from what the queries return.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use domain::spec::RunOptions;
use domain::{
    Assignment, Category, InterpreterRequirement, IterationStatus, JobId, JobResult, LeaseToken, Mode, PackageResult,
    PackageSpec, RunId, RunSpec, RunState, RunSummary, SetupFailure, WorkerId,
};

use super::{ClaimWant, IterationJob, IterationOutput, RevokedLease, StoreError};

/// Job states that still need a worker.
pub(super) const LIVE_JOB_STATES: &str = "('pending', 'leased')";

pub(super) fn parse_run_id(value: &str) -> Result<RunId, StoreError> {
    RunId::from_str(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn to_u32(column: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} out of range: {value}")))
}

pub(super) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// An `iteration_job` row: the job's id, state, worker and attempt.
pub(super) fn iteration_job(
    (job_id, state, worker_id, attempt): (i64, String, Option<String>, i64),
) -> Result<IterationJob, StoreError> {
    let worker_id = worker_id
        .map(|worker| WorkerId::parse(&worker).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()?;
    Ok(IterationJob {
        job_id: JobId(job_id),
        state,
        worker_id,
        attempt: to_u32("attempt", attempt)?,
    })
}

pub(super) fn revoked(rows: Vec<(i64, String)>) -> Result<Vec<RevokedLease>, StoreError> {
    rows.into_iter()
        .map(|(id, worker)| {
            let worker_id = WorkerId::parse(&worker).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(RevokedLease {
                job_id: JobId(id),
                worker_id,
            })
        })
        .collect()
}

/// A job as a verdict reads it: its state and result, and the row's own word on which
/// iteration and mode it is, which attempt the result came from and which worker held it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct JobRow {
    pub(super) state: String,
    pub(super) result_json: Option<String>,
    pub(super) mode: String,
    pub(super) iteration: i64,
    pub(super) attempt: i64,
    pub(super) worker_id: Option<String>,
    /// How each of its leases ended without an outcome (see [`ATTEMPT_END_SQL`]).
    pub(super) attempt_ends: Option<String>,
}

/// The SQL expression, in a reaper's `UPDATE jobs`, that appends how the current lease ended
/// to `attempt_ends`; `?NOW` stands for the placeholder of the reap's time. The same in both
/// backends, as both read the row's old values in every expression of an `UPDATE`.
pub(super) const ATTEMPT_END_SQL: &str = "COALESCE(jobs.attempt_ends || '; ', '')
    || 'attempt ' || jobs.attempt || ' on ' || COALESCE(jobs.worker_id, 'no worker') || ': '
    || CASE WHEN jobs.ended_by IS NOT NULL THEN jobs.ended_by
            WHEN jobs.deadline_at_ms IS NOT NULL AND jobs.deadline_at_ms < ?NOW THEN 'held past its deadline'
            ELSE 'no heartbeat until its lease expired' END";

/// The SQL expression, in the `UPDATE jobs` that sends a job whose setup failed for the
/// infrastructure back to the queue, that appends the attempt's end to `attempt_ends`;
/// `?REASON` stands for the failure's text (see [`infrastructure_failure`]).
pub(super) const INFRA_ATTEMPT_END_SQL: &str = "COALESCE(jobs.attempt_ends || '; ', '')
    || 'attempt ' || jobs.attempt || ' on ' || COALESCE(jobs.worker_id, 'no worker') || ': ' || ?REASON";

/// Lost jobs named in a package's evidence at most; the rest are counted.
const MAX_LOST_NAMED: usize = 5;

/// How an attempt whose setup failed for the infrastructure ended, for its job's attempt ends:
/// `None` for any other result, which is recorded.
pub(super) fn infrastructure_failure(result: &JobResult) -> Option<String> {
    match result {
        JobResult::SetupFailed(failure) if failure.infrastructure => Some(format!(
            "{} failed for the infrastructure: {}",
            failure.stage.as_str(),
            failure.message
        )),
        _ => None,
    }
}

impl JobRow {
    /// The row's result, its iteration, mode, attempt and worker taken from the row: a
    /// worker decides what an iteration did, never which iteration it was or who ran it.
    fn result(&self) -> Result<Option<JobResult>, StoreError> {
        let Some(json) = &self.result_json else {
            return Ok(None);
        };
        let mut result = from_json::<JobResult>(json)?;
        if let JobResult::Iteration(outcome) = &mut result {
            outcome.iteration = to_u32("iteration", self.iteration)?;
            outcome.mode = self.mode.parse().map_err(StoreError::Corrupt)?;
            outcome.attempt = to_u32("attempt", self.attempt)?;
            outcome.worker_id = self.worker_id.clone().unwrap_or_default();
        }
        Ok(Some(result))
    }
}

/// A package's verdict as the packages table keeps it: without the iterations' output tails,
/// which the jobs keep, so that a run's results are read without its bulk.
pub(super) fn stored_verdict(mut result: PackageResult) -> Result<String, StoreError> {
    result.drop_output();
    to_json(&result)
}

/// A job's result as the jobs table keeps it: the JSON without the output tails, and the
/// tails, which have columns of their own (`None` for a setup failure, which has none).
pub(super) fn stored_result(result: &JobResult) -> Result<(String, Option<String>, Option<String>), StoreError> {
    match result {
        JobResult::Iteration(outcome) if !outcome.stdout_tail.is_empty() || !outcome.stderr_tail.is_empty() => {
            let mut bare = outcome.clone();
            let stdout = std::mem::take(&mut bare.stdout_tail);
            let stderr = std::mem::take(&mut bare.stderr_tail);
            Ok((to_json(&JobResult::Iteration(bare))?, Some(stdout), Some(stderr)))
        }
        JobResult::Iteration(_) => Ok((to_json(result)?, Some(String::new()), Some(String::new()))),
        JobResult::SetupFailed(_) => Ok((to_json(result)?, None, None)),
    }
}

/// A job row's output tails: from their columns, or, for a row recorded before they had
/// columns, from its result's JSON. `None` when the result is not an iteration's.
pub(super) fn iteration_output(
    (package_idx, mode, iteration): (i64, &str, i64),
    columns: (Option<String>, Option<String>),
    result_json: Option<&str>,
) -> Result<Option<IterationOutput>, StoreError> {
    let (stdout_tail, stderr_tail) = match (columns, result_json) {
        ((Some(stdout), Some(stderr)), _) => (stdout, stderr),
        (_, Some(json)) => match from_json::<JobResult>(json)? {
            JobResult::Iteration(outcome) => (outcome.stdout_tail, outcome.stderr_tail),
            JobResult::SetupFailed(_) => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(IterationOutput {
        package: to_u32("package_idx", package_idx)?,
        mode: mode.parse().map_err(StoreError::Corrupt)?,
        iteration: to_u32("iteration", iteration)?,
        stdout_tail,
        stderr_tail,
    }))
}

/// A package's result from its jobs: finished once none is live.
pub(super) fn package_result(
    name: &str,
    iterations: u32,
    jobs: impl IntoIterator<Item = JobRow>,
) -> Result<PackageResult, StoreError> {
    let mut live = false;
    let mut setup_failure: Option<SetupFailure> = None;
    let mut outcomes = Vec::new();
    let mut lost = Vec::new();
    let mut infrastructure = Vec::new();
    for job in jobs {
        live |= job.state == "pending" || job.state == "leased";
        if job.state == "lost" {
            lost.push(format!(
                "{} iteration {}{}{} attempts: {}",
                job.mode,
                job.iteration,
                domain::classify::LOST_MARK,
                job.attempt,
                job.attempt_ends
                    .as_deref()
                    .unwrap_or("no attempt recorded how it ended")
            ));
        }
        if let Some(result) = job.result()? {
            if let Some(last) = infrastructure_failure(&result) {
                // Every attempt, the recorded last one included, each with its worker.
                infrastructure.push(format!(
                    "{} iteration {} failed for the infrastructure on all {} attempts: {}attempt {} on {}: {last}",
                    job.mode,
                    job.iteration,
                    job.attempt,
                    job.attempt_ends
                        .as_deref()
                        .map(|ends| format!("{ends}; "))
                        .unwrap_or_default(),
                    job.attempt,
                    job.worker_id.as_deref().unwrap_or("no worker"),
                ));
            }
            match result {
                JobResult::Iteration(outcome) => outcomes.push(outcome),
                // The package's own failure says more than the infrastructure's.
                JobResult::SetupFailed(failure) => match &setup_failure {
                    Some(kept) if !kept.infrastructure || failure.infrastructure => {}
                    _ => setup_failure = Some(failure),
                },
            }
        }
    }
    let mut result = PackageResult::build(name, iterations, setup_failure, outcomes, !live);
    infrastructure.sort();
    infrastructure.truncate(MAX_LOST_NAMED);
    result.evidence.extend(infrastructure);
    lost.sort();
    if lost.len() > MAX_LOST_NAMED {
        let more = lost.len() - MAX_LOST_NAMED;
        lost.truncate(MAX_LOST_NAMED);
        lost.push(format!("{more} more iterations lost"));
    }
    result.evidence.extend(lost);
    Ok(result)
}

/// The columns of a job that move to `archived_jobs` when its run is archived: its key, how
/// it ended, its outcome and its output tails; the lease's working columns stay behind.
pub(super) const ARCHIVED_JOB_COLUMNS: &str = "id, run_id, package_idx, mode, iteration, state, worker_id, attempt, \
     result_json, settled_at_ms, attempt_ends, stdout_tail, stderr_tail";

/// The columns of a run row that its summary shows.
#[derive(Debug)]
pub(super) struct RunRow {
    pub(super) label: String,
    pub(super) state: String,
    pub(super) created_at_ms: i64,
    pub(super) finished_at_ms: Option<i64>,
    pub(super) archived_at_ms: Option<i64>,
}

/// A run's summary from its row, its job counts by state and its package counts by
/// (category, finished).
pub(super) fn run_summary(
    run_id: RunId,
    run: RunRow,
    job_counts: Vec<(String, i64)>,
    package_counts: Vec<(String, bool, i64)>,
) -> Result<RunSummary, StoreError> {
    let (mut jobs_total, mut jobs_settled, mut jobs_running) = (0u64, 0u64, 0u64);
    for (state, n) in job_counts {
        let n = u64::try_from(n).unwrap_or(0);
        jobs_total += n;
        match state.as_str() {
            "leased" => jobs_running += n,
            "pending" => {}
            _ => jobs_settled += n,
        }
    }
    let (mut packages_total, mut packages_finished) = (0u32, 0u32);
    let mut categories = BTreeMap::new();
    for (category, finished, n) in package_counts {
        let n = u32::try_from(n).unwrap_or(0);
        packages_total += n;
        if finished {
            packages_finished += n;
            let category = Category::from_str(&category).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            *categories.entry(category).or_insert(0) += n;
        }
    }
    Ok(RunSummary {
        run_id,
        label: run.label,
        state: RunState::from_str(&run.state).map_err(StoreError::Corrupt)?,
        created_at_ms: run.created_at_ms,
        finished_at_ms: run.finished_at_ms,
        archived_at_ms: run.archived_at_ms,
        packages_total,
        packages_finished,
        jobs_total,
        jobs_settled,
        jobs_running,
        categories,
    })
}

/// The columns of a run row that make its spec, with `iterations` as a 64-bit integer.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RunSpecRow {
    label: String,
    iterations: i64,
    modes_json: String,
    options_json: String,
    registry: Option<String>,
    req_python_version: Option<String>,
    req_free_threaded: bool,
    req_tsan: bool,
    rerun_of: Option<String>,
    req_debug: Option<bool>,
    req_build: Option<String>,
}

impl RunSpecRow {
    /// The run's spec, with its packages' specs (JSON, in package order).
    pub(super) fn into_spec(self, package_specs: &[String]) -> Result<RunSpec, StoreError> {
        let modes: Vec<String> = from_json(&self.modes_json)?;
        Ok(RunSpec {
            label: self.label,
            packages: package_specs
                .iter()
                .map(|s| from_json::<PackageSpec>(s))
                .collect::<Result<_, _>>()?,
            iterations: to_u32("iterations", self.iterations)?,
            modes: modes
                .iter()
                .map(|m| Mode::from_str(m).map_err(StoreError::Corrupt))
                .collect::<Result<_, _>>()?,
            options: from_json(&self.options_json)?,
            requirement: InterpreterRequirement {
                python_version: self.req_python_version,
                free_threaded: self.req_free_threaded,
                tsan: self.req_tsan,
                debug: self.req_debug,
                build: self.req_build,
            },
            registry: self.registry,
            rerun_of: self.rerun_of.as_deref().map(parse_run_id).transpose()?,
        })
    }
}

/// A pending job a claim has locked, before it is given to a worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct PickedJob {
    pub(super) id: i64,
    pub(super) run_id: String,
    pub(super) package_idx: i64,
    pub(super) mode: String,
    pub(super) iteration: i64,
    /// The workers its setup failed on for the infrastructure (a JSON array), if any.
    pub(super) avoid_workers: Option<String>,
    /// Until when they are passed by.
    pub(super) avoid_until_ms: Option<i64>,
}

impl PickedJob {
    /// The workers that may not have this job at `now_ms`: those it failed on for the
    /// infrastructure, until its wait is over; then none.
    pub(super) fn avoided(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        match (&self.avoid_workers, self.avoid_until_ms) {
            (Some(workers), Some(until)) if until > now_ms => from_json(workers),
            _ => Ok(Vec::new()),
        }
    }
}

/// How many jobs one claim transaction leases at most, whatever the wants add up to.
pub(crate) const MAX_CLAIM_BATCH: u32 = 256;

/// The total a batch asks for, capped at [`MAX_CLAIM_BATCH`], and how much of it comes from
/// wants with warm packages.
pub(super) fn batch_totals(wants: &[ClaimWant<'_>]) -> (u32, u32) {
    let total: u32 = wants.iter().map(|w| w.max_jobs).sum::<u32>().min(MAX_CLAIM_BATCH);
    let warm: u32 = wants
        .iter()
        .filter(|w| !w.warm_packages.is_empty())
        .map(|w| w.max_jobs)
        .sum::<u32>()
        .min(total);
    (total, warm)
}

/// The warm package names of all wants, each once.
pub(super) fn warm_names(wants: &[ClaimWant<'_>]) -> Vec<String> {
    let mut names: Vec<String> = wants.iter().flat_map(|w| w.warm_packages.iter().cloned()).collect();
    names.sort();
    names.dedup();
    names
}

/// Which want gets each picked job (`None`: nobody, it stays pending). A job of a package a
/// want has set up goes to that want first; the others go round the wants with room left, so
/// one package's iterations spread over workers. A job never goes to a worker in its
/// `avoided` list (see [`PickedJob::avoided`]; empty for most jobs).
pub(super) fn distribute(wants: &[ClaimWant<'_>], names: &[&str], avoided: &[Vec<String>]) -> Vec<Option<usize>> {
    let mut room: Vec<u32> = wants.iter().map(|w| w.max_jobs).collect();
    let mut owners = vec![None; names.len()];
    let may_take = |job: usize, i: usize| {
        avoided
            .get(job)
            .is_none_or(|workers| !workers.iter().any(|w| w == wants[i].worker_id.as_str()))
    };
    for (job, name) in names.iter().enumerate() {
        let warm = (0..wants.len())
            .find(|&i| room[i] > 0 && may_take(job, i) && wants[i].warm_packages.iter().any(|p| p == name));
        if let Some(i) = warm {
            room[i] -= 1;
            owners[job] = Some(i);
        }
    }
    let mut next = 0;
    for (job, owner) in owners.iter_mut().enumerate().filter(|(_, o)| o.is_none()) {
        if room.iter().all(|r| *r == 0) {
            break;
        }
        let Some(i) = (0..wants.len())
            .map(|k| (next + k) % wants.len())
            .find(|&i| room[i] > 0 && may_take(job, i))
        else {
            continue;
        };
        room[i] -= 1;
        *owner = Some(i);
        next = i + 1;
    }
    owners
}

/// Which run a claim takes pending jobs from next, and how many. Runs come ordered by their
/// running jobs, fewest first; on a first pass each may give an equal share of the batch, on a
/// second whatever it still has, until the batch is full. Each backend asks [`FairFill::next`],
/// runs its query, and reports what it got with [`FairFill::took`].
#[derive(Debug)]
pub(super) struct FairFill {
    total: u32,
    share: u32,
    exhausted: Vec<bool>,
    pass: u8,
    run: usize,
}

impl FairFill {
    pub(super) fn new(total: u32, runs: usize) -> Self {
        FairFill {
            total,
            share: if runs == 0 { 0 } else { total.div_ceil(runs as u32) },
            exhausted: vec![false; runs],
            pass: 0,
            run: 0,
        }
    }

    /// The next `(run index, jobs to ask for)`, given how many jobs are picked so far; `None`
    /// once the batch is full or every run has been asked on both passes.
    pub(super) fn next(&mut self, picked: usize) -> Option<(usize, u32)> {
        let room = self.total.saturating_sub(picked as u32);
        while room > 0 && self.pass < 2 {
            if self.run == self.exhausted.len() {
                self.pass += 1;
                self.run = 0;
                continue;
            }
            let run = self.run;
            self.run += 1;
            if !self.exhausted[run] {
                let want = if self.pass == 0 { room.min(self.share) } else { room };
                return Some((run, want));
            }
        }
        None
    }

    /// A run that gave fewer jobs than asked has no more to give.
    pub(super) fn took(&mut self, run: usize, asked: u32, got: usize) {
        self.exhausted[run] = (got as u32) < asked;
    }
}

/// Whether a recorded result settles its package at once: a failed setup, or a pass when the
/// run stops on the first one.
pub(super) fn settles_package(result: &JobResult, options: &RunOptions) -> bool {
    match result {
        JobResult::SetupFailed(_) => true,
        JobResult::Iteration(outcome) => outcome.status == IterationStatus::Pass && options.stop_on_first_pass,
    }
}

/// Package specs and run options never change once a run is submitted: claims and outcomes
/// read them from here instead of the database.
#[derive(Debug, Default)]
pub(super) struct SpecCache {
    entries: Mutex<SpecEntries>,
}

#[derive(Debug, Default)]
struct SpecEntries {
    packages: HashMap<(RunId, i64), Arc<PackageSpec>>,
    options: HashMap<RunId, Arc<RunOptions>>,
}

/// Entries kept before the cache starts over; a few runs' worth.
const SPEC_CACHE_LIMIT: usize = 200_000;

impl SpecCache {
    pub(super) fn package(&self, run_id: RunId, package_idx: i64) -> Option<Arc<PackageSpec>> {
        self.lock().packages.get(&(run_id, package_idx)).cloned()
    }

    /// How long after its lease `job` must be over, whatever the heartbeats say (see
    /// [`RunOptions::lease_deadline`]). The job's package and run must be in the cache.
    pub(super) fn lease_deadline_ms(&self, job: &PickedJob) -> Result<i64, StoreError> {
        let run_id = parse_run_id(&job.run_id)?;
        let missing = || StoreError::Corrupt(format!("no package {} in run {run_id}", job.package_idx));
        let package = self.package(run_id, job.package_idx).ok_or_else(missing)?;
        let options = self.options(run_id).ok_or_else(missing)?;
        Ok(i64::try_from(options.lease_deadline(&package).as_millis()).unwrap_or(i64::MAX))
    }

    pub(super) fn options(&self, run_id: RunId) -> Option<Arc<RunOptions>> {
        self.lock().options.get(&run_id).cloned()
    }

    pub(super) fn insert(&self, run_id: RunId, package_idx: i64, spec: PackageSpec, options: RunOptions) {
        let mut entries = self.lock();
        if entries.packages.len() >= SPEC_CACHE_LIMIT {
            entries.packages.clear();
            entries.options.clear();
        }
        entries.packages.insert((run_id, package_idx), Arc::new(spec));
        entries.options.entry(run_id).or_insert_with(|| Arc::new(options));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpecEntries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The assignments for each want from the picked jobs, their owners, the attempts the lease
/// update returned (by job id; a job missing there was not leased) and the specs.
pub(super) fn assignments(
    wants: &[ClaimWant<'_>],
    picked: &[PickedJob],
    owners: &[Option<usize>],
    tokens: &[LeaseToken],
    attempts: &HashMap<i64, i64>,
    cache: &SpecCache,
) -> Result<Vec<Vec<Assignment>>, StoreError> {
    let mut out: Vec<Vec<Assignment>> = vec![Vec::new(); wants.len()];
    for ((job, owner), token) in picked.iter().zip(owners).zip(tokens) {
        let Some(owner) = owner else { continue };
        // A job the lease did not take (another claim, or a cancel, got there first).
        let Some(attempt) = attempts.get(&job.id) else {
            continue;
        };
        let run_id = parse_run_id(&job.run_id)?;
        let package = cache
            .package(run_id, job.package_idx)
            .ok_or_else(|| StoreError::Corrupt(format!("no package {} in run {run_id}", job.package_idx)))?;
        let options = cache
            .options(run_id)
            .ok_or_else(|| StoreError::Corrupt(format!("no options for run {run_id}")))?;
        out[*owner].push(Assignment {
            job_id: JobId(job.id),
            lease_token: *token,
            attempt: to_u32("attempt", *attempt)?,
            run_id,
            package: (*package).clone(),
            mode: Mode::from_str(&job.mode).map_err(StoreError::Corrupt)?,
            iteration: to_u32("iteration", job.iteration)?,
            options: (*options).clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::FairFill;

    /// Drives a fill against runs holding `pending` jobs each; returns what each run gave.
    fn fill(total: u32, pending: &[u32]) -> Vec<u32> {
        let mut given = vec![0; pending.len()];
        let mut picked = 0;
        let mut fill = FairFill::new(total, pending.len());
        while let Some((run, want)) = fill.next(picked) {
            let got = want.min(pending[run] - given[run]);
            given[run] += got;
            picked += got as usize;
            fill.took(run, want, got as usize);
        }
        given
    }

    #[test]
    fn runs_share_a_batch_then_the_rest_fills_it() {
        assert_eq!(fill(10, &[100, 100]), vec![5, 5]);
        assert_eq!(fill(10, &[2, 100]), vec![2, 8]);
        assert_eq!(fill(10, &[100, 100, 100]), vec![4, 4, 2]);
        assert_eq!(fill(10, &[1, 1]), vec![1, 1]);
        assert_eq!(fill(0, &[5]), vec![0]);
        assert!(fill(10, &[]).is_empty());
    }
}
