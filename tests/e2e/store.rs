//! The store conformance suite: every backend must pass every case.
//!
//! Each case is an `async fn(Arc<dyn Store>)`; `conformance!` instantiates it per backend:
//! SQLite in a temp file, PostgreSQL in a throwaway cluster the harness starts.

use std::sync::Arc;

use coordinator::store::{ClaimBatch, ClaimRequest, ClaimWant, PackageQuery, Packages, Report, RetryPolicy, Store};
use domain::spec::RunOptions;
use domain::{
    Category, InterpreterProfile, InterpreterRequirement, IterationOutcome, IterationStatus, JobResult, LeaseToken,
    Mode, OutcomeAck, PackageSpec, RunId, RunSpec, RunState, SetupFailure, SetupStage, Source, WorkerId,
};

mod retention;

use retention::{
    a_purged_run_is_gone_with_its_packages_and_jobs, a_run_still_going_is_neither_archived_nor_purged,
    archiving_a_finished_or_cancelled_run_keeps_every_read_the_same,
    claims_heartbeats_reaps_and_outcomes_never_touch_an_archived_run,
    runs_to_archive_are_those_finished_before_the_cutoff,
};

const LEASE_MS: i64 = 1_000;
/// Three attempts, and a job whose setup failed for the infrastructure waits a second for
/// another worker.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    elsewhere_ms: 1_000,
};

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let url = format!("sqlite://{}", dir.path().join("store.db").display());
                    let store = coordinator::store::open(&url).await.expect("open sqlite store");
                    super::$case(store).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let cluster = tests::postgres::TestPostgres::start().expect("start a throwaway PostgreSQL");
                    let store = coordinator::store::open(&cluster.url()).await.expect("open postgres store");
                    super::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    submit_expands_packages_modes_and_iterations_into_jobs,
    submit_with_a_used_client_token_returns_the_first_run,
    claims_are_exclusive_between_concurrent_workers,
    claims_made_at_once_each_get_their_full_share,
    jobs_go_only_to_workers_whose_interpreter_meets_the_requirement,
    a_run_pinned_to_a_debug_build_or_one_build_goes_only_to_workers_with_it,
    an_outcome_is_recorded_once_and_duplicates_and_stale_tokens_are_ignored,
    an_expired_lease_is_reclaimed_by_another_worker_and_the_old_token_is_rejected,
    a_job_leased_too_often_is_lost_and_never_counted_against_the_package,
    a_job_whose_sessions_end_max_attempts_times_is_lost_like_an_expired_one,
    a_heartbeat_extends_the_lease,
    a_setup_failure_cancels_the_packages_other_jobs_and_revokes_their_leases,
    cancelling_a_run_cancels_pending_jobs_and_revokes_leases,
    verdicts_are_recomputed_as_outcomes_arrive_and_the_run_finishes,
    released_jobs_go_back_to_the_queue,
    runs_are_listed_newest_first_and_counted,
    a_worker_is_preferred_for_packages_it_has_set_up,
    stop_on_first_pass_cancels_the_packages_remaining_jobs,
    a_batch_claim_gives_each_worker_its_share_and_warm_packages_to_who_set_them_up,
    concurrent_runs_share_the_fleet,
    a_batch_of_outcomes_records_each_job_once,
    a_packages_last_two_outcomes_recorded_at_once_give_it_one_verdict,
    network_grants_and_an_oom_outcome_with_its_sandbox_report_are_kept,
    a_heartbeat_never_extends_a_lease_past_its_deadline,
    an_outcomes_iteration_mode_attempt_and_worker_come_from_its_job,
    a_lost_job_says_how_each_of_its_attempts_ended,
    a_store_answers_a_ping,
    results_come_in_pages_and_verdicts_keep_no_output_the_jobs_still_have,
    an_infrastructure_setup_failure_sends_the_job_to_another_worker_and_settles_nothing,
    an_infrastructure_failure_on_every_attempt_is_an_infra_error_naming_each_attempt,
    a_package_failure_after_an_infrastructure_failure_is_the_packages_verdict,
    a_job_lost_after_an_infrastructure_failure_says_so,
    an_iterations_job_names_the_worker_and_attempt_that_ran_it,
    archiving_a_finished_or_cancelled_run_keeps_every_read_the_same,
    claims_heartbeats_reaps_and_outcomes_never_touch_an_archived_run,
    runs_to_archive_are_those_finished_before_the_cutoff,
    a_purged_run_is_gone_with_its_packages_and_jobs,
    a_run_still_going_is_neither_archived_nor_purged,
);

fn package(name: &str) -> PackageSpec {
    PackageSpec {
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
    }
}

fn spec(names: &[&str], iterations: u32) -> RunSpec {
    RunSpec {
        label: "conformance".to_string(),
        packages: names.iter().map(|n| package(n)).collect(),
        iterations,
        modes: vec![Mode::Ft],
        options: RunOptions::default(),
        requirement: InterpreterRequirement::any(),
        registry: None,
        rerun_of: None,
    }
}

fn profile(major_minor: &str, free_threaded: bool) -> InterpreterProfile {
    InterpreterProfile {
        executable: "/opt/python/bin/python3".to_string(),
        version: format!("{major_minor}.5"),
        version_short: format!("{major_minor}.5"),
        major_minor: major_minor.to_string(),
        abi_tag: if free_threaded { "cp313t".into() } else { "cp311".into() },
        free_threaded,
        gil_enabled_by_default: Some(!free_threaded),
        tsan: false,
        debug: false,
        platform: "linux-x86_64".to_string(),
        configure_args: String::new(),
    }
}

fn worker(name: &str) -> WorkerId {
    WorkerId::parse(name).expect("worker id")
}

fn outcome(iteration: u32, status: IterationStatus) -> JobResult {
    JobResult::Iteration(IterationOutcome {
        iteration,
        mode: Mode::Ft,
        status,
        exit_code: Some(if status == IterationStatus::Pass { 0 } else { 1 }),
        signal: None,
        duration_ms: 10,
        cpu_time_ms: None,
        max_rss_kb: None,
        stalled: false,
        last_output_line: String::new(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        crash_signature: None,
        harness_error: None,
        worker_id: "w".to_string(),
        attempt: 1,
        start_latency_ms: None,
        evidence: Default::default(),
        provenance: Default::default(),
    })
}

async fn submit(store: &Arc<dyn Store>, spec: &RunSpec, now_ms: i64) -> RunId {
    let run_id = RunId::new_at(now_ms as u64);
    store.submit_run(run_id, spec, None, now_ms).await.expect("submit");
    run_id
}

async fn claim(
    store: &Arc<dyn Store>,
    worker_id: &WorkerId,
    profile: &InterpreterProfile,
    warm: &[String],
    max_jobs: u32,
    now_ms: i64,
) -> Vec<domain::Assignment> {
    let request = ClaimRequest {
        worker_id,
        profile,
        warm_packages: warm,
        max_jobs,
        lease_duration_ms: LEASE_MS,
    };
    store.claim_jobs(request, now_ms).await.expect("claim")
}

async fn submit_expands_packages_modes_and_iterations_into_jobs(store: Arc<dyn Store>) {
    let mut spec = spec(&["a", "b"], 3);
    spec.modes = vec![Mode::Ft, Mode::Gil];
    let run_id = submit(&store, &spec, 1_000).await;
    let (summary, stored) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.jobs_total, 12);
    assert_eq!(summary.packages_total, 2);
    assert_eq!(summary.state, RunState::Queued);
    assert_eq!(stored, spec);
    let jobs = claim(&store, &worker("w1"), &profile("3.13", true), &[], 100, 1_000).await;
    let mut keys: Vec<(String, Mode, u32)> = jobs
        .iter()
        .map(|j| (j.package.name.clone(), j.mode, j.iteration))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 12);
    assert!(keys.iter().all(|(_, _, iteration)| (1..=3).contains(iteration)));
}

