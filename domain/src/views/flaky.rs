//! The `flaky` view: for packages that pass only sometimes, how they fail, how often, in which
//! tests, and whether the failures look like one bug or many.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::category::Category;
use crate::results::{IterationRecord, PackageRecord, TestFailures, test_failures};
use crate::stats::PassRate;
use crate::views::text::{cell, plain_table, plural};

/// How a package's failures hang together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Every crash has the same signature: one bug.
    ConsistentCrash,
    /// Crashes with different signatures: several bugs, or one that corrupts memory.
    VariedCrash,
    /// One test fails in every failing iteration.
    ConsistentTest,
    /// Different tests fail in different iterations.
    RandomTest,
    /// Failures without crashes or per-test results to tell them apart.
    NoTestData,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::ConsistentCrash => "consistent_crash",
            Pattern::VariedCrash => "varied_crash",
            Pattern::ConsistentTest => "consistent_test",
            Pattern::RandomTest => "random_test",
            Pattern::NoTestData => "no_test_data",
        }
    }

    /// What the pattern suggests doing next.
    pub fn hint(self) -> &'static str {
        match self {
            Pattern::ConsistentCrash => "one crash site: reproduce it with the signature's top frame",
            Pattern::VariedCrash => "several crash sites: suspect shared state corrupted early",
            Pattern::ConsistentTest => "one test carries the race: run it alone with more iterations",
            Pattern::RandomTest => "failures move between tests: suspect shared module or fixture state",
            Pattern::NoTestData => "no per-test results: rerun with pytest to name the failing tests",
        }
    }
}

/// One package's flakiness, worked out from its free-threaded iterations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlakyAnalysis {
    pub package: String,
    pub category: String,
    pub pass_rate: Option<PassRate>,
    pub pattern: Option<Pattern>,
    /// Non-passing statuses with their counts, most frequent first (`crash (SIGSEGV)`, `fail`).
    pub failure_modes: Vec<(String, u32)>,
    pub longest_pass_streak: u32,
    pub longest_fail_streak: u32,
    /// One character per iteration in order: `.` pass, `F` fail, `C` crash, `D` deadlock,
    /// `T` timeout, `M` killed at the memory limit (oom), `H` harness error.
    pub timeline: String,
    /// Tests that failed at least once, worst rate first.
    pub tests: Vec<TestFailures>,
    /// Crash signatures with how many iterations had each, most frequent first.
    pub crash_signatures: Vec<(String, u32)>,
}

/// Whether `flaky` looks at a package: intermittent ones, and crashes, deadlocks or TSAN
/// reports with some passes.
pub fn is_flaky(record: &PackageRecord) -> bool {
    match record.category() {
        Some(Category::Intermittent) => true,
        Some(Category::Crash | Category::Deadlock) => {
            record.passed_iterations() > 0 && record.passed_iterations() < record.completed_iterations()
        }
        _ => false,
    }
}

/// Analyses one package.
pub fn analyse(record: &PackageRecord) -> FlakyAnalysis {
    let iterations = ordered(&record.iterations);
    let mut modes: BTreeMap<String, u32> = BTreeMap::new();
    let mut signatures: BTreeMap<String, u32> = BTreeMap::new();
    let mut timeline = String::new();
    let (mut pass_run, mut fail_run, mut longest_pass, mut longest_fail) = (0, 0, 0, 0);
    for iteration in &iterations {
        timeline.push(status_char(&iteration.status));
        match iteration.status.as_str() {
            "pass" => {
                pass_run += 1;
                fail_run = 0;
            }
            "harness_error" => {}
            _ => {
                fail_run += 1;
                pass_run = 0;
            }
        }
        longest_pass = longest_pass.max(pass_run);
        longest_fail = longest_fail.max(fail_run);
        if iteration.status != "pass" {
            let mode = match (&iteration.crash_signal, iteration.status.as_str()) {
                (Some(signal), "crash") => format!("crash ({signal})"),
                _ => iteration.status.clone(),
            };
            *modes.entry(mode).or_default() += 1;
        }
        if let Some(signature) = &iteration.crash_signature {
            *signatures.entry(signature.clone()).or_default() += 1;
        }
    }
    if iterations.is_empty() {
        // Only counts were written: the modes come from them.
        for (mode, n) in [
            ("fail", record.fail_count),
            ("crash", record.crash_count),
            ("deadlock", record.deadlock_count),
            ("timeout", record.timeout_count),
            ("oom", record.oom_count),
        ] {
            if n > 0 {
                modes.insert(mode.to_string(), n);
            }
        }
        for signature in &record.failure_signatures {
            signatures.insert(signature.clone(), 1);
        }
    }
    let tests = test_failures(iterations.iter().filter_map(|i| i.tests.as_ref()));
    let pattern = pattern(record, &iterations, &signatures, &tests);
    FlakyAnalysis {
        package: record.package.clone(),
        category: record.category.clone(),
        pass_rate: PassRate::of(record.passed_iterations(), record.completed_iterations()),
        pattern,
        failure_modes: by_count(modes),
        longest_pass_streak: longest_pass,
        longest_fail_streak: longest_fail,
        timeline,
        tests,
        crash_signatures: by_count(signatures),
    }
}

