//! The gRPC surface of the coordinator, driven by raw sessions as a worker would.

use std::time::{Duration, Instant};

use domain::spec::RunOptions;
use domain::{
    InterpreterRequirement, IterationOutcome, IterationStatus, JobResult, Mode, PackageSpec, RunSpec, Source,
};
use proto::v1;
use proto::v1::coordinator_message::Msg as Out;
use proto::v1::worker_message::Msg as In;
use tests::{RawSession, TestCluster, ft_profile};

pub(crate) fn spec(names: &[&str], iterations: u32) -> RunSpec {
    RunSpec {
        label: "protocol".to_string(),
        packages: names
            .iter()
            .map(|name| PackageSpec {
                name: name.to_string(),
                version: None,
                source: Source::Path {
                    path: format!("/src/{name}"),
                },
                install_command: "python -m pip install . pytest".to_string(),
                test_command: "python -m pytest".to_string(),
                test_framework: domain::package_kind::TestFramework::Pytest,
                import_name: PackageSpec::default_import_name(name),
                timeout_secs: None,
                env: Default::default(),
                download_count: None,
                extension_type: None,
                network: false,
            })
            .collect(),
        iterations,
        modes: vec![Mode::Ft],
        options: RunOptions::default(),
        requirement: InterpreterRequirement {
            python_version: Some("3.13".into()),
            free_threaded: true,
            ..InterpreterRequirement::any()
        },
        registry: None,
        rerun_of: None,
    }
}

pub(crate) async fn submit(cluster: &TestCluster, spec: &RunSpec) -> String {
    let request = v1::SubmitRunRequest {
        spec: Some(spec.into()),
        client_token: String::new(),
    };
    let response = cluster
        .survey()
        .await
        .submit_run(request)
        .await
        .expect("submit")
        .into_inner();
    response.run.expect("run").run_id
}

