//! Which interpreter builds and package versions a run's iterations ran on, for `show` and
//! `compare`: a run whose iterations ran on more than one build, or a package whose iterations
//! installed more than one version of it (or more than one set of distributions), says so, as
//! its verdicts may then rest on more than one thing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::results::PackageRecord;
use crate::views::text::{cell, plural};

/// Builds and packages named in a line before the rest are counted.
const NAMED: usize = 3;
/// The longest build, version or package name printed.
const NAME_CHARS: usize = 60;

/// What the iterations of a run say they ran on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildMix {
    /// Each interpreter build the iterations name, with how many ran on it, most first.
    pub builds: Vec<BuildCount>,
    /// Iterations that name their build.
    pub iterations: usize,
    /// Packages whose iterations installed more than one version of them.
    pub mixed_versions: Vec<PackageVersions>,
    /// Packages whose iterations ran in venvs of more than one `pip freeze`.
    pub mixed_environments: Vec<String>,
}

/// One interpreter build and the iterations that ran on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildCount {
    pub build: String,
    pub iterations: usize,
}

/// A package and the versions of it its iterations ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageVersions {
    pub package: String,
    pub versions: Vec<String>,
}

impl BuildMix {
    /// What `records`' iterations recorded; iterations that recorded nothing (older results)
    /// count for nothing.
    pub fn of(records: &[PackageRecord]) -> BuildMix {
        let mut builds: BTreeMap<&str, usize> = BTreeMap::new();
        let mut mix = BuildMix::default();
        for record in records {
            let mut versions = BTreeSet::new();
            let mut freezes = BTreeSet::new();
            for iteration in &record.iterations {
                if !iteration.interpreter_build.is_empty() {
                    *builds.entry(iteration.interpreter_build.as_str()).or_default() += 1;
                    mix.iterations += 1;
                }
                versions.extend(iteration.package_version.as_deref());
                freezes.extend(iteration.freeze_hash.as_deref());
            }
            if versions.len() > 1 {
                mix.mixed_versions.push(PackageVersions {
                    package: record.package.clone(),
                    versions: versions.into_iter().map(str::to_string).collect(),
                });
            }
            if freezes.len() > 1 {
                mix.mixed_environments.push(record.package.clone());
            }
        }
        mix.builds = builds
            .into_iter()
            .map(|(build, iterations)| BuildCount {
                build: build.to_string(),
                iterations,
            })
            .collect();
        mix.builds
            .sort_by(|a, b| b.iterations.cmp(&a.iterations).then_with(|| a.build.cmp(&b.build)));
        mix
    }

    /// The builds, by name.
    pub fn build_names(&self) -> BTreeSet<&str> {
        self.builds.iter().map(|b| b.build.as_str()).collect()
    }

    /// One line for each way the run mixed what it ran on; none when it did not:
    /// `mixed interpreter builds: 2 builds across 10 iterations (3.13.5t@1a2b3c4d5e6f: 6; ...)`.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.builds.len() > 1 {
            let named: Vec<String> = self
                .builds
                .iter()
                .map(|b| format!("{}: {}", shown(&b.build), b.iterations))
                .collect();
            lines.push(format!(
                "mixed interpreter builds: {} builds across {} iterations ({})",
                self.builds.len(),
                self.iterations,
                listed(&named)
            ));
        }
        if !self.mixed_versions.is_empty() {
            let named: Vec<String> = self
                .mixed_versions
                .iter()
                .map(|p| {
                    let versions: Vec<String> = p.versions.iter().map(|v| shown(v)).collect();
                    format!("{}: {}", shown(&p.package), versions.join(", "))
                })
                .collect();
            let n = self.mixed_versions.len();
            lines.push(format!(
                "mixed package versions: {n} package{} ran more than one version ({})",
                plural(n),
                listed(&named)
            ));
        }
        if !self.mixed_environments.is_empty() {
            let named: Vec<String> = self.mixed_environments.iter().map(|p| shown(p)).collect();
            let n = self.mixed_environments.len();
            lines.push(format!(
                "mixed environments: {n} package{} ran in venvs of more than one pip freeze ({})",
                plural(n),
                listed(&named)
            ));
        }
        lines
    }
}

