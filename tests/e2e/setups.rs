//! Package setups as a user sees them: uv or pip, relative directories, and venvs kept and
//! reused by a later run.

use std::path::Path;
use std::process::Output;

use tests::fixture_registry;

use crate::cli::{assert_success, first_record, free_threaded_python, ftsurvey, one_package_registry};

/// `ftsurvey run -v` of `ftfix-pass`, once, from `cwd` with relative directories.
fn run_pass(cwd: &Path, installer: &str, venvs: &str) -> Output {
    let output = ftsurvey()
        .current_dir(cwd)
        .env("FTSURVEY_LOG", "info")
        .arg("run")
        .arg("--target-python")
        .arg(free_threaded_python())
        .arg("--registry-dir")
        .arg(fixture_registry())
        .args([
            "--packages",
            "ftfix-pass",
            "--iterations",
            "1",
            "--no-detect-extensions",
        ])
        .args(["--installer", installer, "--venvs-dir", venvs])
        .args(["--work-dir", "work", "--repos-dir", "repos", "--results-dir", "results"])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    output
}

/// Whether the run's table says `ftfix-pass` is compatible.
fn passed(output: &Output) -> bool {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l.contains("ftfix-pass") && l.contains(" compatible "))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// uv must be on PATH for these tests (`tests/run.sh` installs it); its absence fails them.
fn require_uv() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v uv"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "uv is not on PATH; tests/run.sh installs it with `python3 -m pip install uv`"
    );
}

#[test]
fn a_second_run_reuses_the_kept_venv_made_with_uv_from_relative_directories() {
    require_uv();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = run_pass(dir.path(), "uv", "venvs");
    let log = stderr(&first);
    assert!(log.contains("installer=uv"), "{log}");
    assert!(!log.contains("reusing the kept setup"), "{log}");
    assert!(passed(&first), "{first:?}");
    let kept = dir.path().join("venvs").join("local-1");
    let setups: Vec<_> = std::fs::read_dir(&kept)
        .expect("the venvs dir holds the worker's setups")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(setups.len(), 1, "{setups:?}");
    assert!(setups[0].path().join("venv/bin/python").exists());

    let second = run_pass(dir.path(), "uv", "venvs");
    let log = stderr(&second);
    assert!(log.contains("reusing the kept setup"), "{log}");
    assert!(passed(&second), "{second:?}");
}

#[test]
fn pip_sets_packages_up_when_asked_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = run_pass(dir.path(), "pip", "pip-venvs");
    let log = stderr(&output);
    assert!(log.contains("installer=pip"), "{log}");
    assert!(passed(&output), "{output:?}");
    assert!(dir.path().join("pip-venvs/local-1").is_dir());
}

#[test]
fn thread_stress_runs_the_tests_in_parallel_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = ftsurvey()
        .current_dir(dir.path())
        .arg("run")
        .arg("--target-python")
        .arg(free_threaded_python())
        .arg("--registry-dir")
        .arg(fixture_registry())
        .args([
            "--packages",
            "ftfix-pass",
            "--iterations",
            "1",
            "--parallel-threads",
            "4",
        ])
        .args(["--work-dir", "work", "--results-dir", "results"])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let record = first_record(&dir.path().join("results"));
    assert_eq!(record.category, "compatible", "{record:?}");
    let parallel = record.iterations[0]
        .parallel
        .clone()
        .expect("the iteration reports thread stress");
    assert_eq!(
        (parallel.threads, parallel.in_parallel, parallel.thread_unsafe),
        (4, Some(3), 0)
    );
    assert!(
        record
            .evidence
            .iter()
            .any(|e| e == "thread stress: 3 tests ran in 4 threads at once, 0 ran alone as thread-unsafe"),
        "{:?}",
        record.evidence
    );
}

#[test]
fn a_pinned_sdist_from_pypi_is_fetched_unpacked_and_tested_sealed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // six 1.17.0's sdist is a tarball: unpacked through tarfile's `data` filter.
    let registry = one_package_registry(
        dir.path(),
        "six",
        "package: six\nsource: sdist\nversion: 1.17.0\nenriched: true\ntest_command: python -c 'import six; assert six.__version__ == \"1.17.0\"'\ntest_framework: other\n",
    );
    let output = ftsurvey()
        .current_dir(dir.path())
        .arg("run")
        .arg("--target-python")
        .arg(free_threaded_python())
        .arg("--registry-dir")
        .arg(&registry)
        .args([
            "--sandbox",
            "bwrap",
            "--iterations",
            "1",
            "--work-dir",
            "work",
            "--results-dir",
            "results",
        ])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let record = first_record(&dir.path().join("results"));
    assert_eq!(record.category, "compatible", "{record:?}");
}
