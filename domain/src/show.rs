//! The `show` view of a results folder: a header, counts per category, and a table of packages.

use std::cmp::Ordering;
use std::fmt::Write;
use std::str::FromStr;

use comfy_table::{CellAlignment, Table};

use crate::category::Category;
use crate::outcome::signal_name;
use crate::results::{PackageRecord, RunMeta};

/// How `show` orders the package table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Most severe category first, then by name.
    #[default]
    Category,
    /// Lowest pass rate first, then by name; packages without one last.
    PassRate,
    /// Alphabetical.
    Name,
}

impl SortKey {
    /// The name `--sort` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Category => "category",
            SortKey::PassRate => "pass_rate",
            SortKey::Name => "name",
        }
    }
}

impl FromStr for SortKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [SortKey::Category, SortKey::PassRate, SortKey::Name]
            .into_iter()
            .find(|key| key.as_str() == s)
            .ok_or_else(|| format!("unknown sort key {s:?}: expected category, pass_rate or name"))
    }
}

/// Options of the `show` view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowOptions {
    pub sort: SortKey,
    /// At most this many table rows; the summary still counts every package.
    pub limit: Option<usize>,
}

/// Longest details cell, in characters.
const DETAILS_CHARS: usize = 80;

/// Renders the view: the run (when `meta` is known), the summary, then the table.
pub fn render_show(meta: Option<&RunMeta>, records: &[PackageRecord], options: &ShowOptions) -> String {
    let mut out = String::new();
    if let Some(meta) = meta {
        render_header(&mut out, meta);
        out.push('\n');
    }
    render_summary(&mut out, records);
    if records.is_empty() {
        return out;
    }

    let mut sorted: Vec<&PackageRecord> = records.iter().collect();
    sorted.sort_by(|a, b| compare(a, b, options.sort));
    let shown = options.limit.unwrap_or(usize::MAX).min(sorted.len());
    out.push('\n');
    let _ = writeln!(out, "{}", package_table(&sorted[..shown]));
    if shown < sorted.len() {
        let _ = writeln!(
            out,
            "({} more not shown: {shown} of {} packages listed)",
            sorted.len() - shown,
            sorted.len()
        );
    }
    out
}

