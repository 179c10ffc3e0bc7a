//! Conformance cases of retention: archiving a finished run's jobs out of the table dispatch
//! reads, and purging a run.

use std::sync::Arc;

use coordinator::store::{IterationOutput, PackageQuery, Packages, Store, StoreError};
use domain::{IterationStatus, JobResult, OutcomeAck, PackageResult, RunId, RunState, RunSummary};

use super::{RETRY, claim, outcome, profile, spec, submit, worker};

/// Everything a reader of a finished run gets from the store.
#[derive(Debug, PartialEq)]
struct Reads {
    summary: RunSummary,
    results: Vec<PackageResult>,
    page: Vec<(u32, PackageResult)>,
    finished: Vec<u32>,
    outputs: Vec<IterationOutput>,
    named_outputs: Vec<IterationOutput>,
}

async fn reads(store: &Arc<dyn Store>, run_id: RunId) -> Reads {
    let named = ["b".to_string()];
    Reads {
        summary: store.get_run(run_id).await.expect("get").0,
        results: store.package_results(run_id, &[], false).await.expect("results"),
        page: store
            .package_page(
                run_id,
                PackageQuery {
                    packages: Packages::At(&[0, 2]),
                    finished_only: true,
                    after: None,
                    limit: 10,
                },
            )
            .await
            .expect("page"),
        finished: store.finished_packages(run_id).await.expect("finished"),
        outputs: store.iteration_outputs(run_id, Packages::All).await.expect("outputs"),
        named_outputs: store
            .iteration_outputs(run_id, Packages::Named(&named))
            .await
            .expect("outputs by name"),
    }
}

/// The package's own setup failure, which settles it.
fn setup_failure() -> JobResult {
    JobResult::SetupFailed(domain::SetupFailure {
        stage: domain::SetupStage::Install,
        message: "no such distribution".into(),
        log_tail: String::new(),
        duration_ms: 1,
        infrastructure: false,
    })
}

/// A run of packages a, b and c, two iterations each, run to its end at `now_ms`: a passes,
/// b fails its second iteration, c's setup fails; every iteration prints its name.
async fn finished_run(store: &Arc<dyn Store>, now_ms: i64) -> RunId {
    let run_id = submit(store, &spec(&["a", "b", "c"], 2), now_ms).await;
    let jobs = claim(store, &worker("w"), &profile("3.13", true), &[], 10, now_ms).await;
    assert_eq!(jobs.len(), 6);
    for job in &jobs {
        let mut result = outcome(
            job.iteration,
            if job.package.name == "b" && job.iteration == 2 {
                IterationStatus::Fail
            } else {
                IterationStatus::Pass
            },
        );
        if job.package.name == "c" {
            result = setup_failure();
        } else if let JobResult::Iteration(outcome) = &mut result {
            outcome.stdout_tail = format!("out of {} {}", job.package.name, job.iteration);
            outcome.stderr_tail = format!("err of {} {}", job.package.name, job.iteration);
        }
        // c's first setup failure settles it and cancels its other job.
        let completion = store
            .complete_job(job.job_id, job.lease_token, &result, RETRY, now_ms)
            .await
            .expect("complete");
        assert_ne!(completion.ack, OutcomeAck::Duplicate);
    }
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(summary.state, RunState::Finished);
    run_id
}

