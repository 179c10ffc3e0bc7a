//! A worker's token as an operator gives it: from a file, typed (warned of), or in the
//! environment, and in any case out of what the worker runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{ftsurvey, machine_python};
use crate::fleet::{Process, free_port, spawn};

const TOKEN: &str = "s3cret-worker-token";

/// `ftsurvey worker` in `dir`, with no token in its environment unless the caller adds one,
/// for a coordinator nobody serves: once started it retries the connection until killed.
fn worker(dir: &Path, target_python: &Path) -> Command {
    let mut command = ftsurvey();
    command
        .env_remove("FTSURVEY_WORKER_TOKEN")
        .env_remove("FTSURVEY_WORKER_TOKEN_FILE")
        .env_remove("FTSURVEY_CLIENT_TOKEN")
        .arg("worker")
        .args(["--coordinator", &format!("http://127.0.0.1:{}", free_port())])
        .arg("--target-python")
        .arg(target_python)
        .arg("--allow-gil-build")
        .arg("--work-dir")
        .arg(dir.join("work"));
    command
}

/// An interpreter that writes the environment it was started with to `seen_env` and then is
/// the machine's `python3`: the worker's probe of its target shows what its children inherit.
fn env_recording_python(dir: &Path, seen_env: &Path) -> PathBuf {
    let path = dir.join("python3");
    let script = format!(
        "#!/bin/sh\nenv > '{seen}.tmp' && mv '{seen}.tmp' '{seen}'\nexec '{python}' \"$@\"\n",
        seen = seen_env.display(),
        python = machine_python().display()
    );
    std::fs::write(&path, script).expect("write the interpreter");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    path
}

/// Starts `command` and returns what its first child saw in its environment, and the
/// worker's output up to then.
fn start_and_see_child_env(command: &mut Command, dir: &Path, seen_env: &Path) -> (Process, String, String) {
    let log = dir.join(format!(
        "worker-{}.log",
        seen_env.file_name().expect("a name").display()
    ));
    let process = spawn(command, &log);
    let started = Instant::now();
    while !seen_env.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never probed its interpreter:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = std::fs::read_to_string(seen_env).expect("the child's environment");
    let output = std::fs::read_to_string(&log).expect("the worker's output");
    (process, env, output)
}

#[test]
fn a_workers_token_never_reaches_what_it_runs_and_a_typed_one_is_warned_of() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");

    // In the environment, as services are often given secrets: the worker reads it, then
    // takes it out, and no child inherits it (nor the client token, nor the database URL).
    let seen = dir.join("from-env");
    let python = env_recording_python(dir, &seen);
    let (_worker, env, output) = start_and_see_child_env(
        worker(dir, &python)
            .env("FTSURVEY_WORKER_TOKEN", TOKEN)
            .env("FTSURVEY_CLIENT_TOKEN", format!("client-{TOKEN}"))
            .env(
                "FTSURVEY_DATABASE_URL",
                format!("postgres://survey:{TOKEN}@db/ftsurvey"),
            )
            .env("FTSURVEY_TEST_INHERITED", "yes"),
        dir,
        &seen,
    );
    assert!(env.contains("FTSURVEY_TEST_INHERITED=yes"), "{env}");
    assert!(!env.contains(TOKEN), "a child inherited a secret:\n{env}");
    assert!(!output.contains("warning"), "{output}");

    // From a file, the documented way: no warning.
    let seen = dir.join("from-file");
    let python = env_recording_python(dir, &seen);
    let (_worker, _, output) =
        start_and_see_child_env(worker(dir, &python).arg("--token-file").arg(&token_file), dir, &seen);
    assert!(!output.contains("warning"), "{output}");

    // Typed: it works, with one line saying why a file is better.
    let seen = dir.join("typed");
    let python = env_recording_python(dir, &seen);
    let (_worker, _, output) = start_and_see_child_env(worker(dir, &python).args(["--token", TOKEN]), dir, &seen);
    let warnings: Vec<&str> = output.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{output}");
    assert!(
        warnings[0].starts_with("warning: --token is readable by every local user")
            && warnings[0].contains("--token-file"),
        "{output}"
    );
    assert!(!output.contains(TOKEN), "{output}");
}

#[test]
fn a_token_file_without_a_token_or_a_second_token_is_one_line_and_no_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).expect("write");
    let python = machine_python();

    let refused = |command: &mut Command, expected: &str| {
        let output = command.output().expect("run ftsurvey");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{expected}: {stderr}");
        assert_eq!(stderr.trim_end(), expected);
        assert!(!dir.join("work").exists(), "{expected}: the worker made its work dir");
    };
    refused(
        worker(dir, &python).arg("--token-file").arg(&empty),
        &format!("error: --token-file {} is empty", empty.display()),
    );
    refused(
        worker(dir, &python).arg("--token-file").arg(dir),
        &format!("error: --token-file {} is not a regular file", dir.display()),
    );
    refused(
        worker(dir, &python)
            .arg("--token-file")
            .arg(&token_file)
            .args(["--token", TOKEN]),
        "error: --token and --token-file both give the token: give one",
    );
    refused(
        worker(dir, &python)
            .arg("--token-file")
            .arg(&token_file)
            .env("FTSURVEY_WORKER_TOKEN", TOKEN),
        "error: --token-file and FTSURVEY_WORKER_TOKEN both give the token: unset FTSURVEY_WORKER_TOKEN",
    );
}
