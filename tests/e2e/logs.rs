//! An iteration's full log as an operator fetches it: `ftsurvey logs` through a real
//! `ftsurvey serve` from the real `ftsurvey worker` that ran it, while that worker keeps it
//! and is connected; and the coordinator's side of the protocol, driven by raw sessions.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use domain::results::RunMeta;
use proto::v1;
use proto::v1::coordinator_message::Msg as Out;
use proto::v1::worker_message::Msg as In;
use tests::{RawSession, TestCluster, fixture_registry, ft_profile};

use crate::cli::{Survey, assert_success, category_of, free_threaded_python, ftsurvey};
use crate::fleet::{Process, serve_on_sqlite, spawn};
use crate::protocol::{expect_ack, expect_assignment, report, spec, submit};

/// `ftsurvey logs RUN PACKAGE ITERATION --coordinator URL` with `extra` flags.
fn logs(url: &str, run_id: &str, package: &str, iteration: &str, extra: &[&str]) -> Output {
    ftsurvey()
        .args(["logs", run_id, package, iteration, "--coordinator", url])
        .args(extra)
        .output()
        .expect("ftsurvey logs")
}

/// The one line a failed command printed, checked to be one line saying `expected`.
fn one_line_error(output: &Output, expected: &str) -> String {
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    stderr
}

/// Where the worker says it keeps an iteration's logs.
fn log_dir(survey: &Survey, package: &str) -> PathBuf {
    let records = survey.records();
    let iteration = &category_of(&records, package).iterations[0];
    PathBuf::from(iteration.log_dir.clone().expect("the iteration's log directory"))
}

fn wait_for_no_worker(url: &str) {
    let started = Instant::now();
    loop {
        let status = ftsurvey()
            .args(["status", "--coordinator", url])
            .output()
            .expect("status");
        assert_success(&status);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if text.starts_with("0 workers connected") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker is still connected:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_iterations_full_log_is_fetched_from_its_worker_while_it_keeps_it_and_is_connected() {
    let survey = Survey::new();
    let dir = survey.dir.path();
    let (_coordinator, url) = serve_on_sqlite(dir, &[]);
    let worker: Process = spawn(
        ftsurvey()
            .arg("worker")
            .args(["--coordinator", &url, "--worker-id", "w1"])
            .arg("--target-python")
            .arg(free_threaded_python())
            .arg("--work-dir")
            .arg(dir.join("w1")),
        &dir.join("w1.log"),
    );
    let run = ftsurvey()
        .arg("run")
        .args(["--coordinator", &url, "--target-python", "3.13t"])
        .arg("--registry-dir")
        .arg(fixture_registry())
        .arg("--results-dir")
        .arg(survey.results_root())
        .args([
            "--packages",
            "ftfix-flood,ftfix-fail",
            "--iterations",
            "1",
            "--timeout",
            "120",
        ])
        .output()
        .expect("run ftsurvey");
    assert_success(&run);
    let meta: RunMeta = serde_json::from_slice(&std::fs::read(survey.folder().join("ft_meta.json")).expect("meta"))
        .expect("ft_meta.json");
    let run_id = meta.run_id;

    // A log far larger than the 16 KiB tail (the worker keeps 64 MiB of ftfix-flood's 200 MB),
    // byte for byte as the worker wrote it.
    let flood_dir = log_dir(&survey, "ftfix-flood");
    let written = std::fs::read(flood_dir.join("stdout.log")).expect("the worker's log");
    assert!(written.len() > 4 * 1024 * 1024, "{} bytes", written.len());
    let fetched_file = dir.join("flood-stdout.log");
    let fetched = logs(
        &url,
        &run_id,
        "ftfix-flood",
        "1",
        &["-o", &fetched_file.display().to_string()],
    );
    assert_success(&fetched);
    assert!(fetched.stdout.is_empty(), "-o prints nothing");
    let got = std::fs::read(&fetched_file).expect("the fetched log");
    assert_eq!(got.len(), written.len());
    assert!(got == written, "the fetched log differs from the worker's");

    // A failing iteration's output, printed; its stderr too.
    let fail_dir = log_dir(&survey, "ftfix-fail");
    let printed = logs(&url, &run_id, "ftfix-fail", "1", &["--mode", "ft"]);
    assert_success(&printed);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(text.contains("the answer is off by one"), "{text}");
    let stdout_written = std::fs::read_to_string(fail_dir.join("stdout.log")).expect("the worker's log");
    assert_eq!(text, domain::views::text::neutralise_controls(&stdout_written));
    let stderr_written = std::fs::read_to_string(fail_dir.join("stderr.log")).expect("the worker's log");
    let printed = logs(&url, &run_id, "ftfix-fail", "1", &["--stderr"]);
    assert_success(&printed);
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        domain::views::text::neutralise_controls(&stderr_written)
    );

    // What the run does not have.
    one_line_error(
        &logs(&url, &run_id, "ftfix-fail", "2", &[]),
        &format!("run {run_id} has no ft iteration 2 of ftfix-fail"),
    );
    one_line_error(
        &logs(&url, &run_id, "ftfix-fail", "1", &["--mode", "gil"]),
        "has no gil iteration 1 of ftfix-fail",
    );
    one_line_error(
        &logs(&url, &run_id, "ftfix-nothing", "1", &[]),
        "has no ft iteration 1 of ftfix-nothing",
    );
    one_line_error(
        &logs(&url, "0190b6c4-0000-7000-8000-000000000000", "ftfix-fail", "1", &[]),
        "(NotFound)",
    );

    // A log the worker no longer keeps.
    std::fs::remove_file(fail_dir.join("stdout.log")).expect("delete the log");
    one_line_error(
        &logs(&url, &run_id, "ftfix-fail", "1", &[]),
        "the stdout log of ft iteration 1 of ftfix-fail is no longer kept on worker w1",
    );
    // A link left in a log's place is not followed: nothing of the worker's disk leaks.
    let secret = dir.join("secret");
    std::fs::write(&secret, "the worker's token").expect("write");
    std::fs::remove_file(fail_dir.join("stderr.log")).expect("delete the log");
    std::os::unix::fs::symlink(&secret, fail_dir.join("stderr.log")).expect("symlink");
    let refused = logs(&url, &run_id, "ftfix-fail", "1", &["--stderr"]);
    let line = one_line_error(&refused, "worker w1 cannot send the stderr log");
    assert!(line.contains("symbolic link"), "{line}");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("token"));

    // Once the worker is gone, the coordinator says so.
    drop(worker);
    wait_for_no_worker(&url);
    let file = dir.join("never.log");
    let gone = logs(&url, &run_id, "ftfix-flood", "1", &["-o", &file.display().to_string()]);
    one_line_error(
        &gone,
        "worker w1 that ran ft iteration 1 of ftfix-flood is not connected",
    );
    assert!(!Path::new(&file).exists(), "no file is written for a log not fetched");
}

