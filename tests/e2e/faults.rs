//! Faults a fleet must survive, each ending with every (package, iteration) recorded exactly
//! once and the run finished: a worker killed with SIGKILL mid-iteration, the coordinator
//! stopped and restarted, PostgreSQL stopped and restarted.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sqlx::{PgPool, Row};
use tests::fixture_registry;
use tests::postgres::TestPostgres;

use crate::cli::{Survey, assert_success, free_threaded_python, ftsurvey};
use crate::fleet::{Process, free_port, spawn, wait_for_port};

const ITERATIONS: u32 = 6;

/// A PostgreSQL coordinator process and two worker processes, all restartable.
struct Fleet {
    postgres: TestPostgres,
    survey: Survey,
    port: u16,
    coordinator: Option<Process>,
    workers: Vec<(String, Option<Process>)>,
}

impl Fleet {
    fn start() -> Fleet {
        let mut fleet = Fleet {
            postgres: TestPostgres::start().expect("start a throwaway PostgreSQL"),
            survey: Survey::new(),
            port: free_port(),
            coordinator: None,
            workers: vec![("w1".to_string(), None), ("w2".to_string(), None)],
        };
        fleet.start_coordinator();
        for index in 0..fleet.workers.len() {
            fleet.start_worker(index);
        }
        fleet
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.survey.dir.path().join(format!("{name}.log"))
    }

    fn start_coordinator(&mut self) {
        let log = self.log(&format!("serve-{}", Instant::now().elapsed().as_nanos()));
        self.coordinator = Some(spawn(
            ftsurvey().env("FTSURVEY_LOG", "info").arg("serve").args([
                "--database-url",
                &self.postgres.url(),
                "--listen",
                &format!("127.0.0.1:{}", self.port),
            ]),
            &log,
        ));
        wait_for_port(self.port, &log);
    }

