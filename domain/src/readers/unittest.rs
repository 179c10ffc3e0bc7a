//! Per-test results of `python -m unittest` suites, which write no JUnit XML: the counts come
//! from the summary unittest prints at the end (`Ran N tests`, then `OK (skipped=1)` or
//! `FAILED (failures=1, errors=2)`), the failing tests from its `FAIL:`/`ERROR:` headers.

use crate::evidence::TestReport;

/// Reads the last unittest summary in `text` (usually stderr); `None` when there is none.
pub fn parse_summary(text: &str) -> Option<TestReport> {
    let lines: Vec<&str> = text.lines().collect();
    let ran_at = lines
        .iter()
        .rposition(|l| l.starts_with("Ran ") && l.contains(" test"))?;
    let total: u32 = lines[ran_at].split_whitespace().nth(1)?.parse().ok()?;
    let verdict = lines[ran_at + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty())?;
    let mut report = TestReport {
        total,
        ..TestReport::default()
    };
    let counts = verdict
        .split_once('(')
        .map(|(_, rest)| rest.trim_end_matches(')'))
        .unwrap_or_default();
    for part in counts.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u32>() else {
            continue;
        };
        match key.trim() {
            "failures" | "unexpected successes" => report.failed += value,
            "errors" => report.errors += value,
            "skipped" => report.skipped += value,
            _ => {}
        }
    }
    if !(verdict.starts_with("OK") || verdict.starts_with("FAILED") || verdict.starts_with("NO TESTS RAN")) {
        return None;
    }
    report.passed = total.saturating_sub(report.failed + report.errors + report.skipped);
    let mut failing: Vec<String> = lines[..ran_at]
        .iter()
        .filter_map(|l| l.strip_prefix("FAIL: ").or_else(|| l.strip_prefix("ERROR: ")))
        .map(|name| match (name.find('('), name.rfind(')')) {
            (Some(open), Some(close)) if open < close => TestReport::bounded_id(&name[open + 1..close]),
            _ => TestReport::bounded_id(name.trim()),
        })
        .collect();
    failing.sort();
    failing.dedup();
    failing.truncate(TestReport::MAX_NAMED);
    report.failing = failing;
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_summary_counts_and_names_the_failures() {
        let text = "\
test_a (tests.test_x.T.test_a) ... ok
test_b (tests.test_x.T.test_b) ... FAIL
test_c (tests.test_x.T.test_c) ... ERROR
test_d (tests.test_x.T.test_d) ... skipped 'no'

======================================================================
ERROR: test_c (tests.test_x.T.test_c)
----------------------------------------------------------------------
Traceback (most recent call last):
ValueError: boom

======================================================================
FAIL: test_b (tests.test_x.T.test_b)
----------------------------------------------------------------------
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 4 tests in 0.001s

FAILED (failures=1, errors=1, skipped=1)
";
        let report = parse_summary(text).expect("summary");
        assert_eq!(
            (
                report.total,
                report.passed,
                report.failed,
                report.errors,
                report.skipped
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(report.failing, ["tests.test_x.T.test_b", "tests.test_x.T.test_c"]);
    }

    #[test]
    fn ok_and_no_tests_and_garbage() {
        let ok = parse_summary("Ran 3 tests in 0.1s\n\nOK (skipped=1)\n").expect("ok");
        assert_eq!((ok.total, ok.passed, ok.skipped), (3, 2, 1));
        let none = parse_summary("Ran 0 tests in 0.000s\n\nNO TESTS RAN\n").expect("none");
        assert_eq!(none.total, 0);
        assert_eq!(parse_summary("collected 3 items\n3 passed"), None);
    }
}
