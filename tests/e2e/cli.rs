//! The CLI as a user types it: `ftsurvey run` on the fixture registry, `show`, bad input,
//! Ctrl-C, and help that keeps secrets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use domain::results::{PackageRecord, RunMeta};
use tests::fixture_registry;

pub(crate) fn ftsurvey() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ftsurvey-under-test"));
    command.env_remove("FTSURVEY_LOG");
    command
}

/// The machine's `python3`, found on PATH.
pub(crate) fn machine_python() -> PathBuf {
    let output = Command::new("sh")
        .args(["-c", "command -v python3"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(!path.is_empty(), "python3 is not on PATH; the CLI tests need it");
    PathBuf::from(path)
}

/// The free-threaded interpreter `tests/run.sh` builds; its absence fails the test.
pub(crate) fn free_threaded_python() -> PathBuf {
    let path = std::env::var_os("FTSURVEY_TEST_FT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "FTSURVEY_TEST_FT_PYTHON must name a free-threaded CPython (got {path:?}); run the tests with tests/run.sh, \
         which builds one with deploy/build-cpython.sh"
    );
    path
}

/// A survey of the whole fixture registry, in a fresh work dir and results dir.
pub(crate) struct Survey {
    pub(crate) dir: tempfile::TempDir,
}

impl Survey {
    pub(crate) fn new() -> Self {
        Survey {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub(crate) fn results_root(&self) -> PathBuf {
        self.dir.path().join("results")
    }

    pub(crate) fn command(&self, python: &Path) -> Command {
        let mut command = ftsurvey();
        command
            .arg("run")
            .arg("--target-python")
            .arg(python)
            .arg("--registry-dir")
            .arg(fixture_registry())
            .arg("--work-dir")
            .arg(self.dir.path().join("work"))
            .arg("--results-dir")
            .arg(self.results_root());
        command
    }

    /// The one results folder the run made.
    pub(crate) fn folder(&self) -> PathBuf {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(self.results_root())
            .expect("results dir exists")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(folders.len(), 1, "{folders:?}");
        folders.remove(0)
    }

    pub(crate) fn records(&self) -> Vec<PackageRecord> {
        let text = std::fs::read_to_string(self.folder().join("ft_results.jsonl")).expect("ft_results.jsonl");
        text.lines()
            .map(|l| PackageRecord::parse_line(l).expect("a valid line"))
            .collect()
    }

    fn meta(&self) -> RunMeta {
        serde_json::from_slice(&std::fs::read(self.folder().join("ft_meta.json")).expect("ft_meta.json"))
            .expect("valid ft_meta.json")
    }
}

/// A registry under `root` of one package, `name`, whose file is `yaml`.
pub(crate) fn one_package_registry(root: &Path, name: &str, yaml: &str) -> PathBuf {
    let registry = root.join("registry");
    std::fs::create_dir_all(registry.join("packages")).expect("mkdir");
    std::fs::write(
        registry.join("index.yaml"),
        format!("packages:\n- name: {name}\n  enriched: true\n"),
    )
    .expect("index");
    std::fs::write(registry.join(format!("packages/{name}.yaml")), yaml).expect("package");
    registry
}

/// The first package record of the one results folder under `results`.
pub(crate) fn first_record(results: &Path) -> PackageRecord {
    let folder = std::fs::read_dir(results)
        .expect("results")
        .flatten()
        .next()
        .expect("a results folder")
        .path();
    let text = std::fs::read_to_string(folder.join("ft_results.jsonl")).expect("ft_results.jsonl");
    PackageRecord::parse_line(text.lines().next().expect("a line")).expect("a record")
}

pub(crate) fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn category_of<'a>(records: &'a [PackageRecord], package: &str) -> &'a PackageRecord {
    records
        .iter()
        .find(|r| r.package == package)
        .unwrap_or_else(|| panic!("{package} missing from results"))
}

/// Runs the whole fixture registry and checks every verdict and the folder `show` reads.
fn survey_classifies_every_fixture(python: &Path, allow_gil_build: bool) {
    let survey = Survey::new();
    let mut command = survey.command(python);
    command.args(["--iterations", "2", "--timeout", "120", "--workers", "2"]);
    command.args([
        "--packages",
        "ftfix-pass,ftfix-fail,ftfix-segfault,ftfix-import-error,ftfix-build-error,ftfix-timeout",
    ]);
    if allow_gil_build {
        command.arg("--allow-gil-build");
    }
    let output = command.output().expect("run ftsurvey");
    assert_success(&output);

    let records = survey.records();
    assert_eq!(records.len(), 6, "one line per package");
    let expected = [
        ("ftfix-pass", "compatible"),
        ("ftfix-fail", "incompatible"),
        ("ftfix-segfault", "crash"),
        ("ftfix-import-error", "import_failure"),
        ("ftfix-build-error", "install_failure"),
        ("ftfix-timeout", "incompatible"),
    ];
    for (package, category) in expected {
        let record = category_of(&records, package);
        assert_eq!(record.category, category, "{package}: {record:?}");
    }
    let pass = category_of(&records, "ftfix-pass");
    assert_eq!((pass.pass_count, pass.iterations.len()), (2, 2));
    assert!(
        pass.iterations
            .iter()
            .all(|i| i.status == "pass" && i.exit_code == Some(0))
    );
    let segfault = category_of(&records, "ftfix-segfault");
    assert!(
        segfault
            .iterations
            .iter()
            .all(|i| i.crash_signal.as_deref() == Some("SIGSEGV")),
        "{segfault:?}"
    );
    assert!(
        segfault.iterations[0].stderr_tail.contains("Segmentation fault"),
        "{}",
        segfault.iterations[0].stderr_tail
    );
    let timeout = category_of(&records, "ftfix-timeout");
    assert!(timeout.iterations.iter().all(|i| i.status == "timeout"));
    assert!(
        timeout.evidence.iter().any(|e| e.contains("timed out")),
        "the timeout is named: {:?}",
        timeout.evidence
    );
    let build = category_of(&records, "ftfix-build-error");
    assert!(
        build
            .setup_error
            .as_deref()
            .unwrap_or_default()
            .contains("install command exited"),
        "{build:?}"
    );
    assert!(
        build
            .setup_log_tail
            .as_deref()
            .unwrap_or_default()
            .contains("cannot be built (deliberately)")
    );
    let import = category_of(&records, "ftfix-import-error");
    assert!(
        import
            .setup_error
            .as_deref()
            .unwrap_or_default()
            .contains("_ftfix_missing"),
        "{import:?}"
    );

    let meta = survey.meta();
    assert!(!meta.interrupted);
    assert!(meta.finished_at.is_some());
    let interpreter = meta.interpreter.expect("interpreter profile");
    assert_eq!(interpreter.free_threaded, !allow_gil_build);
    assert_eq!(meta.config.iterations, 2);

    let show = ftsurvey()
        .arg("show")
        .arg(survey.folder())
        .args(["--sort", "name"])
        .output()
        .expect("show");
    assert_success(&show);
    let text = String::from_utf8_lossy(&show.stdout);
    for (package, category) in expected {
        assert!(
            text.lines().any(|l| l.contains(package) && l.contains(category)),
            "{package} {category} in:\n{text}"
        );
    }
    let position = |name: &str| text.find(name).expect("listed");
    assert!(
        position("ftfix-build-error") < position("ftfix-timeout"),
        "sorted by name:\n{text}"
    );
}

#[test]
fn the_fixture_registry_is_classified_on_the_machines_python_with_allow_gil_build() {
    survey_classifies_every_fixture(&machine_python(), true);
}

#[test]
fn the_fixture_registry_is_classified_on_a_free_threaded_build() {
    survey_classifies_every_fixture(&free_threaded_python(), false);
}

/// Runs `ftsurvey run` with `args` after the defaults and expects a one-line error.
fn bad_run(survey: &Survey, python: &Path, args: &[&str]) -> String {
    let output = survey.command(python).args(args).output().expect("run ftsurvey");
    assert_eq!(
        output.status.code(),
        Some(if args.contains(&"--iterations") { 2 } else { 1 }),
        "{args:?}: {output:?}"
    );
    assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !survey.results_root().exists() || std::fs::read_dir(survey.results_root()).expect("dir").next().is_none(),
        "no results folder for {args:?}"
    );
    stderr
}

#[test]
fn bad_input_is_one_line_and_no_work() {
    let survey = Survey::new();
    let python = machine_python();

    let missing = bad_run(&survey, Path::new("/nonexistent/python3"), &["--allow-gil-build"]);
    assert_eq!(
        missing.trim(),
        "error: cannot use --target-python /nonexistent/python3: /nonexistent/python3 does not exist"
    );

    let not_executable = survey.dir.path().join("python");
    std::fs::write(&not_executable, "text").expect("write");
    let error = bad_run(&survey, &not_executable, &["--allow-gil-build"]);
    assert!(
        error.trim().ends_with("is not an executable file") && error.trim().lines().count() == 1,
        "{error}"
    );

    let gil = bad_run(&survey, &python, &[]);
    assert!(
        gil.contains("is not a free-threaded build") && gil.contains("--allow-gil-build"),
        "{gil}"
    );
    assert_eq!(gil.trim().lines().count(), 1, "{gil}");

    let unknown = bad_run(
        &survey,
        &python,
        &["--allow-gil-build", "--packages", "ftfix-pass,nope,nada"],
    );
    assert_eq!(unknown.trim(), "error: unknown packages: nope, nada");

    let zero = bad_run(&survey, &python, &["--allow-gil-build", "--iterations", "0"]);
    assert!(zero.contains("--iterations") && zero.contains('0'), "{zero}");
    let huge = bad_run(&survey, &python, &["--allow-gil-build", "--iterations", "4000000000"]);
    assert!(huge.contains("--iterations") && huge.contains("1..=10000"), "{huge}");

    let output = ftsurvey()
        .args(["run", "--allow-gil-build", "--target-python"])
        .arg(&python)
        .args(["--registry-dir", "/nonexistent/registry"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: registry dir /nonexistent/registry not found"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let blocker = survey.dir.path().join("a-file");
    std::fs::write(&blocker, "x").expect("write");
    let output = ftsurvey()
        .args(["run", "--allow-gil-build", "--target-python"])
        .arg(&python)
        .arg("--registry-dir")
        .arg(fixture_registry())
        .arg("--results-dir")
        .arg(blocker.join("results"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot create results dir") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn help_documents_the_secret_flags_without_the_secrets_set_in_the_environment() {
    const SECRET: &str = "s3cret-from-the-environment";
    let cases: [(&str, &[&str]); 3] = [
        (
            "serve",
            &[
                "--database-url",
                "FTSURVEY_DATABASE_URL",
                "--worker-token",
                "FTSURVEY_WORKER_TOKEN",
                "--client-token",
                "FTSURVEY_CLIENT_TOKEN",
            ],
        ),
        ("worker", &["--token", "--token-file", "FTSURVEY_WORKER_TOKEN"]),
        ("run", &["--token", "FTSURVEY_CLIENT_TOKEN"]),
    ];
    for (command, documented) in cases {
        let output = ftsurvey()
            .args([command, "--help"])
            .env(
                "FTSURVEY_DATABASE_URL",
                format!("postgres://survey:{SECRET}@db:5432/ftsurvey"),
            )
            .env("FTSURVEY_WORKER_TOKEN", format!("worker-{SECRET}"))
            .env("FTSURVEY_CLIENT_TOKEN", format!("client-{SECRET}"))
            .output()
            .expect("run ftsurvey");
        assert_success(&output);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(!help.contains(SECRET), "`{command} --help` shows a secret:\n{help}");
        for word in documented {
            assert!(
                help.contains(word),
                "`{command} --help` does not document {word}:\n{help}"
            );
        }
    }
}

#[test]
fn ctrl_c_cancels_the_run_and_leaves_a_folder_show_reads() {
    let survey = Survey::new();
    let mut child = survey
        .command(&machine_python())
        .args([
            "--allow-gil-build",
            "--packages",
            "ftfix-pass,ftfix-timeout",
            "--iterations",
            "1",
            "--timeout",
            "600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the passing package is written; the other one hangs for ten minutes.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let written = std::fs::read_dir(survey.results_root())
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(|entry| std::fs::read_to_string(entry.ok()?.path().join("ft_results.jsonl")).ok())
            .is_some_and(|text| text.contains("ftfix-pass"));
        if written {
            break;
        }
        assert!(Instant::now() < deadline, "ftfix-pass was not written within 240 s");
        assert!(child.try_wait().expect("try_wait").is_none(), "ftsurvey exited early");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let started = Instant::now();
    let output = child.wait_with_output().expect("wait");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?} to stop",
        started.elapsed()
    );
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let meta = survey.meta();
    assert!(meta.interrupted);
    let records = survey.records();
    assert_eq!(category_of(&records, "ftfix-pass").category, "compatible");
    let show = ftsurvey().arg("show").arg(survey.folder()).output().expect("show");
    assert_success(&show);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("[interrupted]") && text.contains("ftfix-pass"), "{text}");
    let left = processes_under(survey.dir.path());
    assert!(left.is_empty(), "processes left running in the work dir: {left:?}");
}

#[test]
fn a_second_run_in_a_busy_work_dir_is_one_line_and_the_first_run_is_untouched() {
    let survey = Survey::new();
    let python = free_threaded_python();
    let first = survey
        .command(&python)
        .args(["--packages", "ftfix-slow", "--iterations", "2", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The first run holds the work dir once its lock file names it.
    let lock = survey.dir.path().join("work").join("ftsurvey.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&lock).map_or(true, |pid| pid.trim() != first.id().to_string()) {
        assert!(Instant::now() < deadline, "the first run never took the work dir");
        std::thread::sleep(Duration::from_millis(50));
    }

    let second_results = survey.dir.path().join("second-results");
    let second = ftsurvey()
        .arg("run")
        .arg("--target-python")
        .arg(&python)
        .arg("--registry-dir")
        .arg(fixture_registry())
        .arg("--work-dir")
        .arg(survey.dir.path().join("work"))
        .arg("--results-dir")
        .arg(&second_results)
        .args(["--packages", "ftfix-pass", "--iterations", "1"])
        .output()
        .expect("run the second");
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let expected = format!("is in use by another ftsurvey run (pid {})", first.id());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!second_results.exists(), "the refused run made {second_results:?}");

    let output = first.wait_with_output().expect("wait");
    assert_success(&output);
    let records = survey.records();
    let slow = category_of(&records, "ftfix-slow");
    assert_eq!(slow.category, "compatible", "{slow:?}");
    assert_eq!(slow.iterations.len(), 2);
}

/// Processes whose working directory is under `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(dir) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}
