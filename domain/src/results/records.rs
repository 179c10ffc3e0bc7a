//! The records of a results folder: `ft_meta.json` (the run) and `ft_results.jsonl` (one line
//! per package).
//!
//! Field names are those of the tool ftsurvey replaces (`labeille ft`), with more fields added.
//! Every field has a default when read, so hand-written lines and folders written by that tool
//! read too. Where the two tools disagree on a name, ftsurvey writes the old name and reads both.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::category::Category;
use crate::classify::{GilComparison, PackageResult, StatusCounts};
use crate::evidence::{ExtensionReport, SandboxReport, TestReport, TsanWarning};
use crate::interpreter::InterpreterProfile;
use crate::outcome::{IterationOutcome, IterationStatus, SetupStage, signal_name};
use crate::run::{RunState, RunSummary};
use crate::spec::{Mode, RunSpec};

use super::labeille;
use super::test_failures::flaky_test_counts;

/// `ft_meta.json`: what was run, where, and with which options.
///
/// Read leniently: a field of an unexpected shape (another tool's `config`, say) reads as its
/// default instead of making the whole file unreadable, because the file only informs headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The coordinator's run id (a UUIDv7), or the old tool's `ft_YYYYMMDD_HHMMSS`.
    #[serde(default, deserialize_with = "lenient")]
    pub run_id: String,
    #[serde(default, deserialize_with = "lenient")]
    pub label: String,
    /// When the run started, RFC 3339.
    #[serde(default, deserialize_with = "lenient")]
    pub timestamp: String,
    /// When the run ended, RFC 3339; `None` while it runs (or if it died without saying).
    #[serde(default, deserialize_with = "lenient")]
    pub finished_at: Option<String>,
    /// Ctrl-C or a failure stopped the run before every package finished.
    #[serde(default, deserialize_with = "lenient")]
    pub interrupted: bool,
    /// Path of the interpreter the tests ran on.
    #[serde(default, deserialize_with = "lenient")]
    pub target_python: String,
    /// `sys.version` of the target.
    #[serde(default, deserialize_with = "lenient")]
    pub python_version: String,
    /// The probed target; `None` in folders written by the old tool.
    #[serde(default, deserialize_with = "lenient")]
    pub interpreter: Option<InterpreterProfile>,
    /// The machine that ran the survey (the coordinator's, for a fleet run).
    #[serde(default, deserialize_with = "lenient")]
    pub system: SystemInfo,
    #[serde(default, deserialize_with = "lenient")]
    pub config: RunConfig,
}

/// The machine a run was made on, as the caller found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    #[serde(default, deserialize_with = "lenient")]
    pub hostname: String,
    /// e.g. `linux`.
    #[serde(default, deserialize_with = "lenient")]
    pub os: String,
    /// e.g. `x86_64`.
    #[serde(default, deserialize_with = "lenient")]
    pub arch: String,
    #[serde(default, deserialize_with = "lenient")]
    pub cpu_count: u32,
}

/// The options a run was made with; names follow the `run` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Iterations per package and mode.
    #[serde(default, deserialize_with = "lenient")]
    pub iterations: u32,
    /// Per-iteration timeout, seconds.
    #[serde(default, deserialize_with = "lenient")]
    pub timeout: u64,
    /// Seconds without output and CPU progress before an iteration counts as stalled.
    #[serde(default, deserialize_with = "lenient")]
    pub stall_threshold: u64,
    /// The packages selected, in the order they were submitted.
    #[serde(default, deserialize_with = "lenient")]
    pub packages: Vec<String>,
    /// `--env` values.
    #[serde(default, deserialize_with = "lenient")]
    pub env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient")]
    pub extra_deps: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub test_command_suffix: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub test_command_override: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub stop_on_first_pass: bool,
    /// Local workers of an embedded run.
    #[serde(default, deserialize_with = "lenient")]
    pub workers: u32,
    #[serde(default, deserialize_with = "lenient")]
    pub registry_dir: Option<String>,
    /// `ft`, and `gil` with `--compare-with-gil`.
    #[serde(default, deserialize_with = "lenient")]
    pub modes: Vec<String>,
    /// Download counts of the packages, from the registry: the popularity triage sorts by.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "BTreeMap::is_empty")]
    pub download_counts: BTreeMap<String, u64>,
    /// `--test-network`: every package's tests could use the host's network.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "is_false")]
    pub test_network: bool,
    /// The run whose packages this one ran again (`ftsurvey runs rerun`).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
}

impl RunConfig {
    /// The configuration of a run as submitted; `workers` is left 0 (unknown to the caller).
    pub fn of_spec(spec: &RunSpec) -> RunConfig {
        RunConfig {
            iterations: spec.iterations,
            timeout: spec.options.timeout_secs,
            stall_threshold: spec.options.stall_threshold_secs,
            packages: spec.packages.iter().map(|p| p.name.clone()).collect(),
            env: spec.options.env.iter().cloned().collect(),
            extra_deps: spec.options.extra_deps.clone(),
            test_command_suffix: spec.options.test_command_suffix.clone(),
            test_command_override: spec.options.test_command_override.clone(),
            stop_on_first_pass: spec.options.stop_on_first_pass,
            workers: 0,
            registry_dir: spec.registry.clone(),
            modes: spec.modes.iter().map(|m| m.as_str().to_string()).collect(),
            download_counts: spec
                .packages
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.download_count?)))
                .collect(),
            test_network: spec.options.test_network,
            rerun_of: spec.rerun_of.map(|id| id.to_string()),
        }
    }
}

