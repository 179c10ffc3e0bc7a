//! What the backends share besides SQL: row values to domain types, JSON columns, and
//! rebuilding a package's verdict and a run's summary from what the queries return.

use std::collections::BTreeMap;
use std::str::FromStr;

use domain::{
    Category, InterpreterRequirement, JobId, JobResult, Mode, PackageResult, PackageSpec, RunId, RunSpec, RunState,
    RunSummary, WorkerId,
};

use super::{RevokedLease, StoreError};

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

/// A package's result from its jobs' `(state, result_json)`: finished once none is live.
pub(super) fn package_result(
    name: &str,
    iterations: u32,
    jobs: impl IntoIterator<Item = (String, Option<String>)>,
) -> Result<PackageResult, StoreError> {
    let mut live = false;
    let mut setup_failure = None;
    let mut outcomes = Vec::new();
    for (state, result) in jobs {
        live |= state == "pending" || state == "leased";
        if let Some(json) = result {
            match from_json::<JobResult>(&json)? {
                JobResult::Iteration(outcome) => outcomes.push(outcome),
                JobResult::SetupFailed(failure) => {
                    setup_failure.get_or_insert(failure);
                }
            }
        }
    }
    Ok(PackageResult::build(name, iterations, setup_failure, outcomes, !live))
}

/// The columns of a run row that its summary shows.
#[derive(Debug)]
pub(super) struct RunRow {
    pub(super) label: String,
    pub(super) state: String,
    pub(super) created_at_ms: i64,
    pub(super) finished_at_ms: Option<i64>,
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
            },
            registry: self.registry,
        })
    }
}
