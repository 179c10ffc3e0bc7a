//! The records of a results folder: `ft_meta.json` (the run) and `ft_results.jsonl` (one line
//! per package). Field names follow the tool ftsurvey replaces, with more fields added; every
//! field has a default when read, so folders written by that tool read too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::classify::PackageResult;
use crate::interpreter::InterpreterProfile;
use crate::outcome::signal_name;

/// `ft_meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunMeta {
    pub run_id: String,
    pub label: String,
    /// When the run started, RFC 3339.
    pub timestamp: String,
    pub finished_at: Option<String>,
    /// Ctrl-C or a failure stopped the run before every package finished.
    pub interrupted: bool,
    pub target_python: String,
    pub python_version: String,
    pub interpreter: Option<InterpreterProfile>,
    pub system: SystemInfo,
    pub config: RunConfig,
}

/// The machine the run was made on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemInfo {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpu_count: u32,
}

/// The options the run was made with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    pub iterations: u32,
    pub timeout: u64,
    pub stall_threshold: u64,
    pub packages: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub extra_deps: Vec<String>,
    pub test_command_suffix: Option<String>,
    pub test_command_override: Option<String>,
    pub stop_on_first_pass: bool,
    pub workers: u32,
    pub registry_dir: Option<String>,
    pub modes: Vec<String>,
}

/// One line of `ft_results.jsonl`: a package's verdict and its iterations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackageRecord {
    pub package: String,
    /// A category name, as `Category::as_str` writes it.
    pub category: String,
    pub evidence: Vec<String>,
    pub iterations_planned: u32,
    pub iterations_completed: u32,
    pub pass_count: u32,
    pub fail_count: u32,
    pub crash_count: u32,
    pub deadlock_count: u32,
    pub timeout_count: u32,
    pub harness_error_count: u32,
    /// Passes over completed iterations; `None` when none completed.
    pub pass_rate: Option<f64>,
    pub install_ok: bool,
    pub import_ok: bool,
    pub setup_stage: Option<String>,
    pub setup_error: Option<String>,
    pub setup_log_tail: Option<String>,
    pub iterations: Vec<IterationRecord>,
}

/// One iteration of a package.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IterationRecord {
    pub index: u32,
    pub mode: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// e.g. `SIGSEGV`.
    pub crash_signal: Option<String>,
    pub duration_s: f64,
    pub duration_ms: u64,
    pub stalled: bool,
    pub last_output_line: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub crash_signature: Option<String>,
    pub harness_error: Option<String>,
    pub worker_id: String,
    pub attempt: u32,
    pub start_latency_ms: Option<u64>,
}

impl From<&PackageResult> for PackageRecord {
    fn from(result: &PackageResult) -> Self {
        let setup = result.setup_failure.as_ref();
        let stage = setup.map(|f| f.stage);
        PackageRecord {
            package: result.package.clone(),
            category: result.category.as_str().to_string(),
            evidence: result.evidence.clone(),
            iterations_planned: result.iterations_planned,
            iterations_completed: result.counts.completed(),
            pass_count: result.counts.pass,
            fail_count: result.counts.fail,
            crash_count: result.counts.crash,
            deadlock_count: result.counts.deadlock,
            timeout_count: result.counts.timeout,
            harness_error_count: result.counts.harness_error,
            pass_rate: result.pass_rate(),
            install_ok: !matches!(stage, Some(crate::SetupStage::Source | crate::SetupStage::Install)),
            import_ok: stage.is_none(),
            setup_stage: stage.map(|s| s.as_str().to_string()),
            setup_error: setup.map(|f| f.message.clone()),
            setup_log_tail: setup.map(|f| f.log_tail.clone()),
            iterations: result
                .iterations
                .iter()
                .map(|o| IterationRecord {
                    index: o.iteration,
                    mode: o.mode.as_str().to_string(),
                    status: o.status.as_str().to_string(),
                    exit_code: o.exit_code,
                    signal: o.signal,
                    crash_signal: o.signal.map(signal_name),
                    duration_s: o.duration_ms as f64 / 1000.0,
                    duration_ms: o.duration_ms,
                    stalled: o.stalled,
                    last_output_line: o.last_output_line.clone(),
                    stdout_tail: o.stdout_tail.clone(),
                    stderr_tail: o.stderr_tail.clone(),
                    crash_signature: o.crash_signature.clone(),
                    harness_error: o.harness_error.clone(),
                    worker_id: o.worker_id.clone(),
                    attempt: o.attempt,
                    start_latency_ms: o.start_latency_ms,
                })
                .collect(),
        }
    }
}

impl PackageRecord {
    /// Parses one line of `ft_results.jsonl`.
    pub fn parse_line(line: &str) -> Result<PackageRecord, serde_json::Error> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{IterationOutcome, IterationStatus};
    use crate::spec::Mode;

    fn outcome(iteration: u32, status: IterationStatus, signal: Option<i32>) -> IterationOutcome {
        IterationOutcome {
            iteration,
            mode: Mode::Ft,
            status,
            exit_code: None,
            signal,
            duration_ms: 1500,
            cpu_time_ms: None,
            max_rss_kb: None,
            stalled: false,
            last_output_line: String::new(),
            stdout_tail: String::new(),
            stderr_tail: "Fatal Python error: Segmentation fault".into(),
            crash_signature: None,
            harness_error: None,
            worker_id: "w1".into(),
            attempt: 1,
            start_latency_ms: Some(12),
        }
    }

    #[test]
    fn a_package_result_becomes_a_record_that_round_trips() {
        let result = PackageResult::build(
            "p",
            2,
            None,
            vec![
                outcome(1, IterationStatus::Pass, None),
                outcome(2, IterationStatus::Crash, Some(11)),
            ],
            true,
        );
        let record = PackageRecord::from(&result);
        assert_eq!(record.category, "crash");
        assert_eq!(
            (record.pass_count, record.crash_count, record.iterations_completed),
            (1, 1, 2)
        );
        assert_eq!(record.pass_rate, Some(0.5));
        assert_eq!(record.iterations[1].crash_signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(record.iterations[1].duration_s, 1.5);
        assert!(record.install_ok && record.import_ok);
        let line = serde_json::to_string(&record).expect("serialize");
        assert_eq!(PackageRecord::parse_line(&line).expect("parse"), record);
    }

    #[test]
    fn minimal_seed_style_lines_parse() {
        let record = PackageRecord::parse_line(
            r#"{"package": "six", "category": "compatible", "pass_rate": 1.0,
            "iterations": [{"index": 1, "status": "pass", "exit_code": 0, "duration_s": 2.5}]}"#,
        )
        .expect("parse");
        assert_eq!(record.package, "six");
        assert_eq!(record.iterations[0].status, "pass");
        assert!(PackageRecord::parse_line("{\"package\": ").is_err());
    }
}
