//! What happened when a worker ran one job.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::evidence::IterationEvidence;
use crate::spec::Mode;

/// How one iteration of a test suite ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IterationStatus {
    /// Exit code 0.
    Pass,
    /// A non-zero exit that is not a crash or a harness error.
    Fail,
    /// Death by a fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE), directly or as a shell's 128+N.
    Crash,
    /// Stalled: no output and no CPU progress for the stall threshold; killed.
    Deadlock,
    /// Still running at the timeout while making progress; killed.
    Timeout,
    /// Killed by the kernel at the iteration's memory limit: resource exhaustion, like a
    /// timeout, and never a crash although the kill is a signal.
    Oom,
    /// The test harness itself failed (pytest exit 2-5): not evidence about free-threading.
    HarnessError,
}

impl IterationStatus {
    pub const ALL: [IterationStatus; 7] = [
        IterationStatus::Pass,
        IterationStatus::Fail,
        IterationStatus::Crash,
        IterationStatus::Deadlock,
        IterationStatus::Timeout,
        IterationStatus::Oom,
        IterationStatus::HarnessError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IterationStatus::Pass => "pass",
            IterationStatus::Fail => "fail",
            IterationStatus::Crash => "crash",
            IterationStatus::Deadlock => "deadlock",
            IterationStatus::Timeout => "timeout",
            IterationStatus::Oom => "oom",
            IterationStatus::HarnessError => "harness_error",
        }
    }
}

impl fmt::Display for IterationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IterationStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IterationStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown iteration status {s:?}"))
    }
}

/// Signals whose delivery means the interpreter or an extension crashed.
pub const CRASH_SIGNALS: [i32; 5] = [
    4,  // SIGILL
    6,  // SIGABRT
    7,  // SIGBUS
    8,  // SIGFPE
    11, // SIGSEGV
];

/// The conventional name of a signal number, for display.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// The result of one iteration of a package's test suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationOutcome {
    /// Iteration number within the run and mode, from 1.
    pub iteration: u32,
    pub mode: Mode,
    pub status: IterationStatus,
    /// Exit code of the test command, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it: directly, or a shell's 128+N for a crash signal.
    pub signal: Option<i32>,
    pub duration_ms: u64,
    /// User + system CPU time of the test process tree.
    pub cpu_time_ms: Option<u64>,
    /// Largest resident set of any process in the tree, in KiB.
    pub max_rss_kb: Option<u64>,
    /// Killed because it stalled (no output, no CPU progress).
    pub stalled: bool,
    /// The last non-empty line either stream printed.
    pub last_output_line: String,
    /// The end of stdout, bounded.
    pub stdout_tail: String,
    /// The end of stderr, bounded.
    pub stderr_tail: String,
    /// A stable identifier of the crash, when status is crash.
    pub crash_signature: Option<String>,
    /// Why the harness failed, when status is harness_error.
    pub harness_error: Option<String>,
    /// Which worker ran it, and on which attempt of the job.
    pub worker_id: String,
    pub attempt: u32,
    /// Milliseconds from the worker receiving the job to the test process starting.
    pub start_latency_ms: Option<u64>,
    /// Per-test results, stacks, TSAN warnings, the extension probe, where the logs are.
    #[serde(default, skip_serializing_if = "IterationEvidence::is_empty")]
    pub evidence: IterationEvidence,
    /// The build, the installed package and the wall-clock times of the iteration; empty in
    /// outcomes recorded before they were.
    #[serde(default, skip_serializing_if = "Provenance::is_empty")]
    pub provenance: Provenance,
}

/// Where and when an iteration ran: the interpreter build, what the setup installed, and the
/// wall clock at its start and end. A run whose iterations name more than one build or package
/// version mixed them, which `show` and `compare` say.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Provenance {
    /// The worker's interpreter, [`crate::InterpreterProfile::build_label`]:
    /// `3.13.5t@1a2b3c4d5e6f`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub interpreter_build: String,
    /// The package's version as installed, read from its metadata after the install.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    /// `sha256:` and the hex digest of the venv's `pip freeze` (every distribution's
    /// `name==version`, sorted), taken once per setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_hash: Option<String>,
    /// When the test command started, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// When it ended, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
}

impl Provenance {
    /// Nothing recorded: an outcome from before, or a harness error before the iteration ran.
    pub fn is_empty(&self) -> bool {
        *self == Provenance::default()
    }
}

impl IterationOutcome {
    /// An iteration the harness could not run or report, with the reason: nothing of the
    /// package's own behaviour is in it.
    pub fn harness_error(iteration: u32, mode: Mode, worker_id: &str, attempt: u32, reason: String) -> Self {
        IterationOutcome {
            iteration,
            mode,
            status: IterationStatus::HarnessError,
            exit_code: None,
            signal: None,
            duration_ms: 0,
            cpu_time_ms: None,
            max_rss_kb: None,
            stalled: false,
            last_output_line: String::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            crash_signature: None,
            harness_error: Some(reason),
            worker_id: worker_id.to_string(),
            attempt,
            start_latency_ms: None,
            evidence: IterationEvidence::default(),
            provenance: Provenance::default(),
        }
    }
}

/// Which step of setting a package up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupStage {
    /// Getting the source: download, clone or copy.
    Source,
    /// Making the venv or running the install command.
    Install,
    /// Importing the installed package.
    Import,
}

impl SetupStage {
    pub fn as_str(self) -> &'static str {
        match self {
            SetupStage::Source => "source",
            SetupStage::Install => "install",
            SetupStage::Import => "import",
        }
    }
}

impl FromStr for SetupStage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "source" => Ok(SetupStage::Source),
            "install" => Ok(SetupStage::Install),
            "import" => Ok(SetupStage::Import),
            other => Err(format!("unknown setup stage {other:?}")),
        }
    }
}

/// A package that could not be set up on a worker: a package-level result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    pub stage: SetupStage,
    /// One line saying what failed, e.g. `install command exited with 1`.
    pub message: String,
    /// The end of the failing command's output.
    pub log_tail: String,
    pub duration_ms: u64,
    /// The workers' fault, not the package's: a network or index time-out, a full disk, the
    /// setup command killed from outside, the worker's own I/O. The coordinator tries such a
    /// job again, on another worker if it can, and records it only once it has failed on every
    /// attempt the run allows, as `infra_error`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infrastructure: bool,
}

/// What a worker reports for one job.
// An iteration's outcome is much larger than a setup failure; both are built once per job and
// moved a handful of times, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobResult {
    /// The test command ran.
    Iteration(IterationOutcome),
    /// The package could not be set up, so the iteration did not run.
    SetupFailed(SetupFailure),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_serde_and_parsing_agree() {
        for status in IterationStatus::ALL {
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(status.as_str().parse::<IterationStatus>(), Ok(status));
        }
        assert_eq!("oom".parse::<IterationStatus>(), Ok(IterationStatus::Oom));
    }
}
