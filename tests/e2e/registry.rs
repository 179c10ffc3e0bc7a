//! The registry reader on the real laruche snapshot kept beside the repository, and what
//! `registry validate` and `run --dry-run` refuse and show of a registry.

use std::path::{Path, PathBuf};

use domain::registry::laruche::{Selection, select};

use crate::cli::{assert_success, ftsurvey};

/// `../shared/registries/laruche`, beside the clone; its absence fails the test.
fn laruche() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/registries/laruche");
    assert!(
        path.join("index.yaml").is_file(),
        "the laruche registry snapshot is missing: looked in {}",
        path.display()
    );
    path
}

#[test]
fn every_file_of_the_laruche_snapshot_loads_and_the_top_packages_select() {
    let registry = cli::registry_dir::load_registry(&laruche(), &Default::default()).expect("the snapshot loads");
    assert_eq!(registry.index.packages.len(), 4999);
    assert!(
        registry.warnings.is_empty(),
        "{:?}",
        &registry.warnings[..registry.warnings.len().min(5)]
    );
    assert_eq!(registry.entries.len(), 4999);
    let selection = Selection {
        top: Some(20),
        python_version: Some("3.13".into()),
        ..Selection::default()
    };
    let selected = select(&registry.index, &registry.entries, &registry.dir, &selection).expect("select");
    assert_eq!(selected.specs.len(), 20);
    assert_eq!(
        selected.specs[0].name, "packaging",
        "boto3 is skipped in the index, packaging is next"
    );
    assert!(
        selected
            .specs
            .iter()
            .all(|s| matches!(s.source, domain::Source::Git { .. }))
    );
    let all = select(&registry.index, &registry.entries, &registry.dir, &Selection::default()).expect("select");
    let enriched_unskipped = registry.index.packages.iter().filter(|e| e.enriched && !e.skip).count();
    assert!(
        selected.specs.iter().all(|s| match &s.source {
            domain::Source::Git { depth, .. } => depth.is_some(),
            _ => false,
        }),
        "git sources are shallow by default"
    );
    assert!(
        all.specs.len() <= enriched_unskipped && all.specs.len() > 1000,
        "{} selectable",
        all.specs.len()
    );
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn registry_validate_reads_the_whole_snapshot_in_seconds_and_reports_no_problem() {
    let started = std::time::Instant::now();
    let output = ftsurvey()
        .args(["registry", "validate", "--registry-dir"])
        .arg(laruche())
        .output()
        .expect("run ftsurvey");
    let elapsed = started.elapsed();
    assert_success(&output);
    let stdout = stdout_of(&output);
    assert!(
        stdout.contains(": 4999 packages in the index, 5000 files read in ")
            && stdout.contains("4999 usable, 0 reported;"),
        "{stdout}"
    );
    assert!(elapsed.as_secs() < 30, "validate took {elapsed:?}");
}

#[test]
fn registry_list_top_shows_the_most_popular_selectable_packages_with_their_rank() {
    let output = ftsurvey()
        .args([
            "registry",
            "list",
            "--top",
            "3",
            "--python-version",
            "3.13",
            "--registry-dir",
        ])
        .arg(laruche())
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let stdout = stdout_of(&output);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("rank"))
        .map(|l| l.trim_matches('|').split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        rows,
        vec![vec!["2", "packaging"], vec!["3", "urllib3"], vec!["4", "setuptools"]],
        "{stdout}"
    );
    assert!(
        stdout.contains("git https://github.com/pypa/packaging (depth 1)"),
        "{stdout}"
    );
}

