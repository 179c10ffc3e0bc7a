//! The `compare` view: what changed between two runs of the same packages.
//!
//! Only verdicts that both come from testing are ranked: a package trusted by its wheel in one
//! run and tested in the other is "not comparable", never a regression, and a change of setup
//! outcome (install, import, harness) is listed without being called better or worse.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::category::Category;
use crate::results::PackageRecord;
use crate::stats::PassRate;
use crate::views::builds::BuildMix;
use crate::views::show::category_counts;
use crate::views::text::{cell, plain_table, plural};

/// Pass-rate changes smaller than this are noise by default.
pub const DEFAULT_THRESHOLD: f64 = 0.10;

/// What a category change means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// Tested in both runs, and worse in the second.
    Regression,
    /// Tested in both runs, and better in the second.
    Improvement,
    /// Trusted by its wheel in one run, tested in the other.
    NotComparable,
    /// A setup outcome (install, import, harness, unknown) on one side.
    SetupChanged,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Regression => "regression",
            TransitionKind::Improvement => "improvement",
            TransitionKind::NotComparable => "not comparable (wheel vs tested)",
            TransitionKind::SetupChanged => "setup changed",
        }
    }
}

/// A package whose category differs between the runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub package: String,
    pub from: String,
    pub to: String,
    pub kind: TransitionKind,
}

/// A pass-rate change beyond the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateChange {
    pub package: String,
    pub from: PassRate,
    pub to: PassRate,
    /// `to.rate - from.rate`.
    pub delta: f64,
    /// The two Wilson 95% intervals do not overlap.
    pub significant: bool,
}

/// Counts per category in each run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CategoryDelta {
    pub category: String,
    pub a: usize,
    pub b: usize,
}

/// Everything `compare` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    pub threshold: f64,
    pub packages_in_both: usize,
    pub unchanged: usize,
    pub regressions: usize,
    pub improvements: usize,
    pub categories: Vec<CategoryDelta>,
    pub transitions: Vec<Transition>,
    pub rate_changes: Vec<RateChange>,
    pub new_crashes: Vec<String>,
    pub resolved_crashes: Vec<String>,
    pub new_deadlocks: Vec<String>,
    pub resolved_deadlocks: Vec<String>,
    /// Packages with iterations killed at the memory limit in B and not in A, and the other
    /// way round: a regression they explain may be the limit's, not free-threading's.
    pub new_ooms: Vec<String>,
    pub resolved_ooms: Vec<String>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// When B re-ran some of A's packages (`ftsurvey runs rerun`): how many of A's it did not,
    /// which the comparison leaves out instead of calling them gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_rerun: Option<usize>,
    /// The interpreter builds each run's iterations ran on, as they recorded them (none for
    /// results from before they did).
    pub builds_a: Vec<String>,
    pub builds_b: Vec<String>,
    /// Packages whose installed version differs between A and B (each run's one version).
    pub version_changes: Vec<VersionChange>,
}

/// A package tested on one version in A and another in B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    pub package: String,
    pub from: String,
    pub to: String,
}

impl Comparison {
    /// Whether A and B ran on different interpreter builds, as far as both recorded theirs.
    pub fn builds_differ(&self) -> bool {
        !self.builds_a.is_empty() && !self.builds_b.is_empty() && self.builds_a != self.builds_b
    }
}

/// Compares A with B, a re-run of some of A's packages: only the packages B re-ran count.
pub fn compare_rerun(run_a: &str, a: &[PackageRecord], run_b: &str, b: &[PackageRecord], threshold: f64) -> Comparison {
    let rerun: std::collections::HashSet<&str> = b.iter().map(|r| r.package.as_str()).collect();
    let (kept, left): (Vec<PackageRecord>, Vec<PackageRecord>) =
        a.iter().cloned().partition(|r| rerun.contains(r.package.as_str()));
    Comparison {
        not_rerun: Some(left.len()),
        ..compare(run_a, &kept, run_b, b, threshold)
    }
}

