//! Reading the JUnit XML a pytest run writes (`--junitxml`) into a [`TestReport`].
//!
//! Only pytest writes JUnit XML in a survey run. Suites run with `python -m unittest`
//! write none: they have no per-test report and are judged by their exit code alone.
//!
//! Both of pytest's flavours are read (`xunit1`, which adds `file` and `line` to each
//! test case, and `xunit2`, the default since pytest 6), under a `<testsuites>` root or a
//! bare `<testsuite>`, with any number of suites.
//!
//! A test is one id, not one `<testcase>` element. When a test fails and its fixture
//! teardown then raises, pytest writes two `<testcase>` elements with the same
//! `classname` and `name`, one holding the `<failure>` and one the `<error>` (older
//! versions put both in one element). Either way the test is counted once, as failed.

use std::collections::BTreeMap;

use roxmltree::{Document, Node};

use crate::evidence::TestReport;

/// Why a JUnit XML document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JunitError {
    /// The text is not well-formed XML.
    #[error("junit xml is not well-formed: {0}")]
    Malformed(String),
    /// The document is XML but its root is neither `<testsuites>` nor `<testsuite>`.
    #[error("junit xml root is <{0}>, expected <testsuites> or <testsuite>")]
    UnexpectedRoot(String),
    /// A `<testcase>` has no `name` attribute, so it cannot be told apart from others.
    #[error("junit xml testcase at line {line} has no name attribute")]
    MissingName {
        /// 1-based line of the `<testcase>` start tag.
        line: u32,
    },
}

/// Parses the JUnit XML a test run wrote into per-test counts and the failing test ids.
///
/// Each distinct test id (`classname::name`, or `name` when the class name is empty, as
/// for collection errors) is counted once: as failed if any of its elements holds a
/// `<failure>`, else as an error if any holds an `<error>`, else as skipped if any holds
/// a `<skipped>` (pytest's xfail included), else as passed.
pub fn parse_junit(xml: &str) -> Result<TestReport, JunitError> {
    let document = Document::parse(xml).map_err(|error| JunitError::Malformed(error.to_string()))?;
    let root = document.root_element();
    let root_name = root.tag_name().name();
    if root_name != "testsuites" && root_name != "testsuite" {
        return Err(JunitError::UnexpectedRoot(root_name.to_owned()));
    }

    let mut status_by_id: BTreeMap<String, CaseStatus> = BTreeMap::new();
    for testcase in root.descendants().filter(|node| node.has_tag_name("testcase")) {
        let id = test_id(&document, testcase)?;
        let status = case_status(testcase);
        status_by_id
            .entry(id)
            .and_modify(|existing| *existing = (*existing).max(status))
            .or_insert(status);
    }

    Ok(report_from_statuses(status_by_id))
}

/// The outcome of one test, ordered so that the worse outcome is the greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CaseStatus {
    Passed,
    Skipped,
    Error,
    Failed,
}

/// The id of a test case: `classname::name`, or `name` alone when there is no class name.
fn test_id(document: &Document<'_>, testcase: Node<'_, '_>) -> Result<String, JunitError> {
    let Some(name) = testcase.attribute("name") else {
        let line = document.text_pos_at(testcase.range().start).row;
        return Err(JunitError::MissingName { line });
    };
    match testcase.attribute("classname") {
        Some(classname) if !classname.is_empty() => Ok(format!("{classname}::{name}")),
        _ => Ok(name.to_owned()),
    }
}

/// What one `<testcase>` element says about its test, by its child elements.
fn case_status(testcase: Node<'_, '_>) -> CaseStatus {
    let mut status = CaseStatus::Passed;
    for child in testcase.children().filter(Node::is_element) {
        let child_status = match child.tag_name().name() {
            "failure" => CaseStatus::Failed,
            "error" => CaseStatus::Error,
            "skipped" => CaseStatus::Skipped,
            _ => continue,
        };
        status = status.max(child_status);
    }
    status
}