#[test]
fn a_malformed_package_file_is_one_problem_for_validate_and_one_warning_for_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(registry.join("packages")).expect("mkdir");
    std::fs::write(
        registry.join("index.yaml"),
        "packages:\n- name: good\n  enriched: true\n- name: typo\n  enriched: true\n",
    )
    .expect("write index");
    std::fs::write(
        registry.join("packages/good.yaml"),
        "package: good\nsource: sdist\nversion: '1.0'\nenriched: true\ntimeout: 42\n",
    )
    .expect("write good");
    std::fs::write(
        registry.join("packages/typo.yaml"),
        "package: typo\nrepo: https://example.org/typo\nenriched: true\ntest_framework: pytets\n",
    )
    .expect("write typo");

    let output = ftsurvey()
        .args(["registry", "validate", "--registry-dir"])
        .arg(&registry)
        .output()
        .expect("run ftsurvey");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = stdout_of(&output);
    let problems: Vec<&str> = stdout.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 1, "{stdout}");
    assert!(
        problems[0].starts_with("problem: packages/typo.yaml: ")
            && problems[0].contains("unknown test_framework \"pytets\": expected one of pytest, unittest"),
        "{stdout}"
    );

    let output = ftsurvey()
        .args(["run", "--dry-run", "--allow-gil-build", "--target-python"])
        .arg(crate::cli::machine_python())
        .arg("--registry-dir")
        .arg(&registry)
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("warning: ")).count(),
        1,
        "{stderr}"
    );
    let stdout = stdout_of(&output);
    assert!(stdout.contains("source:  sdist good==1.0"), "{stdout}");
    assert!(stdout.contains("timeout 42 s"), "{stdout}");
    assert!(stdout.contains("nothing was run (--dry-run)"), "{stdout}");
}

#[test]
fn without_a_registry_dir_the_built_in_registry_is_used_in_popularity_order() {
    let output = ftsurvey()
        .args([
            "run",
            "--target-python",
            "3.13t",
            "--dry-run",
            "--top",
            "3",
            "--iterations",
            "2",
        ])
        .env("FTSURVEY_CACHE_DIR", tempfile::tempdir().expect("tempdir").path())
        .env_remove("FTSURVEY_REGISTRY_DIR")
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let stdout = stdout_of(&output);
    let sources: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("source:"))
        .collect();
    assert_eq!(sources.len(), 3, "{stdout}");
    assert!(
        sources.iter().all(|l| l.contains("sdist ") && l.contains("==")),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 packages x 2 iterations x 1 mode(s) = 6 jobs"),
        "{stdout}"
    );
    let listed = ftsurvey()
        .args(["registry", "list", "--top", "3"])
        .output()
        .expect("run ftsurvey");
    assert_success(&listed);
    let names: Vec<String> = stdout
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    let table = stdout_of(&listed);
    for name in &names {
        assert!(table.contains(&format!(" {name} ")), "{name} missing from {table}");
    }
}

/// A registry under `root` listing `packages` (name, file) in order, all enriched.
fn registry_of(root: &Path, packages: &[(&str, &str)]) -> PathBuf {
    let registry = root.join("registry");
    std::fs::create_dir_all(registry.join("packages")).expect("mkdir");
    let index: String = packages
        .iter()
        .map(|(name, _)| format!("- name: {name}\n  enriched: true\n"))
        .collect();
    std::fs::write(registry.join("index.yaml"), format!("packages:\n{index}")).expect("write index");
    for (name, yaml) in packages {
        std::fs::write(registry.join(format!("packages/{name}.yaml")), yaml).expect("write package");
    }
    registry
}

/// `ftsurvey ARGS --registry-dir REGISTRY`.
fn with_registry(args: &[&str], registry: &Path) -> std::process::Output {
    ftsurvey()
        .args(args)
        .arg("--registry-dir")
        .arg(registry)
        .env_remove("FTSURVEY_ALLOW_ENV")
        .output()
        .expect("run ftsurvey")
}

/// `ftsurvey run --dry-run` on the machine's python3 with `args`.
fn dry_run(args: &[&str], registry: &Path) -> std::process::Output {
    let python = crate::cli::machine_python();
    let mut all = vec!["run", "--dry-run", "--allow-gil-build", "--target-python"];
    all.push(python.to_str().expect("a UTF-8 path"));
    all.extend_from_slice(args);
    with_registry(&all, registry)
}