async fn submit_with_a_used_client_token_returns_the_first_run(store: Arc<dyn Store>) {
    let spec = spec(&["a"], 2);
    let first = store
        .submit_run(RunId::new_at(1), &spec, Some("token-1"), 1)
        .await
        .expect("first");
    let again = store
        .submit_run(RunId::new_at(2), &spec, Some("token-1"), 2)
        .await
        .expect("again");
    assert_eq!(first.run_id, again.run_id);
    assert_eq!(store.list_runs(10).await.expect("list").len(), 1);
    let mut bad = spec.clone();
    bad.iterations = 0;
    assert!(store.submit_run(RunId::new_at(3), &bad, None, 3).await.is_err());
    assert_eq!(
        store.list_runs(10).await.expect("list").len(),
        1,
        "an invalid run stores nothing"
    );
}

async fn claims_are_exclusive_between_concurrent_workers(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a", "b", "c"], 4), 0).await;
    let ft = profile("3.13", true);
    let mut handles = Vec::new();
    for n in 0..4 {
        let store = store.clone();
        let ft = ft.clone();
        handles.push(tokio::spawn(async move {
            let worker_id = worker(&format!("w{n}"));
            let mut mine = Vec::new();
            loop {
                let got = claim(&store, &worker_id, &ft, &[], 2, 0).await;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|a| a.job_id));
            }
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("claimer"));
    }
    let n_claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n_claimed, 12, "every job claimed");
    assert_eq!(all.len(), 12, "no job claimed twice");
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.jobs_running, 12);
    assert_eq!(summary.state, RunState::Running);
}

/// Two claims in flight at once (a coordinator runs two on PostgreSQL) take different jobs,
/// and neither comes back short while the queue has enough for both.
async fn claims_made_at_once_each_get_their_full_share(store: Arc<dyn Store>) {
    let names: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let run_id = submit(&store, &spec(&names, 4), 0).await;
    let ft = profile("3.13", true);
    let (a, b) = (worker("wa"), worker("wb"));
    let mut all = Vec::new();
    for round in 0..20 {
        let (first, second) = tokio::join!(claim(&store, &a, &ft, &[], 5, 0), claim(&store, &b, &ft, &[], 5, 0));
        assert_eq!(
            (first.len(), second.len()),
            (5, 5),
            "round {round}: each claim gets its 5 jobs while 200 - {} remain",
            all.len()
        );
        all.extend(first.iter().chain(&second).map(|job| job.job_id));
    }
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!((claimed, all.len()), (200, 200), "every job claimed once");
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.jobs_running, 200);
}

async fn jobs_go_only_to_workers_whose_interpreter_meets_the_requirement(store: Arc<dyn Store>) {
    let mut spec = spec(&["a"], 2);
    spec.requirement = InterpreterRequirement {
        python_version: Some("3.13".into()),
        free_threaded: true,
        ..InterpreterRequirement::any()
    };
    submit(&store, &spec, 0).await;
    assert!(
        claim(&store, &worker("gil"), &profile("3.13", false), &[], 5, 0)
            .await
            .is_empty()
    );
    assert!(
        claim(&store, &worker("old"), &profile("3.14", true), &[], 5, 0)
            .await
            .is_empty()
    );
    let mut tsan_only = spec.clone();
    tsan_only.requirement.tsan = true;
    tsan_only.label = "tsan".into();
    let tsan_run = submit(&store, &tsan_only, 1).await;
    // A TSAN worker never takes the plain run's jobs, only the TSAN run's.
    let tsan_profile = InterpreterProfile {
        tsan: true,
        ..profile("3.13", true)
    };
    let got = claim(&store, &worker("tsan"), &tsan_profile, &[], 5, 0).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|a| a.run_id == tsan_run), "the TSAN run's only: {got:?}");
    let got_ft = claim(&store, &worker("ft"), &profile("3.13", true), &[], 5, 0).await;
    assert_eq!(
        got_ft.len(),
        2,
        "the free-threaded worker gets the free-threaded run only"
    );
    assert!(got_ft.iter().all(|a| a.attempt == 1 && a.run_id != tsan_run));
    assert!(
        claim(&store, &worker("tsan"), &tsan_profile, &[], 5, 0)
            .await
            .is_empty(),
        "the plain run's jobs are left for plain workers, none to the TSAN worker"
    );
}

async fn a_run_pinned_to_a_debug_build_or_one_build_goes_only_to_workers_with_it(store: Arc<dyn Store>) {
    let plain = profile("3.13", true);
    let debug = InterpreterProfile {
        debug: true,
        ..plain.clone()
    };
    let mut debug_spec = spec(&["a"], 2);
    debug_spec.requirement = "3.13t-debug".parse().expect("request");
    let debug_run = submit(&store, &debug_spec, 0).await;
    let (_, stored) = store.get_run(debug_run).await.expect("get");
    assert_eq!(
        stored.requirement, debug_spec.requirement,
        "the requirement is kept as asked"
    );
    assert!(
        claim(&store, &worker("plain"), &plain, &[], 5, 0).await.is_empty(),
        "a debug run's jobs never go to a worker without a debug build"
    );
    let got = claim(&store, &worker("debug"), &debug, &[], 5, 0).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|a| a.run_id == debug_run));

    // A build named by its id; one named by a commit the worker's build names more briefly.
    let rebuilt = InterpreterProfile {
        version: "3.13.5 (main, Jan  2 2026, 10:00:00) [GCC 12.2.0]".into(),
        ..plain.clone()
    };
    let from_git = InterpreterProfile {
        version: "3.13.5 (tags/v3.13.5:6cb20a2, Jun 11 2025, 16:15:46) [GCC 13.3.0]".into(),
        ..plain.clone()
    };
    let mut by_id = spec(&["b"], 1);
    by_id.requirement = format!("3.13t@{}", plain.build_id()).parse().expect("request");
    let by_id_run = submit(&store, &by_id, 1).await;
    let mut by_commit = spec(&["c"], 1);
    by_commit.requirement = "3.13t@6CB20A2E1F0".parse().expect("request");
    let by_commit_run = submit(&store, &by_commit, 2).await;
    assert!(
        claim(&store, &worker("rebuilt"), &rebuilt, &[], 5, 0).await.is_empty(),
        "another build of the same version takes neither pinned run"
    );
    let got = claim(&store, &worker("git"), &from_git, &[], 5, 0).await;
    assert_eq!(
        got.iter().map(|a| a.run_id).collect::<Vec<_>>(),
        vec![by_commit_run],
        "the commit's prefix is the build"
    );
    let got = claim(&store, &worker("plain"), &plain, &[], 5, 0).await;
    assert_eq!(got.iter().map(|a| a.run_id).collect::<Vec<_>>(), vec![by_id_run]);
}