pub(crate) fn pass(iteration: u32) -> v1::JobResult {
    let outcome = IterationOutcome {
        iteration,
        mode: Mode::Ft,
        status: IterationStatus::Pass,
        exit_code: Some(0),
        signal: None,
        duration_ms: 5,
        cpu_time_ms: None,
        max_rss_kb: None,
        stalled: false,
        last_output_line: "1 passed".to_string(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        crash_signature: None,
        harness_error: None,
        worker_id: "w".to_string(),
        attempt: 1,
        start_latency_ms: Some(1),
        evidence: Default::default(),
        provenance: Default::default(),
    };
    (&JobResult::Iteration(outcome)).into()
}

/// Follows a run's events.
async fn watch(cluster: &TestCluster, run_id: &str) -> tonic::Streaming<v1::RunEvent> {
    cluster
        .survey()
        .await
        .watch_run(v1::WatchRunRequest {
            run_id: run_id.to_string(),
            with_output: true,
            verdicts_only: false,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// Drains worker w1 "for maintenance" and sees its session told so.
async fn drain_w1(cluster: &TestCluster, session: &mut RawSession) -> v1::DrainWorkerResponse {
    let drained = cluster
        .survey()
        .await
        .drain_worker(v1::DrainWorkerRequest {
            worker_id: "w1".into(),
            reason: "maintenance".into(),
        })
        .await
        .expect("drain")
        .into_inner();
    match session.next().await.expect("message") {
        Out::Drain(drain) => assert_eq!(drain.reason, "maintenance"),
        other => panic!("expected a drain, got {other:?}"),
    }
    drained
}

/// A coordinator on a throwaway PostgreSQL, with leases long enough (60 s) that none expires
/// during a test.
async fn on_postgres() -> (tests::postgres::TestPostgres, TestCluster) {
    let postgres = tests::postgres::TestPostgres::start().expect("start a throwaway PostgreSQL");
    let settings = coordinator::Settings {
        lease_duration: Duration::from_secs(60),
        ..coordinator::Settings::default()
    };
    let cluster = TestCluster::start_on(Some(postgres.url()), settings).await;
    (postgres, cluster)
}

pub(crate) async fn expect_assignment(session: &mut RawSession) -> v1::Assignment {
    match session.next().await.expect("message") {
        Out::Assignment(assignment) => assignment,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

pub(crate) async fn report(session: &RawSession, assignment: &v1::Assignment, token: &str) {
    let outcome = v1::JobOutcome {
        job_id: assignment.job_id,
        lease_token: token.to_string(),
        result: Some(pass(assignment.iteration)),
    };
    session.send(In::Outcome(outcome)).await;
}

pub(crate) async fn expect_ack(session: &mut RawSession, job_id: i64) -> v1::AckStatus {
    match session.next().await.expect("message") {
        Out::Ack(ack) => {
            assert_eq!(ack.job_id, job_id);
            v1::AckStatus::try_from(ack.status).expect("known ack status")
        }
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_that_does_not_start_with_hello_is_rejected() {
    let cluster = TestCluster::start().await;
    let mut session = cluster.session().await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let error = session.next().await.expect_err("rejected");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("Hello"), "{}", error.message());

    let mut garbage = cluster.session().await;
    let hello = v1::Hello {
        worker_id: "w 1".into(),
        interpreter: None,
        slots: 1,
        ..Default::default()
    };
    garbage.send(In::Hello(hello)).await;
    assert_eq!(
        garbage.next().await.expect_err("rejected").code(),
        tonic::Code::InvalidArgument
    );
    cluster.stop().await;
}

#[tokio::test]
async fn jobs_are_assigned_up_to_the_credits_and_each_outcome_is_recorded_once() {
    let cluster = TestCluster::start().await;
    submit(&cluster, &spec(&["a"], 3)).await;
    let mut session = cluster.session().await;
    let welcome = session.hello("w1", &ft_profile(), 2).await;
    assert_eq!(welcome.heartbeat_interval_ms, 200);
    session.send(In::Credit(v1::Credit { count: 2 })).await;
    let first = expect_assignment(&mut session).await;
    let second = expect_assignment(&mut session).await;
    assert_ne!(first.job_id, second.job_id);
    assert_eq!(first.attempt, 1);

    report(&session, &first, &first.lease_token).await;
    // The next message is the ack, not a third assignment: two credits, two jobs.
    assert_eq!(expect_ack(&mut session, first.job_id).await, v1::AckStatus::Recorded);
    report(&session, &first, &first.lease_token).await;
    assert_eq!(expect_ack(&mut session, first.job_id).await, v1::AckStatus::Duplicate);
    report(&session, &second, &domain::LeaseToken::random().to_string()).await;
    assert_eq!(expect_ack(&mut session, second.job_id).await, v1::AckStatus::Stale);

    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let third = expect_assignment(&mut session).await;
    assert_eq!(
        [first.iteration, second.iteration, third.iteration]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [1, 2, 3].into()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_dropped_session_releases_its_jobs_at_once() {
    let settings = coordinator::Settings {
        heartbeat_interval: Duration::from_secs(20),
        lease_duration: Duration::from_secs(600),
        max_attempts: 3,
        reap_interval: Duration::from_secs(60),
        ..coordinator::Settings::default()
    };
    let cluster = TestCluster::start_with(settings).await;
    submit(&cluster, &spec(&["a"], 1)).await;
    let mut first = cluster.session().await;
    first.hello("w1", &ft_profile(), 1).await;
    first.send(In::Credit(v1::Credit { count: 1 })).await;
    let lost = expect_assignment(&mut first).await;
    drop(first);

    let mut second = cluster.session().await;
    second.hello("w2", &ft_profile(), 1).await;
    second.send(In::Credit(v1::Credit { count: 1 })).await;
    // Well before the ten-minute lease could expire.
    let again = expect_assignment(&mut second).await;
    assert_eq!(again.job_id, lost.job_id);
    assert_eq!(again.attempt, 2);
    report(&second, &lost, &lost.lease_token).await;
    assert_eq!(expect_ack(&mut second, lost.job_id).await, v1::AckStatus::Stale);
    cluster.stop().await;
}

#[tokio::test]
async fn jobs_go_only_to_sessions_whose_interpreter_meets_the_run() {
    let cluster = TestCluster::start().await;
    let run_id = submit(&cluster, &spec(&["a"], 1)).await;
    let mut gil = cluster.session().await;
    let mut profile = ft_profile();
    profile.free_threaded = false;
    profile.abi_tag = "cp313".into();
    gil.hello("gil", &profile, 1).await;
    gil.send(In::Credit(v1::Credit { count: 1 })).await;
    let mut ft = cluster.session().await;
    ft.hello("ft", &ft_profile(), 1).await;
    ft.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut ft).await;
    assert_eq!(assignment.run_id, run_id);
    // The only job went to the free-threaded session although the other one asked first.
    let run = cluster
        .survey()
        .await
        .get_run(v1::GetRunRequest { run_id })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(run.run.expect("run").jobs_running, 1);
    report(&ft, &assignment, &assignment.lease_token).await;
    assert_eq!(expect_ack(&mut ft, assignment.job_id).await, v1::AckStatus::Recorded);
    drop(gil);
    cluster.stop().await;
}

#[tokio::test]
async fn cancelling_a_run_tells_the_worker_to_stop_its_job() {
    let cluster = TestCluster::start().await;
    let run_id = submit(&cluster, &spec(&["a", "b"], 2)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut session).await;
    let cancelled = cluster
        .survey()
        .await
        .cancel_run(v1::CancelRunRequest { run_id: run_id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.run.expect("run").state, v1::RunState::Cancelled as i32);
    match session.next().await.expect("message") {
        Out::Cancel(cancel) => assert_eq!(cancel.job_id, assignment.job_id),
        other => panic!("expected a cancel, got {other:?}"),
    }
    cluster.stop().await;
}

#[tokio::test]
async fn watching_a_run_gives_a_snapshot_then_each_finished_package_once_and_ends() {
    let cluster = TestCluster::start().await;
    let run_id = submit(&cluster, &spec(&["a", "b"], 1)).await;
    let mut events = watch(&cluster, &run_id).await;
    let snapshot = events.message().await.expect("snapshot").expect("an event");
    assert!(snapshot.finished_packages.is_empty());
    assert_eq!(snapshot.run.expect("run").jobs_total, 2);

    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 2).await;
    session.send(In::Credit(v1::Credit { count: 2 })).await;
    let assignments = [
        expect_assignment(&mut session).await,
        expect_assignment(&mut session).await,
    ];
    for assignment in &assignments {
        report(&session, assignment, &assignment.lease_token).await;
        assert_eq!(
            expect_ack(&mut session, assignment.job_id).await,
            v1::AckStatus::Recorded
        );
    }
    let mut finished = Vec::new();
    let mut last_state = 0;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
    {
        finished.extend(event.finished_packages.into_iter().map(|p| (p.package, p.category)));
        last_state = event.run.expect("run").state;
    }
    finished.sort();
    let compatible = v1::Category::Compatible as i32;
    assert_eq!(
        finished,
        vec![("a".to_string(), compatible), ("b".to_string(), compatible)]
    );
    assert_eq!(
        last_state,
        v1::RunState::Finished as i32,
        "the stream ends after the run finishes"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn watch_events_name_the_jobs_running_until_they_are_reported() {
    let cluster = TestCluster::start().await;
    let run_id = submit(&cluster, &spec(&["a", "b"], 1)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    let before_assignment = Instant::now();
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut session).await;
    let package = assignment.package.as_ref().expect("package").name.clone();

    let mut events = watch(&cluster, &run_id).await;
    let snapshot = events.message().await.expect("snapshot").expect("an event");
    let since_assignment = before_assignment.elapsed();
    let running: Vec<(&str, &str, u32)> = snapshot
        .running
        .iter()
        .map(|job| (job.package.as_str(), job.worker_id.as_str(), job.iteration))
        .collect();
    assert_eq!(running, vec![(package.as_str(), "w1", 1)]);
    // The job started between the credit and the snapshot, so it cannot have run longer; the
    // millisecond allowed over is the rounding of the two clock readings it is the difference of.
    let running_ms = snapshot.running[0].running_ms;
    assert!(
        running_ms <= since_assignment.as_millis() as i64 + 1,
        "running {running_ms} ms, but assigned at most {since_assignment:?} ago"
    );

    report(&session, &assignment, &assignment.lease_token).await;
    assert_eq!(
        expect_ack(&mut session, assignment.job_id).await,
        v1::AckStatus::Recorded
    );
    let after = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
        .expect("an event");
    assert!(after.running.is_empty(), "{:?}", after.running);
    cluster.stop().await;
}

#[tokio::test]
async fn a_watcher_of_a_busy_run_gets_events_a_quarter_second_apart_and_every_package_once() {
    let cluster = TestCluster::start().await;
    let names: Vec<String> = (0..60).map(|i| format!("p{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let run_id = submit(&cluster, &spec(&names, 1)).await;
    let mut events = watch(&cluster, &run_id).await;
    let watched = Instant::now();
    let watcher = tokio::spawn(async move {
        let mut received = Vec::new();
        while let Some(event) = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("an event within 20 s")
            .expect("stream ok")
        {
            received.push(event);
        }
        (received, watched.elapsed())
    });

    // One job at a time, each reported as soon as it comes: 60 packages finish in a burst.
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    for _ in &names {
        let assignment = expect_assignment(&mut session).await;
        report(&session, &assignment, &assignment.lease_token).await;
        assert_eq!(
            expect_ack(&mut session, assignment.job_id).await,
            v1::AckStatus::Recorded
        );
        session.send(In::Credit(v1::Credit { count: 1 })).await;
    }

    let (received, elapsed) = watcher.await.expect("watcher");
    let mut finished: Vec<String> = received
        .iter()
        .flat_map(|event| event.finished_packages.iter().map(|p| p.package.clone()))
        .collect();
    finished.sort();
    assert_eq!(finished, names, "each package once");
    let last = received
        .last()
        .and_then(|event| event.run.as_ref())
        .expect("a last event");
    assert_eq!(last.state, v1::RunState::Finished as i32);
    // The snapshot, then at most one event per 250 ms the stream was open.
    let bound = 1 + (elapsed.as_millis() / 250) as usize;
    assert!(
        received.len() <= bound,
        "{} events in {elapsed:?}, at most {bound} expected",
        received.len()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_invalid_run_is_refused_and_stores_nothing() {
    let cluster = TestCluster::start().await;
    let mut wire = v1::RunSpec::from(&spec(&["a"], 1));
    wire.iterations = 0;
    let error = cluster
        .survey()
        .await
        .submit_run(v1::SubmitRunRequest {
            spec: Some(wire),
            client_token: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    let runs = cluster
        .survey()
        .await
        .list_runs(v1::ListRunsRequest { limit: 0 })
        .await
        .expect("list")
        .into_inner();
    assert!(runs.runs.is_empty());
    let missing = cluster
        .survey()
        .await
        .get_run(v1::GetRunRequest {
            run_id: "not-a-uuid".into(),
        })
        .await;
    assert_eq!(missing.expect_err("bad id").code(), tonic::Code::InvalidArgument);
    cluster.stop().await;
}

#[tokio::test]
async fn a_claim_that_comes_back_after_a_drain_goes_back_to_the_queue() {
    use sqlx::Connection;
    let (postgres, cluster) = on_postgres().await;
    let run_id = submit(&cluster, &spec(&["a"], 1)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    // Another transaction holds the run's row: w1's claim picks the job, then its lease waits
    // to mark the run running.
    let mut holder = sqlx::PgConnection::connect(&postgres.url()).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
    sqlx::query("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE")
        .bind(&run_id)
        .execute(&mut holder)
        .await
        .expect("lock the run");
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let mut watcher = sqlx::PgConnection::connect(&postgres.url()).await.expect("connect");
    let waiting_since = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%leased%'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            waiting_since.elapsed() < Duration::from_secs(10),
            "the claim never waited on the run's row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drain_w1(&cluster, &mut session).await;
    sqlx::query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("let the claim through");
    let next = session.next_within(Duration::from_millis(1500)).await;
    assert!(next.is_none(), "a drained worker got {next:?}");
    // The job went back to the queue at once, not at its lease's expiry a minute later:
    // another worker takes it.
    let mut other = cluster.session().await;
    other.hello("w2", &ft_profile(), 1).await;
    other.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = tokio::time::timeout(Duration::from_secs(10), expect_assignment(&mut other))
        .await
        .expect("the job within 10 s");
    assert_eq!(assignment.package.expect("package").name, "a");
    cluster.stop().await;
}

#[tokio::test]
async fn a_drained_worker_finishes_its_job_and_gets_no_new_one() {
    let cluster = TestCluster::start().await;
    submit(&cluster, &spec(&["a"], 3)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 2).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let running = expect_assignment(&mut session).await;
    let drained = drain_w1(&cluster, &mut session).await;
    assert_eq!(drained.running_jobs, 1);
    // Its outcome still counts; new credits bring nothing (two dispatch polls and more).
    report(&session, &running, &running.lease_token).await;
    assert_eq!(expect_ack(&mut session, running.job_id).await, v1::AckStatus::Recorded);
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let next = session.next_within(Duration::from_millis(1500)).await;
    assert!(next.is_none(), "a drained worker got {next:?}");
    let unknown = cluster
        .survey()
        .await
        .drain_worker(v1::DrainWorkerRequest {
            worker_id: "nobody".into(),
            reason: String::new(),
        })
        .await
        .expect_err("no such worker");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // Another worker takes the rest.
    let mut other = cluster.session().await;
    other.hello("w2", &ft_profile(), 1).await;
    other.send(In::Credit(v1::Credit { count: 1 })).await;
    expect_assignment(&mut other).await;
    cluster.stop().await;
}

/// The database going away for a moment is not the worker's doing: its session stays open,
/// its outcome is recorded once the database is back, and its next job comes then.
#[tokio::test]
async fn a_database_outage_keeps_the_session_and_its_outcome_is_recorded_once_the_database_is_back() {
    let (mut postgres, cluster) = on_postgres().await;
    let run_id = submit(&cluster, &spec(&["a"], 2)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let first = expect_assignment(&mut session).await;

    postgres.stop().expect("stop PostgreSQL");
    // A heartbeat, the outcome and a credit for the freed slot: each needs the database.
    session
        .send(In::Heartbeat(v1::Heartbeat {
            running: vec![v1::RunningJob {
                job_id: first.job_id,
                lease_token: first.lease_token.clone(),
            }],
            refusing: String::new(),
        }))
        .await;
    report(&session, &first, &first.lease_token).await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let during = tokio::time::timeout(Duration::from_secs(2), session.inbound.message()).await;
    assert!(
        during.is_err(),
        "while the database was down the session answered {during:?}"
    );

    postgres.start_server().expect("start PostgreSQL again");
    let (mut acked, mut next) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.is_none() || next.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match session.next_within(left).await {
            Some(Out::Ack(ack)) if ack.job_id == first.job_id => acked = Some(ack.status),
            Some(Out::Assignment(assignment)) => next = Some(assignment),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("30 s after the database came back: ack {acked:?}, next job {next:?}"),
        }
    }
    assert_eq!(acked, Some(v1::AckStatus::Recorded as i32));
    let next = next.expect("a next job");
    assert_ne!(next.job_id, first.job_id);
    // The first job is recorded once, from this session's outcome.
    let results = cluster
        .survey()
        .await
        .query_package_results(v1::QueryPackageResultsRequest {
            run_id,
            ..Default::default()
        })
        .await
        .expect("results")
        .into_inner();
    let iterations: Vec<u32> = results
        .results
        .iter()
        .flat_map(|r| r.iterations.iter().map(|i| i.iteration))
        .collect();
    assert_eq!(iterations, vec![first.iteration]);
    cluster.stop().await;
}

#[tokio::test]
async fn a_store_that_hangs_answers_a_client_with_deadline_exceeded_and_the_next_call_is_served() {
    use sqlx::Connection;
    let postgres = tests::postgres::TestPostgres::start().expect("start a throwaway PostgreSQL");
    let settings = coordinator::Settings {
        store_answer_timeout: Duration::from_secs(1),
        ..coordinator::Settings::default()
    };
    let cluster = TestCluster::start_on(Some(postgres.url()), settings).await;
    submit(&cluster, &spec(&["a"], 1)).await;
    // Another session holds the runs table: every read of it waits.
    let mut blocker = sqlx::PgConnection::connect(&postgres.url()).await.expect("connect");
    let mut lock = blocker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let list = || async {
        cluster
            .survey()
            .await
            .list_runs(v1::ListRunsRequest { limit: 10 })
            .await
    };
    let hung = list().await.expect_err("the store hangs");
    assert_eq!(hung.code(), tonic::Code::DeadlineExceeded, "{hung:?}");
    assert_eq!(hung.message(), "the store did not answer within 1 s");
    lock.rollback().await.expect("release");
    let runs = list().await.expect("served once the store answers").into_inner().runs;
    assert_eq!(runs.len(), 1);
}

/// The health service's status of the whole server, polled until it is `want` (30 s at most).
async fn health_becomes(cluster: &TestCluster, want: tonic_health::pb::health_check_response::ServingStatus) {
    let mut client = tonic_health::pb::health_client::HealthClient::new(tests::connect(&cluster.url).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .expect("health check")
            .into_inner()
            .status();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the health service still says {status:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_health_service_says_not_serving_while_the_store_is_down_and_serving_once_it_is_back() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (mut postgres, cluster) = on_postgres().await;
    health_becomes(&cluster, ServingStatus::Serving).await;
    postgres.stop().expect("stop PostgreSQL");
    health_becomes(&cluster, ServingStatus::NotServing).await;
    postgres.start_server().expect("start PostgreSQL again");
    health_becomes(&cluster, ServingStatus::Serving).await;
}

/// A finished run of 60 packages x 10 iterations, each iteration with both output tails full:
/// 19 MiB of output, more than one message holds.
async fn a_run_larger_than_a_message(cluster: &TestCluster) -> String {
    let names: Vec<String> = (0..60).map(|n| format!("scale-pkg-{n}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let run_id = submit(cluster, &spec(&name_refs, 10)).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 8).await;
    session.send(In::Credit(v1::Credit { count: 8 })).await;
    let mut acked = 0;
    while acked < 600 {
        match session.next().await.expect("message") {
            Out::Assignment(assignment) => {
                let name = &assignment.package.as_ref().expect("package").name;
                let package: usize = name["scale-pkg-".len()..].parse().expect("index");
                let result = tests::scale::outcome(package, assignment.iteration, domain::bound::MAX_TAIL_BYTES);
                session
                    .send(In::Outcome(v1::JobOutcome {
                        job_id: assignment.job_id,
                        lease_token: assignment.lease_token,
                        result: Some((&result).into()),
                    }))
                    .await;
                session.send(In::Credit(v1::Credit { count: 1 })).await;
            }
            Out::Ack(ack) => {
                assert_eq!(ack.status, v1::AckStatus::Recorded as i32);
                acked += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    run_id
}

fn encoded(results: &[v1::PackageResult]) -> usize {
    prost::Message::encoded_len(&v1::QueryPackageResultsResponse {
        results: results.to_vec(),
        next_page_token: String::new(),
    })
}

#[tokio::test]
async fn a_run_larger_than_a_message_is_read_in_pages_and_watched_in_bounded_events() {
    let cluster = TestCluster::start().await;
    let run_id = a_run_larger_than_a_message(&cluster).await;
    let mut survey = cluster.survey().await;

    // Without output, the whole run is one page: the tails are what made it large.
    let request = v1::QueryPackageResultsRequest {
        run_id: run_id.clone(),
        ..Default::default()
    };
    let page = survey
        .query_package_results(request.clone())
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.results.len(), 60);
    assert!(page.next_page_token.is_empty());
    assert!(
        page.results
            .iter()
            .flat_map(|r| &r.iterations)
            .all(|i| i.stdout_tail.is_empty())
    );

    // With output, pages under the limit, in package order, every tail there.
    let mut with_output = v1::QueryPackageResultsRequest {
        with_output: true,
        ..request.clone()
    };
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = survey
            .query_package_results(with_output.clone())
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(
            encoded(&page.results) <= proto::MAX_EVENT_BYTES,
            "a page stays under the limit"
        );
        for result in &page.results {
            assert_eq!(result.iterations.len(), 10);
            assert!(
                result
                    .iterations
                    .iter()
                    .all(|i| i.stdout_tail.len() > 16_000 && i.stderr_tail.len() > 16_000)
            );
            names.push(result.package.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        with_output.page_token = page.next_page_token;
    }
    let expected: Vec<String> = (0..60).map(|n| format!("scale-pkg-{n}")).collect();
    assert_eq!(names, expected);
    assert!(pages >= 5, "19 MiB in pages of 4 MiB at most took {pages} pages");

    // A page size is kept to; a token that is not one is refused.
    let small = v1::QueryPackageResultsRequest {
        page_size: 7,
        ..request.clone()
    };
    let page = survey.query_package_results(small).await.expect("page").into_inner();
    assert_eq!(page.results.len(), 7);
    assert_eq!(page.next_page_token, "6");
    let bad = v1::QueryPackageResultsRequest {
        page_token: "seven".into(),
        ..request
    };
    let refused = survey.query_package_results(bad).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // One iteration's output on demand.
    let output = survey
        .get_iteration_output(v1::GetIterationOutputRequest {
            run_id: run_id.clone(),
            package: "scale-pkg-5".into(),
            mode: v1::Mode::Ft as i32,
            iteration: 3,
        })
        .await
        .expect("output")
        .into_inner();
    assert!(output.stderr_tail.starts_with("Fatal Python error: Segmentation fault"));
    let missing = survey
        .get_iteration_output(v1::GetIterationOutputRequest {
            run_id: run_id.clone(),
            package: "scale-pkg-5".into(),
            mode: v1::Mode::Ft as i32,
            iteration: 11,
        })
        .await
        .expect_err("no such iteration");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Watching the finished run: every package once, with output when asked, each event under
    // the limit.
    for (with_output, verdicts_only) in [(false, false), (true, false), (false, true)] {
        let mut events = survey
            .watch_run(v1::WatchRunRequest {
                run_id: run_id.clone(),
                with_output,
                verdicts_only,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut names = Vec::new();
        let mut count = 0;
        while let Some(event) = events.message().await.expect("event") {
            count += 1;
            assert!(encoded(&event.finished_packages) <= proto::MAX_EVENT_BYTES);
            for result in event.finished_packages {
                if verdicts_only {
                    assert!(
                        result.iterations.is_empty() && result.counts.is_some(),
                        "{}",
                        result.package
                    );
                } else {
                    assert_eq!(result.iterations.len(), 10);
                    let has_output = result.iterations.iter().all(|i| !i.stdout_tail.is_empty());
                    assert_eq!(has_output, with_output, "{}", result.package);
                }
                names.push(result.package);
            }
        }
        names.sort();
        let mut expected = expected.clone();
        expected.sort();
        assert_eq!(names, expected);
        if with_output {
            assert!(count >= 5, "19 MiB came in {count} events");
        }
    }
    cluster.stop().await;
}

/// The reason worker `worker_id` refuses new jobs, as GetStatus shows it.
async fn refusing(cluster: &TestCluster, worker_id: &str) -> String {
    let status = cluster
        .survey()
        .await
        .get_status(v1::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let worker = status.workers.into_iter().find(|w| w.worker_id == worker_id);
    worker.expect("the worker is connected").refusing
}

#[tokio::test]
async fn a_heartbeat_refusing_new_jobs_takes_back_the_credits_until_the_worker_grants_more() {
    let cluster = TestCluster::start().await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 2).await;
    session.send(In::Credit(v1::Credit { count: 2 })).await;
    // A hostile worker's reason is kept to 1,024 bytes.
    let reason = format!(
        "free disk 0.4 GiB in /var/cache/ftsurvey is under --min-free-gb 2 {}",
        "x".repeat(5000)
    );
    session
        .send(In::Heartbeat(v1::Heartbeat {
            running: Vec::new(),
            refusing: reason.clone(),
        }))
        .await;
    let started = Instant::now();
    let shown = loop {
        let shown = refusing(&cluster, "w1").await;
        if !shown.is_empty() {
            break shown;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the refusal never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(shown.len() <= 1024, "{} bytes kept", shown.len());
    assert!(shown.starts_with("free disk 0.4 GiB in /var/cache/ftsurvey is under --min-free-gb 2 xxx"));

    submit(&cluster, &spec(&["a"], 2)).await;
    // Absence takes a wait: a few dispatch polls in which the two credits would be used.
    assert_eq!(session.next_within(Duration::from_millis(1500)).await, None);

    session
        .send(In::Heartbeat(v1::Heartbeat {
            running: Vec::new(),
            refusing: String::new(),
        }))
        .await;
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(&mut session).await;
    assert_eq!(assignment.package.expect("package").name, "a");
    assert_eq!(refusing(&cluster, "w1").await, "");
    // One credit, one job.
    assert_eq!(session.next_within(Duration::from_millis(500)).await, None);
    cluster.stop().await;
}
