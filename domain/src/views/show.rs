//! The `show` view of a results folder: a header, counts per category, and a table of packages.

use std::cmp::Ordering;
use std::fmt::Write;
use std::str::FromStr;

use comfy_table::Table;
use serde::Serialize;

use crate::category::Category;
use crate::evidence::LimitHit;
use crate::outcome::signal_name;
use crate::results::{PackageRecord, RunMeta};
use crate::stats::{PassRate, ruled_out_failure_rate};
use crate::views::builds::BuildMix;
use crate::views::text::{cell, plain_table, plural};

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

/// How `show` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShowFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for ShowFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(ShowFormat::Text),
            "json" => Ok(ShowFormat::Json),
            _ => Err(format!("unknown format {s:?}: expected text or json")),
        }
    }
}

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
    for warning in BuildMix::of(records).warnings() {
        let _ = writeln!(out, "  {warning}");
    }

    let sorted = sorted(records, options.sort);
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
pub fn render_header(out: &mut String, meta: &RunMeta) {
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
        if config.test_network {
            line.push_str(", tests with the network");
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

/// Counts per category in severity order, with a glyph each and the share of all packages.
fn render_summary(out: &mut String, records: &[PackageRecord]) {
    let total = records.len();
    if total == 0 {
        let _ = writeln!(out, "No package results yet.");
        return;
    }
    let _ = writeln!(out, "Compatibility summary: {total} package{}", plural(total));
    for count in category_counts(records) {
        let _ = writeln!(
            out,
            "  {} {:<24} {:>5}  {:>5.1}%",
            count.glyph, count.category, count.count, count.percent
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

/// How many packages fell in one category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryCount {
    /// A category name, or `(unrecognised)` for names ftsurvey does not know.
    pub category: String,
    pub glyph: String,
    pub count: usize,
    /// Share of all packages, 0 to 100.
    pub percent: f64,
}

/// Non-zero counts per category, in severity order; unrecognised names last.
pub fn category_counts(records: &[PackageRecord]) -> Vec<CategoryCount> {
    let total = records.len().max(1);
    let percent = |n: usize| 100.0 * n as f64 / total as f64;
    let mut counts: Vec<CategoryCount> = Category::ALL
        .into_iter()
        .map(|category| {
            (
                category,
                records.iter().filter(|r| r.category() == Some(category)).count(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .map(|(category, n)| CategoryCount {
            category: category.as_str().to_string(),
            glyph: category.glyph().to_string(),
            count: n,
            percent: percent(n),
        })
        .collect();
    let unrecognised = records.iter().filter(|r| r.category().is_none()).count();
    if unrecognised > 0 {
        counts.push(CategoryCount {
            category: "(unrecognised)".to_string(),
            glyph: "?".to_string(),
            count: unrecognised,
            percent: percent(unrecognised),
        });
    }
    counts
}

/// The records in the order `sort` asks for.
pub fn sorted(records: &[PackageRecord], sort: SortKey) -> Vec<&PackageRecord> {
    let mut sorted: Vec<&PackageRecord> = records.iter().collect();
    sorted.sort_by(|a, b| compare(a, b, sort));
    sorted
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
pub fn severity_rank(record: &PackageRecord) -> usize {
    record.category().map_or(Category::ALL.len(), Category::severity_rank)
}

/// One row of the package table, as `show --format json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageRow {
    pub package: String,
    pub category: String,
    /// Passes, completed iterations, the rate and its Wilson 95% interval.
    pub pass_rate: Option<PassRate>,
    /// For all-pass packages: the per-run failure rate a race would need to have been seen with
    /// 95% probability.
    pub ruled_out_failure_rate: Option<f64>,
    /// Iterations that ran (harness errors included).
    pub iterations: u32,
    pub iterations_planned: u32,
    pub crashes: u32,
    pub deadlocks: u32,
    /// Tests that failed in some iterations but not all.
    pub flaky_tests: usize,
    /// The run let the package's tests use the host's network.
    pub network: bool,
    pub details: String,
}

impl PackageRow {
    pub fn of(record: &PackageRecord) -> PackageRow {
        let pass_rate = PassRate::of(record.passed_iterations(), record.completed_iterations());
        PackageRow {
            package: record.package.clone(),
            category: record.category.clone(),
            pass_rate,
            ruled_out_failure_rate: pass_rate.and_then(|r| r.ruled_out_failure_rate()),
            iterations: record.completed_iterations() + record.harness_error_count,
            iterations_planned: record.iterations_planned,
            crashes: record.crashed_iterations(),
            deadlocks: record.deadlock_count,
            flaky_tests: record.flaky_tests.len(),
            network: record.network,
            details: details(record),
        }
    }
}

/// `show --format json`: the run, the counts per category and the package rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShowJson<'a> {
    pub run: Option<&'a RunMeta>,
    pub packages_total: usize,
    pub categories: Vec<CategoryCount>,
    /// The interpreter builds the iterations ran on, and the packages that mixed versions or
    /// environments.
    pub builds: BuildMix,
    pub packages: Vec<PackageRow>,
}

/// The view as JSON, sorted and limited like the table.
pub fn show_json<'a>(meta: Option<&'a RunMeta>, records: &[PackageRecord], options: &ShowOptions) -> ShowJson<'a> {
    let rows = sorted(records, options.sort);
    let shown = options.limit.unwrap_or(usize::MAX).min(rows.len());
    ShowJson {
        run: meta,
        packages_total: records.len(),
        categories: category_counts(records),
        builds: BuildMix::of(records),
        packages: rows[..shown].iter().map(|r| PackageRow::of(r)).collect(),
    }
}

fn package_table(records: &[&PackageRecord]) -> Table {
    let rows = records
        .iter()
        .map(|record| {
            let row = PackageRow::of(record);
            let iterations = if row.iterations_planned > row.iterations {
                format!("{}/{}", row.iterations, row.iterations_planned)
            } else {
                row.iterations.to_string()
            };
            vec![
                row.package,
                row.category,
                row.pass_rate
                    .map_or("N/A".to_string(), |r| format!("{}/{}", r.passes, r.completed)),
                row.pass_rate.map_or(String::new(), |r| r.interval()),
                iterations,
                row.crashes.to_string(),
                row.details,
            ]
        })
        .collect();
    plain_table(
        &[
            "Package",
            "Category",
            "Pass rate",
            "95% CI",
            "Iterations",
            "Crashes",
            "Details",
        ],
        rows,
        &[2, 3, 4, 5],
    )
}

/// The facts a reader looks for first: the setup error, the crash, flaky tests, TSAN, stalls,
/// timeouts, memory-limit kills, the sandbox limits iterations hit, harness errors, the GIL
/// fallback culprit; for a package that passed everything,
/// the race rate its passes rule out; last, whether its tests had the network.
pub fn details(record: &PackageRecord) -> String {
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
    if !record.flaky_tests.is_empty() {
        facts.push(format!(
            "{} flaky test{}",
            record.flaky_tests.len(),
            plural(record.flaky_tests.len())
        ));
    }
    if let Some(warning) = record.tsan_warnings.first() {
        facts.push(format!("TSAN: {}", warning.kind));
    }
    if record.timeout_count > 0 {
        facts.push(format!("{} timed out", record.timeout_count));
    }
    if record.oom_count > 0 {
        facts.push(format!("{} out of memory", record.oom_count));
    }
    facts.extend(limits_hit(record));
    if record.harness_error_count > 0 {
        let reason = record.iterations.iter().find_map(|i| i.harness_error.as_deref());
        facts.push(match reason {
            Some(reason) => format!("{} harness errors ({reason})", record.harness_error_count),
            None => format!("{} harness errors", record.harness_error_count),
        });
    }
    if !record.gil_fallback_modules.is_empty() {
        facts.push(format!("GIL re-enabled by {}", record.gil_fallback_modules.join(", ")));
    }
    let all_passed = record.completed_iterations() > 0 && record.passed_iterations() == record.completed_iterations();
    if facts.is_empty() && all_passed {
        facts.push(format!(
            "rules out a race failing >= {:.0}% of runs",
            (ruled_out_failure_rate(record.completed_iterations()) * 100.0).ceil()
        ));
    }
    let mut text = if facts.is_empty() {
        record.evidence.join("; ")
    } else {
        facts.join("; ")
    };
    // Added last, so that it hides neither the evidence nor the ruled-out rate.
    if record.network {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str("tests had the network");
    }
    cell(&text, DETAILS_CHARS)
}

/// `iterations 2, 5 hit the disk limit`, `iteration 7 hit the process and file-size limits`:
/// the iterations that hit sandbox limits, grouped by the limits they hit, in first-seen order.
/// An `oom` iteration's memory limit is left out: "out of memory" said so.
fn limits_hit(record: &PackageRecord) -> Vec<String> {
    const SHOWN: usize = 3;
    let mut groups: Vec<(Vec<LimitHit>, Vec<String>)> = Vec::new();
    for iteration in &record.iterations {
        let Some(sandbox) = &iteration.sandbox else {
            continue;
        };
        let limits: Vec<LimitHit> = LimitHit::ALL
            .into_iter()
            .filter(|limit| sandbox.limits_hit.contains(limit))
            .filter(|limit| !(*limit == LimitHit::Memory && iteration.status == "oom"))
            .collect();
        if limits.is_empty() {
            continue;
        }
        let index = iteration.index.to_string();
        match groups.iter_mut().find(|(seen, _)| *seen == limits) {
            Some((_, indices)) => indices.push(index),
            None => groups.push((limits, vec![index])),
        }
    }
    groups
        .into_iter()
        .map(|(limits, indices)| {
            let which = match indices.len() {
                1 => format!("iteration {}", indices[0]),
                n if n <= SHOWN => format!("iterations {}", indices.join(", ")),
                n => format!("iterations {} and {} more", indices[..SHOWN].join(", "), n - SHOWN),
            };
            let labels: Vec<&str> = limits.iter().map(|limit| limit.label()).collect();
            let what = match labels.split_last() {
                Some((last, [])) => format!("the {last} limit"),
                Some((last, rest)) => format!("the {} and {last} limits", rest.join(", ")),
                None => String::new(),
            };
            format!("{which} hit {what}")
        })
        .collect()
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
            summary[1].starts_with("  \u{1f4a5} crash") && summary[1].ends_with("1   25.0%"),
            "{out}"
        );
        assert!(
            summary[2].starts_with("  \u{2713} compatible") && summary[2].ends_with("2   50.0%"),
            "{out}"
        );
        assert!(summary[3].starts_with("  ? (unrecognised)"), "{out}");
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
                &["full", "compatible", "3/3", "44-100%", "3", "0"],
            ),
            (partial, &["partial", "intermittent", "1/2", "9-91%", "2/10", "0"]),
            (record("none", "unknown", 0, 0), &["none", "unknown", "N/A", "0", "0"]),
            (crashed, &["crashy", "crash", "1/3", "6-79%", "3", "2"]),
        ];
        let records: Vec<PackageRecord> = cases.iter().map(|(r, _)| r.clone()).collect();
        let lines = table_lines(&show(&records));
        for (record, expected) in &cases {
            let cells: Vec<&str> = row_of(&lines, &record.package).split_whitespace().take(6).collect();
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

        let mut hungry = record("hungry", "intermittent", 1, 3);
        hungry.oom_count = 2;

        let mut stuck = record("stuck", "deadlock", 1, 2);
        stuck.deadlock_count = 1;

        let mut fallback = record("fallback", "compatible_gil_fallback", 2, 2);
        fallback.gil_fallback_modules = vec!["pkg._speedups".into()];

        let mut racy = record("racy", "intermittent", 2, 3);
        racy.flaky_tests.insert("t::a".into(), 1);
        racy.flaky_tests.insert("t::b".into(), 1);

        let mut tsan = record("tsan", "tsan_warnings", 2, 2);
        tsan.tsan_warnings = vec![crate::results::labeille::tsan_warning_of_kind("data race")];

        let clean = record("clean", "compatible", 10, 10);

        let mut online = record("online", "compatible", 10, 10);
        online.network = true;

        let hit = |limits: &[LimitHit]| {
            Some(crate::evidence::SandboxReport {
                limits_hit: limits.to_vec(),
                ..Default::default()
            })
        };
        let mut limited = record("limited", "intermittent", 2, 8);
        limited.oom_count = 1;
        limited.iterations[2].status = "oom".into();
        limited.iterations[2].sandbox = hit(&[LimitHit::Memory]);
        limited.iterations[3].sandbox = hit(&[LimitHit::Memory]);
        let mut full = record("full", "intermittent", 2, 8);
        for iteration in &mut full.iterations[1..6] {
            iteration.sandbox = hit(&[LimitHit::Disk]);
        }
        full.iterations[7].sandbox = hit(&[LimitHit::Pids, LimitHit::FileSize]);

        let cases = [
            ("crashed", "SIGABRT: _PyObject_GC_Link"),
            ("noinstall", "install failed: install command exited with 1: xxx"),
            (
                "noimport",
                "import failed: ModuleNotFoundError: No module named '_speedups'",
            ),
            ("slow", "2 timed out"),
            ("hungry", "2 out of memory"),
            ("stuck", "1 stalled"),
            ("fallback", "GIL re-enabled by pkg._speedups"),
            ("racy", "2 flaky tests"),
            ("tsan", "TSAN: data race"),
            ("clean", "rules out a race failing >= 26% of runs"),
            (
                "online",
                "rules out a race failing >= 26% of runs; tests had the network",
            ),
            ("limited", "1 out of memory; iteration 4 hit the memory limit"),
            ("full", "iterations 2, 3, 4 and 2 more hit the disk limit; iteration 8"),
        ];
        let records = [
            crashed, no_install, no_import, slow, hungry, stuck, fallback, racy, tsan, clean, online, limited, full,
        ];
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
    fn iterations_are_grouped_by_the_limits_they_hit() {
        let mut limited = record("p", "intermittent", 1, 4);
        let sandbox = |limits: &[LimitHit]| {
            Some(crate::evidence::SandboxReport {
                limits_hit: limits.to_vec(),
                ..Default::default()
            })
        };
        limited.iterations[1].sandbox = sandbox(&[LimitHit::FileSize, LimitHit::Pids]);
        limited.iterations[2].sandbox = sandbox(&[]);
        limited.iterations[3].sandbox = sandbox(&[LimitHit::Pids, LimitHit::FileSize]);
        assert_eq!(
            limits_hit(&limited),
            ["iterations 2, 4 hit the process and file-size limits"]
        );
        limited.iterations[3].status = "oom".into();
        limited.iterations[3].sandbox = sandbox(&[LimitHit::Memory]);
        assert_eq!(
            limits_hit(&limited),
            ["iteration 2 hit the process and file-size limits"]
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
                test_network: true,
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
            "Iterations: 10 per package, timeout 600s, stall threshold 60s, tests with the network",
            "Started:    2026-03-03T14:00:00Z [interrupted]",
            "1 of 1 did not finish",
        ] {
            assert!(out.contains(expected), "{expected:?} missing:\n{out}");
        }
        assert!(out.find("Run ").unwrap_or(usize::MAX) < out.find("Compatibility summary").unwrap_or(0));
    }

    #[test]
    fn json_rows_carry_the_interval_and_the_ruled_out_rate() {
        let records = [record("a", "compatible", 10, 10), record("b", "intermittent", 7, 10)];
        let options = ShowOptions {
            sort: SortKey::Name,
            limit: Some(1),
        };
        let json = serde_json::to_value(show_json(None, &records, &options)).expect("json");
        assert_eq!(json["packages_total"], 2);
        assert_eq!(json["packages"].as_array().map(Vec::len), Some(1));
        let row = &json["packages"][0];
        assert_eq!(row["package"], "a");
        assert_eq!(row["pass_rate"]["passes"], 10);
        assert!(
            (row["pass_rate"]["low"].as_f64().unwrap_or(0.0) - 0.7225).abs() < 0.001,
            "{row}"
        );
        assert!((row["ruled_out_failure_rate"].as_f64().unwrap_or(0.0) - 0.2589).abs() < 0.001);
        assert_eq!(json["categories"][0]["category"], "intermittent");
        assert_eq!("json".parse::<ShowFormat>(), Ok(ShowFormat::Json));
        assert!("yaml".parse::<ShowFormat>().is_err());
    }

    #[test]
    fn an_empty_folder_says_so() {
        let out = show(&[]);
        assert!(out.contains("No package results yet."), "{out}");
        assert!(!out.contains("Package"), "{out}");
    }

    #[test]
    fn a_run_that_mixed_builds_says_so_under_the_summary_and_in_its_json() {
        let on = |name: &str, builds: &[&str]| PackageRecord {
            iterations: builds
                .iter()
                .enumerate()
                .map(|(index, build)| IterationRecord {
                    index: index as u32 + 1,
                    status: "pass".into(),
                    interpreter_build: build.to_string(),
                    ..IterationRecord::default()
                })
                .collect(),
            ..record(name, "compatible", builds.len() as u32, builds.len() as u32)
        };
        let mixed = [
            on("a", &["3.13.5t@aaaa"; 5]),
            on(
                "b",
                &[
                    "3.13.5t@aaaa",
                    "3.13.5t@aaaa",
                    "3.13.5t@aaaa",
                    "3.13.6t@bbbb",
                    "3.13.6t@bbbb",
                ],
            ),
        ];
        let text = render_show(None, &mixed, &ShowOptions::default());
        assert!(
            text.contains("mixed interpreter builds: 2 builds across 10 iterations (3.13.5t@aaaa: 8; 3.13.6t@bbbb: 2)"),
            "{text}"
        );
        let json = show_json(None, &mixed, &ShowOptions::default());
        assert_eq!(json.builds.builds.len(), 2);
        let one = [on("a", &["3.13.5t@aaaa"; 5])];
        assert!(!render_show(None, &one, &ShowOptions::default()).contains("mixed"));
    }
}
