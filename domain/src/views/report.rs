//! The `report` command's content: a document of headings, paragraphs, tables, code and a
//! chart, built from a run; `render` writes it as Markdown, text or HTML.
//!
//! Sections: header, categories, triage, crashes, deadlocks, intermittent, TSAN, C extensions,
//! GIL comparison, compatible packages. Empty sections are left out.

use std::collections::BTreeMap;

use crate::category::Category;
use crate::classify::GilVerdict;
use crate::results::{IterationRecord, PackageRecord, RunMeta};
use crate::stats::{PassRate, ruled_out_failure_rate};
use crate::views::compat::CompatRow;
use crate::views::flaky::analyse;
use crate::views::show::{CategoryCount, category_counts, severity_rank};
use crate::views::text::{cell, code_span, plural};

/// One block of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Level 1 is the title.
    Heading(u8, String),
    /// Labelled values (the run's header).
    Facts(Vec<(String, String)>),
    Paragraph(String),
    /// Header cells and rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// Preformatted text (stacks).
    Code(String),
    /// A numbered list.
    Ordered(Vec<String>),
    /// Counts per category, drawn as bars.
    Chart(Vec<CategoryCount>),
}

/// What the report needs besides the records.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    pub meta: Option<&'a RunMeta>,
    pub records: &'a [PackageRecord],
    /// Download counts by package, for the triage order; missing ones count as 0.
    pub download_counts: &'a BTreeMap<String, u64>,
}

/// Longest stack excerpt kept per deadlock, in lines.
const STACK_LINES: usize = 40;

/// Builds the report.
pub fn build_report(input: &ReportInput<'_>) -> Vec<Block> {
    let records = input.records;
    let mut blocks = vec![Block::Heading(1, "Free-threading compatibility report".to_string())];
    blocks.push(Block::Facts(header_rows(input.meta, records)));

    blocks.push(Block::Heading(2, "Categories".to_string()));
    let counts = category_counts(records);
    if counts.is_empty() {
        blocks.push(Block::Paragraph("No package results.".to_string()));
        return blocks;
    }
    blocks.push(Block::Chart(counts.clone()));
    blocks.push(Block::Table(
        strings(&["", "Category", "Packages", "Share"]),
        counts
            .iter()
            .map(|c| {
                vec![
                    c.glyph.clone(),
                    c.category.clone(),
                    c.count.to_string(),
                    format!("{:.1}%", c.percent),
                ]
            })
            .collect(),
    ));

    triage(&mut blocks, input);
    crashes(&mut blocks, records);
    deadlocks(&mut blocks, records);
    intermittent(&mut blocks, records);
    tsan(&mut blocks, records);
    extensions(&mut blocks, records);
    gil_comparison(&mut blocks, records);
    compatible(&mut blocks, records);
    blocks
}

fn header_rows(meta: Option<&RunMeta>, records: &[PackageRecord]) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut row = |key: &str, value: String| {
        if !value.is_empty() {
            rows.push((key.to_string(), value));
        }
    };
    if let Some(meta) = meta {
        row("Run", meta.run_id.clone());
        row("Date", meta.timestamp.clone());
        row("Finished", meta.finished_at.clone().unwrap_or_default());
        let interpreter = match &meta.interpreter {
            Some(profile) => format!("{} at {}", profile.summary(), profile.executable),
            None if !meta.python_version.is_empty() => {
                format!("Python {} at {}", meta.python_version, meta.target_python)
            }
            None => meta.target_python.clone(),
        };
        row("Interpreter", interpreter);
        let system = &meta.system;
        let system_line = [system.hostname.as_str(), system.os.as_str(), system.arch.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let cpus = if system.cpu_count > 0 {
            format!(", {} CPUs", system.cpu_count)
        } else {
            String::new()
        };
        row(
            "System",
            if system_line.is_empty() {
                String::new()
            } else {
                system_line + &cpus
            },
        );
        if meta.config.iterations > 0 {
            let mut iterations = format!("{} per package", meta.config.iterations);
            if meta.config.modes.iter().any(|m| m == "gil") {
                iterations.push_str(", also with the GIL");
            }
            row("Iterations", iterations);
        }
        if meta.interrupted {
            row(
                "Note",
                "the run was interrupted: some verdicts rest on fewer iterations".to_string(),
            );
        }
    }
    row("Packages", records.len().to_string());
    rows
}