async fn an_outcome_is_recorded_once_and_duplicates_and_stale_tokens_are_ignored(store: Arc<dyn Store>) {
    submit(&store, &spec(&["a"], 1), 0).await;
    let job = claim(&store, &worker("w"), &profile("3.13", true), &[], 1, 0)
        .await
        .remove(0);
    let stranger = store
        .complete_job(
            job.job_id,
            LeaseToken::random(),
            &outcome(1, IterationStatus::Fail),
            RETRY,
            5,
        )
        .await
        .expect("stale");
    assert_eq!(stranger.ack, OutcomeAck::Stale);
    let first = store
        .complete_job(
            job.job_id,
            job.lease_token,
            &outcome(1, IterationStatus::Pass),
            RETRY,
            10,
        )
        .await
        .expect("first");
    assert_eq!(first.ack, OutcomeAck::Recorded);
    let again = store
        .complete_job(
            job.job_id,
            job.lease_token,
            &outcome(1, IterationStatus::Fail),
            RETRY,
            20,
        )
        .await
        .expect("again");
    assert_eq!(again.ack, OutcomeAck::Duplicate);
    let results = store.package_results(job.run_id, &[], false).await.expect("results");
    assert_eq!(results[0].iterations.len(), 1);
    assert_eq!(
        results[0].iterations[0].status,
        IterationStatus::Pass,
        "the first report stands"
    );
    let unknown = store
        .complete_job(
            domain::JobId(999_999),
            LeaseToken::random(),
            &outcome(1, IterationStatus::Pass),
            RETRY,
            30,
        )
        .await
        .expect("unknown job");
    assert_eq!(unknown.ack, OutcomeAck::Stale);
}

async fn an_expired_lease_is_reclaimed_by_another_worker_and_the_old_token_is_rejected(store: Arc<dyn Store>) {
    submit(&store, &spec(&["a"], 1), 0).await;
    let ft = profile("3.13", true);
    let first = claim(&store, &worker("w1"), &ft, &[], 1, 0).await.remove(0);
    let early = store.reap_expired(3, LEASE_MS - 1).await.expect("reap");
    assert_eq!(early.requeued, 0, "a live lease is not reaped");
    let report = store.reap_expired(3, LEASE_MS + 1).await.expect("reap");
    assert_eq!(report.requeued, 1);
    let second = claim(&store, &worker("w2"), &ft, &[], 1, LEASE_MS + 2).await.remove(0);
    assert_eq!(second.job_id, first.job_id);
    assert_eq!(second.attempt, 2);
    let late = store
        .complete_job(
            first.job_id,
            first.lease_token,
            &outcome(1, IterationStatus::Fail),
            RETRY,
            3_000,
        )
        .await;
    assert_eq!(late.expect("late").ack, OutcomeAck::Stale);
    let current = store
        .complete_job(
            second.job_id,
            second.lease_token,
            &outcome(1, IterationStatus::Pass),
            RETRY,
            3_001,
        )
        .await;
    assert_eq!(current.expect("current").ack, OutcomeAck::Recorded);
}

async fn a_job_leased_too_often_is_lost_and_never_counted_against_the_package(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a"], 1), 0).await;
    let ft = profile("3.13", true);
    let mut now = 0;
    for attempt in 1..=2 {
        let job = claim(&store, &worker("w"), &ft, &[], 1, now).await.remove(0);
        assert_eq!(job.attempt, attempt);
        now += LEASE_MS + 1;
        let report = store.reap_expired(2, now).await.expect("reap");
        assert_eq!(
            (report.requeued, report.lost),
            if attempt < 2 { (1, 0) } else { (0, 1) }
        );
    }
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.state, RunState::Finished);
    assert_eq!(summary.jobs_settled, 1);
    let result = store
        .package_results(run_id, &[], false)
        .await
        .expect("results")
        .remove(0);
    assert_eq!(result.category, Category::Unknown);
    assert_eq!(result.counts.fail + result.counts.crash + result.counts.timeout, 0);
}

async fn a_job_whose_sessions_end_max_attempts_times_is_lost_like_an_expired_one(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a", "b"], 1), 0).await;
    let ft = profile("3.13", true);
    // w1 takes both jobs; its session ends, as a worker killed by package a's tests would, and
    // gives back a's lease only; b's lease stays w1's.
    let first = claim(&store, &worker("w1"), &ft, &[], 2, 1).await;
    assert_eq!(first.len(), 2);
    let a = first.iter().find(|j| j.package.name == "a").expect("a leased");
    let b = first.iter().find(|j| j.package.name == "b").expect("b leased");
    let report = store
        .abandon_jobs(&[(a.job_id, a.lease_token)], 2, 10)
        .await
        .expect("abandon");
    assert_eq!(
        (report.requeued, report.lost, report.runs_touched.clone()),
        (1, 0, vec![run_id])
    );
    // The second session to end with it is its last attempt: lost, and its package settles.
    let second = claim(&store, &worker("w2"), &ft, &[], 5, 20).await;
    assert_eq!(second.len(), 1, "only a was given back");
    assert_eq!((second[0].package.name.as_str(), second[0].attempt), ("a", 2));
    let report = store
        .abandon_jobs(&[(second[0].job_id, second[0].lease_token)], 2, 30)
        .await
        .expect("abandon again");
    assert_eq!((report.requeued, report.lost), (0, 1));
    let results = store.package_results(run_id, &[], false).await.expect("results");
    let result_of = |name: &str| results.iter().find(|r| r.package == name).expect("a result");
    assert!(result_of("a").finished, "a lost job settles its package");
    assert_eq!(result_of("a").category, Category::Unknown);
    assert!(!result_of("b").finished, "b's lease was not given back");
    let extended = store
        .heartbeat(&worker("w1"), &[(b.job_id, b.lease_token)], LEASE_MS, 40)
        .await
        .expect("heartbeat");
    assert_eq!(extended, 1, "b's lease is still w1's");
    let nothing = store.abandon_jobs(&[], 2, 50).await.expect("abandon nothing");
    assert_eq!((nothing.requeued, nothing.lost), (0, 0));
}

async fn a_heartbeat_extends_the_lease(store: Arc<dyn Store>) {
    submit(&store, &spec(&["a"], 1), 0).await;
    let w = worker("w");
    let job = claim(&store, &w, &profile("3.13", true), &[], 1, 0).await.remove(0);
    let extended = store
        .heartbeat(&w, &[(job.job_id, job.lease_token)], LEASE_MS, 900)
        .await
        .expect("heartbeat");
    assert_eq!(extended, 1);
    assert_eq!(store.reap_expired(3, LEASE_MS + 100).await.expect("reap").requeued, 0);
    let wrong = store
        .heartbeat(&w, &[(job.job_id, LeaseToken::random())], LEASE_MS, 1_000)
        .await
        .expect("heartbeat");
    assert_eq!(wrong, 0, "a heartbeat with a stale token extends nothing");
    assert_eq!(
        store.reap_expired(3, 900 + LEASE_MS + 1).await.expect("reap").requeued,
        1
    );
}