/// Compares run A (before) with run B (after).
pub fn compare(run_a: &str, a: &[PackageRecord], run_b: &str, b: &[PackageRecord], threshold: f64) -> Comparison {
    let by_name = |records: &[PackageRecord]| -> BTreeMap<String, PackageRecord> {
        records.iter().map(|r| (r.package.clone(), r.clone())).collect()
    };
    let (a_map, b_map) = (by_name(a), by_name(b));
    let mut comparison = Comparison {
        run_a: run_a.to_string(),
        run_b: run_b.to_string(),
        threshold,
        packages_in_both: 0,
        unchanged: 0,
        regressions: 0,
        improvements: 0,
        categories: category_deltas(a, b),
        transitions: Vec::new(),
        rate_changes: Vec::new(),
        new_crashes: Vec::new(),
        resolved_crashes: Vec::new(),
        new_deadlocks: Vec::new(),
        resolved_deadlocks: Vec::new(),
        new_ooms: Vec::new(),
        resolved_ooms: Vec::new(),
        only_in_a: a_map.keys().filter(|k| !b_map.contains_key(*k)).cloned().collect(),
        only_in_b: b_map.keys().filter(|k| !a_map.contains_key(*k)).cloned().collect(),
        not_rerun: None,
        builds_a: build_names(a),
        builds_b: build_names(b),
        version_changes: Vec::new(),
    };
    for (name, before) in &a_map {
        let Some(after) = b_map.get(name) else { continue };
        comparison.packages_in_both += 1;
        if before.category == after.category {
            comparison.unchanged += 1;
        } else {
            let kind = transition_kind(before, after);
            match kind {
                TransitionKind::Regression => comparison.regressions += 1,
                TransitionKind::Improvement => comparison.improvements += 1,
                _ => {}
            }
            comparison.transitions.push(Transition {
                package: name.clone(),
                from: before.category.clone(),
                to: after.category.clone(),
                kind,
            });
        }
        let from = PassRate::of(before.passed_iterations(), before.completed_iterations());
        let to = PassRate::of(after.passed_iterations(), after.completed_iterations());
        if let (Some(from), Some(to)) = (from, to) {
            let delta = to.rate - from.rate;
            if delta.abs() >= threshold {
                comparison.rate_changes.push(RateChange {
                    package: name.clone(),
                    from,
                    to,
                    delta,
                    significant: from.high < to.low || to.high < from.low,
                });
            }
        }
        if let (Some(from), Some(to)) = (only_version(before), only_version(after))
            && from != to
        {
            comparison.version_changes.push(VersionChange {
                package: name.clone(),
                from,
                to,
            });
        }
        let tested = |r: &PackageRecord| r.completed_iterations() > 0;
        if tested(before) && tested(after) {
            match (before.crashed_iterations() > 0, after.crashed_iterations() > 0) {
                (false, true) => comparison.new_crashes.push(name.clone()),
                (true, false) => comparison.resolved_crashes.push(name.clone()),
                _ => {}
            }
            match (before.deadlock_count > 0, after.deadlock_count > 0) {
                (false, true) => comparison.new_deadlocks.push(name.clone()),
                (true, false) => comparison.resolved_deadlocks.push(name.clone()),
                _ => {}
            }
            match (before.oom_count > 0, after.oom_count > 0) {
                (false, true) => comparison.new_ooms.push(name.clone()),
                (true, false) => comparison.resolved_ooms.push(name.clone()),
                _ => {}
            }
        }
    }
    comparison
        .transitions
        .sort_by_key(|t| (t.kind != TransitionKind::Regression, t.package.clone()));
    comparison
        .rate_changes
        .sort_by(|x, y| x.delta.total_cmp(&y.delta).then_with(|| x.package.cmp(&y.package)));
    comparison
}

