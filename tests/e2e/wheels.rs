//! `--trust-ft-wheels` against PyPI: a release with a free-threaded wheel for this platform is
//! `compatible_by_wheel` and nothing is run for it.

use crate::cli::{assert_success, free_threaded_python, ftsurvey};

#[test]
fn a_pinned_release_with_a_cp313t_wheel_is_compatible_by_wheel_without_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(registry.join("packages")).expect("mkdir");
    std::fs::write(
        registry.join("index.yaml"),
        "packages:\n- name: markupsafe\n  enriched: true\n",
    )
    .expect("index");
    // MarkupSafe 3.0.3 publishes cp313t wheels for manylinux x86_64 and aarch64.
    std::fs::write(
        registry.join("packages/markupsafe.yaml"),
        "package: markupsafe\nsource: sdist\nversion: 3.0.3\nenriched: true\n",
    )
    .expect("package");
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
    let folder = std::fs::read_dir(dir.path().join("results"))
        .expect("results")
        .flatten()
        .next()
        .expect("a results folder")
        .path();
    let text = std::fs::read_to_string(folder.join("ft_results.jsonl")).expect("ft_results.jsonl");
    let record = domain::results::PackageRecord::parse_line(text.lines().next().expect("a line")).expect("a record");
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
