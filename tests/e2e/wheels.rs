//! `--trust-ft-wheels` against PyPI: a release with a free-threaded wheel for this platform is
//! `compatible_by_wheel` and nothing is run for it.

use crate::cli::{assert_success, first_record, free_threaded_python, ftsurvey, one_package_registry};

#[test]
fn a_pinned_release_with_a_cp313t_wheel_is_compatible_by_wheel_without_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    // MarkupSafe 3.0.3 publishes cp313t wheels for manylinux x86_64 and aarch64.
    let registry = one_package_registry(
        dir.path(),
        "markupsafe",
        "package: markupsafe\nsource: sdist\nversion: 3.0.3\nenriched: true\n",
    );
    let output = ftsurvey()
        .current_dir(dir.path())
        .arg("run")
        .arg("--target-python")
        .arg(free_threaded_python())
        .arg("--registry-dir")
        .arg(&registry)
        .args(["--trust-ft-wheels", "--work-dir", "work", "--results-dir", "results"])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let record = first_record(&dir.path().join("results"));
    assert_eq!(record.category, "compatible_by_wheel", "{record:?}");
    assert!(record.iterations.is_empty());
    assert!(
        record.evidence[0].contains("cp313t wheel of markupsafe 3.0.3"),
        "{:?}",
        record.evidence
    );
    assert!(
        dir.path().join("work/pypi-json/markupsafe.json").is_file(),
        "the answer is cached"
    );
    assert!(!dir.path().join("work/venvs").exists(), "nothing was set up");
}