    /// SIGTERM, as an operator's restart would, and waits for it to exit.
    fn stop_coordinator(&mut self) {
        if let Some(mut process) = self.coordinator.take() {
            let pid = nix::unistd::Pid::from_raw(process.0.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
            let _ = process.0.wait();
        }
    }

    fn start_worker(&mut self, index: usize) {
        let id = self.workers[index].0.clone();
        let process = spawn(
            ftsurvey()
                .arg("worker")
                .args(["--coordinator", &self.url(), "--worker-id", &id])
                .arg("--target-python")
                .arg(free_threaded_python())
                .arg("--work-dir")
                .arg(self.survey.dir.path().join(&id)),
            &self.log(&format!("{id}-{}", std::process::id())),
        );
        self.workers[index].1 = Some(process);
    }

    /// SIGKILL: no goodbye, no cleanup.
    fn kill_worker(&mut self, index: usize) {
        if let Some(mut process) = self.workers[index].1.take() {
            process.0.kill().expect("SIGKILL");
            let _ = process.0.wait();
        }
    }

    /// `ftsurvey run --coordinator` following the run, started in the background.
    fn run(&self) -> std::process::Child {
        ftsurvey()
            .arg("run")
            .args(["--coordinator", &self.url(), "--target-python", "3.13t"])
            .arg("--registry-dir")
            .arg(fixture_registry())
            .arg("--results-dir")
            .arg(self.survey.dir.path().join("results"))
            .args([
                "--packages",
                "ftfix-slow,ftfix-pass",
                "--iterations",
                &ITERATIONS.to_string(),
            ])
            .args(["--timeout", "120"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run")
    }

    /// Waits for the run client to end; after `limit` kills it and fails with every log.
    async fn finish(&self, mut client: std::process::Child, limit: Duration) -> Output {
        let started = Instant::now();
        loop {
            if client.try_wait().expect("try_wait").is_some() {
                return tokio::task::spawn_blocking(move || client.wait_with_output())
                    .await
                    .expect("join")
                    .expect("run output");
            }
            if started.elapsed() > limit {
                let _ = client.kill();
                let output = client.wait_with_output().expect("run output");
                let mut logs = String::new();
                for entry in std::fs::read_dir(self.survey.dir.path()).expect("dir").flatten() {
                    if entry.path().extension().is_some_and(|e| e == "log") {
                        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(30).collect();
                        logs.push_str(&format!("\n== {}\n", entry.path().display()));
                        logs.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
                    }
                }
                panic!(
                    "the run did not finish within {limit:?}\nclient stderr:\n{}{logs}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts the run and waits until both workers hold a job.
    async fn run_until_both_workers_are_busy(&self) -> (std::process::Child, PgPool) {
        let pool = self.pool().await;
        let client = self.run();
        wait_until("jobs are running", Duration::from_secs(120), || {
            let pool = pool.clone();
            async move { leased(&pool).await.len() == 2 }
        })
        .await;
        (client, pool)
    }

    async fn pool(&self) -> PgPool {
        PgPool::connect(&self.postgres.url())
            .await
            .expect("connect to the test database")
    }
}

/// `(job id, worker, attempt)` of the leased jobs of the one run.
async fn leased(pool: &PgPool) -> Vec<(i64, String, i32)> {
    leased_where(pool, "TRUE").await
}

/// Leased jobs matching an SQL condition on `jobs`.
async fn leased_where(pool: &PgPool, condition: &str) -> Vec<(i64, String, i32)> {
    sqlx::query(&format!(
        "SELECT id, worker_id, attempt FROM jobs WHERE state = 'leased' AND {condition} ORDER BY id"
    ))
    .fetch_all(pool)
    .await
    .map(|rows| {
        rows.iter()
            .map(|r| (r.get("id"), r.get("worker_id"), r.get("attempt")))
            .collect()
    })
    .unwrap_or_default()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job done exactly once, none lost, and the client's results folder complete.
async fn assert_each_iteration_recorded_once(fleet: &Fleet, output: &Output) {
    assert_success(output);
    let pool = fleet.pool().await;
    let states: Vec<(String, i64)> = sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        .fetch_all(&pool)
        .await
        .expect("job states");
    assert_eq!(states, [("done".to_string(), i64::from(2 * ITERATIONS))], "job states");
    let run_state: String = sqlx::query_scalar("SELECT state FROM runs")
        .fetch_one(&pool)
        .await
        .expect("run");
    assert_eq!(run_state, "finished");
    let records = fleet.survey.records();
    assert_eq!(records.len(), 2);
    for record in &records {
        let mut indexes: Vec<u32> = record.iterations.iter().map(|i| i.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (1..=ITERATIONS).collect::<Vec<_>>(), "{}", record.package);
        assert_eq!(record.category, "compatible", "{record:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_iteration_loses_nothing_and_its_job_runs_elsewhere() {
    let mut fleet = Fleet::start();
    let pool = fleet.pool().await;
    let client = fleet.run();
    // Wait until both workers are set up (each has finished a job) and w1 holds a job of
    // ftfix-slow, which takes seconds. Workers prefer the package they
    // have set up, so w1 and w2 each keep to one package.
    let started = Instant::now();
    let victim = loop {
        let set_up: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT worker_id) FROM jobs WHERE state = 'done'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        let slow = if set_up == 2 {
            leased_where(
                &pool,
                "package_idx = (SELECT package_idx FROM packages WHERE name = 'ftfix-slow')",
            )
            .await
        } else {
            Vec::new()
        };
        if let Some(job) = slow.into_iter().next() {
            break Some(job);
        }
        if started.elapsed() > Duration::from_secs(120) {
            let jobs: Vec<(i64, i32, String, Option<String>, i32)> =
                sqlx::query_as("SELECT id, package_idx, state, worker_id, attempt FROM jobs ORDER BY id")
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            panic!("no worker took a job of ftfix-slow (set up: {set_up}): {jobs:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (job, victim, attempt) = victim.expect("a job of ftfix-slow");
    let index = fleet
        .workers
        .iter()
        .position(|(id, _)| *id == victim)
        .expect("a known worker");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    fleet.kill_worker(index);
    wait_until("the killed worker's lease is released", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let row: Option<(String, i32)> = sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
            row.is_some_and(|(state, again)| state != "leased" || again > attempt)
        }
    })
    .await;
    eprintln!(
        "figure: the killed worker's job was back in the queue {} ms after SIGKILL",
        killed_at.elapsed().as_millis()
    );
    // The job must be leased again (a new attempt), to the surviving worker or w1 restarted.
    wait_until(
        "the killed worker's job is leased again",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                let row: Option<(String, i32)> = sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1")
                    .bind(job)
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
                row.is_some_and(|(state, again)| again > attempt && state != "pending")
            }
        },
    )
    .await;
    eprintln!(
        "figure: the killed worker's job was running on another worker {} ms after SIGKILL (it waits for a free slot)",
        killed_at.elapsed().as_millis()
    );
    // The killed worker comes back under the same id and kills what it left running.
    fleet.start_worker(index);
    let output = fleet.finish(client, Duration::from_secs(180)).await;
    assert_each_iteration_recorded_once(&fleet, &output).await;
    let victim_dir = fleet.survey.dir.path().join(&victim);
    let left = Command::new("pgrep")
        .args(["-af", &victim_dir.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&left.stdout)
            .lines()
            .all(|l| l.contains("ftsurvey")),
        "the killed worker's iterations are still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restart_mid_run_loses_nothing() {
    let mut fleet = Fleet::start();
    let (client, _pool) = fleet.run_until_both_workers_are_busy().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.stop_coordinator();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.start_coordinator();
    let output = fleet.finish(client, Duration::from_secs(180)).await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("reconnecting"),
        "the client noticed the restart: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_each_iteration_recorded_once(&fleet, &output).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_mid_run_loses_nothing() {
    let mut fleet = Fleet::start();
    let (client, pool) = fleet.run_until_both_workers_are_busy().await;
    pool.close().await;
    fleet.postgres.stop().expect("stop PostgreSQL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.postgres.start_server().expect("start PostgreSQL again");
    let output = fleet.finish(client, Duration::from_secs(180)).await;
    assert_each_iteration_recorded_once(&fleet, &output).await;
}
