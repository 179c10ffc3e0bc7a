//! The dispatch benchmark: how fast a coordinator hands out jobs and commits their outcomes.
//!
//! ```sh
//! cargo run --release -p tests --bin bench-dispatch -- [--backend sqlite|postgres|both]
//!     [--jobs N] [--workers 1,16,256] [--submit-jobs 100000] [--soak-secs 0] [--statements]
//!     [--rounds N [--round-jobs 100000] [--keep-jobs]]
//! ```
//!
//! For each backend (PostgreSQL is a throwaway cluster started like the tests' one) it prints:
//! the time to submit a run of `--submit-jobs` jobs; for each K in `--workers`, K simulated
//! workers over real gRPC on loopback whose executor returns at once: jobs per second (claim +
//! outcome committed), the p50/p99 time from a worker's credit to its assignment, and the mean
//! number of jobs the coordinator claimed and recorded per store transaction; then the
//! ceiling: a raw SQL loop on the same database claiming a batch of pending jobs with one
//! statement and completing them with another, at batch sizes 1, 10 and each batch size the
//! coordinator reached, with the coordinator's rate as a share of it; the loop connects with
//! the coordinator's own connection settings. `--soak-secs` keeps 256 workers busy that long
//! and prints the rate per minute, the first against the last, and the jobs table's dead rows.
//! `--statements` (PostgreSQL) prints, after each K, the statements that took the database
//! longest, from `pg_stat_statements`; `RUST_LOG=sqlx::query=debug` logs every statement the
//! coordinator and the loop run, with its time, on stderr.
//!
//! `--rounds N` measures instead how dispatch holds up as runs pile up: N rounds, each a run
//! of `--round-jobs` jobs submitted and drained by 256 simulated workers, then archived by the
//! coordinator as `serve --keep-finished-jobs 0` does (with `--keep-jobs`, left in the jobs
//! table as before retention); it prints each round's submit time and rate, the jobs table's
//! rows, and the last round's rate against the first's.
//!
//! After each K and each loop it prints the CPU time per job: in this process (the
//! coordinator, the simulated workers and gRPC; SQLite too) and in the PostgreSQL server, and
//! how many of the machine's cores that kept busy.

