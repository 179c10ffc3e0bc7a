//! From iteration outcomes to a package's category, with the evidence for it.

use serde::{Deserialize, Serialize};

use crate::category::Category;
use crate::outcome::{IterationOutcome, IterationStatus, SetupFailure, SetupStage, signal_name};
use crate::package_kind::string_enum;
use crate::spec::Mode;

/// How many iterations ended in each status.
///
/// Read with defaults: counts stored or written before a status existed read as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusCounts {
    pub pass: u32,
    pub fail: u32,
    pub crash: u32,
    pub deadlock: u32,
    pub timeout: u32,
    pub oom: u32,
    pub harness_error: u32,
}

impl StatusCounts {
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a IterationOutcome>) -> Self {
        let mut counts = StatusCounts::default();
        for outcome in outcomes {
            counts.add(outcome.status);
        }
        counts
    }

    pub fn add(&mut self, status: IterationStatus) {
        match status {
            IterationStatus::Pass => self.pass += 1,
            IterationStatus::Fail => self.fail += 1,
            IterationStatus::Crash => self.crash += 1,
            IterationStatus::Deadlock => self.deadlock += 1,
            IterationStatus::Timeout => self.timeout += 1,
            IterationStatus::Oom => self.oom += 1,
            IterationStatus::HarnessError => self.harness_error += 1,
        }
    }

    /// Iterations that say something about the package (all but harness errors).
    pub fn completed(&self) -> u32 {
        self.pass + self.fail + self.crash + self.deadlock + self.timeout + self.oom
    }

    pub fn total(&self) -> u32 {
        self.completed() + self.harness_error
    }

    /// Passes over completed iterations; `None` when nothing completed.
    pub fn pass_rate(&self) -> Option<f64> {
        let completed = self.completed();
        (completed > 0).then(|| f64::from(self.pass) / f64::from(completed))
    }
}

/// The facts classification looks at.
#[derive(Debug, Clone, Copy)]
pub struct ClassifyInput<'a> {
    /// The package failed to set up on some worker.
    pub setup_failure: Option<&'a SetupFailure>,
    /// Every outcome of the package, of any mode: only the free-threaded (`ft`) ones are
    /// classified; the GIL-enabled (`gil`) ones are read by [`GilComparison::of`] instead.
    pub outcomes: &'a [IterationOutcome],
    /// Extension modules that re-enabled the GIL at import.
    pub gil_fallback_modules: &'a [String],
    /// Unsuppressed ThreadSanitizer warnings across iterations.
    pub tsan_warning_count: usize,
}

/// A category and the sentences that justify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub category: Category,
    pub evidence: Vec<String>,
}