/// What to do first: every package not plainly compatible, by severity, then the strength of
/// the evidence, then popularity.
fn triage(blocks: &mut Vec<Block>, input: &ReportInput<'_>) {
    let mut items: Vec<(&PackageRecord, u32, u64)> = input
        .records
        .iter()
        .filter(|r| !matches!(r.category(), Some(Category::Compatible | Category::CompatibleByWheel)))
        .map(|r| {
            let downloads = input.download_counts.get(&r.package).copied().unwrap_or(0);
            (r, evidence_strength(r), downloads)
        })
        .collect();
    if items.is_empty() {
        return;
    }
    items.sort_by(|a, b| {
        severity_rank(a.0)
            .cmp(&severity_rank(b.0))
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then_with(|| a.0.package.cmp(&b.0.package))
    });
    blocks.push(Block::Heading(2, "Triage".to_string()));
    blocks.push(Block::Paragraph(
        "Most severe first; within a category, the strongest evidence, then the most downloaded.".to_string(),
    ));
    blocks.push(Block::Ordered(
        items
            .iter()
            .map(|(record, _, downloads)| {
                let popularity = if *downloads > 0 {
                    format!(", {downloads} downloads")
                } else {
                    String::new()
                };
                let evidence = match record.evidence.first() {
                    Some(evidence) => evidence.clone(),
                    None => crate::views::show::details(record),
                };
                format!(
                    "{} ({}{popularity}): {}. Next: {}",
                    record.package,
                    record.category,
                    cell(&evidence, 160),
                    next_step(record)
                )
            })
            .collect(),
    ));
}

/// Higher is stronger: free-threading specific beats pre-existing, and more bad iterations
/// beat fewer.
fn evidence_strength(record: &PackageRecord) -> u32 {
    let bad = record.completed_iterations() - record.passed_iterations().min(record.completed_iterations());
    let gil = match record.gil_comparison.as_ref().map(|g| g.verdict) {
        Some(GilVerdict::FtSpecific) => 2,
        Some(GilVerdict::PreExisting) => 0,
        Some(GilVerdict::None) | None => 1,
    };
    gil * 10_000 + bad.min(9_999)
}

/// The next thing to try for a package, by what its record shows.
pub fn next_step(record: &PackageRecord) -> String {
    let pre_existing = record
        .gil_comparison
        .as_ref()
        .is_some_and(|g| g.verdict == GilVerdict::PreExisting);
    let ft_only_tests = record
        .gil_comparison
        .as_ref()
        .filter(|g| g.verdict == GilVerdict::FtSpecific && !g.ft_only_failing_tests.is_empty())
        .map(|g| g.ft_only_failing_tests.join(", "));
    let ft_only = ft_only_tests.as_deref();
    match record.category() {
        Some(Category::Crash) => match record.failure_signatures.first() {
            Some(signature) => format!(
                "reproduce with PYTHON_GIL=0 and start from the top frame of {}",
                code_span(&cell(signature, 100))
            ),
            None => "reproduce with PYTHON_GIL=0 under faulthandler to get a stack".to_string(),
        },
        Some(Category::Deadlock) => {
            "read the stuck stacks: look for two threads taking the same locks in opposite order".to_string()
        }
        Some(Category::Intermittent) => match analyse(record).pattern {
            Some(pattern) => pattern.hint().to_string(),
            None => "run more iterations to see the failure again".to_string(),
        },
        // Before the GIL comparison: an iteration killed at the memory limit says nothing of
        // which test failed, only that the suite needs more memory than it was given.
        Some(Category::Incompatible) if record.oom_count > 0 && record.oom_count == record.completed_iterations() => {
            "every iteration was killed at the memory limit: compare its peak memory with PYTHON_GIL=0 and =1 before raising the limit"
                .to_string()
        }
        Some(Category::Incompatible) if pre_existing => {
            "fails with the GIL too: fix the test suite first; not a free-threading bug".to_string()
        }
        Some(Category::Incompatible) if ft_only.is_some() => format!(
            "passes with the GIL: start from the tests failing only without it ({})",
            cell(ft_only.unwrap_or_default(), 120)
        ),
        Some(Category::Incompatible) => {
            "run the first failing test with PYTHON_GIL=0 and again with PYTHON_GIL=1".to_string()
        }
        Some(Category::TsanWarnings) => match record.tsan_warnings.first().and_then(|w| w.frames.first()) {
            Some(frame) => format!("fix the race reported at {}", frame.function),
            None => "read the ThreadSanitizer report for the racing accesses".to_string(),
        },
        Some(Category::InstallFailure) => "fix the build or the install command in the registry".to_string(),
        Some(Category::ImportFailure) => "fix the import error on the free-threaded build".to_string(),
        Some(Category::HarnessError) => "fix the test command: the harness itself failed".to_string(),
        Some(Category::InfraError) => {
            "rerun once the workers' network, index or disk is sound: the package was never tried".to_string()
        }
        Some(Category::Unknown) => "rerun: no iteration completed".to_string(),
        Some(Category::CompatibleGilFallback) => {
            "declare Py_mod_gil = Py_MOD_GIL_NOT_USED in the extension once it is thread-safe".to_string()
        }
        Some(Category::Compatible | Category::CompatibleByWheel) => "nothing".to_string(),
        None => "check the category name: this tool does not know it".to_string(),
    }
}