impl RunMeta {
    /// What a coordinator knows of a run, as `ft_meta.json` would say it. The interpreter is
    /// the run's requirement: the workers' own probes are not part of a run.
    pub fn of_run(summary: &RunSummary, spec: &RunSpec) -> RunMeta {
        let time = |ms: i64| {
            jiff::Timestamp::from_millisecond(ms)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        RunMeta {
            run_id: summary.run_id.to_string(),
            label: summary.label.clone(),
            timestamp: time(summary.created_at_ms),
            finished_at: summary.finished_at_ms.map(time),
            interrupted: summary.state == RunState::Cancelled,
            target_python: spec.requirement.describe(),
            python_version: String::new(),
            interpreter: None,
            system: SystemInfo::default(),
            config: RunConfig::of_spec(spec),
        }
    }
}

/// One line of `ft_results.jsonl`: a package's verdict and its iterations.
///
/// Counts, pass rate and `iterations` cover the free-threaded (`ft`) iterations; GIL-mode
/// iterations of `--compare-with-gil` go to `gil_enabled_iterations`, as the old tool wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackageRecord {
    pub package: String,
    /// A category name, as [`Category::as_str`] writes it; see [`PackageRecord::category`].
    pub category: String,
    /// Sentences justifying the category, most important first.
    pub evidence: Vec<String>,
    /// Iterations the run asked for, per mode.
    pub iterations_planned: u32,
    /// Iterations that say something about the package: all but harness errors.
    pub iterations_completed: u32,
    pub pass_count: u32,
    pub fail_count: u32,
    pub crash_count: u32,
    pub deadlock_count: u32,
    /// Timeouts that were not stalls (the old tool counted deadlocks here too).
    pub timeout_count: u32,
    /// Iterations killed by the kernel at their memory limit; failures, never crashes.
    pub oom_count: u32,
    /// Iterations where the test harness itself failed; not in `iterations_completed`.
    pub harness_error_count: u32,
    /// Passes over completed iterations; `None` when none completed.
    pub pass_rate: Option<f64>,
    /// Mean duration of the iterations that took any time, seconds.
    pub mean_duration_s: f64,
    /// Distinct crash signatures, sorted.
    pub failure_signatures: Vec<String>,
    /// False when getting the source, making the venv or installing failed.
    pub install_ok: bool,
    pub install_error: Option<String>,
    /// False when the installed package did not import (true when import was never tried).
    pub import_ok: bool,
    pub import_error: Option<String>,
    /// The setup step that failed: `source`, `install` or `import`.
    pub setup_stage: Option<String>,
    /// What failed in setup, whichever the step (the same text as `install_error` or `import_error`).
    pub setup_error: Option<String>,
    /// The end of the failing setup command's output.
    pub setup_log_tail: Option<String>,
    /// No job of the package was left pending or running; false in an interrupted run.
    pub finished: bool,
    /// The free-threaded iterations, in order.
    pub iterations: Vec<IterationRecord>,
    /// Pass rate of the GIL-mode iterations, when the run compared with the GIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gil_enabled_pass_rate: Option<f64>,
    /// The GIL-mode iterations, when the run compared with the GIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gil_enabled_iterations: Option<Vec<IterationRecord>>,
    /// `ft_specific`, `pre_existing` or `none`, and the tests failing only without the GIL,
    /// when the run compared with the GIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gil_comparison: Option<GilComparison>,
    /// What importing the package did to the GIL, and its sources' declarations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<ExtensionReport>,
    /// Extension modules that re-enabled the GIL at import.
    pub gil_fallback_modules: Vec<String>,
    /// Distinct ThreadSanitizer warnings over all free-threaded iterations, counts summed.
    #[serde(deserialize_with = "tsan_list")]
    pub tsan_warnings: Vec<TsanWarning>,
    /// The kinds of [`PackageRecord::tsan_warnings`], sorted (the old tool's field).
    pub tsan_warning_types: Vec<String>,
    /// Tests that failed in some iterations but not all, with how many iterations they failed
    /// in (the old tool's field, which it always left empty).
    pub flaky_tests: BTreeMap<String, u32>,
    /// The old tool's extension report; read into [`PackageRecord::extensions`] and never written.
    #[serde(skip_serializing)]
    pub extension_compat: Option<serde_json::Value>,
    /// The old tool trusted a free-threaded wheel on PyPI instead of testing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ft_wheel_found: Option<bool>,
    /// The run let this package's tests use the host's network (the registry's `network: true`
    /// or `--test-network`); absent when it did not. A worker without a sandbox cannot take
    /// the network away, as each iteration's `sandbox` tells.
    #[serde(skip_serializing_if = "is_false")]
    pub network: bool,
}