#[test]
fn an_env_key_that_hijacks_what_runs_is_a_problem_for_validate_and_left_out_of_a_run_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_of(
        dir.path(),
        &[
            (
                "good",
                "package: good\nsource: sdist\nversion: '1.0'\nenriched: true\nenv:\n  PYTHONHASHSEED: '0'\n",
            ),
            (
                "preload",
                "package: preload\nsource: sdist\nversion: '1.0'\nenriched: true\nenv:\n  LD_PRELOAD: /tmp/x.so\n",
            ),
        ],
    );

    let output = with_registry(&["registry", "validate"], &registry);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = stdout_of(&output);
    let problems: Vec<&str> = stdout.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(
        problems,
        vec![
            "problem: packages/preload.yaml: env key \"LD_PRELOAD\" is refused: it makes the dynamic loader load \
             other code into every process, the tool's own included (--allow-env LD_PRELOAD allows it)"
        ],
        "{stdout}"
    );

    let output = dry_run(&[], &registry);
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: packages/preload.yaml: env key \"LD_PRELOAD\" is refused"),
        "{stderr}"
    );
    let stdout = stdout_of(&output);
    assert!(stdout.contains("1. good") && !stdout.contains("preload"), "{stdout}");

    let output = with_registry(&["registry", "validate", "--allow-env", "LD_PRELOAD"], &registry);
    assert_success(&output);
    assert!(
        stdout_of(&output).contains("  preload\n    env:     LD_PRELOAD=/tmp/x.so\n"),
        "{}",
        stdout_of(&output)
    );
    let output = dry_run(&["--allow-env", "LD_PRELOAD", "--packages", "preload"], &registry);
    assert_success(&output);
    assert!(
        stdout_of(&output).contains("env:     LD_PRELOAD=/tmp/x.so"),
        "{}",
        stdout_of(&output)
    );

    let output = with_registry(
        &["registry", "validate", "--allow-env", "FTSURVEY_WORKER_DIR"],
        &registry,
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--allow-env: env key \"FTSURVEY_WORKER_DIR\" cannot be allowed"),
        "{stderr}"
    );
}

#[test]
fn validate_and_a_dry_run_list_only_what_packages_set_beyond_the_defaults_neutralised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_of(
        dir.path(),
        &[
            (
                "plain",
                "package: plain\nsource: sdist\nversion: '1.0'\nenriched: true\n",
            ),
            (
                "custom",
                "package: custom\nrepo: https://example.org/custom.git\nenriched: true\n\
                 install_command: pip install -e .[test]\n\
                 test_command: \"python -m pytest\\nrm -rf ~\\e]0;owned\\a\"\n\
                 import_name: custom_mod\nnetwork: true\nenv:\n  PYTHONHASHSEED: '0'\n",
            ),
        ],
    );
    let expected = "  custom
    source:  git https://example.org/custom.git
    install: pip install -e .[test]
    test:    python -m pytest\u{23CE}rm -rf ~\u{FFFD}]0;owned\u{FFFD}
    import:  custom_mod
    env:     PYTHONHASHSEED=0
    network: the tests reach the host's network
";
    let validated = with_registry(&["registry", "validate"], &registry);
    let planned = dry_run(&[], &registry);
    for output in [&validated, &planned] {
        assert_success(output);
        let stdout = stdout_of(output);
        assert!(!stdout.contains('\u{1b}') && !stdout.contains('\u{7}'), "{stdout:?}");
        let heading = stdout
            .lines()
            .find(|l| l.starts_with("beyond the defaults ("))
            .unwrap_or_else(|| panic!("no heading in {stdout}"));
        assert!(
            heading.contains("install `pip install . pytest`, test `python -m pytest`")
                && heading.ends_with("): 1 of 2 packages"),
            "{heading}"
        );
        assert!(stdout.contains(&format!("{heading}\n{expected}")), "{stdout}");
        assert!(!stdout.contains("  plain\n"), "{stdout}");
    }
}