fn crashes(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let mut rows = Vec::new();
    for record in records.iter().filter(|r| r.crashed_iterations() > 0) {
        let mut signatures: BTreeMap<String, (u32, String)> = BTreeMap::new();
        for iteration in record.iterations.iter().filter(|i| i.status == "crash") {
            let signature = iteration
                .crash_signature
                .clone()
                .unwrap_or_else(|| "(no stack captured)".to_string());
            let entry = signatures
                .entry(signature)
                .or_insert((0, iteration.crash_signal.clone().unwrap_or_default()));
            entry.0 += 1;
        }
        if signatures.is_empty() {
            for signature in &record.failure_signatures {
                signatures.insert(signature.clone(), (0, String::new()));
            }
        }
        for (signature, (count, signal)) in signatures {
            rows.push(vec![
                record.package.clone(),
                signal,
                cell(&signature, 140),
                if count > 0 { count.to_string() } else { String::new() },
            ]);
        }
    }
    if rows.is_empty() {
        return;
    }
    blocks.push(Block::Heading(2, "Crashes".to_string()));
    blocks.push(Block::Table(
        strings(&["Package", "Signal", "Signature", "Iterations"]),
        rows,
    ));
}

fn deadlocks(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let stuck: Vec<&PackageRecord> = records.iter().filter(|r| r.deadlock_count > 0).collect();
    if stuck.is_empty() {
        return;
    }
    blocks.push(Block::Heading(2, "Deadlocks".to_string()));
    for record in stuck {
        blocks.push(Block::Heading(3, record.package.clone()));
        let stalled = record.iterations.iter().find(|i| i.status == "deadlock");
        let last = stalled.map(last_test_output).unwrap_or_default();
        blocks.push(Block::Paragraph(format!(
            "{} of {} iterations stalled. Last output: {}",
            record.deadlock_count,
            record.completed_iterations(),
            if last.is_empty() {
                "none before the stack dump".to_string()
            } else {
                code_span(&cell(last, 160))
            }
        )));
        match stalled.and_then(|i| i.stacks.as_deref()) {
            Some(stacks) => {
                let lines: Vec<&str> = stacks.lines().collect();
                let mut excerpt = lines.iter().take(STACK_LINES).copied().collect::<Vec<_>>().join("\n");
                if lines.len() > STACK_LINES {
                    excerpt.push_str(&format!("\n... {} more lines", lines.len() - STACK_LINES));
                }
                blocks.push(Block::Code(excerpt));
            }
            None => blocks.push(Block::Paragraph("No thread stacks were captured.".to_string())),
        }
    }
}