async fn a_heartbeat_never_extends_a_lease_past_its_deadline(store: Arc<dyn Store>) {
    let mut spec = spec(&["a"], 1);
    spec.packages[0].timeout_secs = Some(60);
    let deadline_ms = spec.options.lease_deadline(&spec.packages[0]).as_millis() as i64;
    submit(&store, &spec, 0).await;
    let w = worker("w");
    let job = claim(&store, &w, &profile("3.13", true), &[], 1, 0).await.remove(0);
    let lease = [(job.job_id, job.lease_token)];
    // Heartbeats on time keep the lease up to the deadline...
    let long_lease_ms = 10 * 60 * 1000;
    let mut now = 0;
    while now + long_lease_ms < deadline_ms {
        now += long_lease_ms / 2;
        assert_eq!(
            store
                .heartbeat(&w, &lease, long_lease_ms, now)
                .await
                .expect("heartbeat"),
            1
        );
        assert_eq!(
            store.reap_expired(3, now + 1).await.expect("reap").requeued,
            0,
            "at {now}"
        );
    }
    assert_eq!(store.reap_expired(3, deadline_ms - 1).await.expect("reap").requeued, 0);
    // ...and not past it: one more is still answered, but the lease ends at the deadline.
    assert_eq!(
        store
            .heartbeat(&w, &lease, long_lease_ms, deadline_ms - 10)
            .await
            .expect("heartbeat"),
        1
    );
    assert_eq!(
        store.reap_expired(3, deadline_ms + 1).await.expect("reap").requeued,
        1,
        "the lease ended at its deadline whatever the heartbeats said"
    );
}

async fn an_outcomes_iteration_mode_attempt_and_worker_come_from_its_job(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a"], 1), 0).await;
    let honest = worker("honest");
    let job = claim(&store, &honest, &profile("3.13", true), &[], 1, 0)
        .await
        .remove(0);
    let JobResult::Iteration(mut forged) = outcome(1, IterationStatus::Fail) else {
        unreachable!("an iteration outcome")
    };
    forged.iteration = 77;
    forged.mode = Mode::Gil;
    forged.attempt = 9;
    forged.worker_id = "someone-else".into();
    let completion = store
        .complete_job(job.job_id, job.lease_token, &JobResult::Iteration(forged), RETRY, 5)
        .await
        .expect("record");
    assert_eq!(completion.ack, OutcomeAck::Recorded);
    let results = store.package_results(run_id, &[], false).await.expect("results");
    let stored = &results[0].iterations[0];
    assert_eq!(
        (
            stored.iteration,
            stored.mode,
            stored.attempt,
            stored.worker_id.as_str(),
            stored.status
        ),
        (1, Mode::Ft, 1, "honest", IterationStatus::Fail),
        "the worker said what happened, the job row which iteration it was and who ran it"
    );
}

async fn a_lost_job_says_how_each_of_its_attempts_ended(store: Arc<dyn Store>) {
    let spec = spec(&["a"], 1);
    let deadline_ms = spec.options.lease_deadline(&spec.packages[0]).as_millis() as i64;
    let run_id = submit(&store, &spec, 0).await;
    let ft = profile("3.13", true);
    // Attempt 1: its worker's session ends.
    let first = claim(&store, &worker("w1"), &ft, &[], 1, 1).await.remove(0);
    store
        .abandon_jobs(&[(first.job_id, first.lease_token)], 3, 10)
        .await
        .expect("abandon");
    // Attempt 2: its worker goes silent until the lease expires.
    let second = claim(&store, &worker("w2"), &ft, &[], 1, 20).await.remove(0);
    assert_eq!(
        store.reap_expired(3, 20 + LEASE_MS + 1).await.expect("reap").requeued,
        1
    );
    // Attempt 3: its worker heartbeats past the deadline.
    let start = 2 * LEASE_MS;
    let third = claim(&store, &worker("w3"), &ft, &[], 1, start).await.remove(0);
    let held = [(third.job_id, third.lease_token)];
    store
        .heartbeat(&worker("w3"), &held, deadline_ms, start + deadline_ms / 2)
        .await
        .expect("heartbeat");
    let report = store.reap_expired(3, start + deadline_ms + 1).await.expect("reap");
    assert_eq!((report.requeued, report.lost), (0, 1));
    assert_eq!((second.attempt, third.attempt), (2, 3));

    let results = store.package_results(run_id, &[], false).await.expect("results");
    let lost: Vec<&String> = results[0].evidence.iter().filter(|e| e.contains("lost")).collect();
    assert_eq!(
        lost,
        [
            "ft iteration 1 lost after 3 attempts: attempt 1 on w1: its worker's session ended; \
             attempt 2 on w2: no heartbeat until its lease expired; attempt 3 on w3: held past its deadline"
        ],
        "{:?}",
        results[0].evidence
    );
}

async fn a_store_answers_a_ping(store: Arc<dyn Store>) {
    store.ping().await.expect("an open store answers");
}

async fn a_setup_failure_cancels_the_packages_other_jobs_and_revokes_their_leases(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["broken", "fine"], 3), 0).await;
    let ft = profile("3.13", true);
    let warm = vec!["broken".to_string()];
    let first = claim(&store, &worker("w1"), &ft, &warm, 1, 0).await.remove(0);
    let second = claim(&store, &worker("w2"), &ft, &warm, 1, 0).await.remove(0);
    assert_eq!(
        (first.package.name.as_str(), second.package.name.as_str()),
        ("broken", "broken")
    );
    let failure = JobResult::SetupFailed(SetupFailure {
        stage: SetupStage::Install,
        message: "install command exited with status 1".into(),
        log_tail: "error: no".into(),
        duration_ms: 5,
        infrastructure: false,
    });
    let completion = store
        .complete_job(first.job_id, first.lease_token, &failure, RETRY, 10)
        .await
        .expect("complete");
    assert_eq!(completion.ack, OutcomeAck::Recorded);
    assert_eq!(completion.revoked.len(), 1);
    assert_eq!(completion.revoked[0].job_id, second.job_id);
    assert_eq!(completion.revoked[0].worker_id, worker("w2"));
    let rest = claim(&store, &worker("w3"), &ft, &[], 10, 20).await;
    assert!(
        rest.iter().all(|a| a.package.name == "fine"),
        "no job of the broken package is handed out"
    );
    let broken = store
        .package_results(run_id, &["broken".to_string()], true)
        .await
        .expect("results");
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].category, Category::InstallFailure);
    assert!(broken[0].finished);
    let late = store
        .complete_job(second.job_id, second.lease_token, &failure, RETRY, 30)
        .await
        .expect("late");
    assert_eq!(late.ack, OutcomeAck::Stale);
}

async fn cancelling_a_run_cancels_pending_jobs_and_revokes_leases(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a", "b"], 2), 0).await;
    let job = claim(&store, &worker("w"), &profile("3.13", true), &[], 1, 0)
        .await
        .remove(0);
    let (summary, revoked) = store.cancel_run(run_id, 5).await.expect("cancel");
    assert_eq!(summary.state, RunState::Cancelled);
    assert_eq!(summary.jobs_settled, 4);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].job_id, job.job_id);
    assert!(
        claim(&store, &worker("w"), &profile("3.13", true), &[], 5, 6)
            .await
            .is_empty()
    );
    let late = store
        .complete_job(
            job.job_id,
            job.lease_token,
            &outcome(1, IterationStatus::Pass),
            RETRY,
            7,
        )
        .await;
    assert_eq!(late.expect("late").ack, OutcomeAck::Stale);
    let (again, revoked_again) = store.cancel_run(run_id, 8).await.expect("cancel twice");
    assert_eq!(again.state, RunState::Cancelled);
    assert!(revoked_again.is_empty());
    let missing = store.cancel_run(RunId::new_at(9), 9).await;
    assert!(matches!(missing, Err(coordinator::store::StoreError::RunNotFound(_))));
}

