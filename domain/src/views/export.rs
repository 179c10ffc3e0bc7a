//! `export`: one row (CSV) or object (JSON, JSON Lines) per package.
//!
//! JSON and JSON Lines carry every field of the results line (iterations included) plus the
//! statistics; CSV carries the package-level fields in [`CSV_COLUMNS`] order, lists joined
//! with `; `. The column order is a compatibility surface: add columns at the end only.

use std::borrow::Cow;
use std::fmt::Write;
use std::str::FromStr;

use crate::results::PackageRecord;
use crate::stats::PassRate;
use crate::views::compat::describe_declaration;

/// How `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
    Jsonl,
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            "jsonl" => Ok(ExportFormat::Jsonl),
            _ => Err(format!("unknown format {s:?}: expected csv, json or jsonl")),
        }
    }
}

/// The CSV header, in order.
pub const CSV_COLUMNS: [&str; 36] = [
    "package",
    "category",
    "iterations_planned",
    "iterations_completed",
    "pass_count",
    "fail_count",
    "crash_count",
    "deadlock_count",
    "timeout_count",
    "harness_error_count",
    "pass_rate",
    "pass_rate_ci_low",
    "pass_rate_ci_high",
    "ruled_out_failure_rate",
    "mean_duration_s",
    "failure_signatures",
    "flaky_tests",
    "tsan_warning_types",
    "tsan_warning_count",
    "gil_fallback_modules",
    "extension_modules",
    "declarations",
    "install_ok",
    "install_error",
    "import_ok",
    "import_error",
    "setup_stage",
    "setup_error",
    "gil_enabled_pass_rate",
    "gil_comparison",
    "ft_only_failing_tests",
    "finished",
    "evidence",
    "download_count",
    "oom_count",
    "network",
];

/// Renders `records` in `format`; `download_counts` fills the popularity column.
pub fn export(
    records: &[PackageRecord],
    format: ExportFormat,
    download_counts: &std::collections::BTreeMap<String, u64>,
) -> String {
    match format {
        ExportFormat::Csv => export_csv(records, download_counts),
        ExportFormat::Json => {
            let objects: Vec<serde_json::Value> = records.iter().map(|r| object(r, download_counts)).collect();
            let mut text = serde_json::to_string_pretty(&objects).unwrap_or_else(|_| "[]".to_string());
            text.push('\n');
            text
        }
        ExportFormat::Jsonl => records
            .iter()
            .map(|r| format!("{}\n", object(r, download_counts)))
            .collect(),
    }
}

/// The results line with the statistics added.
fn object(record: &PackageRecord, download_counts: &std::collections::BTreeMap<String, u64>) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    let rate = PassRate::of(record.passed_iterations(), record.completed_iterations());
    if let Some(map) = value.as_object_mut() {
        map.insert("pass_rate".into(), serde_json::json!(rate.map(|r| r.rate)));
        map.insert("pass_rate_ci_low".into(), serde_json::json!(rate.map(|r| r.low)));
        map.insert("pass_rate_ci_high".into(), serde_json::json!(rate.map(|r| r.high)));
        map.insert(
            "ruled_out_failure_rate".into(),
            serde_json::json!(rate.and_then(|r| r.ruled_out_failure_rate())),
        );
        map.insert(
            "download_count".into(),
            serde_json::json!(download_counts.get(&record.package)),
        );
    }
    value
}