pub(super) async fn archiving_a_finished_or_cancelled_run_keeps_every_read_the_same(store: Arc<dyn Store>) {
    let run_id = finished_run(&store, 1_000).await;
    let before = reads(&store, run_id).await;
    assert_eq!(before.outputs.len(), 4, "a's and b's iterations: {:?}", before.outputs);
    assert_eq!(before.named_outputs.len(), 2);
    assert_eq!(before.summary.archived_at_ms, None);

    let archived = store.archive_run(run_id, 2_000).await.expect("archive");
    assert_eq!(archived.archived_at_ms, Some(2_000));
    let after = reads(&store, run_id).await;
    let expected = Reads {
        summary: RunSummary {
            archived_at_ms: Some(2_000),
            ..before.summary.clone()
        },
        ..before
    };
    assert_eq!(after, expected);
    assert_eq!(after.summary.jobs_total, 6);
    assert_eq!(after.summary.jobs_settled, 6);
    let listed = store.list_runs(10).await.expect("list");
    assert_eq!(listed, vec![after.summary.clone()]);
    // Archiving again changes nothing.
    let again = store.archive_run(run_id, 3_000).await.expect("archive twice");
    assert_eq!(again, after.summary);

    // A cancelled run, with a job still leased when it was cancelled, reads the same too.
    let cancelled = submit(&store, &spec(&["a", "b"], 2), 4_000).await;
    let job = claim(&store, &worker("w"), &profile("3.13", true), &[], 1, 4_000)
        .await
        .remove(0);
    store
        .complete_job(
            job.job_id,
            job.lease_token,
            &outcome(job.iteration, IterationStatus::Pass),
            RETRY,
            4_001,
        )
        .await
        .expect("complete");
    store.cancel_run(cancelled, 4_002).await.expect("cancel");
    let before = reads(&store, cancelled).await;
    assert_eq!(before.summary.state, RunState::Cancelled);
    store.archive_run(cancelled, 5_000).await.expect("archive cancelled");
    let after = reads(&store, cancelled).await;
    assert_eq!(
        after,
        Reads {
            summary: RunSummary {
                archived_at_ms: Some(5_000),
                ..before.summary.clone()
            },
            ..before
        }
    );
}

pub(super) async fn claims_heartbeats_reaps_and_outcomes_never_touch_an_archived_run(store: Arc<dyn Store>) {
    // A run whose package c settled on its setup failure while its second job was leased:
    // the run finished, that lease is still held.
    let run_id = submit(&store, &spec(&["c"], 2), 0).await;
    let jobs = claim(&store, &worker("w"), &profile("3.13", true), &[], 2, 0).await;
    assert_eq!(jobs.len(), 2);
    let failure = setup_failure();
    store
        .complete_job(jobs[0].job_id, jobs[0].lease_token, &failure, RETRY, 1)
        .await
        .expect("complete");
    assert_eq!(store.get_run(run_id).await.expect("get").0.state, RunState::Finished);
    // Before archiving, a second report of the first job is a duplicate.
    let duplicate = store
        .complete_job(jobs[0].job_id, jobs[0].lease_token, &failure, RETRY, 2)
        .await
        .expect("duplicate");
    assert_eq!(duplicate.ack, OutcomeAck::Duplicate);
    let summary = store.archive_run(run_id, 3).await.expect("archive");

    // The jobs are gone from the table the session reads: a report of either is stale, a
    // heartbeat extends nothing, a reap finds nothing, and a claim gets another run's jobs.
    for job in &jobs {
        let late = store
            .complete_job(
                job.job_id,
                job.lease_token,
                &outcome(job.iteration, IterationStatus::Pass),
                RETRY,
                4,
            )
            .await
            .expect("late report");
        assert_eq!(late.ack, OutcomeAck::Stale, "{job:?}");
        assert_eq!(late.run_id, None);
    }
    let held: Vec<_> = jobs.iter().map(|j| (j.job_id, j.lease_token)).collect();
    assert_eq!(
        store.heartbeat(&worker("w"), &held, 1_000, 5).await.expect("heartbeat"),
        0
    );
    let reaped = store.reap_expired(RETRY.max_attempts, 1_000_000).await.expect("reap");
    assert_eq!(reaped, Default::default());
    let next = submit(&store, &spec(&["d"], 3), 6).await;
    let claimed = claim(&store, &worker("w"), &profile("3.13", true), &[], 10, 7).await;
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|job| job.run_id == next && job.package.name == "d"));
    // A new job never gets an archived one's id, so an archived job's late report never
    // names it.
    assert!(
        claimed
            .iter()
            .all(|new| jobs.iter().all(|old| old.job_id != new.job_id)),
        "{claimed:?} reuses an id of {jobs:?}"
    );
    // None of that changed the archived run.
    assert_eq!(store.get_run(run_id).await.expect("get").0, summary);
}

