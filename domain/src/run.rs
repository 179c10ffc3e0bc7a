//! Runs and jobs as the coordinator tracks them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::category::Category;
use crate::ids::{JobId, LeaseToken, RunId};
use crate::spec::{Mode, PackageSpec, RunOptions};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Submitted; no job has been assigned yet.
    Queued,
    Running,
    /// Every job is done, cancelled or lost.
    Finished,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Finished or cancelled: nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Finished | RunState::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(RunState::Queued),
            "running" => Ok(RunState::Running),
            "finished" => Ok(RunState::Finished),
            "cancelled" => Ok(RunState::Cancelled),
            other => Err(format!("unknown run state {other:?}")),
        }
    }
}

/// A run's state and progress, as listed and watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: RunId,
    pub label: String,
    pub state: RunState,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// When the run's jobs moved to the archive, out of the table dispatch reads; its results
    /// read the same before and after.
    pub archived_at_ms: Option<i64>,
    pub packages_total: u32,
    pub packages_finished: u32,
    pub jobs_total: u64,
    /// Jobs done, cancelled or lost.
    pub jobs_settled: u64,
    pub jobs_running: u64,
    /// Categories of finished packages.
    pub categories: BTreeMap<Category, u32>,
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: JobId,
    pub lease_token: LeaseToken,
    /// 1 for the first lease of the job, +1 for each re-lease after an expiry or release.
    pub attempt: u32,
    pub run_id: RunId,
    pub package: PackageSpec,
    pub mode: Mode,
    pub iteration: u32,
    pub options: RunOptions,
}

/// What the coordinator did with a reported outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeAck {
    /// Committed; it counts.
    Recorded,
    /// The job already had an outcome; this one was ignored.
    Duplicate,
    /// The lease token is not the job's current one; ignored.
    Stale,
}
