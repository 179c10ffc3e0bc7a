//! Runs one assigned job: set the package up (or reuse its setup), then one supervised
//! iteration of its test command, and gather the evidence it left: per-test results, the
//! crash signature, the stacks of a stall, ThreadSanitizer warnings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use domain::evidence::{IterationEvidence, LimitHit, SandboxReport, TestReport};
use domain::outcome::Provenance;
use domain::package_kind::TestFramework;
use domain::{Assignment, IterationOutcome, IterationStatus, JobResult};
use tokio_util::sync::CancellationToken;

use crate::evidence_file::{read_capped, read_end, read_start};
use crate::sandbox::Seal;
use crate::setup::{Prepared, Setups};
use crate::supervise::{CommandSpec, Ending, Supervised, iteration_status, run_command};

/// Bytes at each end of `stdout.log` searched for pytest-run-parallel's counts.
const RUN_PARALLEL_SEARCH_BYTES: u64 = 64 * 1024;
/// Bytes of the end of `stderr.log` searched for a crash's faulthandler output.
const CRASH_SEARCH_BYTES: u64 = 256 * 1024;
/// The largest `junit.xml` read: a suite of tens of thousands of tests writes a few MiB.
const JUNIT_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// The most bytes of ThreadSanitizer output read from an iteration's files, all together.
const TSAN_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Runs the job; `None` when it was cancelled and nothing should be reported.
pub(crate) async fn execute(
    assignment: &Assignment,
    received_at: Instant,
    setups: &Setups,
    worker_id: &str,
    cancel: &CancellationToken,
) -> Option<JobResult> {
    let package = &assignment.package;
    let setup_started = Instant::now();
    let prepared = tokio::select! {
        prepared = setups.prepare(package, &assignment.options) => prepared,
        _ = cancel.cancelled() => return None,
    };
    let setup_time = setup_started.elapsed();
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(failure) => return Some(JobResult::SetupFailed(failure)),
    };
    let log_dir = log_dir_under(&setups.logs_dir(), assignment);
    let log_dir = match std::fs::create_dir_all(&log_dir) {
        Ok(()) => Some(log_dir),
        Err(error) => {
            tracing::warn!(dir = %log_dir.display(), %error, "cannot create the iteration's log directory");
            None
        }
    };
    let dirs = setups.iteration_dirs();
    let place = {
        let (dirs, pristine) = (dirs.clone(), prepared.source_dir.clone());
        tokio::task::spawn_blocking(move || dirs.take(&pristine)).await
    };
    let place = match place.map_err(std::io::Error::other).and_then(|place| place) {
        Ok(place) => place,
        Err(error) => {
            return Some(JobResult::Iteration(harness_error(
                assignment,
                worker_id,
                format!("cannot lay a fresh copy of the source tree: {error}"),
            )));
        }
    };
    let supervised = run_iteration(assignment, setups, &prepared, &place.dir, log_dir.as_deref(), cancel).await;
    let returned = (Instant::now(), SystemTime::now());
    let tree = place.tree();
    let _ = tokio::task::spawn_blocking(move || dirs.give_back(place)).await;
    let (supervised, network) = match supervised {
        Ok(supervised) => supervised,
        Err(error) => {
            return Some(JobResult::Iteration(harness_error(
                assignment,
                worker_id,
                format!("cannot start the test command: {error}"),
            )));
        }
    };
    if supervised.ending == Ending::Cancelled {
        return None;
    }
    let (mut status, mut signal, harness_error) = iteration_status(&supervised.ending, package.test_framework);
    if !matches!(status, IterationStatus::Pass | IterationStatus::Crash)
        && supervised.limits_hit.contains(&LimitHit::Memory)
    {
        // The kernel killed a process at the memory limit: what failed, stalled or timed out
        // after that says more of the suite's size than of free-threading. A crash signal is
        // the crash's own evidence and stays one.
        status = IterationStatus::Oom;
        signal = None;
    }
    let exit_code = match supervised.ending {
        Ending::Exited { code, .. } => code,
        _ => None,
    };
    let start_latency = supervised
        .spawned_at
        .saturating_duration_since(received_at)
        .saturating_sub(setup_time);
    let stderr_end = log_dir
        .as_ref()
        .and_then(|dir| read_end(&dir.join("stderr.log"), CRASH_SEARCH_BYTES))
        .unwrap_or_else(|| supervised.stderr_tail.clone());
    let junit_path = log_dir.as_ref().map(|dir| dir.join("junit.xml"));
    // The wall clock at the spawn, read back from the monotonic one; the end is the spawn and
    // the duration.
    let (returned_instant, returned_wall) = returned;
    let started_at = returned_wall
        .checked_sub(returned_instant.saturating_duration_since(supervised.spawned_at))
        .unwrap_or(returned_wall);
    let ended_at = started_at + supervised.duration;
    let provenance = Provenance {
        interpreter_build: setups.interpreter_build().to_string(),
        package_version: prepared.installed.package_version.clone(),
        freeze_hash: prepared.installed.freeze_hash.clone(),
        started_at_ms: unix_ms(started_at),
        ended_at_ms: unix_ms(ended_at),
    };
    let crash_signature = (status == IterationStatus::Crash)
        .then(|| domain::readers::faulthandler::crash_signature(&stderr_end))
        .flatten();
    let evidence = IterationEvidence {
        tests: test_report(junit_path.as_deref(), package.test_framework, &supervised, &stderr_end),
        stacks: supervised
            .stall_dump
            .as_deref()
            .and_then(domain::readers::faulthandler::thread_stacks),
        tsan: if setups.tsan_build() {
            tsan_warnings(log_dir.as_deref(), &supervised, &prepared, &tree, &package.import_name)
        } else {
            Vec::new()
        },
        extensions: prepared.extensions.clone(),
        log_dir: log_dir.as_ref().map(|d| d.display().to_string()),
        output_bytes: supervised.stdout_bytes + supervised.stderr_bytes,
        leftover_processes: supervised.leftover_processes as u32,
        stall_detected_after_ms: supervised.stall_seen.map(|seen| seen.detected_after.as_millis() as u64),
        sandbox: Some(SandboxReport {
            limits_hit: supervised.limits_hit.clone(),
            ..setups.sandbox().report(network)
        }),
        parallel: assignment
            .options
            .parallel_threads
            .filter(|_| package.test_framework == TestFramework::Pytest)
            .map(|threads| {
                let stdout = log_dir.as_ref().map(|dir| dir.join("stdout.log"));
                let head = stdout
                    .as_deref()
                    .and_then(|path| read_start(path, RUN_PARALLEL_SEARCH_BYTES))
                    .unwrap_or_default();
                let tail = stdout
                    .as_deref()
                    .and_then(|path| read_end(path, RUN_PARALLEL_SEARCH_BYTES))
                    .unwrap_or_else(|| supervised.stdout_tail.clone());
                domain::readers::run_parallel::parse_run_parallel(threads, &head, &tail)
            }),
        truncated: Vec::new(),
    };
    if let Some(seen) = &supervised.stall_seen {
        tracing::info!(
            package.name = %package.name, job.id = %assignment.job_id,
            quiet_ms = seen.quiet_for.as_millis() as u64, idle_ms = seen.idle_for.as_millis() as u64,
            window_cpu_ms = seen.window_cpu.as_millis() as u64,
            window_cpu_allowed_ms = seen.window_cpu_allowed.as_millis() as u64,
            "iteration stalled: silent and idle for the threshold"
        );
    }
    tracing::debug!(
        package.name = %package.name, job.id = %assignment.job_id, status = status.as_str(),
        duration_ms = supervised.duration.as_millis() as u64, start_latency_ms = start_latency.as_millis() as u64,
        "iteration finished"
    );
    Some(JobResult::Iteration(IterationOutcome {
        iteration: assignment.iteration,
        mode: assignment.mode,
        status,
        exit_code,
        signal,
        duration_ms: supervised.duration.as_millis() as u64,
        cpu_time_ms: supervised.cpu_time_ms,
        max_rss_kb: supervised.max_rss_kb,
        stalled: supervised.ending == Ending::Stalled,
        last_output_line: supervised.last_output_line,
        stdout_tail: supervised.stdout_tail,
        stderr_tail: supervised.stderr_tail,
        crash_signature,
        harness_error,
        worker_id: worker_id.to_string(),
        attempt: assignment.attempt,
        start_latency_ms: Some(start_latency.as_millis() as u64),
        evidence,
        provenance,
    }))
}

