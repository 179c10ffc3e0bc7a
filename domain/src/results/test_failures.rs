//! Which tests failed in which iterations of a package: the counts behind the results
//! records' `flaky_tests` and the `flaky` view's per-test failure rates.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::evidence::TestReport;

/// How often one test failed among the iterations that reported per-test results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestFailures {
    pub test: String,
    /// Iterations in which it failed or errored.
    pub fails: u32,
    /// Iterations that reported per-test results (the test is assumed to have run in each).
    pub seen: u32,
}

impl TestFailures {
    pub fn rate(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            f64::from(self.fails) / f64::from(self.seen)
        }
    }

    /// Failed in some iterations that reported tests, not all.
    pub fn is_flaky(&self) -> bool {
        self.fails < self.seen
    }
}

/// Tests that failed at least once among the per-test `reports` of a package's iterations,
/// with their counts, worst rate first.
pub fn test_failures<'a>(reports: impl IntoIterator<Item = &'a TestReport>) -> Vec<TestFailures> {
    let reports: Vec<&TestReport> = reports.into_iter().collect();
    let seen = reports.len() as u32;
    let mut fails: BTreeMap<&str, u32> = BTreeMap::new();
    for report in &reports {
        for test in &report.failing {
            *fails.entry(test.as_str()).or_default() += 1;
        }
    }
    let mut tests: Vec<TestFailures> = fails
        .into_iter()
        .map(|(test, fails)| TestFailures {
            test: test.to_string(),
            fails,
            seen,
        })
        .collect();
    tests.sort_by(|a, b| b.rate().total_cmp(&a.rate()).then_with(|| a.test.cmp(&b.test)));
    tests
}

/// The old tool's `flaky_tests`: tests failing in some iterations but not all, with counts.
pub fn flaky_test_counts<'a>(reports: impl IntoIterator<Item = &'a TestReport>) -> BTreeMap<String, u32> {
    test_failures(reports)
        .into_iter()
        .filter(TestFailures::is_flaky)
        .map(|t| (t.test, t.fails))
        .collect()
}
