//! `--target-python` as a request: an interpreter on PATH first, then a managed build; and
//! `python list`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{assert_success, free_threaded_python, ftsurvey};

/// A cache directory whose `pythons/ft-test` is the free-threaded build the tests use.
fn cache_with_managed_build(dir: &Path) -> PathBuf {
    let build = dir.join("cache").join("pythons").join("ft-test");
    std::fs::create_dir_all(build.join("bin")).expect("mkdir");
    std::os::unix::fs::symlink(free_threaded_python(), build.join("bin").join("python3")).expect("symlink");
    std::fs::write(build.join(".ftsurvey-build-complete"), "").expect("marker");
    dir.join("cache")
}

/// `ftsurvey` with a PATH holding only the system's directories and `extra`.
fn with_path(command: &mut Command, extra: Option<&Path>) {
    let mut path = vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")];
    path.extend(extra.map(Path::to_path_buf));
    command.env("PATH", std::env::join_paths(path).expect("join"));
}

#[test]
fn python_list_names_each_managed_build_with_the_request_it_meets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_with_managed_build(dir.path());
    let output = ftsurvey()
        .args(["python", "list"])
        .env("FTSURVEY_CACHE_DIR", &cache)
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let row = stdout
        .lines()
        .find(|l| l.contains("ft-test"))
        .unwrap_or_else(|| panic!("no row for the build: {stdout}"));
    assert!(row.contains("3.13t ") && row.contains("free-threaded"), "{row}");
    // The build id a request pins with 3.13t@ID.
    let id = row.split_whitespace().nth(2).unwrap_or_default();
    assert!(
        id.len() == domain::interpreter::BUILD_ID_LEN && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{row}"
    );
}

#[test]
fn a_request_is_met_by_an_interpreter_on_path_before_a_managed_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_with_managed_build(dir.path());
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::os::unix::fs::symlink(free_threaded_python(), bin.join("python3.13t")).expect("symlink");
    let run = |path: Option<&Path>| {
        let mut command = ftsurvey();
        command
            .args(["run", "--target-python", "3.13t", "--dry-run", "--top", "1"])
            .env("FTSURVEY_CACHE_DIR", &cache)
            .env_remove("FTSURVEY_CPYTHON_SOURCE");
        with_path(&mut command, path);
        let output = command.output().expect("run ftsurvey");
        assert_success(&output);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(Some(&bin));
    assert!(
        stderr.contains(&format!("{}", bin.join("python3.13t").display())) && stderr.contains("found on PATH"),
        "{stderr}"
    );
    let stderr = run(None);
    assert!(
        stderr.contains("ft-test") && stderr.contains("a managed build"),
        "{stderr}"
    );
    let empty_cache = dir.path().join("empty");
    let mut command = ftsurvey();
    command
        .args(["run", "--target-python", "3.13t-tsan", "--dry-run", "--top", "1"])
        .env("FTSURVEY_CACHE_DIR", &empty_cache);
    with_path(&mut command, Some(&bin));
    let output = command.output().expect("run ftsurvey");
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a run would build one"),
        "a TSAN request is not met by a plain build: {stderr}"
    );
}

#[test]
fn a_request_no_source_can_meet_is_one_line_naming_the_version_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = dir.path().join("Python-3.13.5.tar.xz");
    std::fs::write(&tarball, "").expect("write");
    let mut command = ftsurvey();
    command
        .args(["run", "--target-python", "3.14t", "--top", "1"])
        .env("FTSURVEY_CACHE_DIR", dir.path().join("cache"))
        .env("FTSURVEY_CPYTHON_SOURCE", &tarball);
    with_path(&mut command, None);
    let output = command.output().expect("run ftsurvey");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: --target-python 3.14t: FTSURVEY_CPYTHON_SOURCE")
            && stderr.contains("is CPython 3.13.5, not the 3.14 requested"),
        "{stderr}"
    );
}
