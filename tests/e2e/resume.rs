//! Runs that outlive their client: a fleet client's Ctrl-C detaches and `run --resume`
//! completes the same results folder; an embedded run killed hard resumes from its work dir
//! and is never taken up silently by another run; `runs rerun --only failed` submits a run
//! linked to the first, which `compare` knows.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use domain::results::{PackageRecord, RunMeta};
use proto::v1;
use proto::v1::worker_message::Msg as In;
use tests::{RawSession, TestCluster, fixture_registry, ft_profile};

use crate::cli::{Survey, assert_success, ftsurvey, machine_python};
use crate::protocol::{expect_ack, expect_assignment, pass};

/// A coordinator whose leases outlast the test: the test's own session is the worker, and
/// heartbeats nothing.
async fn cluster() -> TestCluster {
    TestCluster::start_with(coordinator::Settings {
        lease_duration: Duration::from_secs(120),
        ..coordinator::Settings::default()
    })
    .await
}

/// Runs the next job the session is given to an outcome: a pass, or a failure for `failing`.
async fn run_one(session: &mut RawSession, failing: &[&str]) -> String {
    session.send(In::Credit(v1::Credit { count: 1 })).await;
    let assignment = expect_assignment(session).await;
    let name = assignment.package.as_ref().expect("package").name.clone();
    let mut result = pass(assignment.iteration);
    if failing.contains(&name.as_str())
        && let Some(v1::job_result::Kind::Iteration(outcome)) = result.kind.as_mut()
    {
        outcome.status = v1::IterationStatus::Fail as i32;
        outcome.exit_code = Some(1);
    }
    session
        .send(In::Outcome(v1::JobOutcome {
            job_id: assignment.job_id,
            lease_token: assignment.lease_token.clone(),
            result: Some(result),
        }))
        .await;
    assert_eq!(expect_ack(session, assignment.job_id).await, v1::AckStatus::Recorded);
    name
}

/// The lines of a results folder.
fn records(folder: &Path) -> Vec<PackageRecord> {
    let text = std::fs::read_to_string(folder.join("ft_results.jsonl")).expect("ft_results.jsonl");
    text.lines()
        .map(|l| PackageRecord::parse_line(l).expect("a valid line"))
        .collect()
}

fn meta(folder: &Path) -> RunMeta {
    serde_json::from_slice(&std::fs::read(folder.join("ft_meta.json")).expect("ft_meta.json")).expect("meta")
}

fn only_folder(root: &Path) -> PathBuf {
    let folders: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("results dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders[0].clone()
}

/// Waits (up to `limit`) until `done` holds, checking that `child` still runs.
async fn wait_until(child: &mut Child, limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "ftsurvey exited before {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait")
}

