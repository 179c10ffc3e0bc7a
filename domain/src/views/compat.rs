//! The `compat` view: per package, its extension modules, which of them re-enabled the GIL,
//! what the sources declare, and a one-line verdict.

use std::fmt::Write;

use serde::Serialize;

use crate::evidence::{Declaration, ExtensionReport};
use crate::results::PackageRecord;
use crate::stats::PassRate;
use crate::views::text::{cell, plain_table, plural};

/// One package's extension compatibility.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompatRow {
    pub package: String,
    pub category: String,
    /// The free-threaded pass rate with its 95% interval, so a verdict is read with the tests.
    pub pass_rate: Option<PassRate>,
    /// Whether the extension probe ran at all.
    pub probed: bool,
    /// No extension modules found.
    pub pure: bool,
    pub extension_modules: Vec<String>,
    pub gil_enabled_by: Vec<String>,
    /// `file:line kind (GIL not used|GIL used)`.
    pub declarations: Vec<String>,
    /// Modules that failed to import during the probe.
    pub probe_import_errors: Vec<String>,
    pub verdict: String,
}

impl CompatRow {
    pub fn of(record: &PackageRecord) -> CompatRow {
        let report = record.extensions.as_ref();
        let mut gil_enabled_by = report.map(|r| r.gil_enabled_by.clone()).unwrap_or_default();
        for module in &record.gil_fallback_modules {
            if !gil_enabled_by.contains(module) {
                gil_enabled_by.push(module.clone());
            }
        }
        CompatRow {
            package: record.package.clone(),
            category: record.category.clone(),
            pass_rate: PassRate::of(record.passed_iterations(), record.completed_iterations()),
            probed: report.is_some(),
            pure: report.is_some_and(ExtensionReport::is_pure) && gil_enabled_by.is_empty(),
            extension_modules: report.map(|r| r.modules.clone()).unwrap_or_default(),
            declarations: report
                .map(|r| r.declarations.iter().map(describe_declaration).collect())
                .unwrap_or_default(),
            probe_import_errors: report
                .map(|r| r.import_errors.iter().map(|(m, e)| format!("{m}: {e}")).collect())
                .unwrap_or_default(),
            verdict: verdict(record, report, &gil_enabled_by),
            gil_enabled_by,
        }
    }

    /// Has extension modules, or something re-enabled the GIL.
    pub fn has_extensions(&self) -> bool {
        !self.extension_modules.is_empty() || !self.gil_enabled_by.is_empty()
    }
}

/// The rows, in name order; with `extensions_only`, only packages with extension modules.
pub fn compat_rows(records: &[PackageRecord], extensions_only: bool) -> Vec<CompatRow> {
    let mut rows: Vec<CompatRow> = records
        .iter()
        .map(CompatRow::of)
        .filter(|row| !extensions_only || row.has_extensions())
        .collect();
    rows.sort_by(|a, b| a.package.cmp(&b.package));
    rows
}

/// The text view: a summary line, then the table.
pub fn render_compat(rows: &[CompatRow]) -> String {
    let mut out = String::new();
    let probed = rows.iter().filter(|r| r.probed).count();
    let with_extensions = rows.iter().filter(|r| r.has_extensions()).count();
    let fallback = rows.iter().filter(|r| !r.gil_enabled_by.is_empty()).count();
    let _ = writeln!(
        out,
        "{} package{}: {probed} probed, {} pure Python, {with_extensions} with extension modules, {fallback} re-enable the GIL",
        rows.len(),
        plural(rows.len()),
        rows.iter().filter(|r| r.pure).count(),
    );
    if rows.is_empty() {
        return out;
    }
    let table_rows = rows
        .iter()
        .map(|row| {
            vec![
                row.package.clone(),
                row.category.clone(),
                row.pass_rate.map_or("N/A".to_string(), |r| r.describe()),
                if !row.probed {
                    "not probed".to_string()
                } else if row.pure {
                    "pure".to_string()
                } else {
                    cell(&row.extension_modules.join(", "), 50)
                },
                cell(&row.gil_enabled_by.join(", "), 40),
                cell(&row.declarations.join("; "), 60),
                cell(&row.verdict, 90),
            ]
        })
        .collect();
    let table = plain_table(
        &[
            "Package",
            "Category",
            "Pass rate",
            "Extensions",
            "GIL re-enabled by",
            "Declarations",
            "Verdict",
        ],
        table_rows,
        &[],
    );
    let _ = writeln!(out, "{table}");
    out
}

/// `src/mod.c:12 Py_mod_gil (GIL not used)`.
pub fn describe_declaration(declaration: &Declaration) -> String {
    let says = match declaration.gil_not_used {
        Some(true) => " (GIL not used)",
        Some(false) => " (GIL used)",
        None => "",
    };
    format!("{}:{} {}{says}", declaration.file, declaration.line, declaration.kind)
}