/// Which run, on what, with which options.
fn render_header(out: &mut String, meta: &RunMeta) {
    let mut run = format!("Run {}", or_unknown(&meta.run_id));
    if !meta.label.is_empty() {
        let _ = write!(run, " ({})", meta.label);
    }
    let _ = writeln!(out, "{run}");

    let python = match &meta.interpreter {
        Some(profile) => profile.summary(),
        None if !meta.python_version.is_empty() => format!("Python {}", meta.python_version),
        None => String::new(),
    };
    let target = [python.as_str(), meta.target_python.as_str()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" at ");
    if !target.is_empty() {
        let _ = writeln!(out, "  Python:     {target}");
    }

    let system = &meta.system;
    if !system.os.is_empty() || !system.hostname.is_empty() {
        let mut line = [system.hostname.as_str(), system.os.as_str(), system.arch.as_str()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if system.cpu_count > 0 {
            let _ = write!(line, ", {} CPUs", system.cpu_count);
        }
        let _ = writeln!(out, "  System:     {line}");
    }

    let config = &meta.config;
    if config.iterations > 0 {
        let mut line = format!("{} per package", config.iterations);
        if config.timeout > 0 {
            let _ = write!(line, ", timeout {}s", config.timeout);
        }
        if config.stall_threshold > 0 {
            let _ = write!(line, ", stall threshold {}s", config.stall_threshold);
        }
        if config.stop_on_first_pass {
            line.push_str(", stop on first pass");
        }
        if config.modes.iter().any(|m| m == "gil") {
            line.push_str(", compared with the GIL");
        }
        let _ = writeln!(out, "  Iterations: {line}");
    }

    let mut when = or_unknown(&meta.timestamp).to_string();
    if let Some(finished) = &meta.finished_at {
        let _ = write!(when, ", finished {finished}");
    }
    if meta.interrupted {
        when.push_str(" [interrupted]");
    }
    let _ = writeln!(out, "  Started:    {when}");
}

/// Counts per category in severity order, with the share of all packages.
fn render_summary(out: &mut String, records: &[PackageRecord]) {
    let total = records.len();
    if total == 0 {
        let _ = writeln!(out, "No package results yet.");
        return;
    }
    let _ = writeln!(
        out,
        "Compatibility summary: {total} package{}",
        if total == 1 { "" } else { "s" }
    );
    let percent = |n: usize| 100.0 * n as f64 / total as f64;
    for category in Category::ALL {
        let n = records.iter().filter(|r| r.category() == Some(category)).count();
        if n > 0 {
            let _ = writeln!(out, "  {:<24} {n:>5}  {:>5.1}%", category.as_str(), percent(n));
        }
    }
    let unrecognised = records.iter().filter(|r| r.category().is_none()).count();
    if unrecognised > 0 {
        let _ = writeln!(
            out,
            "  {:<24} {unrecognised:>5}  {:>5.1}%",
            "(unrecognised)",
            percent(unrecognised)
        );
    }
    let unfinished = records.iter().filter(|r| !r.finished).count();
    if unfinished > 0 {
        let _ = writeln!(
            out,
            "  {unfinished} of {total} did not finish: their verdicts rest on the iterations that ran"
        );
    }
}

fn compare(a: &PackageRecord, b: &PackageRecord, sort: SortKey) -> Ordering {
    let by_key = match sort {
        SortKey::Category => severity_rank(a).cmp(&severity_rank(b)),
        SortKey::PassRate => match (a.known_pass_rate(), b.known_pass_rate()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        },
        SortKey::Name => Ordering::Equal,
    };
    by_key.then_with(|| a.package.cmp(&b.package))
}

/// Unrecognised categories sort after every known one.
fn severity_rank(record: &PackageRecord) -> usize {
    record.category().map_or(Category::ALL.len(), Category::severity_rank)
}

fn package_table(records: &[&PackageRecord]) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header(vec![
        "Package",
        "Category",
        "Pass rate",
        "Iterations",
        "Crashes",
        "Details",
    ]);
    for record in records {
        let completed = record.completed_iterations();
        let pass_rate = if completed > 0 {
            format!("{}/{completed}", record.passed_iterations())
        } else {
            "N/A".to_string()
        };
        let ran = completed + record.harness_error_count;
        let iterations = if record.iterations_planned > ran {
            format!("{ran}/{}", record.iterations_planned)
        } else {
            ran.to_string()
        };
        table.add_row(vec![
            record.package.clone(),
            record.category.clone(),
            pass_rate,
            iterations,
            record.crashed_iterations().to_string(),
            details(record),
        ]);
    }
    for index in 2..=4 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The facts a reader looks for first: the setup error, the crash, stalls, timeouts, harness
/// errors; the classification's evidence when there is none of those.
fn details(record: &PackageRecord) -> String {
    let mut facts: Vec<String> = Vec::new();
    if !record.install_ok {
        facts.push(format!(
            "install failed: {}",
            record.install_error.as_deref().unwrap_or("no message")
        ));
    } else if !record.import_ok {
        facts.push(format!(
            "import failed: {}",
            record.import_error.as_deref().unwrap_or("no message")
        ));
    }
    if let Some(crash) = crash_detail(record) {
        facts.push(crash);
    }
    if record.deadlock_count > 0 {
        facts.push(format!("{} stalled", record.deadlock_count));
    }
    if record.timeout_count > 0 {
        facts.push(format!("{} timed out", record.timeout_count));
    }
    if record.harness_error_count > 0 {
        let reason = record.iterations.iter().find_map(|i| i.harness_error.as_deref());
        facts.push(match reason {
            Some(reason) => format!("{} harness errors ({reason})", record.harness_error_count),
            None => format!("{} harness errors", record.harness_error_count),
        });
    }
    let text = if facts.is_empty() {
        record.evidence.join("; ")
    } else {
        facts.join("; ")
    };
    truncate(&one_line(&text), DETAILS_CHARS)
}

/// `SIGSEGV: <signature>` from the first crashed iteration, or the first known signature.
fn crash_detail(record: &PackageRecord) -> Option<String> {
    if let Some(crash) = record.iterations.iter().find(|i| i.status == "crash") {
        let signal = crash
            .crash_signal
            .clone()
            .or_else(|| crash.signal.map(signal_name))
            .unwrap_or_else(|| "crashed".to_string());
        let signature = crash
            .crash_signature
            .as_deref()
            .or(record.failure_signatures.first().map(String::as_str));
        return Some(match signature {
            Some(signature) => format!("{signal}: {signature}"),
            None => signal,
        });
    }
    if record.crash_count == 0 {
        return None;
    }
    Some(
        record
            .failure_signatures
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{} crashed", record.crash_count)),
    )
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() { "(unknown)" } else { text }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(3)).collect();
    format!("{kept}...")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{IterationRecord, RunConfig, SystemInfo};

    fn record(name: &str, category: &str, passes: u32, completed: u32) -> PackageRecord {
        PackageRecord {
            package: name.to_string(),
            category: category.to_string(),
            iterations_planned: completed,
            pass_count: passes,
            fail_count: completed - passes,
            iterations_completed: completed,
            pass_rate: (completed > 0).then(|| f64::from(passes) / f64::from(completed)),
            iterations: (1..=completed)
                .map(|index| IterationRecord {
                    index,
                    status: if index <= passes { "pass" } else { "fail" }.to_string(),
                    ..IterationRecord::default()
                })
                .collect(),
            ..PackageRecord::default()
        }
    }

    /// The first cell of each table body row, in order.
    fn rows(out: &str) -> Vec<String> {
        table_lines(out)
            .into_iter()
            .map(|line| line.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    }

    /// Table body lines with the border stripped.
    fn table_lines(out: &str) -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with('|') && !l.contains("Package"))
            .map(|l| l.trim_matches('|').trim().to_string())
            .collect()
    }

    fn row_of<'a>(lines: &'a [String], package: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(package))
            .unwrap_or_else(|| panic!("no row for {package}: {lines:?}"))
    }

    fn show(records: &[PackageRecord]) -> String {
        render_show(None, records, &ShowOptions::default())
    }

    #[test]
    fn summary_counts_follow_severity_order_with_percentages() {
        let records = [
            record("a", "compatible", 3, 3),
            record("b", "crash", 0, 3),
            record("c", "compatible", 3, 3),
            record("d", "made_up", 0, 0),
        ];
        let out = show(&records);
        let summary: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
        assert_eq!(summary[0], "Compatibility summary: 4 packages", "{out}");
        assert!(
            summary[1].starts_with("  crash") && summary[1].ends_with("1   25.0%"),
            "{out}"
        );
        assert!(
            summary[2].starts_with("  compatible") && summary[2].ends_with("2   50.0%"),
            "{out}"
        );
        assert!(summary[3].starts_with("  (unrecognised)"), "{out}");
        assert!(!out.contains("deadlock"), "zero counts are skipped: {out}");
    }

    #[test]
    fn sorting_and_limits() {
        let records = [
            record("zeta", "compatible", 3, 3),
            record("alpha", "intermittent", 1, 3),
            record("mid", "install_failure", 0, 0),
            record("beta", "incompatible", 0, 3),
            record("gamma", "intermittent", 2, 3),
            record("odd", "made_up", 0, 0),
        ];
        let cases = [
            (
                SortKey::Category,
                None,
                vec!["alpha", "gamma", "beta", "mid", "zeta", "odd"],
            ),
            (
                SortKey::PassRate,
                None,
                vec!["beta", "alpha", "gamma", "zeta", "mid", "odd"],
            ),
            (
                SortKey::Name,
                None,
                vec!["alpha", "beta", "gamma", "mid", "odd", "zeta"],
            ),
            (SortKey::Name, Some(2), vec!["alpha", "beta"]),
            (SortKey::Category, Some(0), vec![]),
        ];
        for (sort, limit, expected) in cases {
            let out = render_show(None, &records, &ShowOptions { sort, limit });
            assert_eq!(rows(&out), expected, "{sort:?} {limit:?}\n{out}");
        }
        let limited = render_show(
            None,
            &records,
            &ShowOptions {
                sort: SortKey::Name,
                limit: Some(2),
            },
        );
        assert!(limited.contains("(4 more not shown"), "{limited}");
        assert!(limited.contains("Compatibility summary: 6 packages"), "{limited}");
    }

    #[test]
    fn sort_keys_parse_by_their_flag_names() {
        for key in [SortKey::Category, SortKey::PassRate, SortKey::Name] {
            assert_eq!(key.as_str().parse::<SortKey>(), Ok(key));
        }
        let error = "speed".parse::<SortKey>().expect_err("unknown");
        assert!(error.contains("category, pass_rate or name"), "{error}");
    }

    #[test]
    fn rows_show_pass_rate_iterations_and_crashes() {
        let mut partial = record("partial", "intermittent", 1, 2);
        partial.iterations_planned = 10;
        let mut crashed = record("crashy", "crash", 1, 3);
        crashed.crash_count = 2;
        let cases: [(PackageRecord, &[&str]); 4] = [
            (
                record("full", "compatible", 3, 3),
                &["full", "compatible", "3/3", "3", "0"],
            ),
            (partial, &["partial", "intermittent", "1/2", "2/10", "0"]),
            (record("none", "unknown", 0, 0), &["none", "unknown", "N/A", "0", "0"]),
            (crashed, &["crashy", "crash", "1/3", "3", "2"]),
        ];
        let records: Vec<PackageRecord> = cases.iter().map(|(r, _)| r.clone()).collect();
        let lines = table_lines(&show(&records));
        for (record, expected) in &cases {
            let cells: Vec<&str> = row_of(&lines, &record.package).split_whitespace().take(5).collect();
            assert_eq!(cells, *expected, "{lines:?}");
        }
    }

    #[test]
    fn details_name_what_went_wrong() {
        let mut crashed = record("crashed", "crash", 0, 2);
        crashed.crash_count = 1;
        crashed.iterations[1].status = "crash".into();
        crashed.iterations[1].signal = Some(6);
        crashed.iterations[1].crash_signature = Some("_PyObject_GC_Link".into());

        let mut no_install = record("noinstall", "install_failure", 0, 0);
        no_install.install_ok = false;
        no_install.install_error = Some(format!("install command exited with 1:\n{}", "x".repeat(200)));

        let mut no_import = record("noimport", "import_failure", 0, 0);
        no_import.import_ok = false;
        no_import.import_error = Some("ModuleNotFoundError: No module named '_speedups'".into());

        let mut slow = record("slow", "incompatible", 0, 2);
        slow.timeout_count = 2;

        let mut stuck = record("stuck", "deadlock", 1, 2);
        stuck.deadlock_count = 1;

        let mut fallback = record("fallback", "compatible_gil_fallback", 2, 2);
        fallback.evidence = vec![
            "all 2 iterations passed".into(),
            "the GIL was re-enabled by pkg._speedups".into(),
        ];

        let cases = [
            ("crashed", "SIGABRT: _PyObject_GC_Link"),
            ("noinstall", "install failed: install command exited with 1: xxx"),
            (
                "noimport",
                "import failed: ModuleNotFoundError: No module named '_speedups'",
            ),
            ("slow", "2 timed out"),
            ("stuck", "1 stalled"),
            ("fallback", "the GIL was re-enabled by pkg._speedups"),
        ];
        let records = [crashed, no_install, no_import, slow, stuck, fallback];
        let lines = table_lines(&show(&records));
        for (package, expected) in cases {
            let row = row_of(&lines, package);
            assert!(row.contains(expected), "{package}: {row:?} lacks {expected:?}");
        }
        let install_row = row_of(&lines, "noinstall");
        assert!(
            install_row.ends_with("...") && !install_row.contains(&"x".repeat(DETAILS_CHARS)),
            "truncated: {install_row}"
        );
    }

    #[test]
    fn header_names_the_run_target_system_and_options() {
        let meta = RunMeta {
            run_id: "0190f1c2".into(),
            label: "2 packages x 10".into(),
            timestamp: "2026-03-03T14:00:00Z".into(),
            finished_at: None,
            interrupted: true,
            target_python: "/opt/py/bin/python3.13t".into(),
            python_version: "3.13.5".into(),
            interpreter: None,
            system: SystemInfo {
                hostname: "box".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                cpu_count: 8,
            },
            config: RunConfig {
                iterations: 10,
                timeout: 600,
                stall_threshold: 60,
                ..RunConfig::default()
            },
        };
        let mut unfinished = record("six", "intermittent", 1, 2);
        unfinished.finished = false;
        let out = render_show(Some(&meta), &[unfinished], &ShowOptions::default());
        for expected in [
            "Run 0190f1c2 (2 packages x 10)",
            "Python:     Python 3.13.5 at /opt/py/bin/python3.13t",
            "System:     box linux x86_64, 8 CPUs",
            "Iterations: 10 per package, timeout 600s, stall threshold 60s",
            "Started:    2026-03-03T14:00:00Z [interrupted]",
            "1 of 1 did not finish",
        ] {
            assert!(out.contains(expected), "{expected:?} missing:\n{out}");
        }
        assert!(out.find("Run ").unwrap_or(usize::MAX) < out.find("Compatibility summary").unwrap_or(0));
    }

    #[test]
    fn an_empty_folder_says_so() {
        let out = show(&[]);
        assert!(out.contains("No package results yet."), "{out}");
        assert!(!out.contains("Package"), "{out}");
    }
}