async fn verdicts_are_recomputed_as_outcomes_arrive_and_the_run_finishes(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["good", "flaky"], 2), 0).await;
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 10, 0).await;
    assert_eq!(jobs.len(), 4);
    for (n, job) in jobs.iter().enumerate() {
        let status = if job.package.name == "flaky" && job.iteration == 2 {
            IterationStatus::Fail
        } else {
            IterationStatus::Pass
        };
        let completion = store
            .complete_job(
                job.job_id,
                job.lease_token,
                &outcome(job.iteration, status),
                RETRY,
                10 + n as i64,
            )
            .await;
        assert_eq!(completion.expect("complete").ack, OutcomeAck::Recorded);
        let (summary, _) = store.get_run(run_id).await.expect("get");
        assert_eq!(summary.jobs_settled, n as u64 + 1);
        assert_eq!(summary.state == RunState::Finished, n == 3);
        // While a package still has jobs to run, readers get its verdict so far.
        let so_far = store
            .package_results(run_id, std::slice::from_ref(&job.package.name), false)
            .await
            .expect("results so far");
        assert_eq!(so_far.len(), 1);
        let recorded = jobs[..=n].iter().filter(|j| j.package.name == job.package.name).count();
        assert_eq!(
            so_far[0].iterations.len(),
            recorded,
            "every outcome so far is in the verdict"
        );
        let all_in = recorded == 2;
        assert_eq!(so_far[0].finished, all_in);
        let finished_only = store
            .package_results(run_id, std::slice::from_ref(&job.package.name), true)
            .await
            .expect("finished results");
        assert_eq!(finished_only.len(), usize::from(all_in));
    }
    let results = store.package_results(run_id, &[], true).await.expect("results");
    let categories: Vec<(&str, Category)> = results.iter().map(|r| (r.package.as_str(), r.category)).collect();
    assert_eq!(
        categories,
        vec![("good", Category::Compatible), ("flaky", Category::Intermittent)]
    );
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.packages_finished, 2);
    assert_eq!(summary.categories.get(&Category::Intermittent), Some(&1));
    assert_eq!(summary.finished_at_ms, Some(13));
}

async fn network_grants_and_an_oom_outcome_with_its_sandbox_report_are_kept(store: Arc<dyn Store>) {
    use domain::evidence::{LimitHeld, LimitHit, SandboxKind, SandboxReport};
    let mut spec = spec(&["online", "offline"], 1);
    spec.packages[0].network = true;
    let run_id = submit(&store, &spec, 0).await;
    let (_, stored) = store.get_run(run_id).await.expect("get");
    assert_eq!(stored, spec);
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 10, 0).await;
    assert_eq!(jobs.len(), 2);
    let sandbox = SandboxReport {
        kind: SandboxKind::Bwrap,
        memory: LimitHeld::Cgroup2,
        memory_limit_bytes: 1 << 30,
        network: false,
        limits_hit: vec![LimitHit::Memory],
        ..SandboxReport::default()
    };
    for job in &jobs {
        let online = job.package.name == "online";
        assert_eq!(
            job.options.tests_get_network(&job.package),
            online,
            "{}",
            job.package.name
        );
        let mut result = outcome(job.iteration, IterationStatus::Oom);
        if let JobResult::Iteration(oom) = &mut result {
            oom.exit_code = None;
            oom.signal = Some(9);
            oom.evidence.sandbox = Some(SandboxReport {
                network: online,
                ..sandbox.clone()
            });
        }
        let completion = store.complete_job(job.job_id, job.lease_token, &result, RETRY, 5).await;
        assert_eq!(completion.expect("complete").ack, OutcomeAck::Recorded);
    }
    let results = store.package_results(run_id, &[], true).await.expect("results");
    for result in &results {
        assert_eq!(result.category, Category::Incompatible, "{result:?}");
        assert_eq!((result.counts.oom, result.counts.crash), (1, 0));
        let iteration = &result.iterations[0];
        assert_eq!(iteration.status, IterationStatus::Oom);
        let kept = iteration.evidence.sandbox.as_ref().expect("the sandbox report is kept");
        assert_eq!(kept.limits_hit, [LimitHit::Memory]);
        assert_eq!(kept.network, result.package == "online");
    }
}

async fn released_jobs_go_back_to_the_queue(store: Arc<dyn Store>) {
    submit(&store, &spec(&["a"], 2), 0).await;
    let ft = profile("3.13", true);
    let jobs = claim(&store, &worker("w1"), &ft, &[], 2, 0).await;
    let leases: Vec<_> = jobs.iter().map(|j| (j.job_id, j.lease_token)).collect();
    let runs = store.release_jobs(&leases, 1).await.expect("release");
    assert_eq!(runs, vec![jobs[0].run_id]);
    let again = claim(&store, &worker("w2"), &ft, &[], 5, 2).await;
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|a| a.attempt == 2));
    let stale = store.release_jobs(&leases, 3).await.expect("release stale");
    assert!(stale.is_empty(), "old tokens release nothing");
}

async fn runs_are_listed_newest_first_and_counted(store: Arc<dyn Store>) {
    let older = submit(&store, &spec(&["a"], 1), 1_000).await;
    let newer = submit(&store, &spec(&["a", "b"], 5), 2_000).await;
    let runs = store.list_runs(10).await.expect("list");
    assert_eq!(runs.iter().map(|r| r.run_id).collect::<Vec<_>>(), vec![newer, older]);
    assert_eq!(runs[0].jobs_total, 10);
    assert_eq!(runs[0].packages_total, 2);
    assert_eq!(store.list_runs(1).await.expect("list").len(), 1);
    assert!(matches!(
        store.get_run(RunId::new_at(5)).await,
        Err(coordinator::store::StoreError::RunNotFound(_))
    ));
}

async fn a_worker_is_preferred_for_packages_it_has_set_up(store: Arc<dyn Store>) {
    submit(&store, &spec(&["a", "b", "c"], 3), 0).await;
    let warm = vec!["c".to_string()];
    let got = claim(&store, &worker("w"), &profile("3.13", true), &warm, 3, 0).await;
    assert!(
        got.iter().all(|a| a.package.name == "c"),
        "{:?}",
        got.iter().map(|a| &a.package.name).collect::<Vec<_>>()
    );
    let cold = claim(&store, &worker("v"), &profile("3.13", true), &[], 2, 0).await;
    let names: Vec<&str> = cold.iter().map(|a| a.package.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["a", "b"],
        "a cold worker spreads over packages, first iterations first"
    );
}

async fn stop_on_first_pass_cancels_the_packages_remaining_jobs(store: Arc<dyn Store>) {
    let mut spec = spec(&["a"], 5);
    spec.options.stop_on_first_pass = true;
    let run_id = submit(&store, &spec, 0).await;
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 2, 0).await;
    let done = store
        .complete_job(
            jobs[0].job_id,
            jobs[0].lease_token,
            &outcome(1, IterationStatus::Pass),
            RETRY,
            5,
        )
        .await;
    let done = done.expect("complete");
    assert_eq!(done.revoked.len(), 1);
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.state, RunState::Finished);
    let result = store
        .package_results(run_id, &[], true)
        .await
        .expect("results")
        .remove(0);
    assert_eq!(result.category, Category::Compatible);
}