/// Classifies a package from its free-threaded outcomes. First match wins: install failure;
/// import failure; infrastructure error (a setup that failed for the workers' fault on every
/// attempt); nothing completed (harness error when harness errors were all there was,
/// else unknown); any deadlock; any crash; all pass (TSAN warnings, else GIL fallback, else
/// compatible); all fail (incompatible); otherwise intermittent. Harness errors never count
/// as completed iterations; timeouts count as failures, and so do iterations killed at the
/// memory limit (`oom`): both are resource exhaustion, which the package owns (the free-threaded
/// build's memory use is part of what is surveyed), and neither is a crash or a stall.
pub fn classify(input: ClassifyInput<'_>) -> Classification {
    if let Some(failure) = input.setup_failure {
        if failure.infrastructure {
            let evidence = vec![format!(
                "{} failed for the infrastructure, not the package, on every attempt: {}",
                failure.stage.as_str(),
                failure.message
            )];
            return Classification {
                category: Category::InfraError,
                evidence,
            };
        }
        let category = match failure.stage {
            SetupStage::Source | SetupStage::Install => Category::InstallFailure,
            SetupStage::Import => Category::ImportFailure,
        };
        let evidence = vec![format!("{} failed: {}", failure.stage.as_str(), failure.message)];
        return Classification { category, evidence };
    }

    let ft: Vec<&IterationOutcome> = input.outcomes.iter().filter(|o| o.mode == Mode::Ft).collect();
    let counts = StatusCounts::of(ft.iter().copied());
    let completed = counts.completed();
    let mut evidence = Vec::new();
    if counts.harness_error > 0 {
        let reason = ft
            .iter()
            .find_map(|o| o.harness_error.clone())
            .unwrap_or_else(|| "the test harness failed".to_string());
        evidence.push(format!(
            "{} of {} iterations were harness errors, not counted: {reason}",
            counts.harness_error,
            counts.total()
        ));
    }
    if completed == 0 {
        let category = if counts.harness_error > 0 {
            Category::HarnessError
        } else {
            evidence.push("no iteration completed".to_string());
            Category::Unknown
        };
        return Classification { category, evidence };
    }
    if counts.timeout > 0 {
        evidence.push(format!("{} of {completed} iterations timed out", counts.timeout));
    }
    if counts.oom > 0 {
        evidence.push(format!(
            "{} of {completed} iterations were killed at the memory limit",
            counts.oom
        ));
    }

    if counts.deadlock > 0 {
        evidence.insert(
            0,
            format!("{} of {completed} iterations stalled and were killed", counts.deadlock),
        );
        if let Some(stacks) = ft.iter().find_map(|o| o.evidence.stacks.as_deref()) {
            evidence.insert(
                1,
                format!(
                    "{} thread stacks were dumped at the stall",
                    crate::evidence::count_threads(stacks)
                ),
            );
        }
        return Classification {
            category: Category::Deadlock,
            evidence,
        };
    }
    if counts.crash > 0 {
        let mut signals: Vec<String> = ft
            .iter()
            .filter(|o| o.status == IterationStatus::Crash)
            .filter_map(|o| o.signal)
            .map(signal_name)
            .collect();
        signals.sort();
        signals.dedup();
        let by = if signals.is_empty() {
            String::new()
        } else {
            format!(" ({})", signals.join(", "))
        };
        evidence.insert(0, format!("{} of {completed} iterations crashed{by}", counts.crash));
        let mut signatures: Vec<&str> = ft.iter().filter_map(|o| o.crash_signature.as_deref()).collect();
        signatures.sort_unstable();
        signatures.dedup();
        if let Some(first) = signatures.first() {
            let more = if signatures.len() > 1 {
                format!(" (and {} other signatures)", signatures.len() - 1)
            } else {
                String::new()
            };
            evidence.insert(1, format!("crash signature: {first}{more}"));
        }
        return Classification {
            category: Category::Crash,
            evidence,
        };
    }
    if counts.pass == completed {
        let category = if input.tsan_warning_count > 0 {
            evidence.push(format!(
                "{} distinct ThreadSanitizer warnings",
                input.tsan_warning_count
            ));
            Category::TsanWarnings
        } else if !input.gil_fallback_modules.is_empty() {
            evidence.push(format!(
                "the GIL was re-enabled by {}",
                input.gil_fallback_modules.join(", ")
            ));
            Category::CompatibleGilFallback
        } else {
            Category::Compatible
        };
        evidence.insert(0, format!("all {completed} iterations passed"));
        return Classification { category, evidence };
    }
    if counts.pass == 0 {
        evidence.insert(0, format!("all {completed} iterations failed"));
        return Classification {
            category: Category::Incompatible,
            evidence,
        };
    }
    evidence.insert(0, format!("{} of {completed} iterations passed", counts.pass));
    Classification {
        category: Category::Intermittent,
        evidence,
    }
}

/// What the evidence line of a lost iteration says, between its mode and iteration and its
/// attempts (`ft iteration 3 lost after 3 attempts: ...`): how `runs rerun --only lost` knows it.
pub const LOST_MARK: &str = " lost after ";

/// A package's verdict and the outcomes behind it, as stored, streamed and written to results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageResult {
    pub package: String,
    pub category: Category,
    pub evidence: Vec<String>,
    /// Iterations the run asked for, per mode.
    pub iterations_planned: u32,
    /// Counts over the free-threaded iterations.
    pub counts: StatusCounts,
    pub setup_failure: Option<SetupFailure>,
    /// Every outcome recorded so far, in (mode, iteration) order.
    pub iterations: Vec<IterationOutcome>,
    /// No job of this package is pending or running.
    pub finished: bool,
    /// The free-threaded iterations against the GIL-enabled ones, with `--compare-with-gil`.
    #[serde(default)]
    pub gil_comparison: Option<GilComparison>,
}

/// Extension modules that re-enabled the GIL according to the probes behind `outcomes`,
/// sorted; a placeholder when the GIL came on without the interpreter naming a module.
pub fn gil_fallback_modules(outcomes: &[&IterationOutcome]) -> Vec<String> {
    let reports = || outcomes.iter().filter_map(|o| o.evidence.extensions.as_ref());
    let mut modules: Vec<String> = reports().flat_map(|e| e.gil_enabled_by.iter().cloned()).collect();
    modules.sort();
    modules.dedup();
    if modules.is_empty() && reports().any(|e| e.gil_enabled_after_import == Some(true)) {
        modules.push("(a module the interpreter did not name)".to_string());
    }
    modules
}