/// One iteration of a package's test suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IterationRecord {
    /// Iteration number within its mode, from 1.
    pub index: u32,
    /// `ft` or `gil`.
    pub mode: String,
    /// An [`IterationStatus`] name: `pass`, `fail`, `crash`, `deadlock`, `timeout`, `oom`,
    /// `harness_error`.
    pub status: String,
    pub exit_code: Option<i32>,
    /// The signal that ended the test process, if any (a kill at a timeout too).
    pub signal: Option<i32>,
    /// The name of the fatal signal of a crash, e.g. `SIGSEGV`; `None` unless status is `crash`.
    pub crash_signal: Option<String>,
    pub duration_s: f64,
    pub duration_ms: u64,
    /// User + system CPU time of the test process tree.
    pub cpu_time_ms: Option<u64>,
    /// Largest resident set of any process in the tree, KiB.
    pub max_rss_kb: Option<u64>,
    /// Killed because it stalled: no output and no CPU progress.
    #[serde(rename = "output_stalled", alias = "stalled")]
    pub stalled: bool,
    /// The last non-empty line either stream printed.
    pub last_output_line: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// A stable identifier of the crash, from the faulthandler stack.
    pub crash_signature: Option<String>,
    /// Why the harness failed, when status is `harness_error`.
    pub harness_error: Option<String>,
    pub worker_id: String,
    /// Which attempt of the job this was (a job whose lease expired is run again).
    pub attempt: u32,
    /// Milliseconds from the worker receiving the job to the test process starting.
    pub start_latency_ms: Option<u64>,
    /// Per-test counts and failing tests, from JUnit XML or the unittest summary.
    pub tests: Option<TestReport>,
    /// Every thread's stack, dumped when the iteration stalled.
    pub stacks: Option<String>,
    /// Distinct ThreadSanitizer warnings of this iteration (the old tool wrote kinds as strings).
    #[serde(deserialize_with = "tsan_list")]
    pub tsan_warnings: Vec<TsanWarning>,
    /// The old tool's per-test results (`test name -> PASSED|FAILED|ERROR|SKIPPED`); read into
    /// [`IterationRecord::tests`] and never written.
    #[serde(skip_serializing)]
    pub test_results: BTreeMap<String, String>,
    /// The old tool's test counts; read into [`IterationRecord::tests`] and never written.
    #[serde(skip_serializing)]
    pub tests_passed: Option<u32>,
    #[serde(skip_serializing)]
    pub tests_failed: Option<u32>,
    #[serde(skip_serializing)]
    pub tests_errored: Option<u32>,
    #[serde(skip_serializing)]
    pub tests_skipped: Option<u32>,
    /// The worker's directory with this iteration's full logs and JUnit XML.
    pub log_dir: Option<String>,
    /// Bytes the test printed on both streams.
    pub output_bytes: u64,
    /// Processes the test left running, killed by the worker.
    pub leftover_processes: u32,
    /// For a stall: milliseconds from the last output or CPU progress to the verdict.
    pub stall_detected_after_ms: Option<u64>,
    /// With `--parallel-threads`: tests run in parallel and tests run alone as thread-unsafe.
    pub parallel: Option<crate::evidence::ParallelReport>,
    /// The sandbox the tests ran in (`none` or `bwrap`), how its limits were held and at what,
    /// whether the tests had the network, and the limits they hit (`memory`, `pids`,
    /// `file_size`, `disk`); `None` from a worker that predates the sandbox. Read leniently, so
    /// a sandbox or limit a later version names reads as `None` instead of losing the line.
    #[serde(deserialize_with = "lenient")]
    pub sandbox: Option<SandboxReport>,
    /// The interpreter build that ran it, e.g. `3.13.5t@1a2b3c4d5e6f`; absent in records of
    /// workers that did not say.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub interpreter_build: String,
    /// The package's version as installed in the venv the iteration ran in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    /// `sha256:` and the digest of the venv's `pip freeze`: two iterations with one hash ran
    /// with the same distributions installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_hash: Option<String>,
    /// When the test command started and ended, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
}

impl Default for PackageRecord {
    /// An empty record; install and import count as fine until a record says otherwise, as the
    /// old tool read them.
    fn default() -> Self {
        PackageRecord {
            package: String::new(),
            category: Category::Unknown.as_str().to_string(),
            evidence: Vec::new(),
            iterations_planned: 0,
            iterations_completed: 0,
            pass_count: 0,
            fail_count: 0,
            crash_count: 0,
            deadlock_count: 0,
            timeout_count: 0,
            oom_count: 0,
            harness_error_count: 0,
            pass_rate: None,
            mean_duration_s: 0.0,
            failure_signatures: Vec::new(),
            install_ok: true,
            install_error: None,
            import_ok: true,
            import_error: None,
            setup_stage: None,
            setup_error: None,
            setup_log_tail: None,
            finished: true,
            iterations: Vec::new(),
            gil_enabled_pass_rate: None,
            gil_enabled_iterations: None,
            gil_comparison: None,
            extensions: None,
            gil_fallback_modules: Vec::new(),
            tsan_warnings: Vec::new(),
            tsan_warning_types: Vec::new(),
            flaky_tests: BTreeMap::new(),
            extension_compat: None,
            ft_wheel_found: None,
            network: false,
        }
    }
}

impl Default for IterationRecord {
    fn default() -> Self {
        IterationRecord {
            index: 0,
            mode: Mode::Ft.as_str().to_string(),
            status: String::new(),
            exit_code: None,
            signal: None,
            crash_signal: None,
            duration_s: 0.0,
            duration_ms: 0,
            cpu_time_ms: None,
            max_rss_kb: None,
            stalled: false,
            last_output_line: String::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            crash_signature: None,
            harness_error: None,
            worker_id: String::new(),
            attempt: 1,
            start_latency_ms: None,
            tests: None,
            stacks: None,
            tsan_warnings: Vec::new(),
            test_results: BTreeMap::new(),
            tests_passed: None,
            tests_failed: None,
            tests_errored: None,
            tests_skipped: None,
            log_dir: None,
            output_bytes: 0,
            leftover_processes: 0,
            stall_detected_after_ms: None,
            parallel: None,
            sandbox: None,
            interpreter_build: String::new(),
            package_version: None,
            freeze_hash: None,
            started_at_ms: None,
            ended_at_ms: None,
        }
    }
}