async fn a_batch_claim_gives_each_worker_its_share_and_warm_packages_to_who_set_them_up(store: Arc<dyn Store>) {
    submit(&store, &spec(&["a", "b", "c"], 3), 0).await;
    let ft = profile("3.13", true);
    let (warm_worker, cold_worker) = (worker("warm"), worker("cold"));
    let warm = vec!["c".to_string()];
    let wants = [
        ClaimWant {
            worker_id: &cold_worker,
            warm_packages: &[],
            max_jobs: 3,
        },
        ClaimWant {
            worker_id: &warm_worker,
            warm_packages: &warm,
            max_jobs: 2,
        },
    ];
    let batch = ClaimBatch {
        profile: &ft,
        wants: &wants,
        lease_duration_ms: LEASE_MS,
    };
    let mut got = store.claim_batch(batch, 0).await.expect("batch claim");
    assert_eq!(got.len(), 2, "one list per want");
    let (warm_jobs, cold_jobs) = (got.pop().expect("warm"), got.pop().expect("cold"));
    assert_eq!(warm_jobs.len(), 2);
    assert!(warm_jobs.iter().all(|a| a.package.name == "c"), "{warm_jobs:?}");
    assert_eq!(cold_jobs.len(), 3);
    let mut ids: Vec<_> = warm_jobs.iter().chain(&cold_jobs).map(|a| a.job_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "no job given twice");
    // Each lease is the worker's it was given to: only that worker's heartbeat extends it.
    let warm_held: Vec<_> = warm_jobs.iter().map(|a| (a.job_id, a.lease_token)).collect();
    assert_eq!(
        store
            .heartbeat(&cold_worker, &warm_held, LEASE_MS, 10)
            .await
            .expect("hb"),
        0
    );
    assert_eq!(
        store
            .heartbeat(&warm_worker, &warm_held, LEASE_MS, 10)
            .await
            .expect("hb"),
        2
    );
}

async fn concurrent_runs_share_the_fleet(store: Arc<dyn Store>) {
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let first = submit(&store, &spec(&names, 2), 1_000).await;
    let second = submit(&store, &spec(&names, 2), 2_000).await;
    let ft = profile("3.13", true);
    let got = claim(&store, &worker("w1"), &ft, &[], 10, 3_000).await;
    let from = |run: RunId, jobs: &[domain::Assignment]| jobs.iter().filter(|a| a.run_id == run).count();
    assert_eq!(
        (from(first, &got), from(second, &got)),
        (5, 5),
        "one claim takes an equal share of each run"
    );
    // The run with fewer running jobs comes first: after 3 of the second run's jobs finish,
    // the next small claims all go to it.
    for job in got.iter().filter(|a| a.run_id == second).take(3) {
        store
            .complete_job(
                job.job_id,
                job.lease_token,
                &outcome(job.iteration, IterationStatus::Pass),
                RETRY,
                3_100,
            )
            .await
            .expect("complete");
    }
    let mut next = Vec::new();
    for n in 0..3 {
        next.extend(claim(&store, &worker(&format!("v{n}")), &ft, &[], 1, 3_200).await);
    }
    assert_eq!(from(second, &next), 3, "{next:?}");
}

async fn a_batch_of_outcomes_records_each_job_once(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a", "b"], 1), 0).await;
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 2, 0).await;
    let pass = outcome(1, IterationStatus::Pass);
    let fail = outcome(1, IterationStatus::Fail);
    let reports = [
        Report {
            job_id: jobs[0].job_id,
            lease_token: jobs[0].lease_token,
            result: &pass,
        },
        Report {
            job_id: jobs[0].job_id,
            lease_token: jobs[0].lease_token,
            result: &fail,
        },
        Report {
            job_id: jobs[1].job_id,
            lease_token: LeaseToken::random(),
            result: &fail,
        },
        Report {
            job_id: jobs[1].job_id,
            lease_token: jobs[1].lease_token,
            result: &fail,
        },
        Report {
            job_id: domain::JobId(999_999),
            lease_token: LeaseToken::random(),
            result: &pass,
        },
    ];
    let acks: Vec<OutcomeAck> = store
        .complete_batch(&reports, RETRY, 10)
        .await
        .expect("batch")
        .into_iter()
        .map(|c| c.ack)
        .collect();
    assert_eq!(
        acks,
        vec![
            OutcomeAck::Recorded,
            OutcomeAck::Duplicate,
            OutcomeAck::Stale,
            OutcomeAck::Recorded,
            OutcomeAck::Stale
        ]
    );
    let results = store.package_results(run_id, &[], true).await.expect("results");
    let statuses: Vec<(String, IterationStatus)> = results
        .iter()
        .map(|r| (r.package.clone(), r.iterations[0].status))
        .collect();
    let (a, b) = (jobs[0].package.name.clone(), jobs[1].package.name.clone());
    let mut expected = vec![(a, IterationStatus::Pass), (b, IterationStatus::Fail)];
    expected.sort();
    let mut statuses = statuses;
    statuses.sort();
    assert_eq!(statuses, expected, "the first report of each job stands");
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.state, RunState::Finished);
}

/// Two transactions that record a package's last two outcomes at the same moment: whichever
/// commits second must see the first's and write the verdict, for every package.
async fn a_packages_last_two_outcomes_recorded_at_once_give_it_one_verdict(store: Arc<dyn Store>) {
    let names: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let run_id = submit(&store, &spec(&names, 2), 0).await;
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 80, 0).await;
    assert_eq!(jobs.len(), 80);
    let mut pairs: std::collections::BTreeMap<String, Vec<domain::Assignment>> = Default::default();
    for job in jobs {
        pairs.entry(job.package.name.clone()).or_default().push(job);
    }
    for (_, pair) in pairs {
        // Both of a package's outcomes start together, each in its own transaction; one
        // package at a time, so the two always overlap.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut racers = Vec::new();
        for job in pair {
            let (store, barrier) = (store.clone(), barrier.clone());
            racers.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .complete_job(
                        job.job_id,
                        job.lease_token,
                        &outcome(job.iteration, IterationStatus::Pass),
                        RETRY,
                        10,
                    )
                    .await
                    .expect("complete")
                    .ack
            }));
        }
        for racer in racers {
            assert_eq!(racer.await.expect("racer"), OutcomeAck::Recorded);
        }
    }
    let finished = store.package_results(run_id, &[], true).await.expect("results");
    assert_eq!(finished.len(), 40, "every package has its verdict");
    assert!(
        finished
            .iter()
            .all(|r| r.iterations.len() == 2 && r.category == Category::Compatible)
    );
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.state, RunState::Finished);
    assert_eq!(summary.packages_finished, 40);
    // The last outcomes of a run's last two packages, at once: the run finishes.
    for round in 0..10 {
        let run_id = submit(&store, &spec(&["a", "b"], 1), 100 + round).await;
        let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 2, 100).await;
        assert_eq!(jobs.len(), 2);
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let result = outcome(job.iteration, IterationStatus::Pass);
                    store
                        .complete_job(job.job_id, job.lease_token, &result, RETRY, 110)
                        .await
                        .expect("complete")
                })
            })
            .collect();
        for racer in racers {
            racer.await.expect("racer");
        }
        let (summary, _) = store.get_run(run_id).await.expect("get");
        assert_eq!(summary.state, RunState::Finished, "round {round}");
    }
}