/// Distinct ThreadSanitizer warnings (by signature) across the iterations.
fn distinct_tsan_warnings(outcomes: &[&IterationOutcome]) -> usize {
    let signatures: std::collections::BTreeSet<&str> = outcomes
        .iter()
        .flat_map(|o| o.evidence.tsan.iter().map(|w| w.signature.as_str()))
        .collect();
    signatures.len()
}

/// What running with the GIL enabled says of a package's free-threaded failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilVerdict {
    /// The free-threaded iterations all passed: nothing to explain.
    None,
    /// The free-threaded iterations had failures (of any kind) and the GIL-enabled ones passed.
    FtSpecific,
    /// Both had failures: the suite fails with the GIL too.
    PreExisting,
}

impl GilVerdict {
    /// Every value, in the order error messages list them.
    pub const ALL: [GilVerdict; 3] = [GilVerdict::None, GilVerdict::FtSpecific, GilVerdict::PreExisting];

    /// The name results files and the wire use.
    pub fn as_str(self) -> &'static str {
        match self {
            GilVerdict::None => "none",
            GilVerdict::FtSpecific => "ft_specific",
            GilVerdict::PreExisting => "pre_existing",
        }
    }
}

string_enum!(GilVerdict, "GIL comparison verdict");

/// How a package fared with the GIL disabled against with it enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GilComparison {
    /// Counts over the GIL-enabled (`gil`) iterations.
    pub gil_counts: StatusCounts,
    pub verdict: GilVerdict,
    /// Tests that failed in some free-threaded iteration and in no GIL-enabled one, sorted.
    pub ft_only_failing_tests: Vec<String>,
}

impl GilComparison {
    /// The comparison, when `outcomes` has GIL-enabled iterations that completed.
    pub fn of(outcomes: &[IterationOutcome]) -> Option<GilComparison> {
        let gil: Vec<&IterationOutcome> = outcomes.iter().filter(|o| o.mode == Mode::Gil).collect();
        let ft: Vec<&IterationOutcome> = outcomes.iter().filter(|o| o.mode == Mode::Ft).collect();
        let gil_counts = StatusCounts::of(gil.iter().copied());
        let ft_counts = StatusCounts::of(ft.iter().copied());
        if gil_counts.completed() == 0 {
            return None;
        }
        let ft_failed = ft_counts.completed() > ft_counts.pass;
        let gil_failed = gil_counts.completed() > gil_counts.pass;
        let verdict = match (ft_failed, gil_failed) {
            (false, _) => GilVerdict::None,
            (true, false) => GilVerdict::FtSpecific,
            (true, true) => GilVerdict::PreExisting,
        };
        let failing = |side: &[&IterationOutcome]| -> std::collections::BTreeSet<String> {
            side.iter()
                .filter_map(|o| o.evidence.tests.as_ref())
                .flat_map(|t| t.failing.iter().cloned())
                .collect()
        };
        let gil_failing = failing(&gil);
        let ft_only_failing_tests = failing(&ft).into_iter().filter(|t| !gil_failing.contains(t)).collect();
        Some(GilComparison {
            gil_counts,
            verdict,
            ft_only_failing_tests,
        })
    }

    /// One sentence for the evidence list.
    pub fn sentence(&self) -> String {
        let gil = format!(
            "{} of {} GIL-enabled iterations passed",
            self.gil_counts.pass,
            self.gil_counts.completed()
        );
        let mut sentence = match self.verdict {
            GilVerdict::FtSpecific => format!("free-threading specific: {gil}"),
            GilVerdict::PreExisting => format!("pre-existing: fails with the GIL too ({gil})"),
            GilVerdict::None => gil,
        };
        if !self.ft_only_failing_tests.is_empty() {
            let shown: Vec<&str> = self.ft_only_failing_tests.iter().take(5).map(String::as_str).collect();
            sentence.push_str(&format!("; failing only without the GIL: {}", shown.join(", ")));
            if self.ft_only_failing_tests.len() > shown.len() {
                sentence.push_str(&format!(" and {} more", self.ft_only_failing_tests.len() - shown.len()));
            }
        }
        sentence
    }
}

