//! A hostile worker client against the coordinator: impersonation, forged fields, oversize and
//! garbage outcomes, credit floods and a thousand sessions. Each attack costs the attacker its
//! own session or its own outcome, never another worker's jobs, and the coordinator goes on.

use std::time::{Duration, Instant};

use proto::v1;
use proto::v1::coordinator_message::Msg as Out;
use proto::v1::worker_message::Msg as In;
use tests::{RawSession, TestCluster, ft_profile};

use crate::protocol::{expect_ack, expect_assignment, pass, report, spec, submit};

const SHARED_TOKEN: &str = "shared-worker-token-0123456789";
const W1_TOKEN: &str = "w1-own-token-0123456789";
const W2_TOKEN: &str = "w2-own-token-0123456789";

fn settings() -> coordinator::Settings {
    coordinator::Settings {
        heartbeat_interval: Duration::from_millis(200),
        lease_duration: Duration::from_secs(30),
        max_attempts: 3,
        reap_interval: Duration::from_millis(100),
        ..coordinator::Settings::default()
    }
}

/// A coordinator where w1 and w2 have tokens of their own and other workers share one.
async fn with_worker_tokens() -> TestCluster {
    TestCluster::start_configured(None, settings(), |config| {
        config.worker_token = Some(SHARED_TOKEN.to_string());
        config.worker_tokens =
            coordinator::parse_worker_tokens(&format!("w1 {W1_TOKEN}\nw2 {W2_TOKEN}\n")).expect("worker tokens");
    })
    .await
}

async fn opened(cluster: &TestCluster, token: &str) -> RawSession {
    cluster.session_with_token(Some(token)).await.expect("session opened")
}

/// The iterations of the run's one package as the coordinator reports them.
async fn iterations(cluster: &TestCluster, run_id: &str) -> Vec<v1::IterationOutcome> {
    let results = cluster
        .survey()
        .await
        .query_package_results(v1::QueryPackageResultsRequest {
            run_id: run_id.to_string(),
            with_output: true,
            ..Default::default()
        })
        .await
        .expect("results")
        .into_inner();
    let mut iterations = results.results.into_iter().next().expect("one package").iterations;
    iterations.sort_by_key(|outcome| outcome.iteration);
    iterations
}

fn outcome(assignment: &v1::Assignment, result: v1::JobResult) -> In {
    In::Outcome(v1::JobOutcome {
        job_id: assignment.job_id,
        lease_token: assignment.lease_token.clone(),
        result: Some(result),
    })
}

/// The iteration outcome inside `result`, to forge.
fn iteration_mut(result: &mut v1::JobResult) -> &mut v1::IterationOutcome {
    match &mut result.kind {
        Some(v1::job_result::Kind::Iteration(outcome)) => outcome,
        other => panic!("expected an iteration outcome, got {other:?}"),
    }
}