/// Counts the statuses and names the failing tests; the map's order keeps ids sorted.
fn report_from_statuses(status_by_id: BTreeMap<String, CaseStatus>) -> TestReport {
    let mut report = TestReport::default();
    for (id, status) in status_by_id {
        report.total = report.total.saturating_add(1);
        let counter = match status {
            CaseStatus::Passed => &mut report.passed,
            CaseStatus::Skipped => &mut report.skipped,
            CaseStatus::Error => &mut report.errors,
            CaseStatus::Failed => &mut report.failed,
        };
        *counter = counter.saturating_add(1);
        let is_failing = matches!(status, CaseStatus::Failed | CaseStatus::Error);
        if is_failing && report.failing.len() < TestReport::MAX_NAMED {
            report.failing.push(TestReport::bounded_id(&id));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by pytest 9.2 (`--junitxml`, default `xunit2` family) for a file with a
    /// passing, failing, fixture-erroring, skipped and parametrized test, a test that
    /// fails and whose fixture teardown then raises, and a test in a class. Only the
    /// suite's `timestamp`, `hostname` and a temp path in the skip text were trimmed.
    const PYTEST_XUNIT2: &str = r##"<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="2" failures="3" skipped="1" tests="10" time="0.059"><testcase classname="test_sample" name="test_passes" time="0.000" /><testcase classname="test_sample" name="test_fails" time="0.001"><failure message="assert (1 + 1) == 3">def test_fails():
&gt;       assert 1 + 1 == 3
E       assert (1 + 1) == 3

test_sample.py:20: AssertionError</failure></testcase><testcase classname="test_sample" name="test_errors" time="0.001"><error message="failed on setup with &quot;RuntimeError: fixture exploded&quot;">@pytest.fixture
    def broken():
&gt;       raise RuntimeError("fixture exploded")
E       RuntimeError: fixture exploded

test_sample.py:6: RuntimeError</error></testcase><testcase classname="test_sample" name="test_skipped" time="0.000"><skipped type="pytest.skip" message="not today">test_sample.py:27: not today</skipped></testcase><testcase classname="test_sample" name="test_param[1]" time="0.000" /><testcase classname="test_sample" name="test_param[2]" time="0.000"><failure message="assert 2 != 2">n = 2

    @pytest.mark.parametrize("n", [1, 2, 3])
    def test_param(n):
&gt;       assert n != 2
E       assert 2 != 2

test_sample.py:34: AssertionError</failure></testcase><testcase classname="test_sample" name="test_param[3]" time="0.000" /><testcase classname="test_sample" name="test_fails_then_teardown_errors" time="0.000"><failure message="assert False">bad_teardown = None

    def test_fails_then_teardown_errors(bad_teardown):
&gt;       assert False
E       assert False

test_sample.py:38: AssertionError</failure></testcase><testcase classname="test_sample" name="test_fails_then_teardown_errors" time="0.000"><error message="failed on teardown with &quot;RuntimeError: teardown exploded&quot;">@pytest.fixture
    def bad_teardown():
        yield
&gt;       raise RuntimeError("teardown exploded")
E       RuntimeError: teardown exploded

test_sample.py:12: RuntimeError</error></testcase><testcase classname="test_sample.TestGroup" name="test_method" time="0.000" /></testsuite></testsuites>"##;

    /// Written by pytest 9.2 when a test module fails to import: the class name is empty.
    const PYTEST_COLLECTION_ERROR: &str = r##"<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="0" skipped="0" tests="1" time="0.464"><testcase classname="" name="test_broken" time="0.000"><error message="collection failure">ImportError while importing test module 'test_broken.py'.
E   ModuleNotFoundError: No module named 'nonexistent_module_xyz'</error></testcase></testsuite></testsuites>"##;

    /// The start of what pytest 9.2 writes with `-o junit_family=xunit1`: `file` and `line`
    /// on each test case, under a bare `<testsuite>` root here.
    const PYTEST_XUNIT1_BARE_SUITE: &str = r##"<?xml version="1.0" encoding="utf-8"?><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3" time="0.063"><testcase classname="test_sample" name="test_passes" file="test_sample.py" line="14" time="0.000" /><testcase classname="test_sample" name="test_fails" file="test_sample.py" line="18" time="0.000"><failure message="assert (1 + 1) == 3">test_sample.py:20: AssertionError</failure></testcase><testcase classname="test_more" name="test_xfail" file="test_more.py" line="11" time="0.000"><skipped type="pytest.xfail" message="known" /></testcase></testsuite>"##;

    fn report((total, passed, failed, errors, skipped): (u32, u32, u32, u32, u32), failing: &[&str]) -> TestReport {
        TestReport {
            total,
            passed,
            failed,
            errors,
            skipped,
            failing: failing.iter().map(|id| (*id).to_owned()).collect(),
        }
    }

    #[test]
    fn real_pytest_output_is_counted_per_test() {
        let parsed = parse_junit(PYTEST_XUNIT2).expect("pytest output parses");
        let expected = report(
            (9, 4, 3, 1, 1),
            &[
                "test_sample::test_errors",
                "test_sample::test_fails",
                "test_sample::test_fails_then_teardown_errors",
                "test_sample::test_param[2]",
            ],
        );
        assert_eq!(parsed, expected);
    }

    #[test]
    fn failure_then_teardown_error_counts_once_as_failed() {
        let parsed = parse_junit(PYTEST_XUNIT2).expect("pytest output parses");
        let id = "test_sample::test_fails_then_teardown_errors";
        assert_eq!(parsed.failing.iter().filter(|failing| *failing == id).count(), 1);
        // Three plain failures in the file plus this one would be four if it were split.
        assert_eq!((parsed.failed, parsed.errors), (3, 1));
    }

    #[test]
    fn failure_and_error_in_one_testcase_count_once_as_failed() {
        let xml = r#"<testsuite><testcase classname="m" name="t"><error message="teardown"/><failure message="call"/></testcase></testsuite>"#;
        assert_eq!(parse_junit(xml), Ok(report((1, 0, 1, 0, 0), &["m::t"])));
    }

    #[test]
    fn collection_error_without_classname_is_named_by_name_alone() {
        let parsed = parse_junit(PYTEST_COLLECTION_ERROR).expect("pytest output parses");
        assert_eq!(parsed, report((1, 0, 0, 1, 0), &["test_broken"]));
    }

    #[test]
    fn bare_testsuite_root_in_xunit1_flavour_is_read() {
        let parsed = parse_junit(PYTEST_XUNIT1_BARE_SUITE).expect("pytest output parses");
        assert_eq!(parsed, report((3, 1, 1, 0, 1), &["test_sample::test_fails"]));
    }

    #[test]
    fn several_suites_are_summed_and_failing_ids_sorted() {
        let xml = r#"<testsuites>
            <testsuite name="b"><testcase classname="z" name="t"><failure/></testcase><testcase classname="b" name="ok"/></testsuite>
            <testsuite name="a"><testcase classname="a" name="t"><error/></testcase><testcase classname="a" name="s"><skipped/></testcase></testsuite>
        </testsuites>"#;
        assert_eq!(parse_junit(xml), Ok(report((4, 1, 1, 1, 1), &["a::t", "z::t"])));
    }

    #[test]
    fn empty_suite_reports_nothing() {
        let xml = r#"<testsuites><testsuite name="pytest" tests="0"/></testsuites>"#;
        assert_eq!(parse_junit(xml), Ok(TestReport::default()));
    }

    #[test]
    fn failing_names_are_capped_but_counts_stay_exact() {
        let n_tests = TestReport::MAX_NAMED + 50;
        let cases: String = (0..n_tests)
            .map(|test_idx| format!(r#"<testcase classname="m" name="t{test_idx:04}"><failure/></testcase>"#))
            .collect();
        let xml = format!("<testsuite>{cases}</testsuite>");
        let parsed = parse_junit(&xml).expect("generated xml parses");
        assert_eq!(parsed.failed as usize, n_tests);
        assert_eq!(parsed.failing.len(), TestReport::MAX_NAMED);
        assert_eq!(parsed.failing.first().map(String::as_str), Some("m::t0000"));
        assert!(parsed.failing.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn failing_names_are_bounded_in_length_so_a_report_stays_small() {
        // The poison report: the most names, each of 100 KB (a 20 MB report before the bound).
        let long = "é".repeat(50_000);
        let cases: String = (0..TestReport::MAX_NAMED)
            .map(|test_idx| format!(r#"<testcase classname="m" name="{long}{test_idx:04}"><failure/></testcase>"#))
            .collect();
        let parsed = parse_junit(&format!("<testsuite>{cases}</testsuite>")).expect("generated xml parses");
        assert_eq!(parsed.failing.len(), TestReport::MAX_NAMED);
        let bytes: usize = parsed.failing.iter().map(String::len).sum();
        assert!(
            bytes <= TestReport::MAX_NAMED * TestReport::MAX_ID_BYTES,
            "{bytes} bytes"
        );
        let first = &parsed.failing[0];
        assert!(first.starts_with("m::éé") && first.contains(" bytes cut, "), "{first}");
        let distinct: std::collections::BTreeSet<&String> = parsed.failing.iter().collect();
        assert_eq!(distinct.len(), TestReport::MAX_NAMED, "cut ids stay distinct");
        let short = TestReport::bounded_id("m::t");
        assert_eq!(short, "m::t");
    }

    #[test]
    fn malformed_xml_is_an_error_with_a_one_line_message() {
        let truncated = &PYTEST_XUNIT2[..PYTEST_XUNIT2.len() / 2];
        for broken in [
            truncated,
            "",
            "not xml at all",
            "<testsuite><testcase name=\"t\"></testsuite>",
        ] {
            let error = parse_junit(broken).expect_err("broken xml is rejected");
            assert!(matches!(error, JunitError::Malformed(_)), "{broken:?} gave {error:?}");
            let message = error.to_string();
            assert!(!message.contains('\n'), "message spans lines: {message:?}");
            assert!(message.starts_with("junit xml is not well-formed: "), "{message}");
        }
    }

    #[test]
    fn unexpected_root_is_an_error() {
        let error = parse_junit("<html><body/></html>").expect_err("html is rejected");
        assert_eq!(error, JunitError::UnexpectedRoot("html".to_owned()));
        assert_eq!(
            error.to_string(),
            "junit xml root is <html>, expected <testsuites> or <testsuite>"
        );
    }

    #[test]
    fn testcase_without_name_is_an_error() {
        let xml = "<testsuite>\n<testcase classname=\"m\"/>\n</testsuite>";
        assert_eq!(parse_junit(xml), Err(JunitError::MissingName { line: 2 }));
    }
}
