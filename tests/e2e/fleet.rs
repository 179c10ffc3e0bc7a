//! Fleet mode as an operator runs it: `ftsurvey serve` on a throwaway PostgreSQL, two
//! `ftsurvey worker` processes on the free-threaded build, `ftsurvey run --coordinator`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::fixture_registry;
use tests::postgres::TestPostgres;

use crate::cli::{Survey, assert_success, category_of, free_threaded_python, ftsurvey};

/// A child process killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn(command: &mut Command, log: &Path) -> Process {
    let log = std::fs::File::create(log).expect("log file");
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    Process(child)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `ftsurvey serve` on loopback with a SQLite store in `dir` (its log `serve.log` there) and
/// `extra` flags, once it accepts connections; returns it and its URL.
pub(crate) fn serve_on_sqlite(dir: &Path, extra: &[&str]) -> (Process, String) {
    let port = free_port();
    let log = dir.join("serve.log");
    let coordinator = spawn(
        crate::cli::ftsurvey()
            .arg("serve")
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("coordinator.db").display()))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra),
        &log,
    );
    wait_for_port("127.0.0.1", port, &log);
    (coordinator, format!("http://127.0.0.1:{port}"))
}

/// Waits until something accepts connections on `port`.
pub(crate) fn wait_for_port(host: &str, port: u16, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_postgres_coordinator_and_two_workers_classify_the_fixtures_as_embedded_mode_does() {
    let postgres = TestPostgres::start().expect("start a throwaway PostgreSQL");
    let survey = Survey::new();
    let logs = survey.dir.path();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _coordinator = spawn(
        ftsurvey()
            .arg("serve")
            .arg("--database-url")
            .arg(postgres.url())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}")),
        &logs.join("serve.log"),
    );
    wait_for_port("127.0.0.1", port, &logs.join("serve.log"));
    let python = free_threaded_python();
    let _workers: Vec<Process> = ["w1", "w2"]
        .iter()
        .map(|id| {
            spawn(
                ftsurvey()
                    .arg("worker")
                    .args(["--coordinator", &url, "--worker-id", id])
                    .arg("--target-python")
                    .arg(&python)
                    .arg("--work-dir")
                    .arg(logs.join(id)),
                &logs.join(format!("{id}.log")),
            )
        })
        .collect();

    let packages = "ftfix-pass,ftfix-fail,ftfix-segfault,ftfix-import-error,ftfix-build-error,ftfix-timeout,\
                    ftfix-ext-fallback,ftfix-no-tests";
    let output = ftsurvey()
        .arg("run")
        .args(["--coordinator", &url, "--target-python", "3.13t"])
        .arg("--registry-dir")
        .arg(fixture_registry())
        .arg("--results-dir")
        .arg(survey.dir.path().join("results"))
        .args(["--packages", packages, "--iterations", "2", "--timeout", "120"])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let records = survey.records();
    let expected = [
        ("ftfix-pass", "compatible"),
        ("ftfix-fail", "incompatible"),
        ("ftfix-segfault", "crash"),
        ("ftfix-import-error", "import_failure"),
        ("ftfix-build-error", "install_failure"),
        ("ftfix-timeout", "incompatible"),
        ("ftfix-ext-fallback", "compatible_gil_fallback"),
        ("ftfix-no-tests", "harness_error"),
    ];
    assert_eq!(records.len(), expected.len());
    for (package, category) in expected {
        assert_eq!(category_of(&records, package).category, category, "{package}");
    }
    // Each (package, iteration) exactly once, and both workers took part.
    let mut workers = std::collections::BTreeSet::new();
    for record in &records {
        let mut indexes: Vec<u32> = record.iterations.iter().map(|i| i.index).collect();
        indexes.sort_unstable();
        if record.setup_stage.is_none() {
            assert_eq!(indexes, [1, 2], "{}", record.package);
        }
        workers.extend(record.iterations.iter().map(|i| i.worker_id.clone()));
    }
    assert_eq!(
        workers.into_iter().collect::<Vec<_>>(),
        ["w1", "w2"],
        "both workers ran iterations"
    );

    // The operator's view: both workers connected, nothing queued.
    let status = ftsurvey()
        .args(["status", "--coordinator", &url])
        .output()
        .expect("status");
    assert_success(&status);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.starts_with("2 workers connected"), "{text}");
    assert!(
        text.contains("w1") && text.contains("w2") && text.contains("free-threaded"),
        "{text}"
    );
    assert!(text.contains("0 runs queued or running"), "{text}");

    // A detached run, seen running, then cancelled from another command.
    let detached = ftsurvey()
        .arg("run")
        .args(["--coordinator", &url, "--target-python", "3.13t", "--detach"])
        .arg("--registry-dir")
        .arg(fixture_registry())
        .args(["--packages", "ftfix-deadlock", "--iterations", "2", "--timeout", "600"])
        .args(["--stall-threshold", "600"])
        .output()
        .expect("run --detach");
    assert_success(&detached);
    let run_id = String::from_utf8_lossy(&detached.stdout).trim().to_string();
    let started = Instant::now();
    loop {
        let status = ftsurvey()
            .args(["status", "--coordinator", &url])
            .output()
            .expect("status");
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if text.contains(&run_id) && text.contains("running") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run never started:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let cancel = ftsurvey()
        .args(["runs", "cancel", "--coordinator", &url, &run_id])
        .output()
        .expect("runs cancel");
    assert_success(&cancel);
    assert!(
        String::from_utf8_lossy(&cancel.stdout).contains("cancelled"),
        "{cancel:?}"
    );
    let list = ftsurvey()
        .args(["runs", "list", "--coordinator", &url])
        .output()
        .expect("runs list");
    assert_success(&list);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines().any(|l| l.contains(&run_id) && l.contains("cancelled")),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains("finished")).count() == 1,
        "the first run is listed as finished:\n{text}"
    );
}

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, made with
/// openssl: (CA certificate, server certificate, server key).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed to make test certificates");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=ftsurvey test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"))
}