impl RunMeta {
    /// Parses `ft_meta.json`. Only text that is not a JSON object at all is an error.
    pub fn parse(text: &str) -> Result<RunMeta, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom("ft_meta.json is not a JSON object"));
        }
        let mut meta: RunMeta = serde_json::from_value(value.clone())?;
        meta.fill_from_old_fields(&value);
        Ok(meta)
    }

    /// Fills what the old tool wrote elsewhere: `python_profile.version`,
    /// `config.target_python`, `system_profile`.
    fn fill_from_old_fields(&mut self, value: &serde_json::Value) {
        let text = |pointer: &str| value.pointer(pointer).and_then(|v| v.as_str()).map(str::to_string);
        if self.python_version.is_empty()
            && let Some(version) = text("/python_profile/version")
        {
            self.python_version = version;
        }
        if self.target_python.is_empty()
            && let Some(target) = text("/config/target_python")
        {
            self.target_python = target;
        }
        if self.system.os.is_empty()
            && let Some(os) = text("/system_profile/os")
        {
            self.system.os = os;
        }
        if self.system.cpu_count == 0
            && let Some(cpus) = value
                .pointer("/system_profile/cpu_cores_logical")
                .and_then(|v| v.as_u64())
        {
            self.system.cpu_count = cpus as u32;
        }
    }
}

impl PackageRecord {
    /// Parses one line of `ft_results.jsonl`; missing fields take their defaults, and the old
    /// tool's fields are read into ftsurvey's (see [`PackageRecord::normalize`]).
    pub fn parse_line(line: &str) -> Result<PackageRecord, serde_json::Error> {
        let mut record: PackageRecord = serde_json::from_str(line)?;
        record.normalize();
        Ok(record)
    }

    /// Fills ftsurvey's fields from the old tool's where only those were written: per-test
    /// results and counts, the extension report, TSAN kinds and flaky tests.
    pub fn normalize(&mut self) {
        for iteration in self
            .iterations
            .iter_mut()
            .chain(self.gil_enabled_iterations.iter_mut().flatten())
        {
            iteration.normalize();
        }
        // The old tool counted stalls as timeouts too; ftsurvey counts timeouts that were not
        // stalls, which the iterations tell.
        if self.deadlock_count > 0 && !self.iterations.is_empty() {
            self.timeout_count = self.iterations.iter().filter(|i| i.status == "timeout").count() as u32;
        }
        if self.extensions.is_none()
            && let Some(compat) = &self.extension_compat
        {
            let (report, fallback) = labeille::extension_report(compat);
            if self.gil_fallback_modules.is_empty() {
                self.gil_fallback_modules = fallback;
            }
            self.extensions = Some(report);
        }
        if self.tsan_warnings.is_empty() {
            self.tsan_warnings = merge_tsan(self.iterations.iter().map(|i| i.tsan_warnings.as_slice()));
            for kind in &self.tsan_warning_types {
                if !self.tsan_warnings.iter().any(|w| &w.kind == kind) {
                    self.tsan_warnings.push(labeille::tsan_warning_of_kind(kind));
                }
            }
        }
        if self.tsan_warning_types.is_empty() {
            self.tsan_warning_types = tsan_kinds(&self.tsan_warnings);
        }
        if self.flaky_tests.is_empty() {
            self.flaky_tests = flaky_test_counts(self.iterations.iter().filter_map(|i| i.tests.as_ref()));
        }
    }

    /// The category, if its name is one ftsurvey knows.
    pub fn category(&self) -> Option<Category> {
        self.category.parse().ok()
    }

    /// Iterations that say something about the package.
    ///
    /// The written counts are trusted; a hand-written line with iterations but no counts is
    /// counted from its iterations.
    pub fn completed_iterations(&self) -> u32 {
        if self.counts_are_written() {
            self.iterations_completed
        } else {
            self.tally().completed()
        }
    }

    /// Passing iterations, counted as [`PackageRecord::completed_iterations`] counts.
    pub fn passed_iterations(&self) -> u32 {
        if self.counts_are_written() {
            self.pass_count
        } else {
            self.tally().pass
        }
    }

    /// Crashed iterations, counted as [`PackageRecord::completed_iterations`] counts.
    pub fn crashed_iterations(&self) -> u32 {
        if self.counts_are_written() {
            self.crash_count
        } else {
            self.tally().crash
        }
    }

    /// The pass rate when any iteration completed: the written one, else passes over completed.
    pub fn known_pass_rate(&self) -> Option<f64> {
        let completed = self.completed_iterations();
        if completed == 0 {
            return None;
        }
        Some(
            self.pass_rate
                .unwrap_or_else(|| f64::from(self.passed_iterations()) / f64::from(completed)),
        )
    }

    fn counts_are_written(&self) -> bool {
        self.iterations_completed > 0 || self.harness_error_count > 0 || self.iterations.is_empty()
    }

    fn tally(&self) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for status in self.iterations.iter().filter_map(|i| i.status.parse().ok()) {
            counts.add(status);
        }
        counts
    }
}

