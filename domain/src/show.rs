//! The `show` view: a header, counts per category, and a table of packages.

use std::fmt::Write;
use std::str::FromStr;

use comfy_table::Table;

use crate::category::Category;
use crate::results::{PackageRecord, RunMeta};

/// How `show` orders packages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Most severe category first, then by name.
    #[default]
    Category,
    /// Lowest pass rate first; packages without one last.
    PassRate,
    Name,
}

impl FromStr for SortKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "category" => Ok(SortKey::Category),
            "pass_rate" => Ok(SortKey::PassRate),
            "name" => Ok(SortKey::Name),
            other => Err(format!(
                "unknown sort key {other:?}: expected category, pass_rate or name"
            )),
        }
    }
}

/// Options of the `show` view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowOptions {
    pub sort: SortKey,
    /// At most this many table rows.
    pub limit: Option<usize>,
}

/// Longest details cell.
const DETAILS_CHARS: usize = 90;

/// Renders the view.
pub fn render_show(meta: Option<&RunMeta>, records: &[PackageRecord], options: &ShowOptions) -> String {
    let mut out = String::new();
    if let Some(meta) = meta {
        let interpreter = meta
            .interpreter
            .as_ref()
            .map(|p| p.summary())
            .unwrap_or_else(|| meta.python_version.clone());
        let _ = writeln!(
            out,
            "Run {} ({}){}",
            meta.run_id,
            meta.timestamp,
            if meta.interrupted { " [interrupted]" } else { "" }
        );
        let _ = writeln!(out, "Target: {} {}", interpreter, meta.target_python);
        let system = &meta.system;
        if !system.os.is_empty() {
            let _ = writeln!(
                out,
                "System: {} {} {} ({} CPUs)",
                system.hostname, system.os, system.arch, system.cpu_count
            );
        }
        let _ = writeln!(
            out,
            "Iterations: {}  Timeout: {}s",
            meta.config.iterations, meta.config.timeout
        );
    }
    let total = records.len();
    let _ = writeln!(out, "\n{total} package{}", if total == 1 { "" } else { "s" });
    for category in Category::ALL {
        let n = records.iter().filter(|r| r.category == category.as_str()).count();
        if n > 0 {
            let _ = writeln!(
                out,
                "  {:<24} {:>5}  {:>5.1}%",
                category.as_str(),
                n,
                100.0 * n as f64 / total as f64
            );
        }
    }
    let unrecognised = records
        .iter()
        .filter(|r| r.category.parse::<Category>().is_err())
        .count();
    if unrecognised > 0 {
        let _ = writeln!(out, "  {:<24} {:>5}", "(unrecognised category)", unrecognised);
    }

    let mut sorted: Vec<&PackageRecord> = records.iter().collect();
    match options.sort {
        SortKey::Category => sorted.sort_by(|a, b| (rank(a), &a.package).cmp(&(rank(b), &b.package))),
        SortKey::PassRate => sorted.sort_by(|a, b| {
            let key = |r: &PackageRecord| r.pass_rate.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b)).then_with(|| a.package.cmp(&b.package))
        }),
        SortKey::Name => sorted.sort_by(|a, b| a.package.cmp(&b.package)),
    }
    let shown = options.limit.unwrap_or(usize::MAX).min(sorted.len());
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
    for record in &sorted[..shown] {
        let completed = record.iterations_completed.max(record.pass_count);
        table.add_row(vec![
            record.package.clone(),
            record.category.clone(),
            if completed > 0 {
                format!("{}/{}", record.pass_count, completed)
            } else {
                "-".to_string()
            },
            record.iterations.len().to_string(),
            record.crash_count.to_string(),
            details(record),
        ]);
    }
    let _ = writeln!(out, "\n{table}");
    if shown < sorted.len() {
        let _ = writeln!(out, "({} more not shown)", sorted.len() - shown);
    }
    out
}

fn rank(record: &PackageRecord) -> usize {
    record
        .category
        .parse::<Category>()
        .map(Category::severity_rank)
        .unwrap_or(usize::MAX)
}

/// The most useful single fact about a package.
fn details(record: &PackageRecord) -> String {
    let crash = record.iterations.iter().find(|i| i.status == "crash");
    let text = if let Some(error) = &record.setup_error {
        error.clone()
    } else if let Some(crash) = crash {
        let signal = crash.crash_signal.clone().unwrap_or_else(|| "crashed".to_string());
        match &crash.crash_signature {
            Some(signature) => format!("{signal}: {signature}"),
            None => signal,
        }
    } else {
        record.evidence.join("; ")
    };
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > DETAILS_CHARS {
        format!("{}...", one_line.chars().take(DETAILS_CHARS - 3).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::IterationRecord;

    fn record(name: &str, category: &str, passes: u32, completed: u32) -> PackageRecord {
        PackageRecord {
            package: name.to_string(),
            category: category.to_string(),
            pass_count: passes,
            iterations_completed: completed,
            pass_rate: (completed > 0).then(|| f64::from(passes) / f64::from(completed)),
            iterations: (1..=completed)
                .map(|index| IterationRecord {
                    index,
                    ..IterationRecord::default()
                })
                .collect(),
            ..PackageRecord::default()
        }
    }

    fn rows(out: &str) -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with('|') && !l.contains("Package"))
            .map(|l| {
                l.trim_start_matches('|')
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn summary_counts_follow_severity_order_with_percentages() {
        let records = [
            record("a", "compatible", 3, 3),
            record("b", "crash", 0, 3),
            record("c", "compatible", 3, 3),
        ];
        let out = render_show(None, &records, &ShowOptions::default());
        let crash = out.find("crash ").expect("crash line");
        let compatible = out.find("compatible ").expect("compatible line");
        assert!(crash < compatible, "{out}");
        assert!(out.contains("66.7%") && out.contains("33.3%"), "{out}");
    }

    #[test]
    fn sorting_and_limits() {
        let records = [
            record("zeta", "compatible", 3, 3),
            record("alpha", "intermittent", 1, 3),
            record("mid", "install_failure", 0, 0),
            record("beta", "incompatible", 0, 3),
        ];
        let cases = [
            (SortKey::Category, None, vec!["alpha", "beta", "mid", "zeta"]),
            (SortKey::PassRate, None, vec!["beta", "alpha", "zeta", "mid"]),
            (SortKey::Name, Some(2), vec!["alpha", "beta"]),
        ];
        for (sort, limit, expected) in cases {
            let out = render_show(None, &records, &ShowOptions { sort, limit });
            assert_eq!(rows(&out), expected, "{sort:?}\n{out}");
        }
        let limited = render_show(
            None,
            &records,
            &ShowOptions {
                sort: SortKey::Name,
                limit: Some(2),
            },
        );
        assert!(limited.contains("(2 more not shown)"));
        assert!(limited.contains("1/3"), "pass rate as passes/completed: {limited}");
    }

    #[test]
    fn details_name_the_crash_signal_or_setup_error() {
        let mut crashed = record("c", "crash", 0, 1);
        crashed.iterations[0].status = "crash".into();
        crashed.iterations[0].crash_signal = Some("SIGSEGV".into());
        let mut broken = record("b", "install_failure", 0, 0);
        broken.setup_error = Some("install command exited with status 1: error: no".into());
        let out = render_show(None, &[crashed, broken], &ShowOptions::default());
        assert!(out.contains("SIGSEGV"), "{out}");
        assert!(out.contains("install command exited with status 1"), "{out}");
        assert_eq!("pass_rate".parse::<SortKey>(), Ok(SortKey::PassRate));
        assert!("speed".parse::<SortKey>().is_err());
    }
}