#[test]
fn tokens_tls_and_the_database_password_are_handled() {
    let postgres = TestPostgres::start().expect("start a throwaway PostgreSQL");
    let survey = Survey::new();
    let dir = survey.dir.path();
    let (ca, cert, key) = test_certificates(dir);
    let port = free_port();
    let url = format!("https://localhost:{port}");
    // The test cluster trusts every local connection, so any password is accepted: it must
    // still never be printed.
    let database_url = postgres.url().replace("postgres@", "postgres:sekret-password@");
    let serve_log = dir.join("serve.log");
    let _coordinator = spawn(
        ftsurvey()
            .env("FTSURVEY_LOG", "info")
            .arg("serve")
            .args([
                "--database-url",
                &database_url,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--worker-token", "worker-secret", "--client-token", "client-secret"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key),
        &serve_log,
    );
    wait_for_port("127.0.0.1", port, &serve_log);

    let status = |token: Option<&str>, url: &str, trust: bool| {
        let mut command = ftsurvey();
        command.args(["status", "--coordinator", url]);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        if trust {
            command.arg("--ca-cert").arg(&ca);
        }
        command.output().expect("status")
    };
    let ok = status(Some("client-secret"), &url, true);
    assert_success(&ok);
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("0 workers connected"));

    let one_line_error = |output: std::process::Output, expected: &str| {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(expected), "{stderr}");
    };
    one_line_error(status(None, &url, true), "a client token is required");
    one_line_error(status(Some("guess"), &url, true), "wrong client token");
    one_line_error(status(Some("worker-secret"), &url, true), "wrong client token");
    one_line_error(
        status(Some("client-secret"), &format!("http://127.0.0.1:{port}"), false),
        "reading the coordinator's status",
    );

    // A worker with the wrong token is refused for good and says so.
    let refused = ftsurvey()
        .arg("worker")
        .args([
            "--coordinator",
            &url,
            "--worker-id",
            "intruder",
            "--token",
            "client-secret",
        ])
        .arg("--ca-cert")
        .arg(&ca)
        .arg("--target-python")
        .arg(free_threaded_python())
        .arg("--work-dir")
        .arg(dir.join("intruder"))
        .output()
        .expect("worker");
    one_line_error(refused, "the coordinator refused this worker: wrong worker token");

    // The right token over TLS, from a token file: the worker is seen connected.
    let token_file = dir.join("worker-token");
    std::fs::write(&token_file, "worker-secret\n").expect("write the token file");
    let _worker = spawn(
        ftsurvey()
            .arg("worker")
            .args(["--coordinator", &url, "--worker-id", "w1"])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--ca-cert")
            .arg(&ca)
            .arg("--target-python")
            .arg(free_threaded_python())
            .arg("--work-dir")
            .arg(dir.join("w1")),
        &dir.join("w1.log"),
    );
    let started = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&status(Some("client-secret"), &url, true).stdout).into_owned();
        if text.starts_with("1 workers connected") && text.contains("w1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never connected:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let log = std::fs::read_to_string(&serve_log).expect("serve log");
    assert!(log.contains("coordinator on 127.0.0.1"), "{log}");
    assert!(!log.contains("sekret-password"), "the password leaked:\n{log}");
    assert!(log.contains("postgres:***@"), "{log}");
}