impl From<&PackageResult> for PackageRecord {
    fn from(result: &PackageResult) -> Self {
        let setup = result.setup_failure.as_ref();
        let stage = setup.map(|f| f.stage);
        let install_failed = matches!(stage, Some(SetupStage::Source | SetupStage::Install));
        let import_failed = stage == Some(SetupStage::Import);
        let (ft, gil): (Vec<&IterationOutcome>, Vec<&IterationOutcome>) =
            result.iterations.iter().partition(|o| o.mode == Mode::Ft);

        let timed: Vec<u64> = ft.iter().map(|o| o.duration_ms).filter(|ms| *ms > 0).collect();
        let mean_duration_s = if timed.is_empty() {
            0.0
        } else {
            timed.iter().sum::<u64>() as f64 / timed.len() as f64 / 1000.0
        };
        let mut failure_signatures: Vec<String> = ft.iter().filter_map(|o| o.crash_signature.clone()).collect();
        failure_signatures.sort();
        failure_signatures.dedup();

        let mut record = PackageRecord {
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
            oom_count: result.counts.oom,
            harness_error_count: result.counts.harness_error,
            pass_rate: result.pass_rate(),
            mean_duration_s,
            failure_signatures,
            install_ok: !install_failed,
            install_error: setup.filter(|_| install_failed).map(|f| f.message.clone()),
            import_ok: !import_failed,
            import_error: setup.filter(|_| import_failed).map(|f| f.message.clone()),
            setup_stage: stage.map(|s| s.as_str().to_string()),
            setup_error: setup.map(|f| f.message.clone()),
            setup_log_tail: setup.map(|f| f.log_tail.clone()),
            finished: result.finished,
            iterations: Vec::new(),
            gil_enabled_pass_rate: (!gil.is_empty())
                .then(|| StatusCounts::of(gil.iter().copied()).pass_rate())
                .flatten(),
            gil_enabled_iterations: (!gil.is_empty()).then(|| gil.iter().map(|o| IterationRecord::from(*o)).collect()),
            gil_comparison: result.gil_comparison.clone(),
            extensions: ft.iter().find_map(|o| o.evidence.extensions.clone()),
            gil_fallback_modules: crate::classify::gil_fallback_modules(&ft),
            tsan_warnings: merge_tsan(ft.iter().map(|o| o.evidence.tsan.as_slice())),
            tsan_warning_types: Vec::new(),
            flaky_tests: BTreeMap::new(),
            extension_compat: None,
            ft_wheel_found: None,
            network: false,
        };
        record.tsan_warning_types = tsan_kinds(&record.tsan_warnings);
        let iterations: Vec<IterationRecord> = ft.iter().map(|o| IterationRecord::from(*o)).collect();
        record.flaky_tests = flaky_test_counts(iterations.iter().filter_map(|i| i.tests.as_ref()));
        record.iterations = iterations;
        record
    }
}

impl PackageRecord {
    /// The record of a package of `spec`: [`PackageRecord::from`] its result, with what the
    /// run granted the package that the result does not carry (the network).
    pub fn of_run(result: &PackageResult, spec: &RunSpec) -> PackageRecord {
        let mut record = PackageRecord::from(result);
        record.network = spec
            .packages
            .iter()
            .find(|p| p.name == result.package)
            .is_some_and(|p| spec.options.tests_get_network(p));
        record
    }
}

impl From<&IterationOutcome> for IterationRecord {
    fn from(outcome: &IterationOutcome) -> Self {
        let crashed = outcome.status == IterationStatus::Crash;
        IterationRecord {
            index: outcome.iteration,
            mode: outcome.mode.as_str().to_string(),
            status: outcome.status.as_str().to_string(),
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            crash_signal: outcome.signal.filter(|_| crashed).map(signal_name),
            duration_s: outcome.duration_ms as f64 / 1000.0,
            duration_ms: outcome.duration_ms,
            cpu_time_ms: outcome.cpu_time_ms,
            max_rss_kb: outcome.max_rss_kb,
            stalled: outcome.stalled,
            last_output_line: outcome.last_output_line.clone(),
            stdout_tail: outcome.stdout_tail.clone(),
            stderr_tail: outcome.stderr_tail.clone(),
            crash_signature: outcome.crash_signature.clone(),
            harness_error: outcome.harness_error.clone(),
            worker_id: outcome.worker_id.clone(),
            attempt: outcome.attempt,
            start_latency_ms: outcome.start_latency_ms,
            tests: outcome.evidence.tests.clone(),
            stacks: outcome.evidence.stacks.clone(),
            tsan_warnings: outcome.evidence.tsan.clone(),
            test_results: BTreeMap::new(),
            tests_passed: None,
            tests_failed: None,
            tests_errored: None,
            tests_skipped: None,
            log_dir: outcome.evidence.log_dir.clone(),
            output_bytes: outcome.evidence.output_bytes,
            leftover_processes: outcome.evidence.leftover_processes,
            stall_detected_after_ms: outcome.evidence.stall_detected_after_ms,
            parallel: outcome.evidence.parallel.clone(),
            sandbox: outcome.evidence.sandbox.clone(),
            interpreter_build: outcome.provenance.interpreter_build.clone(),
            package_version: outcome.provenance.package_version.clone(),
            freeze_hash: outcome.provenance.freeze_hash.clone(),
            started_at_ms: outcome.provenance.started_at_ms,
            ended_at_ms: outcome.provenance.ended_at_ms,
        }
    }
}

impl IterationRecord {
    /// Reads the old tool's per-test results and counts into [`IterationRecord::tests`].
    pub fn normalize(&mut self) {
        if self.tests.is_none() {
            self.tests = labeille::test_report(
                &self.test_results,
                self.tests_passed,
                self.tests_failed,
                self.tests_errored,
                self.tests_skipped,
            );
        }
    }
}