fn interrupt(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_client_detaches_on_ctrl_c_and_resume_completes_its_folder() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("results");
    let mut client = ftsurvey()
        .args(["run", "--target-python", "3.13t", "--iterations", "1"])
        .args(["--packages", "ftfix-pass,ftfix-fail,ftfix-slow"])
        .arg("--registry-dir")
        .arg(fixture_registry())
        .arg("--results-dir")
        .arg(&results)
        .args(["--coordinator", &cluster.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    let first = run_one(&mut session, &[]).await;
    wait_until(
        &mut client,
        Duration::from_secs(30),
        "the first package is written",
        || {
            std::fs::read_dir(&results)
                .ok()
                .and_then(|mut e| e.next())
                .is_some_and(|e| {
                    std::fs::read_to_string(e.expect("entry").path().join("ft_results.jsonl"))
                        .is_ok_and(|text| text.contains(&first))
                })
        },
    )
    .await;
    interrupt(&client);
    let detached = finish(client).await;
    let stderr = String::from_utf8_lossy(&detached.stderr);
    assert_eq!(detached.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("detached from run") && stderr.contains("--resume"),
        "{stderr}"
    );
    let folder = only_folder(&results);
    let run_id = meta(&folder).run_id;
    assert!(!meta(&folder).interrupted && meta(&folder).finished_at.is_none());
    assert_eq!(records(&folder).len(), 1);

    // The run went on without its client.
    let summary = cluster
        .survey()
        .await
        .get_run(v1::GetRunRequest { run_id: run_id.clone() })
        .await
        .expect("run")
        .into_inner()
        .run
        .expect("summary");
    assert_eq!(summary.state, v1::RunState::Running as i32, "a detach cancels nothing");
    let second = run_one(&mut session, &[]).await;

    let resumed = ftsurvey()
        .args(["run", "--resume", &run_id, "--coordinator", &cluster.url])
        .arg("--results-dir")
        .arg(&results)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let third = run_one(&mut session, &[]).await;
    let output = finish(resumed).await;
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("resuming run") && stderr.contains("1 packages already in"),
        "{stderr}"
    );
    assert_eq!(only_folder(&results), folder, "the same folder is completed");
    let mut names: Vec<String> = records(&folder).into_iter().map(|r| r.package).collect();
    names.sort();
    let mut expected = vec![first, second, third];
    expected.sort();
    assert_eq!(names, expected, "each package once");
    assert!(meta(&folder).finished_at.is_some());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_rerun_only_failed_submits_the_failed_packages_and_compare_knows_the_link() {
    let cluster = cluster().await;
    let spec = crate::protocol::spec(&["good", "bad", "also-good"], 1);
    let first = crate::protocol::submit(&cluster, &spec).await;
    let mut session = cluster.session().await;
    session.hello("w1", &ft_profile(), 1).await;
    for _ in 0..3 {
        run_one(&mut session, &["bad"]).await;
    }
    let rerun = ftsurvey()
        .args([
            "runs",
            "rerun",
            &first,
            "--only",
            "failed",
            "--coordinator",
            &cluster.url,
        ])
        .output()
        .expect("rerun");
    assert_success(&rerun);
    let second = String::from_utf8_lossy(&rerun.stdout).trim().to_string();
    let got = cluster
        .survey()
        .await
        .get_run(v1::GetRunRequest { run_id: second.clone() })
        .await
        .expect("the new run")
        .into_inner();
    let spec = got.spec.expect("spec");
    assert_eq!(
        spec.packages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["bad"]
    );
    assert_eq!(spec.rerun_of.as_deref(), Some(first.as_str()));
    assert_eq!(run_one(&mut session, &[]).await, "bad", "it passes the second time");

    let compare = ftsurvey()
        .args(["compare", &first, &second, "--coordinator", &cluster.url])
        .output()
        .expect("compare");
    assert_success(&compare);
    let text = String::from_utf8_lossy(&compare.stdout);
    assert!(
        text.contains("B re-ran 1 of A's packages") && text.contains("A's 2 other packages were not re-run"),
        "{text}"
    );
    assert!(!text.contains("Only in A"), "{text}");

    let nothing = ftsurvey()
        .args([
            "runs",
            "rerun",
            &first,
            "--only",
            "unknown,nope",
            "--coordinator",
            &cluster.url,
        ])
        .output()
        .expect("rerun");
    let stderr = String::from_utf8_lossy(&nothing.stderr);
    assert!(!nothing.status.success() && stderr.contains("--only nope"), "{stderr}");
    cluster.stop().await;
}

#[test]
fn an_embedded_run_killed_hard_is_resumed_and_no_new_run_takes_its_jobs_silently() {
    let survey = Survey::new();
    let python = machine_python();
    let mut child = survey
        .command(&python)
        .args(["--allow-gil-build", "--packages", "ftfix-pass,ftfix-timeout"])
        .args(["--iterations", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(240);
    while !std::fs::read_dir(survey.results_root())
        .ok()
        .and_then(|mut e| e.next())
        .is_some_and(|e| {
            std::fs::read_to_string(e.expect("entry").path().join("ft_results.jsonl"))
                .is_ok_and(|text| text.contains("ftfix-pass"))
        })
    {
        assert!(Instant::now() < deadline, "ftfix-pass was not written within 240 s");
        assert!(child.try_wait().expect("try_wait").is_none(), "ftsurvey exited early");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let folder = survey.folder();
    let run_id = meta(&folder).run_id;

    // A new run in the same work dir would take the killed run's jobs: it refuses, and says
    // what to do.
    let refused = survey
        .command(&python)
        .args(["--allow-gil-build", "--packages", "ftfix-pass", "--iterations", "1"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("holds run {run_id}"))
            && stderr.contains("--resume")
            && stderr.contains("--discard-unfinished"),
        "{stderr}"
    );
    assert_eq!(survey.folder(), folder, "the refused run made no folder");

    // Resumed from its work dir, on the interpreter its folder names.
    let resumed = crate::cli::ftsurvey()
        .args(["run", "--resume", &run_id, "--allow-gil-build"])
        .arg("--work-dir")
        .arg(survey.dir.path().join("work"))
        .arg("--results-dir")
        .arg(survey.results_root())
        .output()
        .expect("resume");
    assert_success(&resumed);
    assert_eq!(survey.folder(), folder);
    let names: Vec<String> = records(&folder).into_iter().map(|r| r.package).collect();
    assert_eq!(names, ["ftfix-pass", "ftfix-timeout"]);

    // Discarding is said, per run.
    let again = survey
        .command(&python)
        .args([
            "--allow-gil-build",
            "--packages",
            "ftfix-pass",
            "--iterations",
            "1",
            "--discard-unfinished",
        ])
        .output()
        .expect("run");
    assert_success(&again);
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("cancelled run"),
        "nothing was left unfinished"
    );
}