#[test]
fn an_exposed_coordinator_is_not_served_open_and_a_ca_certificate_is_never_sent_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}", dir.path().join("exposed.db").display());
    let serve = |args: &[&str]| {
        let mut command = ftsurvey();
        command
            .env_remove("FTSURVEY_WORKER_TOKEN")
            .env_remove("FTSURVEY_CLIENT_TOKEN")
            .args(["serve", "--database-url", &database_url])
            .args(args);
        command
    };
    let one_line_error = |output: std::process::Output, expected: &str| {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{stderr}");
    };

    // Beyond loopback with nothing to keep strangers out: refused before it listens.
    let port = free_port();
    let open = serve(&["--listen", &format!("0.0.0.0:{port}")])
        .output()
        .expect("serve");
    one_line_error(
        open,
        "without --worker-token/--worker-tokens, --client-token, --tls-cert/--tls-key",
    );
    let tokens_only = serve(&[
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--worker-token",
        "w",
        "--client-token",
        "c",
    ])
    .output()
    .expect("serve");
    one_line_error(tokens_only, "without --tls-cert/--tls-key");
    let empty = serve(&["--worker-token", ""]).output().expect("serve");
    one_line_error(empty, "--worker-token is empty");

    // With --insecure it serves, and says loudly what that means.
    let log = dir.path().join("insecure.log");
    let _insecure = spawn(
        serve(&["--listen", &format!("0.0.0.0:{port}"), "--insecure"]).env("FTSURVEY_LOG", "info"),
        &log,
    );
    wait_for_port("127.0.0.1", port, &log);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("warning: serving on 0.0.0.0") && text.contains("every worker executes"),
        "{text}"
    );

    // A CA certificate with an http:// URL is refused before anything is sent, by clients and
    // by workers; so is an empty token.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not read").expect("write");
    let url = format!("http://127.0.0.1:{port}");
    let status = ftsurvey()
        .args(["status", "--coordinator", &url, "--ca-cert"])
        .arg(&ca)
        .output()
        .expect("status");
    one_line_error(status, "--ca-cert needs an https:// coordinator URL");
    let worker = ftsurvey()
        .args([
            "worker",
            "--coordinator",
            &url,
            "--target-python",
            "python3",
            "--ca-cert",
        ])
        .arg(&ca)
        .arg("--work-dir")
        .arg(dir.path().join("w"))
        .output()
        .expect("worker");
    one_line_error(worker, "--ca-cert needs an https:// coordinator URL");
    let empty_token = ftsurvey()
        .args(["status", "--coordinator", &url, "--token", ""])
        .output()
        .expect("status");
    one_line_error(empty_token, "invalid --token: the token is empty");
}