/// An ack's status and reason.
async fn expect_ack_with_reason(session: &mut RawSession, job_id: i64) -> (v1::AckStatus, String) {
    match session.next().await.expect("message") {
        Out::Ack(ack) => {
            assert_eq!(ack.job_id, job_id);
            (v1::AckStatus::try_from(ack.status).expect("known status"), ack.reason)
        }
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_session_of_a_connected_worker_is_refused_and_the_first_keeps_its_job() {
    let cluster = TestCluster::start_with(settings()).await;
    let run_id = submit(&cluster, &spec(&["a"], 1)).await;
    let mut first = cluster.session().await;
    first.hello("w1", &ft_profile(), 1).await;
    first.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut first).await;

    let mut impostor = cluster.session().await;
    let refused = impostor
        .try_hello("w1", &ft_profile(), 1)
        .await
        .expect_err("a second w1 while w1 is connected");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");

    report(&first, &assignment, &assignment.lease_token).await;
    assert_eq!(
        expect_ack(&mut first, assignment.job_id).await,
        v1::AckStatus::Recorded,
        "the first session was not ended by the impostor"
    );
    assert_eq!(iterations(&cluster, &run_id).await[0].worker_id, "w1");
}

#[tokio::test]
async fn a_worker_token_of_its_own_binds_the_session_to_that_worker() {
    let cluster = with_worker_tokens().await;
    let refused = |status: tonic::Status, expected: &str| {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    };
    let mut session = opened(&cluster, W2_TOKEN).await;
    refused(
        session
            .try_hello("w1", &ft_profile(), 1)
            .await
            .expect_err("w2's token as w1"),
        "this token is worker w2's, not w1's",
    );
    let mut session = opened(&cluster, SHARED_TOKEN).await;
    refused(
        session
            .try_hello("w1", &ft_profile(), 1)
            .await
            .expect_err("the shared token as w1"),
        "worker w1 has a token of its own",
    );
    let mut other = opened(&cluster, SHARED_TOKEN).await;
    other
        .try_hello("w3", &ft_profile(), 1)
        .await
        .expect("an unbound id with the shared token");
    let wrong = cluster.session_with_token(Some("guess-0123456789abcdef")).await;
    assert_eq!(wrong.expect_err("a guess").code(), tonic::Code::Unauthenticated);

    // w1 with its own token may take over its own live session (a restart whose old
    // connection has not closed yet).
    let mut old = opened(&cluster, W1_TOKEN).await;
    old.hello("w1", &ft_profile(), 1).await;
    let mut restarted = opened(&cluster, W1_TOKEN).await;
    restarted.hello("w1", &ft_profile(), 1).await;
    let ended = old.next().await.expect_err("the old session ends");
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
}

#[tokio::test]
async fn an_outcomes_iteration_mode_attempt_and_worker_are_the_jobs_not_the_messages() {
    let cluster = TestCluster::start_with(settings()).await;
    let run_id = submit(&cluster, &spec(&["a"], 1)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut session).await;
    let mut forged = pass(77);
    let forged_outcome = iteration_mut(&mut forged);
    forged_outcome.worker_id = "w9".into();
    forged_outcome.attempt = 9;
    forged_outcome.mode = v1::Mode::Gil as i32;
    session.send(outcome(&assignment, forged)).await;
    assert_eq!(
        expect_ack(&mut session, assignment.job_id).await,
        v1::AckStatus::Recorded
    );
    let stored = &iterations(&cluster, &run_id).await[0];
    assert_eq!(
        (stored.iteration, stored.mode, stored.attempt, stored.worker_id.as_str()),
        (1, v1::Mode::Ft as i32, 1, "w1")
    );
}

#[tokio::test]
async fn an_invalid_or_oversized_outcome_is_rejected_and_recorded_as_a_harness_error() {
    let cluster = TestCluster::start_with(settings()).await;
    let run_id = submit(&cluster, &spec(&["a"], 4)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 4).await;
    session.send(In::Credit(v1::Credit { count: 4 })).await;
    let mut assignments = Vec::new();
    for _ in 0..4 {
        assignments.push(expect_assignment(&mut session).await);
    }
    assignments.sort_by_key(|a| a.iteration);

    // Evidence that is not JSON.
    let mut garbage = pass(1);
    iteration_mut(&mut garbage).evidence_json = "{not json".into();
    session.send(outcome(&assignments[0], garbage)).await;
    let (status, reason) = expect_ack_with_reason(&mut session, assignments[0].job_id).await;
    assert_eq!(status, v1::AckStatus::Rejected);
    assert!(reason.contains("evidence_json"), "{reason}");

    // An outcome over the outcome limit, under the message limit.
    let mut oversized = pass(2);
    iteration_mut(&mut oversized).stdout_tail = "x".repeat(2 * proto::MAX_OUTCOME_BYTES);
    session.send(outcome(&assignments[1], oversized)).await;
    let (status, reason) = expect_ack_with_reason(&mut session, assignments[1].job_id).await;
    assert_eq!(status, v1::AckStatus::Rejected);
    assert!(reason.contains("over the 1048576-byte limit"), "{reason}");

    // A lease token that is no token: nothing can be recorded under it.
    session
        .send(In::Outcome(v1::JobOutcome {
            job_id: assignments[2].job_id,
            lease_token: "\u{1b}[2J not a token".into(),
            result: Some(pass(3)),
        }))
        .await;
    let (status, _) = expect_ack_with_reason(&mut session, assignments[2].job_id).await;
    assert_eq!(status, v1::AckStatus::Rejected);

    // The session goes on: an honest outcome is recorded.
    report(&session, &assignments[3], &assignments[3].lease_token).await;
    assert_eq!(
        expect_ack(&mut session, assignments[3].job_id).await,
        v1::AckStatus::Recorded
    );

    let stored = iterations(&cluster, &run_id).await;
    let statuses: Vec<(u32, i32)> = stored.iter().map(|o| (o.iteration, o.status)).collect();
    let harness = v1::IterationStatus::HarnessError as i32;
    assert_eq!(
        statuses,
        [(1, harness), (2, harness), (4, v1::IterationStatus::Pass as i32)],
        "{stored:?}"
    );
    for refused in &stored[..2] {
        let why = refused.harness_error.as_deref().unwrap_or_default();
        assert!(why.starts_with("the worker's outcome was refused: "), "{why}");
        assert!(refused.stdout_tail.is_empty(), "none of the refused outcome is kept");
    }
}

#[tokio::test]
async fn a_message_over_the_session_limit_ends_that_session_alone_and_its_job_goes_on() {
    let cluster = TestCluster::start_with(settings()).await;
    let run_id = submit(&cluster, &spec(&["a"], 1)).await;
    let mut bystander = cluster.session().await;
    bystander.hello("w2", &ft_profile(), 1).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut session).await;
    let mut huge = pass(1);
    iteration_mut(&mut huge).stderr_tail = "y".repeat(proto::MAX_WORKER_MESSAGE_BYTES + 1);
    session.send(outcome(&assignment, huge)).await;
    let ended = session.next().await.expect_err("the session ends");
    assert_eq!(ended.code(), tonic::Code::OutOfRange, "{ended:?}");

    // The job went back to the queue with the attempt counted; another worker runs it.
    bystander.send(In::Credit(v1::Credit { count: 1 })).await;
    let again = expect_assignment(&mut bystander).await;
    assert_eq!((again.job_id, again.attempt), (assignment.job_id, 2));
    report(&bystander, &again, &again.lease_token).await;
    assert_eq!(expect_ack(&mut bystander, again.job_id).await, v1::AckStatus::Recorded);
    assert_eq!(iterations(&cluster, &run_id).await[0].worker_id, "w2");
}