async fn results_come_in_pages_and_verdicts_keep_no_output_the_jobs_still_have(store: Arc<dyn Store>) {
    let names: Vec<String> = (0..7).map(|n| format!("p{n}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let run_id = submit(&store, &spec(&name_refs, 1), 0).await;
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 10, 0).await;
    // Packages 1, 3 and 5 finish, each with its output.
    for job in jobs
        .iter()
        .filter(|j| ["p1", "p3", "p5"].contains(&j.package.name.as_str()))
    {
        let mut result = outcome(job.iteration, IterationStatus::Fail);
        if let JobResult::Iteration(outcome) = &mut result {
            outcome.stdout_tail = format!("out of {}", job.package.name);
            outcome.stderr_tail = format!("err of {}", job.package.name);
        }
        let completion = store.complete_job(job.job_id, job.lease_token, &result, RETRY, 5).await;
        assert_eq!(completion.expect("complete").ack, OutcomeAck::Recorded);
    }
    assert_eq!(store.finished_packages(run_id).await.expect("finished"), vec![1, 3, 5]);

    // Pages of three, each after the last index of the one before, cover the run in order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let query = PackageQuery {
            packages: Packages::All,
            finished_only: false,
            after,
            limit: 3,
        };
        let page = store.package_page(run_id, query).await.expect("page");
        assert!(page.len() <= 3);
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        seen.extend(page.into_iter().map(|(idx, result)| (idx, result.package)));
    }
    let expected: Vec<(u32, String)> = (0..7).map(|n| (n, format!("p{n}"))).collect();
    assert_eq!(seen, expected);

    // By index and by name, finished only; a finished verdict is stored without output.
    let at = store
        .package_page(
            run_id,
            PackageQuery {
                packages: Packages::At(&[0, 3, 5]),
                finished_only: true,
                after: None,
                limit: 10,
            },
        )
        .await
        .expect("by index");
    let at: Vec<(u32, &str, bool)> = at
        .iter()
        .map(|(idx, r)| (*idx, r.package.as_str(), r.iterations[0].stdout_tail.is_empty()))
        .collect();
    assert_eq!(at, vec![(3, "p3", true), (5, "p5", true)]);
    let named = ["p5".to_string(), "p6".to_string(), "nope".to_string()];
    let by_name = store
        .package_page(
            run_id,
            PackageQuery {
                packages: Packages::Named(&named),
                finished_only: false,
                after: None,
                limit: 10,
            },
        )
        .await
        .expect("by name");
    assert_eq!(by_name.iter().map(|(idx, _)| *idx).collect::<Vec<_>>(), vec![5, 6]);

    // The jobs keep the output, by index or by name.
    let outputs = store
        .iteration_outputs(run_id, Packages::At(&[3, 4]))
        .await
        .expect("outputs");
    assert_eq!(outputs.len(), 1, "package 4 has no outcome yet: {outputs:?}");
    assert_eq!(
        (outputs[0].package, outputs[0].mode, outputs[0].iteration),
        (3, Mode::Ft, 1)
    );
    assert_eq!(outputs[0].stdout_tail, "out of p3");
    assert_eq!(outputs[0].stderr_tail, "err of p3");
    let named = ["p1".to_string()];
    let outputs = store
        .iteration_outputs(run_id, Packages::Named(&named))
        .await
        .expect("outputs by name");
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].stdout_tail, "out of p1");

    let unknown = RunId::new_at(1);
    assert!(matches!(
        store.finished_packages(unknown).await,
        Err(coordinator::store::StoreError::RunNotFound(_))
    ));
}

/// A setup that failed for the infrastructure (here a read time-out from the index).
fn infrastructure_failure(worker: &str) -> JobResult {
    JobResult::SetupFailed(SetupFailure {
        stage: SetupStage::Install,
        message: format!("install command exited with status 1: network: Read timed out on {worker}"),
        log_tail: "WARNING: Retrying (Retry(total=0)) after connection broken by 'ReadTimeoutError'".into(),
        duration_ms: 5,
        infrastructure: true,
    })
}

async fn an_infrastructure_setup_failure_sends_the_job_to_another_worker_and_settles_nothing(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a"], 2), 0).await;
    let ft = profile("3.13", true);
    let (w1, w2) = (worker("w1"), worker("w2"));
    let first = claim(&store, &w1, &ft, &[], 1, 0).await.remove(0);
    assert_eq!(first.iteration, 1);
    let completion = store
        .complete_job(
            first.job_id,
            first.lease_token,
            &infrastructure_failure("w1"),
            RETRY,
            10,
        )
        .await
        .expect("complete");
    assert_eq!(
        (completion.ack, completion.requeued, completion.revoked.len()),
        (OutcomeAck::Recorded, true, 0),
        "acknowledged, sent back, nothing revoked"
    );
    let result = store
        .package_results(run_id, &[], false)
        .await
        .expect("results")
        .remove(0);
    assert!(!result.finished, "an infrastructure failure settles nothing");
    assert!(result.setup_failure.is_none(), "{result:?}");
    assert_ne!(result.category, Category::InstallFailure);

    // While its wait lasts, the worker it failed on gets the package's other job only, and
    // another worker gets it, on its second attempt.
    let mine = claim(&store, &w1, &ft, &[], 5, 20).await;
    assert_eq!(
        mine.iter().map(|a| a.iteration).collect::<Vec<_>>(),
        [2],
        "w1 is passed by for the job it failed"
    );
    let elsewhere = claim(&store, &w2, &ft, &[], 5, 30).await;
    assert_eq!(elsewhere.len(), 1);
    assert_eq!((elsewhere[0].job_id, elsewhere[0].attempt), (first.job_id, 2));
    let recorded = store
        .complete_job(
            elsewhere[0].job_id,
            elsewhere[0].lease_token,
            &outcome(1, IterationStatus::Pass),
            RETRY,
            40,
        )
        .await
        .expect("complete");
    assert_eq!((recorded.ack, recorded.requeued), (OutcomeAck::Recorded, false));

    // Once the wait is over, the worker it failed on may take it again.
    let second = &mine[0];
    store
        .complete_job(
            second.job_id,
            second.lease_token,
            &infrastructure_failure("w1"),
            RETRY,
            50,
        )
        .await
        .expect("complete");
    assert!(
        claim(&store, &w1, &ft, &[], 5, 50 + RETRY.elsewhere_ms - 1)
            .await
            .is_empty()
    );
    let again = claim(&store, &w1, &ft, &[], 5, 50 + RETRY.elsewhere_ms + 1).await;
    assert_eq!(again.len(), 1, "no other worker asked: w1 gets it after the wait");
    assert_eq!((again[0].job_id, again[0].attempt), (second.job_id, 2));
    store
        .complete_job(
            again[0].job_id,
            again[0].lease_token,
            &outcome(2, IterationStatus::Pass),
            RETRY,
            2_000,
        )
        .await
        .expect("complete");
    let result = store
        .package_results(run_id, &[], false)
        .await
        .expect("results")
        .remove(0);
    assert!(result.finished);
    assert_eq!(result.category, Category::Compatible, "{result:?}");
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.state, RunState::Finished);
}

