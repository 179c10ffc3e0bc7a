//! The scale survey: a synthetic survey of many packages with realistic outcomes, run through a
//! real coordinator process on PostgreSQL by simulated workers while watchers follow it, then
//! read back from the coordinator by `show`, `export --format csv` and `report --format html`.
//! The `bench-scale` benchmark prints its figures; a test runs it at a reduced size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::evidence::{IterationEvidence, TestReport, TsanAttribution, TsanFrame, TsanWarning};
use domain::spec::RunOptions;
use domain::{
    InterpreterRequirement, IterationOutcome, IterationStatus, JobResult, Mode, PackageSpec, RunSpec, Source,
};
use proto::v1;
use proto::v1::survey_service_client::SurveyServiceClient;
use proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::postgres::TestPostgres;

/// How to run the `ftsurvey` command line: a program, and an environment variable that makes
/// it the CLI (the benchmark runs itself as the CLI).
#[derive(Debug, Clone)]
pub struct Ftsurvey {
    pub program: PathBuf,
    pub env: Option<(String, String)>,
}

impl Ftsurvey {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        if let Some((key, value)) = &self.env {
            command.env(key, value);
        }
        command.env_remove("FTSURVEY_COORDINATOR").env("NO_COLOR", "1");
        command
    }
}

/// The size of a scale survey.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub packages: usize,
    pub iterations: u32,
    /// Simulated workers, one slot each.
    pub workers: usize,
    /// Watchers of the second survey, each receiving every finished package's result.
    pub watchers: usize,
    /// How many of the watchers also ask for the output tails, as `run --coordinator` does to
    /// write its results folder.
    pub output_watchers: usize,
    /// The other watchers ask for verdicts only, as a progress display would; else for every
    /// package's whole result.
    pub progress_watchers: bool,
    /// Bytes of each of an iteration's two output tails.
    pub tail_bytes: usize,
    pub ftsurvey: Ftsurvey,
}

/// One verb read back from the coordinator.
#[derive(Debug, Clone)]
pub struct VerbFigures {
    pub verb: String,
    pub elapsed: Duration,
    /// The largest resident set seen, sampled every 10 ms.
    pub peak_rss_kb: u64,
    pub output_bytes: u64,
}

/// What a scale survey measured.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub jobs: u64,
    /// The survey without watchers, then the same survey with them: wall time and the
    /// coordinator's CPU time.
    pub alone: (Duration, Duration),
    pub watched: (Duration, Duration),
    /// The coordinator's peak RSS after the survey without watchers, and at the end.
    pub alone_peak_rss_kb: u64,
    pub coordinator_peak_rss_kb: u64,
    pub store_bytes: u64,
    pub verbs: Vec<VerbFigures>,
    /// Events and packages each watcher received.
    pub watcher_events: Vec<(u64, usize)>,
    pub output_watchers: usize,
    pub progress_watchers: bool,
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |d: Duration| d.as_secs_f64();
        writeln!(
            f,
            "survey without watchers: {} jobs dispatched in {:.1} s ({:.0} jobs/s), coordinator CPU {:.1} s",
            self.jobs,
            secs(self.alone.0),
            self.jobs as f64 / secs(self.alone.0),
            secs(self.alone.1)
        )?;
        writeln!(
            f,
            "survey with {} watchers ({} with output, the others {}): {} jobs dispatched in {:.1} s ({:.0} jobs/s), coordinator CPU {:.1} s ({:+.1}% against none)",
            self.watcher_events.len(),
            self.output_watchers,
            if self.progress_watchers {
                "verdicts only"
            } else {
                "whole results"
            },
            self.jobs,
            secs(self.watched.0),
            self.jobs as f64 / secs(self.watched.0),
            secs(self.watched.1),
            (secs(self.watched.1) / secs(self.alone.1).max(1e-9) - 1.0) * 100.0
        )?;
        let events: u64 = self.watcher_events.iter().map(|(events, _)| events).sum();
        writeln!(
            f,
            "watchers: {events} events in all, each watcher got every package once"
        )?;
        writeln!(
            f,
            "coordinator peak RSS: {:.1} MB after the survey without watchers, {:.1} MB at the end; store size: {:.1} MB (both surveys)",
            self.alone_peak_rss_kb as f64 / 1024.0,
            self.coordinator_peak_rss_kb as f64 / 1024.0,
            self.store_bytes as f64 / 1e6
        )?;
        for verb in &self.verbs {
            writeln!(
                f,
                "{:<28} {:>6.1} s, peak RSS {:>7.1} MB, {:>8.1} MB of output",
                verb.verb,
                secs(verb.elapsed),
                verb.peak_rss_kb as f64 / 1024.0,
                verb.output_bytes as f64 / 1e6
            )?;
        }
        Ok(())
    }
}