#[tokio::test]
async fn credits_beyond_a_workers_free_slots_are_dropped() {
    let cluster = TestCluster::start_with(settings()).await;
    submit(&cluster, &spec(&["a", "b", "c", "d", "e"], 4)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 2).await;
    session.send(In::Credit(v1::Credit { count: u32::MAX })).await;
    for _ in 0..100 {
        session.send(In::Credit(v1::Credit { count: 7 })).await;
    }
    let mut assigned = Vec::new();
    while let Some(message) = session.next_within(Duration::from_secs(2)).await {
        match message {
            Out::Assignment(assignment) => assigned.push(assignment),
            other => panic!("expected assignments only, got {other:?}"),
        }
    }
    assert_eq!(assigned.len(), 2, "two slots, two jobs, whatever the credits said");

    // A slot that frees gives one job more, credits or not.
    report(&session, &assigned[0], &assigned[0].lease_token).await;
    assert_eq!(
        expect_ack(&mut session, assigned[0].job_id).await,
        v1::AckStatus::Recorded
    );
    for _ in 0..10 {
        session.send(In::Credit(v1::Credit { count: 1 })).await;
    }
    let mut more = 0;
    while let Some(message) = session.next_within(Duration::from_secs(2)).await {
        assert!(matches!(message, Out::Assignment(_)), "{message:?}");
        more += 1;
    }
    assert_eq!(more, 1);
}

