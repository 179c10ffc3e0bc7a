//! A worker's disk as an operator sees it: a worker short of free space takes no job and says
//! why in `ftsurvey status`, while another one runs the survey.

use std::process::Output;
use std::time::{Duration, Instant};

use tests::fixture_registry;

use crate::cli::{Survey, assert_success, free_threaded_python, ftsurvey};
use crate::fleet::{Process, serve_on_sqlite, spawn};

/// `ftsurvey status` against `url`, its output as text.
fn status(url: &str) -> String {
    let output: Output = ftsurvey()
        .args(["status", "--coordinator", url])
        .output()
        .expect("status");
    assert_success(&output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `ftsurvey status` until `done` accepts it; fails after a minute with the last seen.
fn status_until(url: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = status(url);
        if done(&text) {
            return text;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what}:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The status table's row of worker `id`.
fn worker_row<'a>(text: &'a str, id: &str) -> Option<&'a str> {
    text.lines()
        .find(|line| line.trim_start_matches('|').split_whitespace().next() == Some(id))
}

/// The jobs a worker's row says it runs: the second number after its interpreter, e.g.
/// `CPython 3.13.5 (cp313t, free-threaded)`.
fn busy(row: &str) -> &str {
    let after_interpreter = row.split(')').nth(1).unwrap_or_default();
    after_interpreter.split_whitespace().nth(1).unwrap_or_default()
}

#[test]
fn a_worker_under_min_free_gb_takes_no_job_and_says_why_while_another_runs_the_survey() {
    let survey = Survey::new();
    let dir = survey.dir.path();
    let (_coordinator, url) = serve_on_sqlite(dir, &[]);
    let worker = |id: &str, min_free_gb: &str| -> Process {
        spawn(
            ftsurvey()
                .env("FTSURVEY_LOG", "info")
                .arg("worker")
                .args(["--coordinator", &url, "--worker-id", id])
                .args(["--min-free-gb", min_free_gb])
                .arg("--target-python")
                .arg(free_threaded_python())
                .arg("--work-dir")
                .arg(dir.join(id)),
            &dir.join(format!("{id}.log")),
        )
    };

    // No disk has a million GiB free: this worker refuses for real.
    let _full = worker("full", "1000000");
    let work_dir = dir.join("full");
    let text = status_until(&url, "the short worker never said why it refuses", |text| {
        text.contains("full takes no new jobs: free disk")
    });
    let reason = text
        .lines()
        .find(|line| line.starts_with("full takes no new jobs"))
        .expect("the reason");
    assert!(
        reason.contains(&format!("in {} is under --min-free-gb 1000000", work_dir.display())),
        "{reason}"
    );
    let row = worker_row(&text, "full").expect("the worker's row");
    assert!(row.contains("no (see below)"), "{text}");

    let mut run = spawn(
        ftsurvey()
            .arg("run")
            .args(["--coordinator", &url, "--target-python", "3.13t"])
            .arg("--registry-dir")
            .arg(fixture_registry())
            .arg("--results-dir")
            .arg(survey.results_root())
            .args(["--packages", "ftfix-pass", "--iterations", "2", "--timeout", "120"]),
        &dir.join("run.log"),
    );
    status_until(&url, "the run was never queued", |text| {
        text.contains("1 runs queued or running")
    });
    // Absence takes a wait: a few of the worker's heartbeats, in which a job would be handed out.
    std::thread::sleep(Duration::from_secs(3));
    let text = status(&url);
    let row = worker_row(&text, "full").expect("the worker's row");
    assert_eq!(busy(row), "0", "the short worker got a job:\n{text}");

    // A worker with space takes the run and finishes it.
    let _ok = worker("ok", "0");
    let ended = run.0.wait().expect("wait for the run");
    let run_log = std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();
    assert!(ended.success(), "the run failed:\n{run_log}");
    let records = survey.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let ran_on: Vec<&str> = records[0].iterations.iter().map(|i| i.worker_id.as_str()).collect();
    assert_eq!(ran_on, ["ok", "ok"]);
    let text = status(&url);
    assert!(worker_row(&text, "ok").is_some_and(|row| row.contains("yes")), "{text}");
    assert!(text.contains("full takes no new jobs"), "{text}");

    let log = std::fs::read_to_string(dir.join("full.log")).expect("the worker's log");
    assert_eq!(
        log.matches("taking no new jobs").count(),
        1,
        "the refusal is logged once:\n{log}"
    );
}