/// `time` as Unix milliseconds; `None` before 1970.
fn unix_ms(time: SystemTime) -> Option<i64> {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_millis()).ok())
}

/// Runs the test command in the fresh tree under `iteration_dir`, sealed; says whether the
/// tests had the network.
async fn run_iteration(
    assignment: &Assignment,
    setups: &Setups,
    prepared: &Prepared,
    iteration_dir: &Path,
    log_dir: Option<&Path>,
    cancel: &CancellationToken,
) -> std::io::Result<(Supervised, bool)> {
    let package = &assignment.package;
    let sandbox = setups.sandbox();
    let tree = iteration_dir.join("tree");
    let mut seal = Seal::new(sandbox, iteration_dir.join("home"), iteration_dir.join("tmp"));
    seal.network = assignment.options.tests_get_network(package);
    seal.writable.extend(log_dir.map(Path::to_path_buf));
    // The setup is read-only while tests run; its pristine tree is replaced by the fresh one,
    // at the path the install recorded.
    seal.readable.push(prepared.setup_dir.clone());
    seal.readable.extend(setups.tsan_suppressions_file());
    seal.disk_watch.push(iteration_dir.to_path_buf());
    seal.count_leftovers = true;
    seal.disk_watch.extend(log_dir.map(Path::to_path_buf));
    let cwd = if sandbox.bwrap.is_some() {
        seal.mounts.push((tree.clone(), prepared.source_dir.clone()));
        prepared.source_dir.clone()
    } else {
        tree
    };
    let junit_path = log_dir.map(|dir| dir.join("junit.xml"));
    let env = iteration_env(assignment, prepared, setups, junit_path.as_deref(), log_dir);
    let command = assignment.options.effective_test_command(package);
    let timeout = Duration::from_secs(assignment.options.effective_timeout_secs(package));
    let stall_threshold = (assignment.options.stall_threshold_secs > 0)
        .then(|| Duration::from_secs(assignment.options.stall_threshold_secs));
    let spec = CommandSpec {
        shell_command: &command,
        cwd: &cwd,
        env: &env,
        seal: &seal,
        timeout,
        log_dir,
        stall_threshold,
        stdin: None,
    };
    let network = seal.network;
    run_command(&spec, cancel).await.map(|supervised| (supervised, network))
}