#[tokio::test]
async fn a_heartbeat_naming_more_jobs_than_any_worker_runs_ends_the_session() {
    let cluster = TestCluster::start_with(settings()).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    let running = (0..2_000)
        .map(|n| v1::RunningJob {
            job_id: n,
            lease_token: uuid::Uuid::new_v4().to_string(),
        })
        .collect();
    session
        .send(In::Heartbeat(v1::Heartbeat {
            running,
            refusing: String::new(),
        }))
        .await;
    let ended = session.next().await.expect_err("the session ends");
    assert_eq!(ended.code(), tonic::Code::InvalidArgument, "{ended:?}");
}

/// The resident memory of a process, in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_flooding_sessions_leave_the_coordinator_bounded_and_serving() {
    use crate::cli::ftsurvey;
    use crate::fleet::{free_port, spawn, wait_for_port};

    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let serve = spawn(
        ftsurvey()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.path().join("store.db").display())),
        &log,
    );
    wait_for_port("127.0.0.1", port, &log);
    let cluster_url = format!("http://127.0.0.1:{port}");
    let pid = serve.0.id();
    let before_kb = rss_kb(pid);

    // 1,000 sessions over 40 connections (25 each, under the per-connection stream limit),
    // each flooding credits, garbage outcomes and heartbeats of jobs it never had.
    let mut channels = Vec::new();
    for _ in 0..40 {
        channels.push(tests::connect(&cluster_url).await);
    }
    // Of an interpreter the honest run does not want, so its jobs are left to the honest worker.
    let mut other_python = ft_profile();
    other_python.version_short = "3.12.9".into();
    other_python.major_minor = "3.12".into();
    let started = Instant::now();
    let mut sessions = Vec::new();
    for n in 0..1_000 {
        let mut session = RawSession::open(channels[n % 40].clone(), None)
            .await
            .expect("open session");
        session.hello(&format!("flood-{n}"), &other_python, 1).await;
        session.send(In::Credit(v1::Credit { count: u32::MAX })).await;
        for job_id in 0..5 {
            session
                .send(In::Outcome(v1::JobOutcome {
                    job_id,
                    lease_token: uuid::Uuid::new_v4().to_string(),
                    result: Some(pass(1)),
                }))
                .await;
        }
        session
            .send(In::Heartbeat(v1::Heartbeat {
                running: vec![v1::RunningJob {
                    job_id: n as i64,
                    lease_token: uuid::Uuid::new_v4().to_string(),
                }],
                refusing: String::new(),
            }))
            .await;
        sessions.push(session);
    }
    let opened_in = started.elapsed();

    // An honest client and worker are still served, and the run finishes.
    let mut survey = v1::survey_service_client::SurveyServiceClient::connect(cluster_url.clone())
        .await
        .expect("survey");
    let run = survey
        .submit_run(v1::SubmitRunRequest {
            spec: Some((&spec(&["a"], 2)).into()),
            client_token: String::new(),
        })
        .await
        .expect("submit among the flood")
        .into_inner()
        .run
        .expect("run");
    let mut honest = RawSession::open(tests::connect(&cluster_url).await, None)
        .await
        .expect("open");
    honest.hello("honest", &ft_profile(), 2).await;
    honest.send(In::Credit(v1::Credit { count: 2 })).await;
    let assignments = [
        expect_assignment(&mut honest).await,
        expect_assignment(&mut honest).await,
    ];
    for assignment in &assignments {
        report(&honest, assignment, &assignment.lease_token).await;
        assert_eq!(
            expect_ack(&mut honest, assignment.job_id).await,
            v1::AckStatus::Recorded
        );
    }
    let status = survey
        .get_run(v1::GetRunRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("get run")
        .into_inner();
    let after_kb = rss_kb(pid);
    eprintln!(
        "1,000 flooding sessions opened in {opened_in:?}; coordinator RSS {before_kb} KiB before, {after_kb} KiB with them"
    );
    assert_eq!(
        status.run.expect("run").state,
        v1::RunState::Finished as i32,
        "the honest worker's run finished among the flood"
    );
    assert!(
        after_kb < before_kb + 256 * 1024,
        "the coordinator grew from {before_kb} KiB to {after_kb} KiB for 1,000 sessions"
    );
    drop(sessions);
}