/// Runs the scale survey: a throwaway PostgreSQL, `ftsurvey serve` on it, the survey twice
/// (without and with watchers), then the verbs on the second one. Fails when any part fails:
/// a verb's exit, a watcher missing a package, a survey that does not finish.
pub async fn scale_survey(options: &ScaleOptions, work: &Path) -> anyhow::Result<ScaleReport> {
    let postgres = TestPostgres::start()?;
    let port = free_port()?;
    let address = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(work.join("coordinator.log"))?;
    let coordinator = KillOnDrop(
        options
            .ftsurvey
            .command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("FTSURVEY_DATABASE_URL", postgres.url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the coordinator")?,
    );
    let pid = coordinator.0.id();
    let mut client = connect_survey(&address).await?;

    let jobs = options.packages as u64 * u64::from(options.iterations);
    let (alone, _) = survey(
        &mut client,
        &address,
        &ScaleOptions {
            watchers: 0,
            ..options.clone()
        },
        pid,
    )
    .await?;
    let alone_peak_rss_kb = peak_rss_kb(pid)?;
    let (watched, (run_id, watcher_events)) = survey(&mut client, &address, options, pid).await?;
    let coordinator_peak_rss_kb = peak_rss_kb(pid)?;

    let verbs = [
        ("show", vec!["show", run_id.as_str()], None),
        (
            "export --format csv",
            vec!["export", run_id.as_str(), "--format", "csv", "-o"],
            Some("export.csv"),
        ),
        (
            "report --format html",
            vec!["report", run_id.as_str(), "--format", "html", "-o"],
            Some("report.html"),
        ),
    ];
    let mut figures = Vec::new();
    for (name, args, output) in verbs {
        figures.push(verb(
            &options.ftsurvey,
            name,
            &args,
            output,
            &address,
            work,
            options.packages,
        )?);
    }
    let store_bytes = postgres_size(&postgres.url()).await?;
    drop(coordinator);
    Ok(ScaleReport {
        jobs,
        alone,
        watched,
        alone_peak_rss_kb,
        coordinator_peak_rss_kb,
        store_bytes,
        verbs: figures,
        watcher_events,
        output_watchers: options.output_watchers.min(options.watchers),
        progress_watchers: options.progress_watchers,
    })
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn connect_survey(address: &str) -> anyhow::Result<SurveyServiceClient<Channel>> {
    let started = Instant::now();
    loop {
        match SurveyServiceClient::connect(address.to_string()).await {
            Ok(client) => {
                return Ok(client
                    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES));
            }
            Err(error) if started.elapsed() > Duration::from_secs(30) => {
                bail!("the coordinator at {address} did not answer within 30 s: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A survey of the options' size, which its watchers follow. Returns its wall time and the
/// coordinator's CPU time over it, the run's id and what each watcher received.
async fn survey(
    client: &mut SurveyServiceClient<Channel>,
    address: &str,
    options: &ScaleOptions,
    pid: u32,
) -> anyhow::Result<((Duration, Duration), (String, Vec<(u64, usize)>))> {
    let watchers = options.watchers;
    let spec = run_spec(options.packages, options.iterations);
    let submitted = client
        .submit_run(v1::SubmitRunRequest {
            spec: Some((&spec).into()),
            client_token: String::new(),
        })
        .await?
        .into_inner();
    let run_id = submitted.run.context("no run")?.run_id;
    let mut watching = Vec::new();
    for n in 0..watchers {
        let kind = if n < options.output_watchers {
            Watch::WithOutput
        } else if options.progress_watchers {
            Watch::Verdicts
        } else {
            Watch::Results
        };
        watching.push(tokio::spawn(watch(address.to_string(), run_id.clone(), kind)));
    }
    let cpu_before = crate::cpu::process(pid)?;
    let started = Instant::now();
    let jobs = spec.packages.len() as u64 * u64::from(spec.iterations);
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for n in 0..options.workers {
        workers.push(tokio::spawn(sim_worker(
            address.to_string(),
            format!("scale-{n}"),
            done.clone(),
            jobs,
            options.tail_bytes,
        )));
    }
    while done.load(Ordering::Relaxed) < jobs {
        if let Some(failed) = workers.iter().position(|w| w.is_finished()) {
            let task = workers.swap_remove(failed);
            if done.load(Ordering::Relaxed) < jobs {
                task.await??;
                bail!("a simulated worker stopped before the survey's end");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("{} of {jobs} jobs done after an hour", done.load(Ordering::Relaxed));
        }
    }
    let elapsed = started.elapsed();
    let cpu = crate::cpu::process(pid)?.saturating_sub(cpu_before);
    for worker in workers {
        worker.abort();
    }
    let mut received = Vec::new();
    for watcher in watching {
        let (events, packages) = tokio::time::timeout(Duration::from_secs(120), watcher)
            .await
            .context("a watcher did not see the run end within 2 minutes")???;
        if packages != options.packages {
            bail!(
                "a watcher received {packages} of {} finished packages",
                options.packages
            );
        }
        received.push((events, packages));
    }
    Ok(((elapsed, cpu), (run_id, received)))
}

/// What a watcher asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    WithOutput,
    Results,
    Verdicts,
}

/// Follows a run to its end; returns the events and the distinct packages received. A package
/// received twice is an error.
async fn watch(address: String, run_id: String, kind: Watch) -> anyhow::Result<(u64, usize)> {
    let mut client = connect_survey(&address).await?;
    let with_output = kind == Watch::WithOutput;
    let request = v1::WatchRunRequest {
        run_id,
        with_output,
        verdicts_only: kind == Watch::Verdicts,
    };
    let mut stream = client.watch_run(request).await?.into_inner();
    let mut packages = HashSet::new();
    let mut events = 0;
    while let Some(event) = stream.message().await? {
        events += 1;
        for package in event.finished_packages {
            if with_output
                && package.category() != v1::Category::Compatible
                && package.iterations.iter().all(|i| i.stdout_tail.is_empty())
            {
                bail!("package {} came without the output asked for", package.package);
            }
            if !packages.insert(package.package.clone()) {
                bail!("package {} was sent twice", package.package);
            }
        }
    }
    Ok((events, packages.len()))
}

/// A run of `packages` packages of `iterations` free-threaded iterations.
pub fn run_spec(packages: usize, iterations: u32) -> RunSpec {
    RunSpec {
        label: format!("scale {packages}x{iterations}"),
        packages: (0..packages)
            .map(|i| PackageSpec {
                name: format!("scale-pkg-{i}"),
                version: None,
                source: Source::Sdist,
                install_command: "true".into(),
                test_command: "true".into(),
                test_framework: domain::package_kind::TestFramework::Pytest,
                import_name: format!("scale_pkg_{i}"),
                timeout_secs: None,
                env: Default::default(),
                download_count: Some(1_000_000 - i as u64),
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

/// A realistic outcome for iteration `iteration` of package `package`: most pass; one in ten
/// fails every iteration and one in ten a third of them (200 failing tests named), one in
/// twenty crashes, one in twenty has ThreadSanitizer warnings. Every iteration has both
/// output tails full.
pub fn outcome(package: usize, iteration: u32, tail_bytes: usize) -> JobResult {
    let kind = package % 20;
    let failing = kind == 2 || kind == 12 || ((kind == 3 || kind == 13) && iteration.is_multiple_of(3));
    let crash = kind == 5;
    let tsan = kind == 7;
    let status = if crash {
        IterationStatus::Crash
    } else if failing {
        IterationStatus::Fail
    } else {
        IterationStatus::Pass
    };
    let mut evidence = IterationEvidence {
        output_bytes: 2 * tail_bytes as u64,
        ..Default::default()
    };
    if failing {
        evidence.tests = Some(TestReport {
            total: 1000,
            passed: 800,
            failed: 200,
            failing: (0..200)
                .map(|t| format!("tests/test_module_{}.py::TestClass::test_case_{t}", t % 7))
                .collect(),
            ..Default::default()
        });
    }
    if tsan {
        evidence.tsan = (0..3)
            .map(|w| TsanWarning {
                kind: "data race".into(),
                signature: format!("{package:08x}{w:08x}"),
                summary: format!("SUMMARY: ThreadSanitizer: data race module.c:{w} in update_counter"),
                frames: (0..8)
                    .map(|f| TsanFrame {
                        function: format!("frame_{f}"),
                        location: Some(format!("src/module.c:{}", 100 + f)),
                        binary: "/venv/lib/python3.13t/site-packages/pkg/_ext.so".into(),
                    })
                    .collect(),
                attribution: TsanAttribution::Package,
                count: 2,
            })
            .collect();
    }
    // Lines that differ as test output does (names, timings, addresses), so the store cannot
    // compress them away: a pseudo-random number per line, seeded by the iteration.
    let mut seed = (package as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(iteration);
    let tail = |first: &str, seed: &mut u64| {
        let mut text = String::from(first);
        loop {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let line = format!(
                "tests/test_module_{}.py::TestClass::test_case_{:x} PASSED [{:>3}%] 0x{:016x}\n",
                *seed % 97,
                *seed >> 40,
                *seed % 100,
                *seed
            );
            if text.len() + line.len() > tail_bytes {
                return text;
            }
            text.push_str(&line);
        }
    };
    JobResult::Iteration(IterationOutcome {
        iteration,
        mode: Mode::Ft,
        status,
        exit_code: if crash { None } else { Some(i32::from(failing)) },
        signal: crash.then_some(11),
        duration_ms: 30_000,
        cpu_time_ms: Some(25_000),
        max_rss_kb: Some(120_000),
        stalled: false,
        last_output_line: "==== 800 passed, 200 failed in 30.00s ====".into(),
        stdout_tail: tail("", &mut seed),
        stderr_tail: tail(
            if crash {
                "Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f (most recent call first):\n"
            } else {
                ""
            },
            &mut seed,
        ),
        crash_signature: crash.then(|| "SIGSEGV in _PyObject_GC_Link".to_string()),
        harness_error: None,
        worker_id: String::new(),
        attempt: 1,
        start_latency_ms: Some(5),
        evidence,
        provenance: Default::default(),
    })
}

/// A worker of `slots` 1 that reports each job's realistic outcome at once; counts acks in
/// `done` and stops once it reaches `target`.
async fn sim_worker(
    address: String,
    id: String,
    done: Arc<AtomicU64>,
    target: u64,
    tail_bytes: usize,
) -> anyhow::Result<()> {
    use v1::coordinator_message::Msg as In;
    use v1::worker_message::Msg as Out;
    let mut client = WorkerServiceClient::connect(address)
        .await?
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(16);
    let send = |msg: Out| v1::WorkerMessage { msg: Some(msg) };
    tx.send(send(Out::Hello(v1::Hello {
        worker_id: id,
        interpreter: Some((&crate::ft_profile()).into()),
        slots: 1,
        warm_packages: Vec::new(),
        agent_version: "scale".into(),
    })))
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    tx.send(send(Out::Credit(v1::Credit { count: 1 }))).await?;
    while let Some(message) = inbound.message().await? {
        match message.msg {
            Some(In::Assignment(assignment)) => {
                let package: usize = assignment
                    .package
                    .as_ref()
                    .and_then(|p| p.name.strip_prefix("scale-pkg-"))
                    .and_then(|n| n.parse().ok())
                    .context("an assignment of a package the survey does not have")?;
                let result = outcome(package, assignment.iteration, tail_bytes);
                tx.send(send(Out::Outcome(v1::JobOutcome {
                    job_id: assignment.job_id,
                    lease_token: assignment.lease_token,
                    result: Some((&result).into()),
                })))
                .await?;
                tx.send(send(Out::Credit(v1::Credit { count: 1 }))).await?;
            }
            Some(In::Ack(ack)) => {
                if ack.status != v1::AckStatus::Recorded as i32 {
                    bail!("an outcome was not recorded: {ack:?}");
                }
                if done.fetch_add(1, Ordering::Relaxed) + 1 >= target {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs one verb against the coordinator; fails unless it succeeds with output that names
/// every package (the CSV's lines, the HTML's and the text's mentions).
fn verb(
    ftsurvey: &Ftsurvey,
    name: &str,
    args: &[&str],
    output: Option<&str>,
    address: &str,
    work: &Path,
    packages: usize,
) -> anyhow::Result<VerbFigures> {
    let stdout_path = work.join(format!("{}.out", name.replace(' ', "_")));
    let mut command = ftsurvey.command();
    command.args(args);
    let output_path = output.map(|file| work.join(file));
    if let Some(path) = &output_path {
        command.arg(path);
    }
    command
        .args(["--coordinator", address])
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
    let mut peak = 0;
    let status = loop {
        if let Ok(rss) = peak_rss_kb(child.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    if !status.success() {
        bail!("{name} failed ({status}): {}", stderr.trim());
    }
    let text = std::fs::read_to_string(output_path.as_ref().unwrap_or(&stdout_path))?;
    let named = (0..packages)
        .filter(|i| text.contains(&format!("scale-pkg-{i}")))
        .count();
    // `show` lists every package; the CSV has a line per package; the report names the
    // packages that are not compatible at least.
    let least = if name.starts_with("report") {
        packages / 4
    } else {
        packages
    };
    if named < least {
        bail!("{name} named {named} of {packages} packages");
    }
    Ok(VerbFigures {
        verb: name.to_string(),
        elapsed,
        peak_rss_kb: peak,
        output_bytes: text.len() as u64,
    })
}

/// A live process's peak resident set, from `/proc/PID/status` (`VmHWM`).
fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

async fn postgres_size(url: &str) -> anyhow::Result<u64> {
    let pool = sqlx::PgPool::connect(url).await?;
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&pool)
        .await?;
    Ok(size as u64)
}