/// The text view.
pub fn render_compare(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {}\nB: {}", c.run_a, c.run_b);
    if let Some(left) = c.not_rerun {
        let _ = writeln!(
            out,
            "B re-ran {} of A's packages (ftsurvey runs rerun); A's {left} other {} left out",
            c.packages_in_both + c.only_in_b.len(),
            if left == 1 {
                "package was not re-run and is"
            } else {
                "packages were not re-run and are"
            }
        );
    }
    let _ = writeln!(
        out,
        "{} package{} in both: {} unchanged, {} regression{}, {} improvement{}, {} other change{}; {} only in A, {} only in B",
        c.packages_in_both,
        plural(c.packages_in_both),
        c.unchanged,
        c.regressions,
        plural(c.regressions),
        c.improvements,
        plural(c.improvements),
        c.transitions.len() - c.regressions - c.improvements,
        plural(c.transitions.len() - c.regressions - c.improvements),
        c.only_in_a.len(),
        c.only_in_b.len()
    );
    out.push('\n');
    let rows = c
        .categories
        .iter()
        .map(|d| {
            let delta = d.b as i64 - d.a as i64;
            vec![
                d.category.clone(),
                d.a.to_string(),
                d.b.to_string(),
                if delta == 0 {
                    String::new()
                } else {
                    format!("{delta:+}")
                },
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "{}",
        plain_table(&["Category", "A", "B", "Change"], rows, &[1, 2, 3])
    );

    if c.transitions.is_empty() {
        out.push_str("\nCategory transitions: none\n");
    } else {
        out.push_str("\nCategory transitions:\n");
        let rows = c
            .transitions
            .iter()
            .map(|t| {
                vec![
                    t.package.clone(),
                    format!("{} -> {}", t.from, t.to),
                    t.kind.as_str().to_string(),
                ]
            })
            .collect();
        let _ = writeln!(out, "{}", plain_table(&["Package", "Transition", "Meaning"], rows, &[]));
    }

    if c.rate_changes.is_empty() {
        let _ = writeln!(
            out,
            "\nPass-rate changes of {:.0} points or more: none",
            c.threshold * 100.0
        );
    } else {
        let _ = writeln!(
            out,
            "\nPass-rate changes of {:.0} points or more (95% intervals; * where they do not overlap):",
            c.threshold * 100.0
        );
        let rows = c
            .rate_changes
            .iter()
            .map(|r| {
                vec![
                    r.package.clone(),
                    r.from.describe(),
                    r.to.describe(),
                    format!("{:+.0} pts{}", r.delta * 100.0, if r.significant { " *" } else { "" }),
                ]
            })
            .collect();
        let _ = writeln!(out, "{}", plain_table(&["Package", "A", "B", "Change"], rows, &[3]));
    }

    if c.builds_differ() {
        let _ = writeln!(
            out,
            "\nA and B ran on different interpreter builds: A on {}; B on {}",
            cell(&c.builds_a.join(", "), BUILDS_CHARS),
            cell(&c.builds_b.join(", "), BUILDS_CHARS)
        );
    }
    if !c.version_changes.is_empty() {
        let changes: Vec<String> = c
            .version_changes
            .iter()
            .map(|v| format!("{} {} -> {}", cell(&v.package, 60), cell(&v.from, 40), cell(&v.to, 40)))
            .collect();
        let _ = writeln!(
            out,
            "\nPackage versions changed ({}): {}",
            changes.len(),
            changes.join(", ")
        );
    }
    for (title, list) in [
        ("New crashes", &c.new_crashes),
        ("Resolved crashes", &c.resolved_crashes),
        ("New deadlocks", &c.new_deadlocks),
        ("Resolved deadlocks", &c.resolved_deadlocks),
        ("New out-of-memory kills", &c.new_ooms),
        ("Resolved out-of-memory kills", &c.resolved_ooms),
        ("Only in A", &c.only_in_a),
        ("Only in B", &c.only_in_b),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "\n{title} ({}): {}", list.len(), list.join(", "));
        }
    }
    out
}

/// The longest list of builds printed for a run.
const BUILDS_CHARS: usize = 200;