fn verdict(record: &PackageRecord, report: Option<&ExtensionReport>, gil_enabled_by: &[String]) -> String {
    let Some(report) = report else {
        if !gil_enabled_by.is_empty() {
            return format!("re-enables the GIL ({})", gil_enabled_by.join(", "));
        }
        return if record.install_ok && record.import_ok {
            "not probed: run with --detect-extensions".to_string()
        } else {
            "not probed: the package did not install or import".to_string()
        };
    };
    if let Some(error) = &report.probe_error {
        return format!("probe failed: {error}");
    }
    let declares_used = report.declarations.iter().any(|d| d.gil_not_used == Some(false));
    let declares_not_used =
        !report.declarations.is_empty() && report.declarations.iter().all(|d| d.gil_not_used == Some(true));
    let mut verdict = if !gil_enabled_by.is_empty() {
        let why = if declares_used {
            "its sources declare it needs the GIL"
        } else {
            "declare Py_mod_gil = Py_MOD_GIL_NOT_USED once it is thread-safe"
        };
        format!(
            "re-enables the GIL: {} ({why}); runs, but without parallelism",
            gil_enabled_by.join(", ")
        )
    } else if report.is_pure() {
        "pure Python: no extension can re-enable the GIL".to_string()
    } else if declares_not_used {
        "free-threading ready: the extensions declare Py_MOD_GIL_NOT_USED and the GIL stayed off".to_string()
    } else {
        "the GIL stayed off after importing every extension module".to_string()
    };
    if !report.import_errors.is_empty() {
        let _ = write!(
            verdict,
            " ({} module{} failed to import in the probe)",
            report.import_errors.len(),
            plural(report.import_errors.len())
        );
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, extensions: Option<ExtensionReport>) -> PackageRecord {
        let mut record = PackageRecord {
            package: name.into(),
            category: "compatible".into(),
            extensions,
            ..PackageRecord::default()
        };
        if let Some(report) = &record.extensions {
            record.gil_fallback_modules = report.gil_enabled_by.clone();
        }
        record
    }

    fn declaration(gil_not_used: Option<bool>) -> Declaration {
        Declaration {
            file: "src/m.c".into(),
            line: 7,
            kind: "Py_mod_gil".into(),
            text: "{Py_mod_gil, Py_MOD_GIL_NOT_USED}".into(),
            gil_not_used,
        }
    }

    #[test]
    fn verdicts_say_what_the_probe_found() {
        let fallback = ExtensionReport {
            modules: vec!["p._speedups".into()],
            gil_enabled_by: vec!["p._speedups".into()],
            gil_enabled_after_import: Some(true),
            ..ExtensionReport::default()
        };
        let ready = ExtensionReport {
            modules: vec!["q._fast".into()],
            declarations: vec![declaration(Some(true))],
            gil_enabled_after_import: Some(false),
            ..ExtensionReport::default()
        };
        let silent = ExtensionReport {
            modules: vec!["r._c".into()],
            import_errors: vec![("r._broken".into(), "ImportError".into())],
            ..ExtensionReport::default()
        };
        let broken = ExtensionReport {
            probe_error: Some("timed out".into()),
            ..ExtensionReport::default()
        };
        let cases = [
            (
                record("fallback", Some(fallback)),
                "re-enables the GIL: p._speedups (declare Py_mod_gil",
            ),
            (record("ready", Some(ready)), "free-threading ready"),
            (
                record("silent", Some(silent)),
                "the GIL stayed off after importing every extension module (1 module failed",
            ),
            (record("pure", Some(ExtensionReport::default())), "pure Python"),
            (record("broken", Some(broken)), "probe failed: timed out"),
            (record("unprobed", None), "not probed: run with --detect-extensions"),
        ];
        for (record, expected) in cases {
            let row = CompatRow::of(&record);
            assert!(row.verdict.starts_with(expected), "{}: {}", record.package, row.verdict);
        }
    }

    #[test]
    fn extensions_only_keeps_packages_with_extension_modules() {
        let records = [
            record(
                "b",
                Some(ExtensionReport {
                    modules: vec!["b._c".into()],
                    declarations: vec![declaration(Some(false))],
                    ..ExtensionReport::default()
                }),
            ),
            record("a", Some(ExtensionReport::default())),
            record("c", None),
        ];
        let all = compat_rows(&records, false);
        assert_eq!(
            all.iter().map(|r| r.package.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let only = compat_rows(&records, true);
        assert_eq!(only.iter().map(|r| r.package.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(only[0].declarations, ["src/m.c:7 Py_mod_gil (GIL used)"]);
        let text = render_compat(&all);
        assert!(
            text.starts_with("3 packages: 2 probed, 1 pure Python, 1 with extension modules, 0 re-enable the GIL"),
            "{text}"
        );
        assert!(text.contains("not probed") && text.contains("b._c"), "{text}");
    }
}
