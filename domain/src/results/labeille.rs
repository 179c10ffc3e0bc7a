//! Reading what the tool ftsurvey replaces (`labeille ft`) wrote in its own shapes: TSAN
//! warnings as bare kinds, per-test results as a name-to-status map, and its extension report.

use std::collections::BTreeMap;

use crate::evidence::{Declaration, ExtensionReport, TestReport, TsanAttribution, TsanWarning};

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

/// Per-test results from the old tool's `test_results` (test id to status) and its
/// `tests_passed`, `tests_failed`, `tests_errored` and `tests_skipped` counts, if it wrote any.
pub(crate) fn test_report(
    test_results: &BTreeMap<String, String>,
    tests_passed: Option<u32>,
    tests_failed: Option<u32>,
    tests_errored: Option<u32>,
    tests_skipped: Option<u32>,
) -> Option<TestReport> {
    let counts = [tests_passed, tests_failed, tests_errored, tests_skipped];
    if test_results.is_empty() && counts.iter().all(Option::is_none) {
        return None;
    }
    let with_status = |wanted: &[&str]| {
        test_results
            .values()
            .filter(|status| wanted.contains(&status.to_ascii_uppercase().as_str()))
            .count() as u32
    };
    let passed = tests_passed.unwrap_or_else(|| with_status(&["PASSED", "PASS"]));
    let failed = tests_failed.unwrap_or_else(|| with_status(&["FAILED", "FAIL"]));
    let errors = tests_errored.unwrap_or_else(|| with_status(&["ERROR"]));
    let skipped = tests_skipped.unwrap_or_else(|| with_status(&["SKIPPED", "SKIP"]));
    let mut failing: Vec<String> = test_results
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

    #[test]
    fn a_fallback_without_a_named_module_is_still_a_fallback() {
        let (report, fallback) = extension_report(&serde_json::json!({"gil_fallback_active": true}));
        assert_eq!(report.gil_enabled_after_import, Some(true));
        assert_eq!(fallback.len(), 1);
        let (_, none) = extension_report(&serde_json::json!({"is_pure_python": true}));
        assert!(none.is_empty());
    }
}