async fn an_infrastructure_failure_on_every_attempt_is_an_infra_error_naming_each_attempt(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["offline", "fine"], 2), 0).await;
    let ft = profile("3.13", true);
    let warm = vec!["offline".to_string()];
    let mut now = 0;
    let mut last = None;
    for (attempt, name) in [(1, "w1"), (2, "w2"), (3, "w3")] {
        now += 10;
        let job = claim(&store, &worker(name), &ft, &warm, 1, now).await.remove(0);
        assert_eq!(
            (job.package.name.as_str(), job.iteration, job.attempt),
            ("offline", 1, attempt)
        );
        let completion = store
            .complete_job(
                job.job_id,
                job.lease_token,
                &infrastructure_failure(name),
                RETRY,
                now + 1,
            )
            .await
            .expect("complete");
        assert_eq!(completion.ack, OutcomeAck::Recorded);
        assert_eq!(completion.requeued, attempt < 3, "attempt {attempt}");
        last = Some(completion);
    }
    let last = last.expect("three attempts");
    assert!(
        last.revoked.is_empty(),
        "the package's other job was pending, not leased"
    );
    let rest = claim(&store, &worker("w4"), &ft, &[], 10, now + 10).await;
    assert!(
        rest.iter().all(|a| a.package.name == "fine"),
        "the last attempt settles the package: its other job is cancelled"
    );
    let result = store
        .package_results(run_id, &["offline".to_string()], true)
        .await
        .expect("results")
        .remove(0);
    assert!(result.finished);
    assert_eq!(
        result.category,
        Category::InfraError,
        "never install_failure: {result:?}"
    );
    assert!(result.setup_failure.as_ref().is_some_and(|f| f.infrastructure));
    let said = result.evidence.join("\n");
    assert!(said.contains("for the infrastructure, not the package"), "{said}");
    assert!(
        said.contains(
            "ft iteration 1 failed for the infrastructure on all 3 attempts: \
             attempt 1 on w1: install failed for the infrastructure: install command exited with status 1: \
             network: Read timed out on w1; attempt 2 on w2: "
        ),
        "{said}"
    );
    assert!(
        said.contains("attempt 3 on w3: install failed for the infrastructure"),
        "{said}"
    );
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.categories.get(&Category::InfraError), Some(&1));
}

async fn a_package_failure_after_an_infrastructure_failure_is_the_packages_verdict(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["broken"], 1), 0).await;
    let ft = profile("3.13", true);
    let first = claim(&store, &worker("w1"), &ft, &[], 1, 0).await.remove(0);
    store
        .complete_job(
            first.job_id,
            first.lease_token,
            &infrastructure_failure("w1"),
            RETRY,
            10,
        )
        .await
        .expect("complete");
    let second = claim(&store, &worker("w2"), &ft, &[], 1, 20).await.remove(0);
    let failure = JobResult::SetupFailed(SetupFailure {
        stage: SetupStage::Install,
        message: "install command exited with status 1: error: no matching distribution".into(),
        log_tail: String::new(),
        duration_ms: 5,
        infrastructure: false,
    });
    let completion = store
        .complete_job(second.job_id, second.lease_token, &failure, RETRY, 30)
        .await
        .expect("complete");
    assert_eq!((completion.ack, completion.requeued), (OutcomeAck::Recorded, false));
    let result = store
        .package_results(run_id, &[], true)
        .await
        .expect("results")
        .remove(0);
    assert_eq!(result.category, Category::InstallFailure, "{result:?}");
}

async fn a_job_lost_after_an_infrastructure_failure_says_so(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a"], 1), 0).await;
    let ft = profile("3.13", true);
    let first = claim(&store, &worker("w1"), &ft, &[], 1, 0).await.remove(0);
    store
        .complete_job(
            first.job_id,
            first.lease_token,
            &infrastructure_failure("w1"),
            RETRY,
            10,
        )
        .await
        .expect("complete");
    for (name, now) in [("w2", 20), ("w3", 20 + 2 * LEASE_MS)] {
        let job = claim(&store, &worker(name), &ft, &[], 1, now).await.remove(0);
        store
            .abandon_jobs(&[(job.job_id, job.lease_token)], RETRY.max_attempts, now + 1)
            .await
            .expect("abandon");
    }
    let result = store
        .package_results(run_id, &[], true)
        .await
        .expect("results")
        .remove(0);
    assert_eq!(result.category, Category::Unknown);
    assert_eq!(
        result
            .evidence
            .iter()
            .filter(|e| e.contains("lost"))
            .collect::<Vec<_>>(),
        [
            "ft iteration 1 lost after 3 attempts: attempt 1 on w1: install failed for the infrastructure: \
             install command exited with status 1: network: Read timed out on w1; \
             attempt 2 on w2: its worker's session ended; attempt 3 on w3: its worker's session ended"
        ],
        "{:?}",
        result.evidence
    );
}

async fn an_iterations_job_names_the_worker_and_attempt_that_ran_it(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a", "b"], 2), 0).await;
    let ft = profile("3.13", true);
    let (w1, w2) = (worker("w1"), worker("w2"));
    let first = claim(&store, &w1, &ft, &[], 1, 0).await.remove(0);
    assert_eq!((first.package.name.as_str(), first.iteration), ("a", 1));
    let job = |package: &'static str, mode: Mode, iteration: u32| {
        let store = store.clone();
        async move {
            store
                .iteration_job(run_id, package, mode, iteration)
                .await
                .expect("iteration job")
        }
    };
    let leased = job("a", Mode::Ft, 1).await.expect("a's first iteration");
    assert_eq!(
        (
            leased.job_id,
            leased.state.as_str(),
            leased.worker_id.as_ref(),
            leased.attempt
        ),
        (first.job_id, "leased", Some(&w1), 1)
    );

    // Its lease expires: back in the queue, no worker holds it; then w2 runs it.
    store.reap_expired(3, LEASE_MS + 1).await.expect("reap");
    let requeued = job("a", Mode::Ft, 1).await.expect("a's first iteration");
    assert_eq!((requeued.state.as_str(), requeued.worker_id), ("pending", None));
    let second = claim(&store, &w2, &ft, &[], 1, LEASE_MS + 2).await.remove(0);
    assert_eq!(second.job_id, first.job_id);
    store
        .complete_job(
            second.job_id,
            second.lease_token,
            &outcome(1, IterationStatus::Fail),
            RETRY,
            LEASE_MS + 3,
        )
        .await
        .expect("record");
    let done = job("a", Mode::Ft, 1).await.expect("a's first iteration");
    assert_eq!(
        (done.state.as_str(), done.worker_id.as_ref(), done.attempt),
        ("done", Some(&w2), 2),
        "the logs are those of the attempt that was recorded, on its worker"
    );

    let never_ran = job("b", Mode::Ft, 2).await.expect("b's second iteration");
    assert_eq!((never_ran.state.as_str(), never_ran.worker_id), ("pending", None));
    assert_eq!(job("c", Mode::Ft, 1).await, None, "no such package");
    assert_eq!(job("a", Mode::Ft, 3).await, None, "no such iteration");
    assert_eq!(job("a", Mode::Gil, 1).await, None, "no such mode");

    // Archived, the run's jobs still name who ran them: the logs may be on that worker yet.
    store.cancel_run(run_id, LEASE_MS + 4).await.expect("cancel");
    store.archive_run(run_id, LEASE_MS + 5).await.expect("archive");
    let archived = job("a", Mode::Ft, 1).await.expect("a's first iteration, archived");
    assert_eq!((archived.worker_id.as_ref(), archived.attempt), (Some(&w2), 2));
    assert!(matches!(
        store.iteration_job(RunId::new_at(1), "a", Mode::Ft, 1).await,
        Err(coordinator::store::StoreError::RunNotFound(_))
    ));
}