/// The builds `records`' iterations ran on, sorted.
fn build_names(records: &[PackageRecord]) -> Vec<String> {
    BuildMix::of(records)
        .build_names()
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The one version of the package its iterations installed, if they recorded exactly one.
fn only_version(record: &PackageRecord) -> Option<String> {
    let versions: std::collections::BTreeSet<&str> = record
        .iterations
        .iter()
        .filter_map(|i| i.package_version.as_deref())
        .collect();
    match versions.len() {
        1 => versions.into_iter().next().map(str::to_string),
        _ => None,
    }
}

fn transition_kind(before: &PackageRecord, after: &PackageRecord) -> TransitionKind {
    let (Some(from), Some(to)) = (before.category(), after.category()) else {
        return TransitionKind::SetupChanged;
    };
    let wheel = Category::CompatibleByWheel;
    if from == wheel || to == wheel {
        return TransitionKind::NotComparable;
    }
    if !is_tested_verdict(from) || !is_tested_verdict(to) {
        return TransitionKind::SetupChanged;
    }
    // Lower severity rank is worse.
    if to.severity_rank() < from.severity_rank() {
        TransitionKind::Regression
    } else {
        TransitionKind::Improvement
    }
}

/// A verdict reached by running the tests.
fn is_tested_verdict(category: Category) -> bool {
    matches!(
        category,
        Category::Crash
            | Category::Deadlock
            | Category::Intermittent
            | Category::Incompatible
            | Category::TsanWarnings
            | Category::CompatibleGilFallback
            | Category::Compatible
    )
}

fn category_deltas(a: &[PackageRecord], b: &[PackageRecord]) -> Vec<CategoryDelta> {
    let (counts_a, counts_b) = (category_counts(a), category_counts(b));
    let count = |counts: &[crate::views::show::CategoryCount], name: &str| {
        counts.iter().find(|c| c.category == name).map_or(0, |c| c.count)
    };
    let mut names: Vec<String> = Category::ALL.iter().map(|c| c.as_str().to_string()).collect();
    names.push("(unrecognised)".to_string());
    names
        .into_iter()
        .map(|name| CategoryDelta {
            a: count(&counts_a, &name),
            b: count(&counts_b, &name),
            category: name,
        })
        .filter(|d| d.a > 0 || d.b > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, category: &str, passes: u32, completed: u32) -> PackageRecord {
        PackageRecord {
            package: name.into(),
            category: category.into(),
            pass_count: passes,
            iterations_completed: completed,
            crash_count: u32::from(category == "crash"),
            deadlock_count: u32::from(category == "deadlock"),
            oom_count: u32::from(category == "incompatible"),
            ..PackageRecord::default()
        }
    }

    #[test]
    fn transitions_are_ranked_only_between_tested_verdicts() {
        let a = [
            record("worse", "compatible", 10, 10),
            record("better", "crash", 5, 10),
            record("wheel", "compatible_by_wheel", 0, 0),
            record("wheel2", "crash", 0, 10),
            record("setup", "compatible", 10, 10),
            record("same", "intermittent", 5, 10),
            record("gone", "compatible", 10, 10),
        ];
        let b = [
            record("worse", "intermittent", 6, 10),
            record("better", "compatible", 10, 10),
            record("wheel", "crash", 0, 10),
            record("wheel2", "compatible_by_wheel", 0, 0),
            record("setup", "install_failure", 0, 0),
            record("same", "intermittent", 4, 10),
            record("new", "deadlock", 1, 2),
        ];
        let c = compare("A", &a, "B", &b, DEFAULT_THRESHOLD);
        let kinds: Vec<(&str, TransitionKind)> = c.transitions.iter().map(|t| (t.package.as_str(), t.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("worse", TransitionKind::Regression),
                ("better", TransitionKind::Improvement),
                ("setup", TransitionKind::SetupChanged),
                ("wheel", TransitionKind::NotComparable),
                ("wheel2", TransitionKind::NotComparable),
            ]
        );
        assert_eq!(
            (c.regressions, c.improvements, c.unchanged, c.packages_in_both),
            (1, 1, 1, 6)
        );
        assert_eq!(c.only_in_a, ["gone"]);
        assert_eq!(c.only_in_b, ["new"]);
        assert_eq!(c.resolved_crashes, ["better"]);
        assert!(
            c.new_crashes.is_empty(),
            "the wheel package was not tested in A: {:?}",
            c.new_crashes
        );
        let changes: Vec<(&str, bool)> = c
            .rate_changes
            .iter()
            .map(|r| (r.package.as_str(), r.significant))
            .collect();
        assert_eq!(
            changes,
            vec![("worse", false), ("better", false)],
            "same moved by 10 points: noise"
        );
    }

    #[test]
    fn the_threshold_and_significance() {
        let a = [
            record("p", "intermittent", 5, 100),
            record("q", "intermittent", 50, 100),
        ];
        let b = [
            record("p", "intermittent", 95, 100),
            record("q", "intermittent", 55, 100),
        ];
        let c = compare("A", &a, "B", &b, 0.05);
        let changes: Vec<(&str, bool)> = c
            .rate_changes
            .iter()
            .map(|r| (r.package.as_str(), r.significant))
            .collect();
        assert_eq!(changes, vec![("q", false), ("p", true)]);
        let text = render_compare(&c);
        assert!(text.contains("+90 pts *"), "{text}");
        assert!(
            text.contains("2 packages in both: 2 unchanged, 0 regressions"),
            "{text}"
        );
    }

    #[test]
    fn the_text_view_lists_every_section() {
        let a = [
            record("p", "compatible", 3, 3),
            record("q", "compatible", 3, 3),
            record("x", "compatible", 3, 3),
        ];
        let b = [
            record("p", "crash", 1, 3),
            record("q", "incompatible", 0, 3),
            record("y", "compatible", 3, 3),
        ];
        let text = render_compare(&compare("A", &a, "B", &b, DEFAULT_THRESHOLD));
        for expected in [
            "2 packages in both: 0 unchanged, 2 regressions",
            "compatible -> crash",
            "regression",
            "New crashes (1): p",
            "New out-of-memory kills (1): q",
            "Only in A (1): x",
            "Only in B (1): y",
            "3/3 (44-100%)",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
    }

    fn ran_on(name: &str, build: &str, version: &str) -> PackageRecord {
        PackageRecord {
            iterations: (1..=3)
                .map(|index| crate::results::IterationRecord {
                    index,
                    status: "pass".into(),
                    interpreter_build: build.into(),
                    package_version: Some(version.into()),
                    ..Default::default()
                })
                .collect(),
            ..record(name, "compatible", 3, 3)
        }
    }

    #[test]
    fn runs_on_different_builds_or_versions_say_so() {
        let a = [ran_on("p", "3.13.5t@aaaa", "1.0"), ran_on("q", "3.13.5t@aaaa", "2.0")];
        let b = [ran_on("p", "3.14.0t@bbbb", "1.1"), ran_on("q", "3.14.0t@bbbb", "2.0")];
        let c = compare("A", &a, "B", &b, DEFAULT_THRESHOLD);
        assert!(c.builds_differ());
        assert_eq!(
            c.version_changes,
            [VersionChange {
                package: "p".into(),
                from: "1.0".into(),
                to: "1.1".into()
            }]
        );
        let text = render_compare(&c);
        for expected in [
            "A and B ran on different interpreter builds: A on 3.13.5t@aaaa; B on 3.14.0t@bbbb",
            "Package versions changed (1): p 1.0 -> 1.1",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let same = compare("A", &a, "A again", &a, DEFAULT_THRESHOLD);
        assert!(!same.builds_differ() && same.version_changes.is_empty());
        assert!(!render_compare(&same).contains("different interpreter builds"));
        let old = [record("p", "compatible", 3, 3)];
        assert!(
            !compare("old", &old, "B", &b, DEFAULT_THRESHOLD).builds_differ(),
            "results that recorded no build are not called different"
        );
    }
}
