//! Retention as an operator uses it: `ftsurvey runs archive` keeps what the verbs read,
//! `ftsurvey runs purge` deletes a run, and `ftsurvey serve --keep-finished-jobs 0` archives
//! a run as soon as it finishes.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use proto::v1;
use proto::v1::survey_service_client::SurveyServiceClient;
use proto::v1::worker_message::Msg as In;
use tests::{RawSession, TestCluster, ft_profile};

use crate::cli::{assert_success, ftsurvey};
use crate::fleet::serve_on_sqlite;
use crate::protocol::{expect_ack, expect_assignment, pass, spec, submit};

/// Runs `command` off the runtime's threads: the coordinator it talks to may be in this
/// process.
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run ftsurvey"))
        .await
        .expect("join")
}

/// `ftsurvey ARGS --coordinator URL`.
async fn verb(url: &str, args: &[&str]) -> Output {
    let mut command = ftsurvey();
    command.args(args).args(["--coordinator", url]);
    output(command).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the session's next job to a pass that printed its package and iteration.
async fn run_one(session: &mut RawSession) {
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(session).await;
    let name = assignment.package.as_ref().expect("package").name.clone();
    let mut result = pass(assignment.iteration);
    if let Some(v1::job_result::Kind::Iteration(outcome)) = result.kind.as_mut() {
        outcome.stdout_tail = format!("stdout of {name} {}", assignment.iteration);
        outcome.stderr_tail = format!("stderr of {name} {}", assignment.iteration);
    }
    session
        .send(In::Outcome(v1::JobOutcome {
            job_id: assignment.job_id,
            lease_token: assignment.lease_token.clone(),
            result: Some(result),
        }))
        .await;
    assert_eq!(expect_ack(session, assignment.job_id).await, v1::AckStatus::Recorded);
}

/// One iteration's output tails, as `GetIterationOutput` answers them.
async fn iteration_output(cluster: &TestCluster, run_id: &str, package: &str) -> (String, String) {
    let output = cluster
        .survey()
        .await
        .get_iteration_output(v1::GetIterationOutputRequest {
            run_id: run_id.to_string(),
            package: package.to_string(),
            mode: v1::Mode::Ft as i32,
            iteration: 2,
        })
        .await
        .expect("iteration output")
        .into_inner();
    (output.stdout_tail, output.stderr_tail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_archive_keeps_what_the_verbs_read_and_runs_purge_deletes_the_run() {
    let cluster = TestCluster::start_with(coordinator::Settings {
        lease_duration: Duration::from_secs(120),
        keep_finished_jobs: None,
        ..coordinator::Settings::default()
    })
    .await;
    let url = cluster.url.clone();
    let run_id = submit(&cluster, &spec(&["alpha", "beta"], 2)).await;

    // A run still queued is neither archived nor purged, and says why.
    for action in ["archive", "purge"] {
        let refused = verb(&url, &["runs", action, &run_id]).await;
        assert!(
            !refused.status.success(),
            "{action} of a queued run: {}",
            stdout(&refused)
        );
        assert!(
            stderr(&refused).contains(&format!("run {run_id} is still queued")),
            "{action}: {}",
            stderr(&refused)
        );
    }

    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    for _ in 0..4 {
        run_one(&mut session).await;
    }
    let show_before = verb(&url, &["show", &run_id]).await;
    assert_success(&show_before);
    assert!(stdout(&show_before).contains("alpha"), "{}", stdout(&show_before));
    let export_before = verb(&url, &["export", &run_id, "--format", "jsonl"]).await;
    assert_success(&export_before);
    let tails_before = iteration_output(&cluster, &run_id, "beta").await;
    assert_eq!(tails_before, ("stdout of beta 2".into(), "stderr of beta 2".into()));

    let archived = verb(&url, &["runs", "archive", &run_id]).await;
    assert_success(&archived);
    assert!(
        stdout(&archived).contains(&format!("run {run_id}: finished, archived (4 jobs")),
        "{}",
        stdout(&archived)
    );
    assert_eq!(stdout(&verb(&url, &["show", &run_id]).await), stdout(&show_before));
    assert_eq!(
        stdout(&verb(&url, &["export", &run_id, "--format", "jsonl"]).await),
        stdout(&export_before)
    );
    assert_eq!(iteration_output(&cluster, &run_id, "beta").await, tails_before);
    let listed = verb(&url, &["runs", "list"]).await;
    assert_success(&listed);
    assert!(stdout(&listed).contains("finished (archived)"), "{}", stdout(&listed));

    let purged = verb(&url, &["runs", "purge", &run_id]).await;
    assert_success(&purged);
    assert_eq!(stdout(&purged).trim(), format!("run {run_id}: purged with its 4 jobs"));
    let listed = verb(&url, &["runs", "list"]).await;
    assert!(!stdout(&listed).contains(&run_id), "{}", stdout(&listed));
    for args in [vec!["show", run_id.as_str()], vec!["runs", "purge", run_id.as_str()]] {
        let gone = verb(&url, &args).await;
        assert!(!gone.status.success(), "{args:?}: {}", stdout(&gone));
        assert!(stderr(&gone).contains("not found"), "{args:?}: {}", stderr(&gone));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_keep_finished_jobs_0_archives_a_run_as_it_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_serve, url) = serve_on_sqlite(dir.path(), &["--keep-finished-jobs", "0"]);
    let mut client = SurveyServiceClient::new(tests::connect(&url).await);
    let submitted = client
        .submit_run(v1::SubmitRunRequest {
            spec: Some((&spec(&["alpha"], 3)).into()),
            client_token: String::new(),
        })
        .await
        .expect("submit")
        .into_inner();
    let run_id = submitted.run.expect("run").run_id;
    let cancelled = verb(&url, &["runs", "cancel", &run_id]).await;
    assert_success(&cancelled);

    let deadline = Instant::now() + Duration::from_secs(30);
    let archived = loop {
        let run = client
            .get_run(v1::GetRunRequest { run_id: run_id.clone() })
            .await
            .expect("get run")
            .into_inner()
            .run
            .expect("run");
        if run.archived_at_ms.is_some() {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} not archived within 30 s:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((archived.jobs_total, archived.jobs_settled), (3, 3));
    assert!(archived.archived_at_ms >= archived.finished_at_ms);
    let listed = verb(&url, &["runs", "list"]).await;
    assert!(stdout(&listed).contains("cancelled (archived)"), "{}", stdout(&listed));
}