/// The test command's environment: the package's, then the tool's variables, then the user's
/// `--env`, with pytest's options and TSAN's merged rather than replaced.
fn iteration_env(
    assignment: &Assignment,
    prepared: &Prepared,
    setups: &Setups,
    junit_path: Option<&Path>,
    log_dir: Option<&Path>,
) -> Vec<(String, String)> {
    let mut env = prepared.env.clone();
    env.push(("PYTHON_GIL".to_string(), assignment.mode.python_gil_value().to_string()));
    env.push(("PYTHONFAULTHANDLER".to_string(), "1".to_string()));
    env.push(("PYTHONUNBUFFERED".to_string(), "1".to_string()));
    env.extend(assignment.options.env.iter().cloned());
    // What the user set, through the registry or `--env`: merged after the tool's options.
    let user = |key: &str| {
        assignment
            .options
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| assignment.package.env.get(key).cloned())
    };
    let mut extra = Vec::new();
    if assignment.package.test_framework == TestFramework::Pytest
        && let Some(junit) = junit_path
    {
        // pytest's own faulthandler plugin would point crash dumps at its captured stderr; the
        // venv's hook already points them at the real one.
        let mut ours = format!("--junitxml={} -p no:faulthandler", junit.display());
        if let Some(threads) = assignment.options.parallel_threads {
            ours.push_str(&format!(" --parallel-threads={threads}"));
        }
        let value = match user("PYTEST_ADDOPTS") {
            Some(theirs) => format!("{ours} {theirs}"),
            None => ours,
        };
        extra.push(("PYTEST_ADDOPTS".to_string(), value));
    }
    if setups.tsan_build() {
        // Warnings must not change the exit status (TSAN's default is 66), and a report must
        // not stop the run.
        // pytest captures fd 2 during tests, which would swallow the reports: each process
        // writes its own `tsan.<pid>` file in the log directory instead.
        let mut value = setups.tsan_options();
        if let Some(dir) = log_dir {
            value = format!("{value} log_path={}", dir.join("tsan").display());
        }
        if let Some(theirs) = user("TSAN_OPTIONS") {
            value = format!("{value} {theirs}");
        }
        extra.push(("TSAN_OPTIONS".to_string(), value));
    }
    env.extend(extra);
    env
}