/// `thread stress: 120 tests ran in 8 threads at once, 14 ran alone as thread-unsafe (last
/// iteration)`, or that the plugin never ran; `None` without `--parallel-threads`.
fn thread_stress_sentence(ft: &[&IterationOutcome]) -> Option<String> {
    let report = ft.iter().rev().find_map(|o| o.evidence.parallel.as_ref())?;
    Some(match report.in_parallel {
        Some(in_parallel) => format!(
            "thread stress: {in_parallel} tests ran in {} threads at once, {} ran alone as thread-unsafe",
            report.threads, report.thread_unsafe
        ),
        None => format!(
            "thread stress asked for {} threads, but pytest-run-parallel reported no parallel test",
            report.threads
        ),
    })
}

impl PackageResult {
    /// Classifies `outcomes` and bundles them into a result.
    pub fn build(
        package: &str,
        iterations_planned: u32,
        setup_failure: Option<SetupFailure>,
        mut outcomes: Vec<IterationOutcome>,
        finished: bool,
    ) -> Self {
        outcomes.sort_by_key(|o| (o.mode, o.iteration));
        let ft: Vec<&IterationOutcome> = outcomes.iter().filter(|o| o.mode == Mode::Ft).collect();
        let gil_fallback_modules = gil_fallback_modules(&ft);
        let tsan_warning_count = distinct_tsan_warnings(&ft);
        let mut classification = classify(ClassifyInput {
            setup_failure: setup_failure.as_ref(),
            outcomes: &outcomes,
            gil_fallback_modules: &gil_fallback_modules,
            tsan_warning_count,
        });
        let gil_comparison = GilComparison::of(&outcomes);
        if let Some(comparison) = &gil_comparison
            && matches!(
                classification.category,
                Category::Crash | Category::Deadlock | Category::Intermittent | Category::Incompatible
            )
        {
            classification.evidence.push(comparison.sentence());
        }
        if let Some(sentence) = thread_stress_sentence(&ft) {
            classification.evidence.push(sentence);
        }
        let counts = StatusCounts::of(ft.iter().copied());
        PackageResult {
            package: package.to_string(),
            category: classification.category,
            evidence: classification.evidence,
            iterations_planned,
            counts,
            setup_failure,
            iterations: outcomes,
            finished,
            gil_comparison,
        }
    }

    pub fn pass_rate(&self) -> Option<f64> {
        self.counts.pass_rate()
    }

    /// Whether an iteration of the package was lost: no worker finished it.
    pub fn lost_iterations(&self) -> bool {
        self.evidence.iter().any(|line| line.contains(LOST_MARK))
    }