/// The next message of `session`, which must be a log request.
async fn expect_log_request(session: &mut RawSession) -> v1::LogRequest {
    match session.next().await.expect("message") {
        Out::LogRequest(request) => request,
        other => panic!("expected a log request, got {other:?}"),
    }
}

/// `GetIterationLog` for the stdout of ft iteration 1 of `pkg`, in a task of its own: it waits
/// for the worker's first chunk.
fn fetch(
    cluster: &TestCluster,
    run_id: &str,
) -> tokio::task::JoinHandle<Result<tonic::Streaming<v1::IterationLogChunk>, tonic::Status>> {
    let request = v1::GetIterationLogRequest {
        run_id: run_id.to_string(),
        package: "pkg".into(),
        mode: v1::Mode::Ft as i32,
        iteration: 1,
        stream: v1::LogStream::Stdout as i32,
    };
    let url = cluster.url.clone();
    tokio::spawn(async move {
        let mut client = v1::survey_service_client::SurveyServiceClient::new(tests::connect(&url).await);
        client.get_iteration_log(request).await.map(tonic::Response::into_inner)
    })
}

fn chunk(request: &v1::LogRequest, data: &[u8], eof: bool) -> In {
    In::LogChunk(v1::LogChunk {
        request_id: request.request_id,
        stream: request.stream,
        data: data.to_vec(),
        offset: request.offset,
        eof,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_log_is_asked_of_the_worker_that_ran_it_a_chunk_at_a_time_and_only_its_answers_count() {
    let cluster = TestCluster::start().await;
    let run_id = submit(&cluster, &spec(&["pkg"], 1)).await;
    let mut w1 = cluster.session().await;
    w1.hello("w1", &ft_profile(), 1).await;
    w1.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut w1).await;
    report(&w1, &assignment, &assignment.lease_token).await;
    assert_eq!(expect_ack(&mut w1, assignment.job_id).await, v1::AckStatus::Recorded);
    let mut w2 = cluster.session().await;
    w2.hello("w2", &ft_profile(), 1).await;

    let fetching = fetch(&cluster, &run_id);
    let first = expect_log_request(&mut w1).await;
    assert_eq!(
        (
            first.run_id.as_str(),
            first.package.as_str(),
            first.iteration,
            first.attempt,
            first.offset,
            first.max_bytes
        ),
        (run_id.as_str(), "pkg", 1, assignment.attempt, 0, 1024 * 1024)
    );
    // Another worker cannot answer for it. (An outcome's ack says the chunk before it was read:
    // a session reads its messages in order.)
    w2.send(chunk(&first, b"forged", true)).await;
    w2.send(In::Outcome(v1::JobOutcome {
        job_id: 999,
        lease_token: "not a lease".into(),
        result: None,
    }))
    .await;
    assert_eq!(expect_ack(&mut w2, 999).await, v1::AckStatus::Rejected);
    w1.send(chunk(&first, b"hello, ", false)).await;
    let mut chunks = fetching.await.expect("task").expect("the log");
    let got = chunks.message().await.expect("chunk").expect("a chunk");
    assert_eq!(
        (got.data.as_slice(), got.offset, got.eof, got.worker_id.as_str()),
        (b"hello, ".as_slice(), 0, false, "w1")
    );
    // The next chunk is asked for once the first is handed on.
    let second = expect_log_request(&mut w1).await;
    assert_eq!(second.offset, 7);
    w1.send(chunk(&second, b"world", true)).await;
    let got = chunks.message().await.expect("chunk").expect("a chunk");
    assert_eq!(
        (got.data.as_slice(), got.offset, got.eof),
        (b"world".as_slice(), 7, true)
    );
    assert!(chunks.message().await.expect("the end").is_none());

    // Four requests at once at most per worker; the fifth is told to wait.
    let waiting: Vec<_> = (0..4).map(|_| fetch(&cluster, &run_id)).collect();
    for _ in 0..4 {
        expect_log_request(&mut w1).await;
    }
    let refused = fetch(&cluster, &run_id)
        .await
        .expect("task")
        .expect_err("a fifth request");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    // The worker leaves without answering: each request hears so at once.
    drop(w1);
    for fetching in waiting {
        let status = tokio::time::timeout(Duration::from_secs(10), fetching)
            .await
            .expect("answered at once")
            .expect("task")
            .expect_err("the worker left");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("worker w1 disconnected"), "{status:?}");
    }
    let status = fetch(&cluster, &run_id).await.expect("task").expect_err("w1 is gone");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("worker w1 that ran"), "{status:?}");
}