/// Per-test results: pytest's JUnit XML, or the summary `python -m unittest` prints.
fn test_report(
    junit: Option<&Path>,
    framework: TestFramework,
    supervised: &Supervised,
    stderr_end: &str,
) -> Option<TestReport> {
    if let Some(path) = junit
        && let Some(bytes) = read_evidence(path, JUNIT_MAX_BYTES)
    {
        match domain::readers::junit::parse_junit(&String::from_utf8_lossy(&bytes)) {
            Ok(report) => return Some(report),
            Err(error) => tracing::warn!(path = %path.display(), %error, "unreadable JUnit XML"),
        }
    }
    match framework {
        TestFramework::Unittest => domain::readers::unittest::parse_summary(stderr_end)
            .or_else(|| domain::readers::unittest::parse_summary(&supervised.stdout_tail)),
        _ => None,
    }
}

fn tsan_warnings(
    log_dir: Option<&Path>,
    supervised: &Supervised,
    prepared: &Prepared,
    tree: &Path,
    import_name: &str,
) -> Vec<domain::evidence::TsanWarning> {
    // The reports are in the per-process `tsan.<pid>` files, or on stderr without a log dir.
    let mut text = String::new();
    match log_dir {
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tsan.")));
            files.push(dir.join("stderr.log"));
            files.sort();
            let mut budget = TSAN_MAX_BYTES;
            for file in files {
                if let Some(bytes) = read_evidence(&file, budget) {
                    budget -= bytes.len() as u64;
                    text.push_str(&String::from_utf8_lossy(&bytes));
                    text.push('\n');
                }
            }
        }
        None => text.push_str(&supervised.stderr_tail),
    }
    // Unsealed, the tests ran in the fresh tree at its own path; sealed, at the pristine one's.
    let mut markers: Vec<String> = vec![
        import_name.to_string(),
        prepared.source_dir.display().to_string(),
        tree.display().to_string(),
    ];
    if let Some(extensions) = &prepared.extensions {
        markers.extend(
            extensions
                .modules
                .iter()
                .filter_map(|m| m.rsplit('.').next().map(str::to_string)),
        );
    }
    let markers: Vec<&str> = markers.iter().map(String::as_str).collect();
    domain::readers::tsan::parse_reports(&text, &markers)
}

/// A file the iteration left, at most `max_bytes`; a file that is missing is no evidence, one
/// that cannot be read (too large, not a regular file) is left unread with a warning.
fn read_evidence(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    match read_capped(path, max_bytes) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "evidence file not read");
            None
        }
    }
}

fn harness_error(assignment: &Assignment, worker_id: &str, reason: String) -> IterationOutcome {
    IterationOutcome::harness_error(
        assignment.iteration,
        assignment.mode,
        worker_id,
        assignment.attempt,
        reason,
    )
}

/// One iteration's log directory: `<logs>/<run>/<package>/<mode>-<iteration>-a<attempt>`.
pub(crate) fn log_dir_under(root: &Path, assignment: &Assignment) -> PathBuf {
    let key = domain::IterationLogKey {
        run_id: assignment.run_id,
        package: assignment.package.name.clone(),
        mode: assignment.mode,
        iteration: assignment.iteration,
        attempt: assignment.attempt,
    };
    crate::iteration_logs::log_dir_names(&key)
        .iter()
        .fold(root.to_path_buf(), |dir, name| dir.join(name))
}