/// The distinct kinds of `warnings`, sorted.
fn tsan_kinds(warnings: &[TsanWarning]) -> Vec<String> {
    let mut kinds: Vec<String> = warnings.iter().map(|w| w.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The distinct TSAN warnings of several iterations, by signature, in first-seen order.
fn merge_tsan<'a>(lists: impl IntoIterator<Item = &'a [TsanWarning]>) -> Vec<TsanWarning> {
    let mut merged: Vec<TsanWarning> = Vec::new();
    for warning in lists.into_iter().flatten() {
        match merged.iter_mut().find(|w| w.signature == warning.signature) {
            Some(known) => known.count += warning.count,
            None => merged.push(warning.clone()),
        }
    }
    merged
}

/// Reads TSAN warnings written by ftsurvey (objects) or by the old tool (kinds as strings);
/// anything else reads as none.
fn tsan_list<'de, D>(deserializer: D) -> Result<Vec<TsanWarning>, D::Error>
where
    D: Deserializer<'de>,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    let serde_json::Value::Array(items) = value else {
        return Ok(Vec::new());
    };
    Ok(items
        .into_iter()
        .filter_map(|item| match item {
            serde_json::Value::String(kind) => Some(labeille::tsan_warning_of_kind(&kind)),
            other => serde_json::from_value(other).ok(),
        })
        .collect())
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Reads a field, falling back to its default when it has another shape (or is `null`).
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{LimitHeld, LimitHit, SandboxKind, TsanAttribution};
    use crate::outcome::SetupFailure;

    fn outcome(iteration: u32, mode: Mode, status: IterationStatus, signal: Option<i32>) -> IterationOutcome {
        IterationOutcome {
            iteration,
            mode,
            status,
            exit_code: (status == IterationStatus::Pass).then_some(0),
            signal,
            duration_ms: 1500,
            cpu_time_ms: Some(900),
            max_rss_kb: Some(40_000),
            stalled: false,
            last_output_line: "tests/test_x.py ..".into(),
            stdout_tail: String::new(),
            stderr_tail: "Fatal Python error: Segmentation fault".into(),
            crash_signature: (status == IterationStatus::Crash).then(|| "dict_resize<-insertdict".to_string()),
            harness_error: None,
            worker_id: "w1".into(),
            attempt: 1,
            start_latency_ms: Some(12),
            evidence: Default::default(),
            provenance: Default::default(),
        }
    }

    #[test]
    fn a_package_result_becomes_a_record_that_round_trips() {
        let result = PackageResult::build(
            "p",
            2,
            None,
            vec![
                outcome(1, Mode::Ft, IterationStatus::Pass, None),
                outcome(2, Mode::Ft, IterationStatus::Crash, Some(11)),
            ],
            true,
        );
        let record = PackageRecord::from(&result);
        assert_eq!(record.category, "crash");
        assert_eq!(record.category(), Some(Category::Crash));
        assert_eq!(
            (record.pass_count, record.crash_count, record.iterations_completed),
            (1, 1, 2)
        );
        assert_eq!(record.pass_rate, Some(0.5));
        assert_eq!(record.iterations[1].crash_signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(record.iterations[1].duration_s, 1.5);
        assert_eq!(record.failure_signatures, vec!["dict_resize<-insertdict".to_string()]);
        assert_eq!(record.mean_duration_s, 1.5);
        assert!(record.install_ok && record.import_ok && record.finished);
        assert_eq!(record.gil_enabled_iterations, None);

        let line = serde_json::to_string(&record).expect("serialize");
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.contains("\"output_stalled\":false"), "the old tool's name: {line}");
        assert!(!line.contains("gil_enabled"), "absent without GIL runs: {line}");
        assert_eq!(PackageRecord::parse_line(&line).expect("parse"), record);
    }

    #[test]
    fn only_crashes_name_a_crash_signal() {
        let mut killed = outcome(1, Mode::Ft, IterationStatus::Timeout, Some(9));
        killed.exit_code = None;
        let record = IterationRecord::from(&killed);
        assert_eq!((record.signal, record.crash_signal), (Some(9), None));
    }

    #[test]
    fn an_iteration_killed_at_the_memory_limit_is_counted_as_oom_and_not_as_a_crash() {
        let mut oom = outcome(2, Mode::Ft, IterationStatus::Oom, Some(9));
        oom.exit_code = None;
        let result = PackageResult::build(
            "p",
            2,
            None,
            vec![outcome(1, Mode::Ft, IterationStatus::Pass, None), oom],
            true,
        );
        let record = PackageRecord::from(&result);
        assert_eq!(
            (record.oom_count, record.crash_count, record.iterations_completed),
            (1, 0, 2)
        );
        assert_eq!(record.iterations[1].status, "oom");
        assert_eq!(record.iterations[1].crash_signal, None);
        let line = serde_json::to_string(&record).expect("serialize");
        assert!(line.contains("\"oom_count\":1"), "{line}");
        assert_eq!(PackageRecord::parse_line(&line).expect("parse"), record);
    }

    #[test]
    fn the_record_says_which_packages_tests_had_the_network() {
        let package = |name: &str, network: bool| crate::spec::PackageSpec {
            name: name.into(),
            version: None,
            source: crate::spec::Source::Sdist,
            install_command: "pip install .".into(),
            test_command: "python -m pytest".into(),
            test_framework: crate::package_kind::TestFramework::Pytest,
            import_name: name.into(),
            timeout_secs: None,
            env: BTreeMap::new(),
            download_count: None,
            extension_type: None,
            network,
        };
        let mut spec = RunSpec {
            label: "l".into(),
            packages: vec![package("online", true), package("offline", false)],
            iterations: 1,
            modes: vec![Mode::Ft],
            options: crate::spec::RunOptions::default(),
            requirement: crate::interpreter::InterpreterRequirement::any(),
            registry: None,
            rerun_of: None,
        };
        let result = |name: &str| {
            PackageResult::build(
                name,
                1,
                None,
                vec![outcome(1, Mode::Ft, IterationStatus::Pass, None)],
                true,
            )
        };
        let online = PackageRecord::of_run(&result("online"), &spec);
        let offline = PackageRecord::of_run(&result("offline"), &spec);
        assert!(online.network && !offline.network);
        let line = serde_json::to_string(&online).expect("serialize");
        assert!(line.contains("\"network\":true"), "{line}");
        assert_eq!(PackageRecord::parse_line(&line).expect("parse"), online);
        let line = serde_json::to_string(&offline).expect("serialize");
        assert!(!line.contains("\"network\""), "left out when false: {line}");

        spec.options.test_network = true;
        assert!(PackageRecord::of_run(&result("offline"), &spec).network);
        assert!(RunConfig::of_spec(&spec).test_network);
    }

    #[test]
    fn each_iteration_says_how_it_was_sandboxed_and_which_limits_it_hit() {
        let mut oom = outcome(1, Mode::Ft, IterationStatus::Oom, Some(9));
        oom.evidence.sandbox = Some(SandboxReport {
            kind: SandboxKind::Bwrap,
            memory: LimitHeld::Cgroup2,
            memory_limit_bytes: 4 << 30,
            network: true,
            limits_hit: vec![LimitHit::Memory, LimitHit::Pids],
            ..SandboxReport::default()
        });
        let record = IterationRecord::from(&oom);
        let line = serde_json::to_value(&record).expect("serialize");
        assert_eq!(line["sandbox"]["kind"], "bwrap");
        assert_eq!(line["sandbox"]["network"], true);
        assert_eq!(line["sandbox"]["limits_hit"], serde_json::json!(["memory", "pids"]));
        let back: IterationRecord = serde_json::from_value(line.clone()).expect("parse");
        assert_eq!(back, record);

        let mut newer = line;
        newer["sandbox"]["kind"] = "a-sandbox-of-tomorrow".into();
        let read: IterationRecord = serde_json::from_value(newer).expect("a newer line still reads");
        assert_eq!((read.status.as_str(), read.sandbox), ("oom", None));
        let old = IterationRecord::from(&outcome(1, Mode::Ft, IterationStatus::Pass, None));
        assert_eq!(old.sandbox, None);
    }

    #[test]
    fn gil_mode_iterations_are_kept_apart() {
        let result = PackageResult::build(
            "p",
            2,
            None,
            vec![
                outcome(1, Mode::Ft, IterationStatus::Pass, None),
                outcome(1, Mode::Gil, IterationStatus::Pass, None),
                outcome(2, Mode::Gil, IterationStatus::Fail, None),
            ],
            true,
        );
        let record = PackageRecord::from(&result);
        assert_eq!(record.iterations.len(), 1);
        assert_eq!(record.gil_enabled_pass_rate, Some(0.5));
        let gil = record.gil_enabled_iterations.expect("gil iterations");
        assert!(gil.iter().all(|i| i.mode == "gil"), "{gil:?}");
    }

    #[test]
    fn setup_failures_fill_the_old_tools_error_fields() {
        let failure = |stage| SetupFailure {
            stage,
            message: "install command exited with 1".into(),
            log_tail: "error: no".into(),
            duration_ms: 5,
            infrastructure: false,
        };
        let cases = [
            (SetupStage::Source, (false, true), "install_failure"),
            (SetupStage::Install, (false, true), "install_failure"),
            (SetupStage::Import, (true, false), "import_failure"),
        ];
        for (stage, (install_ok, import_ok), category) in cases {
            let record = PackageRecord::from(&PackageResult::build("p", 2, Some(failure(stage)), Vec::new(), true));
            assert_eq!(record.category, category, "{stage:?}");
            assert_eq!(
                (record.install_ok, record.import_ok),
                (install_ok, import_ok),
                "{stage:?}"
            );
            let error = if install_ok {
                &record.import_error
            } else {
                &record.install_error
            };
            assert_eq!(error.as_deref(), Some("install command exited with 1"), "{stage:?}");
            assert_eq!(record.setup_stage.as_deref(), Some(stage.as_str()));
            assert_eq!(record.setup_error, *error);
            assert_eq!(record.setup_log_tail.as_deref(), Some("error: no"));
        }
    }

    #[test]
    fn minimal_seed_style_lines_parse() {
        let record = PackageRecord::parse_line(
            r#"{"package": "six", "category": "intermittent",
            "iterations": [{"index": 1, "status": "pass", "exit_code": 0, "duration_s": 2.5},
                           {"index": 2, "status": "fail", "exit_code": 1, "output_stalled": false}]}"#,
        )
        .expect("parse");
        assert_eq!(record.package, "six");
        assert_eq!(record.category(), Some(Category::Intermittent));
        assert!(record.install_ok && record.import_ok && record.finished, "{record:?}");
        assert_eq!(record.iterations[0].mode, "ft");
        assert_eq!(record.iterations[1].status, "fail");
        assert_eq!(
            (record.completed_iterations(), record.passed_iterations()),
            (2, 1),
            "counted from the iterations when no counts are written"
        );
        assert_eq!(record.known_pass_rate(), Some(0.5));

        let bare = PackageRecord::parse_line(r#"{"package": "x"}"#).expect("parse");
        assert_eq!(
            (bare.category(), bare.known_pass_rate()),
            (Some(Category::Unknown), None)
        );
        assert!(PackageRecord::parse_line("{\"package\": ").is_err());
        assert!(PackageRecord::parse_line(r#"{"package": "x", "pass_count": "many"}"#).is_err());
    }

    #[test]
    fn written_counts_win_over_the_iterations() {
        let record = PackageRecord::parse_line(
            r#"{"package": "p", "iterations_completed": 10, "pass_count": 7, "pass_rate": 0.7,
            "iterations": [{"index": 1, "status": "pass"}]}"#,
        )
        .expect("parse");
        assert_eq!((record.completed_iterations(), record.passed_iterations()), (10, 7));
    }

    #[test]
    fn run_meta_round_trips() {
        let meta = RunMeta {
            run_id: "0190f1c2-0000-7000-8000-000000000000".into(),
            label: "2 packages x 10".into(),
            timestamp: "2026-03-03T14:00:00Z".into(),
            finished_at: Some("2026-03-03T15:00:00Z".into()),
            interrupted: true,
            target_python: "/opt/py/bin/python3.13t".into(),
            python_version: "3.13.5 experimental free-threading build".into(),
            interpreter: None,
            system: SystemInfo {
                hostname: "h".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                cpu_count: 8,
            },
            config: RunConfig {
                iterations: 10,
                timeout: 600,
                stall_threshold: 60,
                packages: vec!["six".into(), "attrs".into()],
                env: BTreeMap::from([("PYTHONMALLOC".to_string(), "debug".to_string())]),
                modes: vec!["ft".into()],
                test_network: true,
                ..RunConfig::default()
            },
        };
        let text = serde_json::to_string_pretty(&meta).expect("serialize");
        assert_eq!(RunMeta::parse(&text).expect("parse"), meta);
    }

    #[test]
    fn the_old_tools_meta_reads_with_what_fits() {
        let meta = RunMeta::parse(
            r#"{"run_id": "ft_20260303_140000", "timestamp": "2026-03-03T14:00:00+0100",
            "system_profile": {"cpu_model": "AMD Ryzen 9"}, "python_profile": {"version": "3.14.0b2"},
            "config": {"target_python": "/py", "iterations": 10, "timeout": 600.5, "extra_deps": null},
            "cli_args": ["--top", "5"], "packages_total": 5}"#,
        )
        .expect("parse");
        assert_eq!(meta.run_id, "ft_20260303_140000");
        assert_eq!(meta.config.iterations, 10);
        assert_eq!(meta.python_version, "3.14.0b2");
        assert_eq!(meta.target_python, "/py");
        assert_eq!(meta.config.timeout, 0, "a float timeout reads as the default");
        assert!(meta.config.extra_deps.is_empty());
        assert!(RunMeta::parse("[1, 2]").is_err());
    }

    #[test]
    fn an_old_tool_line_reads_into_ftsurvey_fields() {
        let line = r#"{"package": "lxml", "category": "compatible_gil_fallback", "iterations_completed": 2,
            "pass_count": 2, "pass_rate": 1.0, "tsan_warning_types": ["data race"], "flaky_tests": {},
            "extension_compat": {"package": "lxml", "is_pure_python": false, "gil_fallback_active": true,
                "extensions": [{"module_name": "lxml.etree", "is_extension": true, "import_ok": true,
                                "triggered_gil_fallback": true},
                               {"module_name": "lxml.objectify", "is_extension": true, "import_ok": false,
                                "import_error": "boom"}],
                "source_scan": {"files_scanned": 3, "files_with_mod_gil": 1, "declarations": [
                    {"file": "src/etree.c", "line_number": 12, "line_text": "{Py_mod_gil, Py_MOD_GIL_USED}",
                     "is_not_used": false}]}},
            "iterations": [
              {"index": 1, "status": "pass", "tsan_warnings": ["data race"],
               "test_results": {"t::a": "PASSED", "t::b": "FAILED"}},
              {"index": 2, "status": "pass", "tests_passed": 5, "tests_failed": 0}]}"#;
        let record = PackageRecord::parse_line(line).expect("parse");
        let extensions = record.extensions.as_ref().expect("extension report");
        assert_eq!(extensions.modules, ["lxml.etree", "lxml.objectify"]);
        assert_eq!(extensions.gil_enabled_by, ["lxml.etree"]);
        assert_eq!(
            extensions.import_errors,
            [("lxml.objectify".to_string(), "boom".to_string())]
        );
        assert_eq!(extensions.declarations[0].gil_not_used, Some(false));
        assert_eq!(record.gil_fallback_modules, ["lxml.etree"]);
        assert_eq!(record.tsan_warnings.len(), 1);
        assert_eq!(record.tsan_warnings[0].kind, "data race");
        assert_eq!(
            record.iterations[0].tsan_warnings[0].attribution,
            TsanAttribution::Unknown
        );
        let first = record.iterations[0].tests.as_ref().expect("tests of 1");
        assert_eq!(
            (first.passed, first.failed, first.failing.clone()),
            (1, 1, vec!["t::b".to_string()])
        );
        let second = record.iterations[1].tests.as_ref().expect("tests of 2");
        assert_eq!((second.total, second.passed), (5, 5));
        assert_eq!(record.flaky_tests.get("t::b"), Some(&1), "{:?}", record.flaky_tests);
    }
}
