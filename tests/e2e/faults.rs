//! Faults a fleet must survive, each ending with every (package, iteration) recorded exactly
//! once and the run finished: a worker killed with SIGKILL mid-iteration, the coordinator
//! stopped and restarted, PostgreSQL stopped and restarted, a worker cut off the network (in
//! its own network namespace) mid-iteration and let back.

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
    /// The address the coordinator listens on and everyone reaches it at.
    host: String,
    port: u16,
    serve_args: Vec<String>,
    coordinator: Option<Process>,
    workers: Vec<(String, Option<Process>)>,
}

impl Fleet {
    fn start() -> Fleet {
        let mut fleet = Fleet::stopped("127.0.0.1", &[]);
        fleet.start_coordinator();
        for index in 0..fleet.workers.len() {
            fleet.start_worker(index);
        }
        fleet
    }

    /// PostgreSQL running, the coordinator and workers not started yet.
    fn stopped(host: &str, serve_args: &[&str]) -> Fleet {
        Fleet {
            postgres: TestPostgres::start().expect("start a throwaway PostgreSQL"),
            survey: Survey::new(),
            host: host.to_string(),
            port: free_port(),
            serve_args: serve_args.iter().map(ToString::to_string).collect(),
            coordinator: None,
            workers: vec![("w1".to_string(), None), ("w2".to_string(), None)],
        }
    }

    fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.survey.dir.path().join(format!("{name}.log"))
    }

    fn start_coordinator(&mut self) {
        let log = self.log(&format!("serve-{}", Instant::now().elapsed().as_nanos()));
        self.coordinator = Some(spawn(
            ftsurvey()
                .env("FTSURVEY_LOG", "info")
                .arg("serve")
                .args([
                    "--database-url",
                    &self.postgres.url(),
                    "--listen",
                    &format!("{}:{}", self.host, self.port),
                ])
                // The host may be a test host's address in a network namespace of this
                // machine, beyond loopback: these tests are about faults, not credentials.
                .arg("--insecure")
                .args(&self.serve_args),
            &log,
        ));
        wait_for_port(&self.host, self.port, &log);
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
        self.start_worker_with(index, ftsurvey());
    }

    /// Starts a worker from `command` (the `ftsurvey` binary, or something that runs it).
    fn start_worker_with(&mut self, index: usize, mut command: Command) {
        let id = self.workers[index].0.clone();
        let process = spawn(
            command
                .arg("worker")
                .args(["--coordinator", &self.url(), "--worker-id", &id])
                .arg("--target-python")
                .arg(free_threaded_python())
                .arg("--work-dir")
                .arg(self.survey.dir.path().join(&id)),
            &self.log(&format!("{id}-{}", Instant::now().elapsed().as_nanos())),
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

/// A network namespace joined to this one by a veth pair: what runs inside reaches the host
/// only through it, and taking the host's end down cuts it off. Needs root; removed on drop.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: String,
}

impl NetNs {
    fn create() -> NetNs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it cuts a worker off the network with a network namespace (run the tests as root, as CI does)"
        );
        let pid = std::process::id();
        let subnet = format!("10.213.{}", pid % 250);
        let ns = NetNs {
            name: format!("ftsurvey-{pid}"),
            host_if: format!("fts{pid}h"),
            host_ip: format!("{subnet}.1"),
        };
        let ns_if = format!("fts{pid}n");
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/24", ns.host_ip), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| ip(&[&["netns", "exec", &ns.name, "ip"], args].concat());
        inside(&["addr", "add", &format!("{subnet}.2/24"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An HTTP CONNECT proxy on `host`, so pip inside the namespace can reach the package index.
/// Returns its port.
async fn connect_proxy(host: &str) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind((host, 0)).await.expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut request = String::new();
                client.read_line(&mut request).await.ok()?;
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.ok()?;
                    if header.trim().is_empty() {
                        break;
                    }
                }
                let target = request.strip_prefix("CONNECT ")?.split_whitespace().next()?.to_string();
                let mut upstream = tokio::net::TcpStream::connect(target).await.ok()?;
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .ok()?;
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await.ok()
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_the_network_loses_nothing_and_comes_back() {
    let netns = NetNs::create();
    let proxy = format!("http://{}:{}", netns.host_ip, connect_proxy(&netns.host_ip).await);
    // Leases of 5 s: a cut-off worker's job goes elsewhere after about that long.
    let mut fleet = Fleet::stopped(&netns.host_ip, &["--lease-duration", "5"]);
    fleet.start_coordinator();
    let mut inside = netns.command(env!("CARGO_BIN_EXE_ftsurvey-under-test"));
    inside.env("HTTPS_PROXY", &proxy).env("HTTP_PROXY", &proxy);
    fleet.start_worker_with(0, inside);
    fleet.start_worker(1);
    let pool = fleet.pool().await;
    let client = fleet.run();
    // w1 (inside) has set its package up, finished a job, and runs another.
    let started = Instant::now();
    let cut_job = loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE worker_id = 'w1' AND state = 'done'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if done > 0
            && let Some(job) = leased_where(&pool, "worker_id = 'w1'").await.into_iter().next()
        {
            break Some(job);
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the worker in the namespace never ran a second job"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (job, _, attempt) = cut_job.expect("a job leased to w1");
    netns.cut();
    let cut_at = Instant::now();
    wait_until(
        "the cut-off worker's job runs on another worker",
        Duration::from_secs(120),
        || {
            let pool = pool.clone();
            async move {
                let row: Option<(Option<String>, i32)> =
                    sqlx::query_as("SELECT worker_id, attempt FROM jobs WHERE id = $1")
                        .bind(job)
                        .fetch_optional(&pool)
                        .await
                        .ok()
                        .flatten();
                row.is_some_and(|(worker, again)| again > attempt && worker.as_deref() == Some("w2"))
            }
        },
    )
    .await;
    eprintln!(
        "figure: the cut-off worker's job was running on another worker {} ms after the cut (lease 5 s)",
        cut_at.elapsed().as_millis()
    );
    netns.restore();
    let restored_ms = coordinator_clock_ms();
    // It comes back: the coordinator hears from it again.
    let mut status = proto::v1::survey_service_client::SurveyServiceClient::connect(fleet.url())
        .await
        .expect("status client");
    let started = Instant::now();
    loop {
        let fleet_status = status
            .get_status(proto::v1::GetStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let back = fleet_status
            .workers
            .iter()
            .any(|w| w.worker_id == "w1" && w.last_heartbeat_ms > restored_ms);
        if back {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the worker did not come back after the network did: {:?}",
            fleet_status.workers
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = fleet.finish(client, Duration::from_secs(240)).await;
    assert_each_iteration_recorded_once(&fleet, &output).await;
    let (worker, final_attempt): (Option<String>, i32) =
        sqlx::query_as("SELECT worker_id, attempt FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .expect("the cut job");
    assert_eq!(
        worker.as_deref(),
        Some("w2"),
        "the cut job's outcome is the other worker's"
    );
    assert!(final_attempt > attempt);
}

/// Milliseconds since the Unix epoch: the coordinator runs on this machine's clock.
fn coordinator_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