pub(super) async fn runs_to_archive_are_those_finished_before_the_cutoff(store: Arc<dyn Store>) {
    let finished = finished_run(&store, 1_000).await;
    let cancelled = submit(&store, &spec(&["x"], 1), 2_000).await;
    store.cancel_run(cancelled, 3_000).await.expect("cancel");
    let _running = submit(&store, &spec(&["y"], 1), 4_000).await;
    assert_eq!(
        store.runs_to_archive(999, 10).await.expect("to archive"),
        Vec::<RunId>::new()
    );
    assert_eq!(
        store.runs_to_archive(1_000, 10).await.expect("to archive"),
        vec![finished]
    );
    assert_eq!(
        store.runs_to_archive(i64::MAX, 10).await.expect("to archive"),
        vec![finished, cancelled]
    );
    assert_eq!(
        store.runs_to_archive(i64::MAX, 1).await.expect("to archive"),
        vec![finished]
    );
    store.archive_run(finished, 5_000).await.expect("archive");
    assert_eq!(
        store.runs_to_archive(i64::MAX, 10).await.expect("to archive"),
        vec![cancelled]
    );
}

pub(super) async fn a_purged_run_is_gone_with_its_packages_and_jobs(store: Arc<dyn Store>) {
    let archived = finished_run(&store, 1_000).await;
    store.archive_run(archived, 1_500).await.expect("archive");
    let kept = finished_run(&store, 2_000).await;
    let not_archived = finished_run(&store, 3_000).await;
    let kept_before = reads(&store, kept).await;

    assert_eq!(store.purge_run(archived).await.expect("purge archived"), 6);
    assert_eq!(store.purge_run(not_archived).await.expect("purge"), 6);
    for run_id in [archived, not_archived] {
        assert!(matches!(store.get_run(run_id).await, Err(StoreError::RunNotFound(id)) if id == run_id));
        assert!(matches!(
            store.package_results(run_id, &[], false).await,
            Err(StoreError::RunNotFound(_))
        ));
        assert!(matches!(
            store.finished_packages(run_id).await,
            Err(StoreError::RunNotFound(_))
        ));
        assert_eq!(
            store.iteration_outputs(run_id, Packages::All).await.expect("outputs"),
            Vec::new()
        );
        assert!(matches!(store.purge_run(run_id).await, Err(StoreError::RunNotFound(_))));
        assert!(matches!(
            store.archive_run(run_id, 4_000).await,
            Err(StoreError::RunNotFound(_))
        ));
    }
    let listed: Vec<RunId> = store
        .list_runs(10)
        .await
        .expect("list")
        .iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(listed, vec![kept]);
    assert_eq!(reads(&store, kept).await, kept_before);
}

pub(super) async fn a_run_still_going_is_neither_archived_nor_purged(store: Arc<dyn Store>) {
    let run_id = submit(&store, &spec(&["a"], 2), 0).await;
    for state in [RunState::Queued, RunState::Running] {
        if state == RunState::Running {
            claim(&store, &worker("w"), &profile("3.13", true), &[], 1, 1).await;
        }
        let archive = store.archive_run(run_id, 2).await;
        assert!(
            matches!(archive, Err(StoreError::RunNotFinished(id, s)) if id == run_id && s == state),
            "{archive:?}"
        );
        let purge = store.purge_run(run_id).await;
        assert!(
            matches!(purge, Err(StoreError::RunNotFinished(id, s)) if id == run_id && s == state),
            "{purge:?}"
        );
        let message = store.purge_run(run_id).await.expect_err("refused").to_string();
        assert!(message.contains(&format!("run {run_id} is still {state}")), "{message}");
    }
    // Refused, nothing moved: the run's other job is still there to claim.
    let (summary, _) = store.get_run(run_id).await.expect("get");
    assert_eq!(
        (summary.jobs_total, summary.jobs_running, summary.archived_at_ms),
        (2, 1, None)
    );
    assert_eq!(
        claim(&store, &worker("w2"), &profile("3.13", true), &[], 5, 3)
            .await
            .len(),
        1
    );
    assert!(matches!(
        store.archive_run(RunId::new_at(9), 4).await,
        Err(StoreError::RunNotFound(_))
    ));
    assert!(matches!(
        store.purge_run(RunId::new_at(9)).await,
        Err(StoreError::RunNotFound(_))
    ));
}