fn export_csv(records: &[PackageRecord], download_counts: &std::collections::BTreeMap<String, u64>) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for record in records {
        let rate = PassRate::of(record.passed_iterations(), record.completed_iterations());
        let float = |value: Option<f64>| value.map_or(String::new(), |v| format!("{v:.4}"));
        let list = |items: &[String]| items.join("; ");
        let extensions = record.extensions.as_ref();
        let cells: Vec<String> = vec![
            record.package.clone(),
            record.category.clone(),
            record.iterations_planned.to_string(),
            record.completed_iterations().to_string(),
            record.passed_iterations().to_string(),
            record.fail_count.to_string(),
            record.crashed_iterations().to_string(),
            record.deadlock_count.to_string(),
            record.timeout_count.to_string(),
            record.harness_error_count.to_string(),
            float(rate.map(|r| r.rate)),
            float(rate.map(|r| r.low)),
            float(rate.map(|r| r.high)),
            float(rate.and_then(|r| r.ruled_out_failure_rate())),
            format!("{:.2}", record.mean_duration_s),
            list(&record.failure_signatures),
            record
                .flaky_tests
                .iter()
                .map(|(test, fails)| format!("{test}={fails}"))
                .collect::<Vec<_>>()
                .join("; "),
            list(&record.tsan_warning_types),
            record.tsan_warnings.len().to_string(),
            list(&record.gil_fallback_modules),
            extensions.map(|e| list(&e.modules)).unwrap_or_default(),
            extensions
                .map(|e| {
                    e.declarations
                        .iter()
                        .map(describe_declaration)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
            record.install_ok.to_string(),
            record.install_error.clone().unwrap_or_default(),
            record.import_ok.to_string(),
            record.import_error.clone().unwrap_or_default(),
            record.setup_stage.clone().unwrap_or_default(),
            record.setup_error.clone().unwrap_or_default(),
            float(record.gil_enabled_pass_rate),
            record
                .gil_comparison
                .as_ref()
                .map(|g| g.verdict.to_string())
                .unwrap_or_default(),
            record
                .gil_comparison
                .as_ref()
                .map(|g| list(&g.ft_only_failing_tests))
                .unwrap_or_default(),
            record.finished.to_string(),
            list(&record.evidence),
            download_counts
                .get(&record.package)
                .map_or(String::new(), u64::to_string),
            record.oom_count.to_string(),
            record.network.to_string(),
        ];
        debug_assert_eq!(cells.len(), CSV_COLUMNS.len());
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        let _ = writeln!(out, "{}", line.join(","));
    }
    out
}

/// RFC 4180: quoted when it holds a comma, quote or line break, quotes doubled. A cell that a
/// spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage
/// return, and not a number) gets a leading `'`, so a test name like `=HYPERLINK(...)` stays
/// text.
fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']) && text.parse::<f64>().is_err();
    let text = if formula {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn records() -> Vec<PackageRecord> {
        vec![
            PackageRecord {
                package: "a".into(),
                category: "compatible".into(),
                iterations_completed: 10,
                pass_count: 10,
                evidence: vec!["all 10 iterations passed".into()],
                ..PackageRecord::default()
            },
            PackageRecord {
                package: "b".into(),
                category: "install_failure".into(),
                install_ok: false,
                install_error: Some("exit 1: \"quoted\", with comma\nand a line".into()),
                ..PackageRecord::default()
            },
        ]
    }

    #[test]
    fn csv_has_the_documented_columns_and_quotes_what_needs_it() {
        let downloads = BTreeMap::from([("a".to_string(), 600)]);
        let csv = export(&records(), ExportFormat::Csv, &downloads);
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(CSV_COLUMNS.join(",").as_str()));
        let a = lines.next().expect("row a");
        assert!(
            a.starts_with("a,compatible,0,10,10,0,0,0,0,0,1.0000,0.7225,1.0000,0.2589,"),
            "{a}"
        );
        assert!(a.ends_with(",true,all 10 iterations passed,600,0,false"), "{a}");
        assert!(
            csv.contains("\"exit 1: \"\"quoted\"\", with comma\nand a line\""),
            "{csv}"
        );
    }

    #[test]
    fn csv_cells_a_spreadsheet_would_run_stay_text() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("+1+2"), "'+1+2");
        assert_eq!(csv_field("-0.5"), "-0.5");
        assert_eq!(csv_field("test_a"), "test_a");
    }

    #[test]
    fn json_and_jsonl_carry_every_field_and_the_statistics() {
        let json = export(&records(), ExportFormat::Json, &BTreeMap::new());
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value.as_array().map(Vec::len), Some(2));
        assert_eq!(value[0]["package"], "a");
        assert!((value[0]["pass_rate_ci_low"].as_f64().unwrap_or(0.0) - 0.7225).abs() < 0.001);
        assert_eq!(value[1]["pass_rate"], serde_json::Value::Null);
        assert!(value[0].get("iterations").is_some() && value[0].get("evidence").is_some());

        let jsonl = export(&records(), ExportFormat::Jsonl, &BTreeMap::new());
        let lines: Vec<&str> = jsonl.lines().collect();
        assert_eq!(lines.len(), 2);
        let back = PackageRecord::parse_line(lines[1]).expect("a results line still");
        assert_eq!(back.install_error, records()[1].install_error);
        assert_eq!("jsonl".parse::<ExportFormat>(), Ok(ExportFormat::Jsonl));
        assert!(
            "xml"
                .parse::<ExportFormat>()
                .expect_err("unknown")
                .contains("csv, json or jsonl")
        );
    }
}