/// What a package wrote, safe and short for one line.
fn shown(text: &str) -> String {
    cell(text, NAME_CHARS)
}

/// The first [`NAMED`] items, `; `-separated, and how many more.
fn listed(items: &[String]) -> String {
    let mut text = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > NAMED {
        text.push_str(&format!("; and {} more", items.len() - NAMED));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::IterationRecord;

    fn package(name: &str, iterations: &[(&str, &str, &str)]) -> PackageRecord {
        PackageRecord {
            package: name.to_string(),
            iterations: iterations
                .iter()
                .enumerate()
                .map(|(index, (build, version, freeze))| IterationRecord {
                    index: index as u32 + 1,
                    status: "pass".into(),
                    interpreter_build: build.to_string(),
                    package_version: (!version.is_empty()).then(|| version.to_string()),
                    freeze_hash: (!freeze.is_empty()).then(|| freeze.to_string()),
                    ..IterationRecord::default()
                })
                .collect(),
            ..PackageRecord::default()
        }
    }

    #[test]
    fn a_run_on_one_build_and_one_version_each_says_nothing() {
        let records = [
            package("a", &[("3.13.5t@aaaa", "1.0", "sha256:1"); 3]),
            package("b", &[("3.13.5t@aaaa", "2.0", "sha256:2"); 2]),
            package("old", &[("", "", ""); 4]),
        ];
        let mix = BuildMix::of(&records);
        assert_eq!(mix.iterations, 5, "iterations that named no build are not counted");
        assert_eq!(mix.build_names(), BTreeSet::from(["3.13.5t@aaaa"]));
        assert!(mix.warnings().is_empty(), "{:?}", mix.warnings());
    }

    #[test]
    fn a_run_that_mixed_builds_versions_or_environments_says_each() {
        let records = [
            package(
                "numpy",
                &[
                    ("3.13.5t@aaaa", "2.0.0", "sha256:1"),
                    ("3.13.5t@aaaa", "2.1.0", "sha256:2"),
                    ("3.13.6t@bbbb", "2.1.0", "sha256:2"),
                ],
            ),
            package(
                "attrs",
                &[
                    ("3.13.5t@aaaa", "24.1", "sha256:3"),
                    ("3.13.5t@aaaa", "24.1", "sha256:4"),
                ],
            ),
            package("six", &[("3.13.5t@aaaa", "1.16", "sha256:5"); 5]),
        ];
        let warnings = BuildMix::of(&records).warnings();
        assert_eq!(
            warnings,
            [
                "mixed interpreter builds: 2 builds across 10 iterations (3.13.5t@aaaa: 9; 3.13.6t@bbbb: 1)",
                "mixed package versions: 1 package ran more than one version (numpy: 2.0.0, 2.1.0)",
                "mixed environments: 2 packages ran in venvs of more than one pip freeze (numpy; attrs)",
            ]
        );
    }

    #[test]
    fn what_a_package_wrote_is_printed_safe_and_short() {
        let long = "9".repeat(200);
        let records = [package(
            "p",
            &[
                ("b1", "1.0\u{1b}[2J", ""),
                ("b2", &long, ""),
                ("b3", "", ""),
                ("b4", "", ""),
            ],
        )];
        let warnings = BuildMix::of(&records).warnings();
        assert!(
            warnings[0].ends_with("b1: 1; b2: 1; b3: 1; and 1 more)"),
            "{}",
            warnings[0]
        );
        assert!(
            !warnings[1].contains('\u{1b}') && warnings[1].contains("..."),
            "{}",
            warnings[1]
        );
    }
}
