//! Reading what the tool ftsurvey replaces (`labeille ft`) wrote in its own shapes: TSAN
//! warnings as bare kinds, per-test results as a name-to-status map, and its extension report.

use crate::evidence::{Declaration, ExtensionReport, TestReport, TsanAttribution, TsanWarning};
use crate::results::IterationRecord;

/// A warning known only by its kind.
pub(crate) fn tsan_warning_of_kind(kind: &str) -> TsanWarning {
    TsanWarning {
        kind: kind.to_string(),
        signature: kind.to_string(),
        summary: String::new(),
        frames: Vec::new(),
        attribution: TsanAttribution::Unknown,
        count: 1,
    }
}

/// Per-test results from the old tool's `test_results` and `tests_*` counts, if it wrote any.
pub(crate) fn test_report(iteration: &IterationRecord) -> Option<TestReport> {
    let counts = [
        iteration.tests_passed,
        iteration.tests_failed,
        iteration.tests_errored,
        iteration.tests_skipped,
    ];
    if iteration.test_results.is_empty() && counts.iter().all(Option::is_none) {
        return None;
    }
    let with_status = |wanted: &[&str]| {
        iteration
            .test_results
            .values()
            .filter(|status| wanted.contains(&status.to_ascii_uppercase().as_str()))
            .count() as u32
    };
    let passed = iteration
        .tests_passed
        .unwrap_or_else(|| with_status(&["PASSED", "PASS"]));
    let failed = iteration
        .tests_failed
        .unwrap_or_else(|| with_status(&["FAILED", "FAIL"]));
    let errors = iteration.tests_errored.unwrap_or_else(|| with_status(&["ERROR"]));
    let skipped = iteration
        .tests_skipped
        .unwrap_or_else(|| with_status(&["SKIPPED", "SKIP"]));
    let mut failing: Vec<String> = iteration
        .test_results
        .iter()
        .filter(|(_, status)| matches!(status.to_ascii_uppercase().as_str(), "FAILED" | "FAIL" | "ERROR"))
        .map(|(name, _)| name.clone())
        .collect();
    failing.sort();
    failing.truncate(TestReport::MAX_NAMED);
    Some(TestReport {
        total: passed + failed + errors + skipped,
        passed,
        failed,
        errors,
        skipped,
        failing,
    })
}

/// The old tool's `extension_compat` object as an [`ExtensionReport`], and the modules it
/// blames for re-enabling the GIL.
pub(crate) fn extension_report(compat: &serde_json::Value) -> (ExtensionReport, Vec<String>) {
    let text = |value: &serde_json::Value, key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let flag = |value: &serde_json::Value, key: &str| value.get(key).and_then(serde_json::Value::as_bool);
    let extensions = compat
        .get("extensions")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let mut modules: Vec<String> = extensions.iter().filter_map(|e| text(e, "module_name")).collect();
    modules.sort();
    let mut gil_enabled_by: Vec<String> = extensions
        .iter()
        .filter(|e| flag(e, "triggered_gil_fallback") == Some(true))
        .filter_map(|e| text(e, "module_name"))
        .collect();
    gil_enabled_by.sort();
    let fallback_active = flag(compat, "gil_fallback_active") == Some(true);
    let import_errors = extensions
        .iter()
        .filter(|e| flag(e, "import_ok") == Some(false))
        .filter_map(|e| Some((text(e, "module_name")?, text(e, "import_error").unwrap_or_default())))
        .collect();
    let declarations = compat
        .get("source_scan")
        .and_then(|scan| scan.get("declarations"))
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .map(|d| Declaration {
                    file: text(d, "file").unwrap_or_default(),
                    line: d.get("line_number").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32,
                    kind: "Py_mod_gil".to_string(),
                    text: text(d, "line_text").unwrap_or_default(),
                    gil_not_used: flag(d, "is_not_used"),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut fallback = gil_enabled_by.clone();
    if fallback.is_empty() && fallback_active {
        fallback.push("(a module the old tool did not name)".to_string());
    }
    let report = ExtensionReport {
        modules,
        gil_enabled_by,
        gil_enabled_after_import: flag(compat, "gil_fallback_active"),
        import_errors,
        declarations,
        probe_error: text(compat, "probe_error"),
    };
    (report, fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::PackageRecord;

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

    #[test]
    fn a_fallback_without_a_named_module_is_still_a_fallback() {
        let (report, fallback) = extension_report(&serde_json::json!({"gil_fallback_active": true}));
        assert_eq!(report.gil_enabled_after_import, Some(true));
        assert_eq!(fallback.len(), 1);
        let (_, none) = extension_report(&serde_json::json!({"is_pure_python": true}));
        assert!(none.is_empty());
    }
}