/// The last line the tests printed before the stall. The stack dump the worker asks for comes
/// last, so when the last line is a frame, the line before the dump (on stdout, or on stderr
/// before its first thread header) is the one that tells where the tests were.
fn last_test_output(iteration: &IterationRecord) -> &str {
    let is_dump = |l: &str| {
        let l = l.trim_start();
        l.starts_with("File \"") || l.starts_with("Thread 0x") || l.starts_with("Current thread 0x")
    };
    let line = iteration.last_output_line.trim();
    if !line.is_empty() && !is_dump(line) {
        return line;
    }

    let stdout_last = iteration
        .stdout_tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !is_dump(l));
    let stderr_before_dump = || {
        iteration
            .stderr_tail
            .lines()
            .take_while(|l| !is_dump(l))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .last()
    };
    stdout_last.or_else(stderr_before_dump).unwrap_or_default()
}

fn intermittent(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .filter(|r| r.category() == Some(Category::Intermittent))
        .map(|record| {
            let analysis = analyse(record);
            let tests = analysis
                .tests
                .iter()
                .take(3)
                .map(|t| format!("{} {}/{}", t.test, t.fails, t.seen))
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                record.package.clone(),
                analysis.pass_rate.map_or("N/A".to_string(), |r| r.describe()),
                analysis.pattern.map_or("", |p| p.as_str()).to_string(),
                cell(&tests, 160),
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    blocks.push(Block::Heading(2, "Intermittent".to_string()));
    blocks.push(Block::Table(
        strings(&["Package", "Pass rate (95% CI)", "Pattern", "Flaky tests (fails/seen)"]),
        rows,
    ));
}

fn tsan(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let mut rows = Vec::new();
    for record in records {
        for warning in &record.tsan_warnings {
            let frame = warning
                .frames
                .first()
                .map(|f| match &f.location {
                    Some(location) => format!("{} {location}", f.function),
                    None => f.function.clone(),
                })
                .unwrap_or_default();
            rows.push(vec![
                record.package.clone(),
                warning.kind.clone(),
                warning.attribution.as_str().to_string(),
                warning.count.to_string(),
                cell(&frame, 120),
            ]);
        }
    }
    if rows.is_empty() {
        return;
    }
    blocks.push(Block::Heading(2, "ThreadSanitizer".to_string()));
    blocks.push(Block::Table(
        strings(&["Package", "Kind", "Attributed to", "Reports", "Top frame"]),
        rows,
    ));
}

fn extensions(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(CompatRow::of)
        .filter(CompatRow::has_extensions)
        .map(|row| {
            vec![
                row.package.clone(),
                cell(&row.gil_enabled_by.join(", "), 80),
                cell(&row.declarations.join("; "), 120),
                cell(&row.verdict, 160),
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    blocks.push(Block::Heading(2, "C extensions".to_string()));
    blocks.push(Block::Table(
        strings(&["Package", "GIL re-enabled by", "Declarations", "Verdict"]),
        rows,
    ));
}

fn gil_comparison(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .filter_map(|record| {
            let comparison = record.gil_comparison.as_ref()?;
            let gil = PassRate::of(comparison.gil_counts.pass, comparison.gil_counts.completed());
            let ft = PassRate::of(record.passed_iterations(), record.completed_iterations());
            Some(vec![
                record.package.clone(),
                comparison.verdict.to_string(),
                ft.map_or("N/A".to_string(), |r| r.describe()),
                gil.map_or("N/A".to_string(), |r| r.describe()),
                cell(&comparison.ft_only_failing_tests.join("; "), 160),
            ])
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let ft_specific = rows.iter().filter(|r| r[1] == "ft_specific").count();
    let pre_existing = rows.iter().filter(|r| r[1] == "pre_existing").count();
    blocks.push(Block::Heading(2, "GIL comparison".to_string()));
    blocks.push(Block::Paragraph(format!(
        "{ft_specific} package{} fail only without the GIL (ft_specific); {pre_existing} fail with it too (pre_existing).",
        plural(ft_specific)
    )));
    blocks.push(Block::Table(
        strings(&[
            "Package",
            "Verdict",
            "Without GIL",
            "With GIL",
            "Tests failing only without the GIL",
        ]),
        rows,
    ));
}

fn compatible(blocks: &mut Vec<Block>, records: &[PackageRecord]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .filter(|r| r.category().is_some_and(Category::is_compatible))
        .map(|record| {
            let completed = record.completed_iterations();
            let rate = PassRate::of(record.passed_iterations(), completed);
            let ruled_out = if completed > 0 && record.passed_iterations() == completed {
                format!("{:.0}%", (ruled_out_failure_rate(completed) * 100.0).ceil())
            } else {
                String::new()
            };
            vec![
                record.package.clone(),
                record.category.clone(),
                rate.map_or("N/A".to_string(), |r| r.describe()),
                ruled_out,
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    blocks.push(Block::Heading(2, "Compatible".to_string()));
    blocks.push(Block::Paragraph(
        "All iterations passed. The last column is the smallest per-run failure rate a race would need to have shown up with 95% probability: rarer races may remain.".to_string(),
    ));
    blocks.push(Block::Table(
        strings(&["Package", "Category", "Pass rate (95% CI)", "Races ruled out"]),
        rows,
    ));
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{GilComparison, StatusCounts};
    use crate::results::IterationRecord;
    use crate::views::render::{ReportFormat, render_report};

    fn record(name: &str, category: &str, statuses: &[&str]) -> PackageRecord {
        let mut record = PackageRecord {
            package: name.into(),
            category: category.into(),
            iterations: statuses
                .iter()
                .enumerate()
                .map(|(idx, status)| IterationRecord {
                    index: idx as u32 + 1,
                    status: status.to_string(),
                    ..IterationRecord::default()
                })
                .collect(),
            evidence: vec![format!("evidence of {name}")],
            ..PackageRecord::default()
        };
        record.normalize();
        record
    }

    fn records() -> Vec<PackageRecord> {
        let mut crash = record("crashy", "crash", &["pass", "crash"]);
        crash.iterations[1].crash_signature = Some("Segmentation fault: m.py:3 f".into());
        crash.iterations[1].crash_signal = Some("SIGSEGV".into());
        crash.failure_signatures = vec!["Segmentation fault: m.py:3 f".into()];
        let mut stuck = record("stuck", "deadlock", &["deadlock"]);
        stuck.deadlock_count = 1;
        stuck.iterations[0].stacks = Some("Thread 0x1:\n  File \"a.py\", line 3 in first_a_then_b".into());
        stuck.iterations[0].last_output_line = "  File \"x.py\", line 9 in join".into();
        stuck.iterations[0].stdout_tail = "collected 1 item\n\ntests/test_x.py .\n".into();
        let mut failing = record("pre", "incompatible", &["fail", "fail"]);
        failing.gil_comparison = Some(GilComparison {
            gil_counts: StatusCounts {
                fail: 2,
                ..StatusCounts::default()
            },
            verdict: GilVerdict::PreExisting,
            ft_only_failing_tests: Vec::new(),
        });
        let mut gil_only = record("gilonly", "incompatible", &["fail"]);
        gil_only.gil_comparison = Some(GilComparison {
            gil_counts: StatusCounts {
                pass: 1,
                ..StatusCounts::default()
            },
            verdict: GilVerdict::FtSpecific,
            ft_only_failing_tests: vec!["t::needs_gil".into()],
        });
        vec![
            gil_only,
            record("fine", "compatible", &["pass"; 10]),
            record("racy", "intermittent", &["pass", "fail", "pass"]),
            crash,
            stuck,
            failing,
            record("small", "crash", &["crash"]),
        ]
    }

    #[test]
    fn triage_orders_by_severity_evidence_and_popularity() {
        let records = records();
        let downloads = BTreeMap::from([("small".to_string(), 10), ("crashy".to_string(), 5)]);
        let blocks = build_report(&ReportInput {
            meta: None,
            records: &records,
            download_counts: &downloads,
        });
        let triage = blocks
            .iter()
            .find_map(|b| match b {
                Block::Ordered(items) => Some(items.clone()),
                _ => None,
            })
            .expect("a triage list");
        let order: Vec<&str> = triage.iter().map(|i| i.split(' ').next().unwrap_or_default()).collect();
        // small and crashy tie on one crash each; small is more downloaded.
        assert_eq!(
            order,
            ["small", "crashy", "stuck", "racy", "gilonly", "pre"],
            "{triage:?}"
        );
        assert!(triage[5].contains("not a free-threading bug"), "{}", triage[5]);
        assert!(
            triage[4].contains("tests failing only without it (t::needs_gil)"),
            "{}",
            triage[4]
        );
        assert!(triage[1].contains("10 downloads") || triage[0].contains("10 downloads"));
    }

    #[test]
    fn a_package_out_of_memory_every_time_is_told_to_measure_its_memory() {
        let mut hungry = record("hungry", "incompatible", &["oom", "oom"]);
        hungry.oom_count = 2;
        hungry.iterations_completed = 2;
        assert!(
            next_step(&hungry).contains("killed at the memory limit"),
            "{}",
            next_step(&hungry)
        );
        hungry.oom_count = 1;
        assert!(
            next_step(&hungry).contains("PYTHON_GIL=0 and again"),
            "{}",
            next_step(&hungry)
        );
    }

    #[test]
    fn markdown_has_every_section_with_evidence() {
        let records = records();
        let markdown = render_report(
            &build_report(&ReportInput {
                meta: None,
                records: &records,
                download_counts: &BTreeMap::new(),
            }),
            ReportFormat::Markdown,
        );
        for expected in [
            "# Free-threading compatibility report",
            "- **Packages:** 7",
            "## Categories",
            "| \u{1f4a5} | crash | 2 | 28.6% |",
            "## Triage",
            "## Crashes",
            "| crashy | SIGSEGV | Segmentation fault: m.py:3 f | 1 |",
            "## Deadlocks",
            "Last output: `tests/test_x.py .`",
            "in first_a_then_b",
            "## Intermittent",
            "| racy | 2/3 (21-94%) | no_test_data |",
            "## GIL comparison",
            "pre_existing",
            "## Compatible",
            "| fine | compatible | 10/10 (72-100%) | 26% |",
        ] {
            assert!(markdown.contains(expected), "{expected:?} missing:\n{markdown}");
        }
        assert!(!markdown.contains("## ThreadSanitizer"), "empty sections are left out");
    }

    #[test]
    fn html_is_one_self_contained_page_with_a_chart() {
        let mut records = records();
        records[0].package = "<script>alert(1)</script>".into();
        let html = render_report(
            &build_report(&ReportInput {
                meta: None,
                records: &records,
                download_counts: &BTreeMap::new(),
            }),
            ReportFormat::Html,
        );
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
        assert!(html.contains("<svg") && html.contains("<rect"), "a chart");
        assert!(!html.contains("<script"), "no scripts, and names are escaped");
        assert!(html.contains("&lt;script&gt;"));
        for external in ["src=", "href=\"http", "@import", "url("] {
            assert!(!html.contains(external), "{external} in the page");
        }
        let text = render_report(
            &build_report(&ReportInput {
                meta: None,
                records: &records,
                download_counts: &BTreeMap::new(),
            }),
            ReportFormat::Text,
        );
        assert!(text.contains("Free-threading compatibility report\n===="), "{text}");
        assert!(text.contains("Triage\n------"), "{text}");
    }

    #[test]
    fn the_last_line_before_a_stall_skips_the_stack_dump() {
        let dump = "Thread 0x1 (most recent call first):\n  File \"a.py\", line 3 in f\n";
        let cases = [
            ("tests/test_x.py .", "", "", "tests/test_x.py ."),
            (
                "File \"a.py\", line 3 in f",
                "collected 1 item\ntests/test_x.py ",
                dump,
                "tests/test_x.py",
            ),
            (
                "File \"a.py\", line 3 in f",
                "",
                &format!("warming up\n{dump}") as &str,
                "warming up",
            ),
            ("File \"a.py\", line 3 in f", "", dump, ""),
        ];
        for (last, stdout, stderr, expected) in cases {
            let iteration = IterationRecord {
                last_output_line: last.to_string(),
                stdout_tail: stdout.to_string(),
                stderr_tail: stderr.to_string(),
                ..IterationRecord::default()
            };
            assert_eq!(last_test_output(&iteration), expected, "{last:?} {stdout:?} {stderr:?}");
        }
    }

    #[test]
    fn an_empty_run_says_so() {
        let blocks = build_report(&ReportInput {
            meta: None,
            records: &[],
            download_counts: &BTreeMap::new(),
        });
        let markdown = render_report(&blocks, ReportFormat::Markdown);
        assert!(markdown.contains("No package results."), "{markdown}");
        assert_eq!("html".parse::<ReportFormat>(), Ok(ReportFormat::Html));
        assert!("pdf".parse::<ReportFormat>().is_err());
    }
}