/// Renders the overview of every flaky package, or the deep dive of the ones in `analyses`
/// when `deep` is set.
pub fn render_flaky(analyses: &[FlakyAnalysis], deep: bool) -> String {
    let mut out = String::new();
    if analyses.is_empty() {
        out.push_str("No flaky packages: none is intermittent, or crashes or stalls only sometimes.\n");
        return out;
    }
    if !deep {
        let _ = writeln!(
            out,
            "{} flaky package{} (pass rate with its 95% interval)",
            analyses.len(),
            plural(analyses.len())
        );
        let rows = analyses
            .iter()
            .map(|a| {
                vec![
                    a.package.clone(),
                    a.category.clone(),
                    a.pass_rate.map_or("N/A".to_string(), |r| r.describe()),
                    a.pattern.map_or("", Pattern::as_str).to_string(),
                    format!("{}/{}", a.longest_pass_streak, a.longest_fail_streak),
                    a.tests.iter().filter(|t| t.is_flaky()).count().to_string(),
                    a.tests
                        .first()
                        .map(|t| cell(&format!("{} {}/{}", t.test, t.fails, t.seen), 60))
                        .or_else(|| a.crash_signatures.first().map(|(s, n)| cell(&format!("{s} x{n}"), 60)))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let table = plain_table(
            &[
                "Package",
                "Category",
                "Pass rate",
                "Pattern",
                "Streaks P/F",
                "Flaky tests",
                "Worst",
            ],
            rows,
            &[4, 5],
        );
        let _ = writeln!(out, "{table}");
        out.push_str("Deep dive: ftsurvey flaky RUN --package NAME\n");
        return out;
    }
    for analysis in analyses {
        render_one(&mut out, analysis);
    }
    out
}

fn render_one(out: &mut String, a: &FlakyAnalysis) {
    let rate = a.pass_rate.map_or("N/A".to_string(), |r| r.describe());
    let _ = writeln!(out, "{}: {}, pass rate {rate}", a.package, a.category);
    if let Some(pattern) = a.pattern {
        let _ = writeln!(out, "  Pattern:       {} ({})", pattern.as_str(), pattern.hint());
    }
    if !a.timeline.is_empty() {
        let _ = writeln!(
            out,
            "  Iterations:    {}  (. pass, F fail, C crash, D deadlock, T timeout, M oom, H harness error)",
            a.timeline
        );
    }
    let _ = writeln!(
        out,
        "  Streaks:       longest run of passes {}, of failures {}",
        a.longest_pass_streak, a.longest_fail_streak
    );
    if !a.failure_modes.is_empty() {
        let modes: Vec<String> = a.failure_modes.iter().map(|(m, n)| format!("{m} x{n}")).collect();
        let _ = writeln!(out, "  Failure modes: {}", modes.join(", "));
    }
    if !a.crash_signatures.is_empty() {
        let _ = writeln!(out, "  Crash signatures:");
        for (signature, n) in &a.crash_signatures {
            let _ = writeln!(out, "    x{n}  {}", cell(signature, 150));
        }
    }
    if a.tests.is_empty() {
        let _ = writeln!(
            out,
            "  Failing tests: none named (no per-test results in the failing iterations)"
        );
    } else {
        let _ = writeln!(out, "  Failing tests (fails/seen, worst first):");
        for test in &a.tests {
            let always = if test.is_flaky() { "" } else { "  (every time)" };
            let _ = writeln!(
                out,
                "    {:>7} {:>4}  {}{always}",
                format!("{}/{}", test.fails, test.seen),
                format!("{:.0}%", test.rate() * 100.0),
                test.test
            );
        }
    }
    out.push('\n');
}

/// Free-threaded iterations in index order.
fn ordered(iterations: &[IterationRecord]) -> Vec<&IterationRecord> {
    let mut ordered: Vec<&IterationRecord> = iterations.iter().filter(|i| i.mode != "gil").collect();
    ordered.sort_by_key(|i| i.index);
    ordered
}

fn pattern(
    record: &PackageRecord,
    iterations: &[&IterationRecord],
    signatures: &BTreeMap<String, u32>,
    tests: &[TestFailures],
) -> Option<Pattern> {
    let failing: Vec<&&IterationRecord> = iterations
        .iter()
        .filter(|i| i.status != "pass" && i.status != "harness_error")
        .collect();
    if failing.is_empty() && record.completed_iterations() == record.passed_iterations() {
        return None;
    }
    if record.crashed_iterations() > 0 {
        return Some(if signatures.len() > 1 {
            Pattern::VariedCrash
        } else {
            Pattern::ConsistentCrash
        });
    }
    let reports: Vec<&Vec<String>> = failing
        .iter()
        .filter_map(|i| i.tests.as_ref())
        .map(|t| &t.failing)
        .filter(|f| !f.is_empty())
        .collect();
    if reports.is_empty() || tests.is_empty() {
        return Some(Pattern::NoTestData);
    }
    let in_every = tests
        .iter()
        .any(|t| reports.iter().all(|failing| failing.contains(&t.test)));
    Some(if in_every {
        Pattern::ConsistentTest
    } else {
        Pattern::RandomTest
    })
}

fn status_char(status: &str) -> char {
    match status {
        "pass" => '.',
        "fail" => 'F',
        "crash" => 'C',
        "deadlock" => 'D',
        "timeout" => 'T',
        "oom" => 'M',
        "harness_error" => 'H',
        _ => '?',
    }
}

fn by_count(counts: BTreeMap<String, u32>) -> Vec<(String, u32)> {
    let mut list: Vec<(String, u32)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::TestReport;
    use crate::results::flaky_test_counts;

    fn iteration(index: u32, status: &str, failing: Option<&[&str]>) -> IterationRecord {
        IterationRecord {
            index,
            status: status.to_string(),
            tests: failing.map(|f| TestReport {
                failing: f.iter().map(|s| s.to_string()).collect(),
                ..TestReport::default()
            }),
            ..IterationRecord::default()
        }
    }

    fn record(category: &str, iterations: Vec<IterationRecord>) -> PackageRecord {
        let mut record = PackageRecord {
            package: "p".into(),
            category: category.into(),
            iterations,
            ..PackageRecord::default()
        };
        record.normalize();
        record
    }

    #[test]
    fn patterns_tell_one_bug_from_many() {
        let crash = |index, signature: &str| IterationRecord {
            crash_signature: Some(signature.to_string()),
            crash_signal: Some("SIGSEGV".into()),
            ..iteration(index, "crash", None)
        };
        let cases = [
            (
                vec![iteration(1, "pass", Some(&[])), crash(2, "a"), crash(3, "a")],
                Some(Pattern::ConsistentCrash),
            ),
            (
                vec![iteration(1, "pass", Some(&[])), crash(2, "a"), crash(3, "b")],
                Some(Pattern::VariedCrash),
            ),
            (
                vec![
                    iteration(1, "pass", Some(&[])),
                    iteration(2, "fail", Some(&["t::x", "t::y"])),
                    iteration(3, "fail", Some(&["t::x"])),
                ],
                Some(Pattern::ConsistentTest),
            ),
            (
                vec![
                    iteration(1, "pass", Some(&[])),
                    iteration(2, "fail", Some(&["t::x"])),
                    iteration(3, "fail", Some(&["t::y"])),
                ],
                Some(Pattern::RandomTest),
            ),
            (
                vec![iteration(1, "pass", None), iteration(2, "fail", None)],
                Some(Pattern::NoTestData),
            ),
            (vec![iteration(1, "pass", None)], None),
        ];
        for (iterations, expected) in cases {
            let record = record("intermittent", iterations);
            assert_eq!(analyse(&record).pattern, expected, "{:?}", record.iterations);
        }
    }

    #[test]
    fn streaks_modes_and_timeline() {
        let mut crash = iteration(4, "crash", None);
        crash.crash_signal = Some("SIGABRT".into());
        let analysis = analyse(&record(
            "crash",
            vec![
                iteration(2, "pass", None),
                iteration(1, "pass", None),
                iteration(3, "fail", None),
                crash,
                iteration(5, "harness_error", None),
                iteration(6, "fail", None),
                iteration(7, "pass", None),
                iteration(8, "oom", None),
            ],
        ));
        assert_eq!(analysis.timeline, "..FCHF.M");
        assert_eq!((analysis.longest_pass_streak, analysis.longest_fail_streak), (2, 3));
        assert_eq!(
            analysis.failure_modes,
            vec![
                ("fail".to_string(), 2),
                ("crash (SIGABRT)".to_string(), 1),
                ("harness_error".to_string(), 1),
                ("oom".to_string(), 1)
            ]
        );
    }

    #[test]
    fn flaky_tests_are_counted_against_iterations_with_results() {
        let iterations = [
            iteration(1, "fail", Some(&["t::a", "t::always"])),
            iteration(2, "pass", Some(&[])),
            iteration(3, "fail", Some(&["t::always", "t::b"])),
            iteration(4, "fail", Some(&["t::always"])),
            iteration(5, "crash", None),
        ];
        let tests = test_failures(iterations.iter().filter_map(|i| i.tests.as_ref()));
        let summary: Vec<(&str, u32, u32)> = tests.iter().map(|t| (t.test.as_str(), t.fails, t.seen)).collect();
        assert_eq!(summary, vec![("t::always", 3, 4), ("t::a", 1, 4), ("t::b", 1, 4)]);
        let counts = flaky_test_counts(iterations.iter().filter_map(|i| i.tests.as_ref()));
        assert_eq!(counts.len(), 3, "all failed in some but not all: {counts:?}");
        let every = [
            iteration(1, "fail", Some(&["t::x"])),
            iteration(2, "fail", Some(&["t::x"])),
        ];
        assert!(
            flaky_test_counts(every.iter().filter_map(|i| i.tests.as_ref())).is_empty(),
            "failing every time is not flaky"
        );
    }

    #[test]
    fn which_packages_are_flaky() {
        let with_counts = |category: &str, pass: u32, completed: u32| PackageRecord {
            category: category.into(),
            pass_count: pass,
            iterations_completed: completed,
            ..PackageRecord::default()
        };
        assert!(is_flaky(&with_counts("intermittent", 3, 5)));
        assert!(is_flaky(&with_counts("crash", 3, 5)));
        assert!(!is_flaky(&with_counts("crash", 0, 5)));
        assert!(!is_flaky(&with_counts("compatible", 5, 5)));
        assert!(!is_flaky(&with_counts("incompatible", 0, 5)));
    }

    #[test]
    fn views_name_rates_patterns_and_tests() {
        let record = record(
            "intermittent",
            vec![
                iteration(1, "pass", Some(&[])),
                iteration(2, "fail", Some(&["t::race"])),
                iteration(3, "pass", Some(&[])),
            ],
        );
        let analyses = [analyse(&record)];
        let overview = render_flaky(&analyses, false);
        for expected in ["1 flaky package", "2/3 (21-94%)", "consistent_test", "t::race 1/3"] {
            assert!(overview.contains(expected), "{expected:?} in\n{overview}");
        }
        let deep = render_flaky(&analyses, true);
        for expected in [
            "p: intermittent, pass rate 2/3",
            "Pattern:       consistent_test",
            "Iterations:    .F.",
            "    1/3  33%  t::race",
        ] {
            assert!(deep.contains(expected), "{expected:?} in\n{deep}");
        }
        assert!(render_flaky(&[], false).starts_with("No flaky packages"));
    }
}