/// The allocator of the `ftsurvey` binary, whose coordinator this measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domain::{IterationOutcome, IterationStatus, JobResult, LeaseToken, Mode, RunId, RunSpec};
use proto::v1;
use proto::v1::survey_service_client::SurveyServiceClient;
use proto::v1::worker_service_client::WorkerServiceClient;
use tests::ft_profile;
use tests::postgres::TestPostgres;
use tokio::sync::{Barrier, Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Options {
    backends: Vec<String>,
    jobs: u64,
    workers: Vec<usize>,
    submit_jobs: u64,
    soak_secs: u64,
    statements: bool,
    rounds: u32,
    round_jobs: u64,
    keep_jobs: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        backends: vec!["sqlite".into(), "postgres".into()],
        jobs: 20_000,
        workers: vec![1, 16, 256],
        submit_jobs: 100_000,
        soak_secs: 0,
        statements: false,
        rounds: 0,
        round_jobs: 100_000,
        keep_jobs: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => {
                options.backends = match value()?.as_str() {
                    "both" => vec!["sqlite".into(), "postgres".into()],
                    one @ ("sqlite" | "postgres") => vec![one.to_string()],
                    other => return Err(format!("unknown backend {other:?}: sqlite, postgres or both")),
                };
            }
            "--jobs" => options.jobs = value()?.parse().map_err(|e| format!("--jobs: {e}"))?,
            "--submit-jobs" => options.submit_jobs = value()?.parse().map_err(|e| format!("--submit-jobs: {e}"))?,
            "--soak-secs" => options.soak_secs = value()?.parse().map_err(|e| format!("--soak-secs: {e}"))?,
            "--statements" => options.statements = true,
            "--rounds" => options.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--round-jobs" => options.round_jobs = value()?.parse().map_err(|e| format!("--round-jobs: {e}"))?,
            "--keep-jobs" => options.keep_jobs = true,
            "--workers" => {
                options.workers = value()?
                    .split(',')
                    .map(|k| k.trim().parse::<usize>().map_err(|e| format!("--workers: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    // `RUST_LOG=sqlx::query=debug` logs every statement with its time, on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for backend in &options.backends {
        if let Err(error) = runtime.block_on(bench_backend(backend, &options)) {
            eprintln!("error: {backend}: {error:#}");
            std::process::exit(1);
        }
    }
}

/// A run of `jobs` jobs: packages of 10 iterations each.
fn run_spec(jobs: u64) -> RunSpec {
    tests::scale::run_spec(jobs.div_ceil(10).max(1) as usize, 10)
}

fn pass() -> JobResult {
    JobResult::Iteration(IterationOutcome {
        iteration: 1,
        mode: Mode::Ft,
        status: IterationStatus::Pass,
        exit_code: Some(0),
        signal: None,
        duration_ms: 1,
        cpu_time_ms: None,
        max_rss_kb: None,
        stalled: false,
        last_output_line: String::new(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        crash_signature: None,
        harness_error: None,
        worker_id: "bench".into(),
        attempt: 1,
        start_latency_ms: None,
        evidence: Default::default(),
        provenance: Default::default(),
    })
}

async fn bench_backend(backend: &str, options: &Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let postgres = if backend == "postgres" && options.statements {
        Some(TestPostgres::start_with(&[
            "shared_preload_libraries=pg_stat_statements",
            "pg_stat_statements.track_planning=on",
        ])?)
    } else if backend == "postgres" {
        Some(TestPostgres::start()?)
    } else {
        None
    };
    let url = match &postgres {
        Some(cluster) => cluster.url(),
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    println!("== {backend}");
    let meter = CpuMeter {
        postgres: postgres.as_ref(),
    };

    // A coordinator on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let mut config = coordinator::Config::new(url.clone());
    if options.rounds > 0 {
        // Each run archived as soon as it ends, as `serve --keep-finished-jobs 0` does.
        config.settings.keep_finished_jobs = (!options.keep_jobs).then_some(Duration::ZERO);
    }
    let server = tokio::spawn(coordinator::run(config, listener, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = SurveyServiceClient::connect(address.clone())
        .await?
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES * 4)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES * 4);

    if options.rounds > 0 {
        let raw = RawLoop::connect(&url).await?;
        rounds(&mut client, &address, options, &raw, &meter).await?;
        shutdown.cancel();
        let _ = server.await;
        return Ok(());
    }

    // Submitting a big run, through gRPC.
    if options.submit_jobs > 0 {
        let spec = run_spec(options.submit_jobs);
        let started = Instant::now();
        let submitted = client
            .submit_run(v1::SubmitRunRequest {
                spec: Some((&spec).into()),
                client_token: String::new(),
            })
            .await?
            .into_inner();
        println!(
            "submit: a run of {} jobs in {:.2} s",
            options.submit_jobs,
            started.elapsed().as_secs_f64()
        );
        let run_id = submitted.run.map(|r| r.run_id).unwrap_or_default();
        client.cancel_run(v1::CancelRunRequest { run_id }).await?;
    }

    let statements = match (&postgres, options.statements) {
        (Some(_), true) => Some(Statements::connect(&url).await?),
        _ => None,
    };
    let mut reached = Vec::new();
    for &workers in &options.workers {
        if let Some(statements) = &statements {
            statements.reset().await?;
        }
        let before = dispatch_stats(&mut client).await?;
        // A few seconds' worth each: one worker manages a few hundred jobs a second.
        let jobs = options.jobs.min(2_000 * workers as u64);
        let Round {
            rate, p50, p99, cpu, ..
        } = simulated(&mut client, &address, jobs, workers, &meter).await?;
        let after = dispatch_stats(&mut client).await?;
        let claim_batch = per_batch(
            after.jobs_claimed - before.jobs_claimed,
            after.claim_batches - before.claim_batches,
        );
        let outcome_batch = per_batch(
            after.outcomes - before.outcomes,
            after.outcome_batches - before.outcome_batches,
        );
        let claim_ms = per_batch(
            after.claim_micros - before.claim_micros,
            after.claim_batches - before.claim_batches,
        ) / 1000.0;
        let outcome_ms = per_batch(
            after.outcome_micros - before.outcome_micros,
            after.outcome_batches - before.outcome_batches,
        ) / 1000.0;
        println!(
            "{workers:>3} simulated workers over gRPC: {rate:>8.0} jobs/s, credit-to-assignment p50 {:.2} ms, p99 {:.2} ms; \
             {claim_batch:.1} jobs per claim transaction ({claim_ms:.2} ms each), \
             {outcome_batch:.1} outcomes per outcome transaction ({outcome_ms:.2} ms each)",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
        println!("    {cpu}");
        reached.push((workers, rate, claim_batch.round().max(1.0) as u32));
        if let Some(statements) = &statements {
            statements.print(jobs).await?;
        }
    }

    // The ceiling: raw SQL on the same database, no coordinator.
    let raw = RawLoop::connect(&url).await?;
    let mut sizes: Vec<u32> = vec![1, 10];
    sizes.extend(reached.iter().map(|(_, _, batch)| *batch));
    sizes.sort_unstable();
    sizes.dedup();
    let mut ceilings = Vec::new();
    for batch in sizes {
        if let Some(statements) = &statements {
            statements.reset().await?;
        }
        let jobs = options.jobs.min(20_000);
        let (rate, cpu) = raw.run(&url, jobs, batch, &meter).await?;
        println!("raw SQL loop, batch {batch:>3}: {rate:>8.0} jobs/s");
        println!("    {cpu}");
        if let Some(statements) = &statements {
            statements.print(jobs).await?;
        }
        ceilings.push((batch, rate));
    }
    for (workers, rate, batch) in &reached {
        if let Some((_, ceiling)) = ceilings.iter().find(|(b, _)| b == batch) {
            println!(
                "{workers:>3} workers: {rate:.0} jobs/s is {:.0}% of the raw ceiling at batch {batch} ({ceiling:.0} jobs/s)",
                rate / ceiling * 100.0
            );
        }
    }

    if options.soak_secs > 0 {
        soak(&mut client, &address, options.soak_secs, &raw, &meter).await?;
    }
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

/// Jobs per claim or outcome transaction.
fn per_batch(items: u64, batches: u64) -> f64 {
    if batches == 0 {
        0.0
    } else {
        items as f64 / batches as f64
    }
}

async fn dispatch_stats(
    client: &mut SurveyServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<v1::DispatchStats> {
    let status = client.get_status(v1::GetStatusRequest {}).await?.into_inner();
    status
        .dispatch
        .ok_or_else(|| anyhow::anyhow!("the coordinator's status has no dispatch figures"))
}

/// The coordinator's statements by the time they took (`--statements`, PostgreSQL only),
/// from `pg_stat_statements`.
struct Statements(sqlx::PgPool);

impl Statements {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await?;
        Ok(Statements(pool))
    }

    async fn reset(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&self.0)
            .await?;
        Ok(())
    }

    /// The ten statements that took longest, in microseconds per job over `jobs` jobs.
    async fn print(&self, jobs: u64) -> anyhow::Result<()> {
        let rows: Vec<(f64, f64, i64, i64, String)> = sqlx::query_as(
            "SELECT total_exec_time, total_plan_time, calls, rows, regexp_replace(left(query, 80), '\\s+', ' ', 'g')
             FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 10",
        )
        .fetch_all(&self.0)
        .await?;
        println!("  statements by time (µs per job executing, planning; calls; rows):");
        let per_job = |ms: f64| ms * 1000.0 / jobs.max(1) as f64;
        for (exec_ms, plan_ms, calls, rows, query) in rows {
            println!(
                "  {:>7.1} {:>5.1} µs/job {calls:>7} {rows:>8}  {query}",
                per_job(exec_ms),
                per_job(plan_ms)
            );
        }
        Ok(())
    }
}

/// The ceiling: one statement leases a batch of pending jobs of a run in dispatch order
/// (`FOR UPDATE SKIP LOCKED` on PostgreSQL), another records their outcomes, each in its own
/// transaction; the same table, indexes and outcome JSON the coordinator uses.
enum RawLoop {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl RawLoop {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(if url.starts_with("sqlite:") {
            RawLoop::Sqlite(sqlx::SqlitePool::connect(url).await?)
        } else {
            // With the coordinator's own connection settings: the ceiling gets what they gain.
            RawLoop::Postgres(
                sqlx::PgPool::connect_with(coordinator::store::PostgresStore::connect_options(url)?).await?,
            )
        })
    }

    /// The jobs table's live and dead rows and autovacuum passes, on PostgreSQL.
    async fn table_health(&self) -> anyhow::Result<String> {
        let RawLoop::Postgres(pool) = self else {
            return Ok(String::new());
        };
        let (live, dead, autovacuums): (i64, i64, i64) = sqlx::query_as(
            "SELECT n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables WHERE relname = 'jobs'",
        )
        .fetch_one(pool)
        .await?;
        Ok(format!(
            "; jobs table: {live} live rows, {dead} dead, {autovacuums} autovacuums so far"
        ))
    }

    /// Jobs per second over `jobs` jobs of a fresh run, `batch` at a time, and the CPU they took.
    async fn run(&self, url: &str, jobs: u64, batch: u32, meter: &CpuMeter<'_>) -> anyhow::Result<(f64, CpuUse)> {
        let store = coordinator::store::open(url).await?;
        let run_id = RunId::new_at(now_ms() as u64);
        store.submit_run(run_id, &run_spec(jobs), None, now_ms()).await?;
        let run = run_id.to_string();
        let result = serde_json::to_string(&pass())?;
        let cpu_before = meter.snapshot()?;
        let started = Instant::now();
        let mut done = 0u64;
        while done < jobs {
            let token = LeaseToken::random().to_string();
            let ids: Vec<i64> = match self {
                RawLoop::Postgres(pool) => {
                    sqlx::query_scalar(
                        "UPDATE jobs SET state = 'leased', worker_id = 'raw', lease_token = $3,
                                lease_expires_at_ms = $4, attempt = attempt + 1
                         WHERE id = ANY(ARRAY(SELECT id FROM jobs WHERE run_id = $1 AND state = 'pending'
                                      ORDER BY iteration, package_idx, mode LIMIT $2 FOR UPDATE SKIP LOCKED))
                         RETURNING id",
                    )
                    .bind(&run)
                    .bind(i64::from(batch))
                    .bind(&token)
                    .bind(now_ms() + 60_000)
                    .fetch_all(pool)
                    .await?
                }
                RawLoop::Sqlite(pool) => {
                    sqlx::query_scalar(
                        "UPDATE jobs SET state = 'leased', worker_id = 'raw', lease_token = ?3,
                                lease_expires_at_ms = ?4, attempt = attempt + 1
                         WHERE id IN (SELECT id FROM jobs WHERE run_id = ?1 AND state = 'pending'
                                      ORDER BY iteration, package_idx, mode LIMIT ?2)
                         RETURNING id",
                    )
                    .bind(&run)
                    .bind(i64::from(batch))
                    .bind(&token)
                    .bind(now_ms() + 60_000)
                    .fetch_all(pool)
                    .await?
                }
            };
            if ids.is_empty() {
                break;
            }
            match self {
                RawLoop::Postgres(pool) => {
                    sqlx::query(
                        "UPDATE jobs SET state = 'done', result_json = $2, settled_at_ms = $3
                         WHERE id = ANY($1) AND state = 'leased'",
                    )
                    .bind(&ids)
                    .bind(&result)
                    .bind(now_ms())
                    .execute(pool)
                    .await?;
                }
                RawLoop::Sqlite(pool) => {
                    sqlx::query(
                        "UPDATE jobs SET state = 'done', result_json = ?2, settled_at_ms = ?3
                         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'leased'",
                    )
                    .bind(serde_json::to_string(&ids)?)
                    .bind(&result)
                    .bind(now_ms())
                    .execute(pool)
                    .await?;
                }
            }
            done += ids.len() as u64;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let cpu = meter.since(cpu_before, done, rate)?;
        store.cancel_run(run_id, now_ms()).await?;
        Ok((rate, cpu))
    }
}

/// What one round of simulated workers measured.
struct Round {
    /// How long the run's submit took.
    submit: Duration,
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// Over the same stretch as the rate: from every worker connected to the last ack.
    cpu: CpuUse,
}

/// Runs `jobs` jobs through `workers` simulated workers.
async fn simulated(
    client: &mut SurveyServiceClient<tonic::transport::Channel>,
    address: &str,
    jobs: u64,
    workers: usize,
    meter: &CpuMeter<'_>,
) -> anyhow::Result<Round> {
    let spec = run_spec(jobs);
    let submit_started = Instant::now();
    client
        .submit_run(v1::SubmitRunRequest {
            spec: Some((&spec).into()),
            client_token: String::new(),
        })
        .await?;
    let submit = submit_started.elapsed();
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(jobs as usize)));
    let stop = CancellationToken::new();
    // The clock starts once every worker has connected: this measures dispatch, not handshakes.
    let ready = Arc::new(Barrier::new(workers + 1));
    let mut tasks = Vec::new();
    for n in 0..workers {
        tasks.push(tokio::spawn(sim_worker(
            address.to_string(),
            format!("sim-{n}"),
            done.clone(),
            jobs,
            latencies.clone(),
            ready.clone(),
            stop.clone(),
        )));
    }
    if tokio::time::timeout(Duration::from_secs(60), ready.wait())
        .await
        .is_err()
    {
        let failed = tasks.iter().filter(|task| task.is_finished()).count();
        anyhow::bail!("{failed} of {workers} simulated workers failed to connect within 60 s");
    }
    let cpu_before = meter.snapshot()?;
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("{} of {jobs} jobs done after 10 minutes", done.load(Ordering::Relaxed));
        }
    }
    let elapsed = started.elapsed();
    let rate = jobs as f64 / elapsed.as_secs_f64();
    let cpu = meter.since(cpu_before, jobs, rate)?;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let mut latencies = latencies.lock().await.clone();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Round {
        submit,
        rate,
        p50: pick(0.5),
        p99: pick(0.99),
        cpu,
    })
}

/// A worker whose executor returns at once: credit, assignment, then the outcome and a credit
/// for the freed slot together, as a real worker sends them (its spool keeps the outcome until
/// the ack); a job counts once its ack arrives.
async fn sim_worker(
    address: String,
    id: String,
    done: Arc<AtomicU64>,
    target: u64,
    latencies: Arc<Mutex<Vec<Duration>>>,
    ready: Arc<Barrier>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use v1::coordinator_message::Msg as In;
    use v1::worker_message::Msg as Out;
    let mut client = WorkerServiceClient::connect(address).await?;
    let (tx, rx) = mpsc::channel(16);
    let send = |msg: Out| v1::WorkerMessage { msg: Some(msg) };
    tx.send(send(Out::Hello(v1::Hello {
        worker_id: id,
        interpreter: Some((&ft_profile()).into()),
        slots: 1,
        warm_packages: Vec::new(),
        agent_version: "bench".into(),
    })))
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await?.and_then(|m| m.msg) {
        Some(In::Welcome(_)) => {}
        other => anyhow::bail!("expected Welcome, got {other:?}"),
    }
    ready.wait().await;
    let result: v1::JobResult = (&pass()).into();
    let mut credit_at = Instant::now();
    tx.send(send(Out::Credit(v1::Credit { count: 1 }))).await?;
    let mut mine = Vec::new();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = inbound.message() => message?,
        };
        match message.and_then(|m| m.msg) {
            Some(In::Assignment(assignment)) => {
                mine.push(credit_at.elapsed());
                tx.send(send(Out::Outcome(v1::JobOutcome {
                    job_id: assignment.job_id,
                    lease_token: assignment.lease_token,
                    result: Some(result.clone()),
                })))
                .await?;
                credit_at = Instant::now();
                tx.send(send(Out::Credit(v1::Credit { count: 1 }))).await?;
            }
            Some(In::Ack(_)) => {
                if done.fetch_add(1, Ordering::Relaxed) + 1 >= target {
                    break;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    latencies.lock().await.extend(mine);
    Ok(())
}

/// 256 workers for `seconds`, fed run after run; prints jobs per minute.
async fn soak(
    client: &mut SurveyServiceClient<tonic::transport::Channel>,
    address: &str,
    seconds: u64,
    raw: &RawLoop,
    meter: &CpuMeter<'_>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut per_minute = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let minute = Instant::now();
        let mut jobs_this_minute = 0u64;
        while minute.elapsed() < Duration::from_secs(60) && started.elapsed() < Duration::from_secs(seconds) {
            simulated(client, address, 20_000, 256, meter).await?;
            jobs_this_minute += 20_000;
        }
        let rate = jobs_this_minute as f64 / minute.elapsed().as_secs_f64();
        println!(
            "soak minute {}: {rate:.0} jobs/s{}",
            per_minute.len() + 1,
            raw.table_health().await?
        );
        per_minute.push(rate);
    }
    if let (Some(first), Some(last)) = (per_minute.first(), per_minute.last()) {
        println!(
            "soak: last minute {last:.0} jobs/s against the first {first:.0} ({:+.1}%)",
            (last / first - 1.0) * 100.0
        );
    }
    Ok(())
}

/// `--rounds`: run after run of `--round-jobs` jobs through 256 workers, each archived once
/// drained (unless `--keep-jobs`); prints each round's figures and the last against the first.
async fn rounds(
    client: &mut SurveyServiceClient<tonic::transport::Channel>,
    address: &str,
    options: &Options,
    raw: &RawLoop,
    meter: &CpuMeter<'_>,
) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for round in 1..=options.rounds {
        let Round { submit, rate, cpu, .. } = simulated(client, address, options.round_jobs, 256, meter).await?;
        let archive_started = Instant::now();
        if !options.keep_jobs {
            wait_archived(client).await?;
        }
        println!(
            "round {round:>2}: submit {:.2} s, {rate:>7.0} jobs/s, archived {:.2} s after its last ack{}",
            submit.as_secs_f64(),
            archive_started.elapsed().as_secs_f64(),
            raw.table_health().await?
        );
        println!("    {cpu}");
        rates.push(rate);
    }
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        println!(
            "rounds: the last ({last:.0} jobs/s) against the first ({first:.0} jobs/s): {:+.1}%",
            (last / first - 1.0) * 100.0
        );
    }
    Ok(())
}

/// Waits until the newest run is archived.
async fn wait_archived(client: &mut SurveyServiceClient<tonic::transport::Channel>) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let runs = client
            .list_runs(v1::ListRunsRequest { limit: 1 })
            .await?
            .into_inner()
            .runs;
        if runs.first().is_some_and(|run| run.archived_at_ms.is_some()) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the last run was not archived within 2 minutes of its end");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time used by this process (the coordinator, the simulated workers, gRPC; SQLite runs
/// here too) and by the PostgreSQL server, if there is one.
struct CpuMeter<'a> {
    postgres: Option<&'a TestPostgres>,
}

#[derive(Clone, Copy)]
struct CpuSnapshot {
    own: Duration,
    server: Option<Duration>,
}

/// CPU per job over a stretch of the benchmark, and how many of the machine's cores that kept
/// busy at the rate reached.
struct CpuUse {
    own_micros: f64,
    server_micros: Option<f64>,
    cores: f64,
}

impl CpuMeter<'_> {
    fn snapshot(&self) -> anyhow::Result<CpuSnapshot> {
        Ok(CpuSnapshot {
            own: tests::cpu::process(std::process::id())?,
            server: self.postgres.map(TestPostgres::cpu_time).transpose()?,
        })
    }

    fn since(&self, before: CpuSnapshot, jobs: u64, rate: f64) -> anyhow::Result<CpuUse> {
        let now = self.snapshot()?;
        let per_job = |used: Duration| used.as_secs_f64() * 1e6 / jobs.max(1) as f64;
        let own_micros = per_job(now.own.saturating_sub(before.own));
        let server_micros = match (now.server, before.server) {
            (Some(now), Some(before)) => Some(per_job(now.saturating_sub(before))),
            _ => None,
        };
        Ok(CpuUse {
            own_micros,
            server_micros,
            cores: (own_micros + server_micros.unwrap_or(0.0)) * rate / 1e6,
        })
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CPU per job: {:.0} µs in this process", self.own_micros)?;
        if let Some(server) = self.server_micros {
            write!(f, ", {server:.0} µs in PostgreSQL")?;
        }
        write!(
            f,
            "; {:.2} of the machine's {} cores busy",
            self.cores,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