    /// Empties every iteration's stdout and stderr tails, the bulk of a result that listings
    /// leave out; returns the bytes they held.
    pub fn drop_output(&mut self) -> usize {
        self.iterations
            .iter_mut()
            .map(|outcome| {
                let held = outcome.stdout_tail.len() + outcome.stderr_tail.len();
                outcome.stdout_tail = String::new();
                outcome.stderr_tail = String::new();
                held
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: IterationStatus) -> IterationOutcome {
        IterationOutcome {
            iteration: 0,
            mode: Mode::Ft,
            status,
            exit_code: match status {
                IterationStatus::Pass => Some(0),
                IterationStatus::Fail => Some(1),
                IterationStatus::HarnessError => Some(5),
                _ => None,
            },
            signal: (status == IterationStatus::Crash).then_some(11),
            duration_ms: 10,
            cpu_time_ms: None,
            max_rss_kb: None,
            stalled: status == IterationStatus::Deadlock,
            last_output_line: String::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            crash_signature: None,
            harness_error: (status == IterationStatus::HarnessError).then(|| "no tests collected".to_string()),
            worker_id: "w".into(),
            attempt: 1,
            start_latency_ms: None,
            evidence: Default::default(),
            provenance: Default::default(),
        }
    }

    fn failure(stage: SetupStage) -> SetupFailure {
        SetupFailure {
            stage,
            message: "exited with 1".into(),
            log_tail: String::new(),
            duration_ms: 1,
            infrastructure: false,
        }
    }

    fn classify_statuses(statuses: &[IterationStatus]) -> Category {
        let outcomes: Vec<IterationOutcome> = statuses.iter().map(|s| outcome(*s)).collect();
        classify(ClassifyInput {
            setup_failure: None,
            outcomes: &outcomes,
            gil_fallback_modules: &[],
            tsan_warning_count: 0,
        })
        .category
    }

    #[test]
    fn statuses_classify_first_match_wins() {
        use IterationStatus::{Crash, Deadlock, Fail, HarnessError, Oom, Pass, Timeout};
        let table: &[(&[IterationStatus], Category)] = &[
            (&[], Category::Unknown),
            (&[HarnessError, HarnessError], Category::HarnessError),
            (&[Pass, Pass, Pass], Category::Compatible),
            (&[Pass, HarnessError], Category::Compatible),
            (&[Fail, Fail], Category::Incompatible),
            (&[Timeout, Timeout], Category::Incompatible),
            (&[Fail, Timeout], Category::Incompatible),
            (&[Pass, Fail], Category::Intermittent),
            (&[Pass, Timeout], Category::Intermittent),
            (&[Oom, Oom], Category::Incompatible),
            (&[Fail, Oom], Category::Incompatible),
            (&[Pass, Oom], Category::Intermittent),
            (&[Oom, HarnessError], Category::Incompatible),
            (&[Oom, Crash], Category::Crash),
            (&[Oom, Deadlock], Category::Deadlock),
            (&[Pass, Crash], Category::Crash),
            (&[Crash, Crash], Category::Crash),
            (&[Fail, Crash, Deadlock], Category::Deadlock),
            (&[Pass, Deadlock], Category::Deadlock),
            (&[Crash, Deadlock], Category::Deadlock),
        ];
        for (statuses, expected) in table {
            assert_eq!(classify_statuses(statuses), *expected, "{statuses:?}");
        }
    }

    #[test]
    fn setup_failures_win_over_outcomes() {
        let outcomes = vec![outcome(IterationStatus::Pass)];
        for (stage, expected) in [
            (SetupStage::Source, Category::InstallFailure),
            (SetupStage::Install, Category::InstallFailure),
            (SetupStage::Import, Category::ImportFailure),
        ] {
            let f = failure(stage);
            let got = classify(ClassifyInput {
                setup_failure: Some(&f),
                outcomes: &outcomes,
                gil_fallback_modules: &[],
                tsan_warning_count: 0,
            });
            assert_eq!(got.category, expected);
            assert!(got.evidence[0].contains("exited with 1"));
        }
    }

    #[test]
    fn an_infrastructure_setup_failure_is_an_infra_error_never_an_install_failure() {
        let outcomes = vec![outcome(IterationStatus::Pass)];
        for stage in [SetupStage::Source, SetupStage::Install, SetupStage::Import] {
            let f = SetupFailure {
                infrastructure: true,
                message: "install command exited with status 1: network: Read timed out".into(),
                ..failure(stage)
            };
            let got = classify(ClassifyInput {
                setup_failure: Some(&f),
                outcomes: &outcomes,
                gil_fallback_modules: &[],
                tsan_warning_count: 0,
            });
            assert_eq!(got.category, Category::InfraError, "{stage:?}");
            assert!(
                got.evidence[0].contains("for the infrastructure, not the package"),
                "{got:?}"
            );
            assert!(got.evidence[0].contains("Read timed out"), "{got:?}");
        }
    }

    #[test]
    fn all_pass_refined_by_tsan_then_gil_fallback() {
        let outcomes = vec![outcome(IterationStatus::Pass)];
        let modules = vec!["pkg._speedups".to_string()];
        let with = |tsan: usize, modules: &[String]| {
            classify(ClassifyInput {
                setup_failure: None,
                outcomes: &outcomes,
                gil_fallback_modules: modules,
                tsan_warning_count: tsan,
            })
        };
        assert_eq!(with(2, &modules).category, Category::TsanWarnings);
        let fallback = with(0, &modules);
        assert_eq!(fallback.category, Category::CompatibleGilFallback);
        assert!(fallback.evidence.iter().any(|e| e.contains("pkg._speedups")));
        assert_eq!(with(0, &[]).category, Category::Compatible);
    }

    #[test]
    fn tsan_warnings_do_not_hide_failures() {
        let outcomes = vec![outcome(IterationStatus::Pass), outcome(IterationStatus::Fail)];
        let got = classify(ClassifyInput {
            setup_failure: None,
            outcomes: &outcomes,
            gil_fallback_modules: &[],
            tsan_warning_count: 3,
        });
        assert_eq!(got.category, Category::Intermittent);
    }

    #[test]
    fn timeouts_are_named_in_the_evidence() {
        let outcomes = vec![outcome(IterationStatus::Timeout), outcome(IterationStatus::Timeout)];
        let got = classify(ClassifyInput {
            setup_failure: None,
            outcomes: &outcomes,
            gil_fallback_modules: &[],
            tsan_warning_count: 0,
        });
        assert_eq!(got.category, Category::Incompatible);
        assert!(
            got.evidence.iter().any(|e| e == "2 of 2 iterations timed out"),
            "{:?}",
            got.evidence
        );
    }

    #[test]
    fn an_iteration_killed_at_the_memory_limit_is_a_failure_named_in_the_evidence_not_a_crash() {
        let mut oom = outcome(IterationStatus::Oom);
        oom.signal = Some(9);
        let result = PackageResult::build("p", 2, None, vec![oom, outcome(IterationStatus::Pass)], true);
        assert_eq!(result.category, Category::Intermittent);
        assert_eq!(
            (result.counts.oom, result.counts.crash, result.counts.completed()),
            (1, 0, 2)
        );
        assert_eq!(result.pass_rate(), Some(0.5));
        assert!(
            result
                .evidence
                .iter()
                .any(|e| e == "1 of 2 iterations were killed at the memory limit"),
            "{:?}",
            result.evidence
        );
    }

    #[test]
    fn counts_written_before_oom_existed_still_read() {
        let counts: StatusCounts = serde_json::from_str(
            r#"{"pass": 1, "fail": 2, "crash": 0, "deadlock": 0, "timeout": 1, "harness_error": 0}"#,
        )
        .expect("old counts");
        assert_eq!((counts.oom, counts.completed()), (0, 4));
    }

    #[test]
    fn crash_evidence_names_the_signal() {
        let outcomes = vec![outcome(IterationStatus::Crash), outcome(IterationStatus::Pass)];
        let got = classify(ClassifyInput {
            setup_failure: None,
            outcomes: &outcomes,
            gil_fallback_modules: &[],
            tsan_warning_count: 0,
        });
        assert_eq!(got.evidence[0], "1 of 2 iterations crashed (SIGSEGV)");
    }

    #[test]
    fn gil_mode_outcomes_do_not_change_the_category() {
        let mut gil_fail = outcome(IterationStatus::Fail);
        gil_fail.mode = Mode::Gil;
        let outcomes = vec![outcome(IterationStatus::Pass), gil_fail];
        let got = classify(ClassifyInput {
            setup_failure: None,
            outcomes: &outcomes,
            gil_fallback_modules: &[],
            tsan_warning_count: 0,
        });
        assert_eq!(got.category, Category::Compatible);
    }

    #[test]
    fn thread_stress_coverage_is_named_so_a_green_run_is_not_taken_for_more() {
        let stressed = |in_parallel: Option<u32>| {
            let mut pass = outcome(IterationStatus::Pass);
            pass.evidence.parallel = Some(crate::evidence::ParallelReport {
                threads: 8,
                in_parallel,
                thread_unsafe: 14,
            });
            PackageResult::build("p", 1, None, vec![pass], true)
        };
        let result = stressed(Some(120));
        assert_eq!(result.category, Category::Compatible);
        assert_eq!(
            result.evidence.last().map(String::as_str),
            Some("thread stress: 120 tests ran in 8 threads at once, 14 ran alone as thread-unsafe")
        );
        let unloaded = stressed(None);
        assert!(
            unloaded
                .evidence
                .iter()
                .any(|e| e.contains("reported no parallel test")),
            "{:?}",
            unloaded.evidence
        );
        let plain = PackageResult::build("p", 1, None, vec![outcome(IterationStatus::Pass)], true);
        assert!(!plain.evidence.iter().any(|e| e.contains("thread stress")));
    }

    #[test]
    fn harness_errors_are_reported_not_counted() {
        let result = PackageResult::build(
            "p",
            2,
            None,
            vec![
                outcome(IterationStatus::HarnessError),
                outcome(IterationStatus::HarnessError),
            ],
            true,
        );
        assert_eq!(result.category, Category::HarnessError);
        assert_eq!(result.pass_rate(), None);
        assert!(
            result.evidence[0].contains("no tests collected"),
            "{:?}",
            result.evidence
        );
    }

    #[test]
    fn pass_rate_is_over_completed_iterations() {
        let counts = StatusCounts {
            pass: 3,
            fail: 1,
            harness_error: 4,
            ..StatusCounts::default()
        };
        assert_eq!(counts.pass_rate(), Some(0.75));
        assert_eq!(StatusCounts::default().pass_rate(), None);
    }
}
