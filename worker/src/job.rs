//! Runs one assigned job: set the package up (or reuse its setup), then one supervised
//! iteration of its test command.

use std::time::{Duration, Instant};

use domain::{Assignment, IterationOutcome, JobResult};
use tokio_util::sync::CancellationToken;

use crate::setup::{REMOVED_ENV, Setups};
use crate::supervise::{CommandSpec, Ending, iteration_status, run_command};

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
    let mut env = prepared.env.clone();
    env.push(("PYTHON_GIL".to_string(), assignment.mode.python_gil_value().to_string()));
    env.push(("PYTHONFAULTHANDLER".to_string(), "1".to_string()));
    env.push(("PYTHONUNBUFFERED".to_string(), "1".to_string()));
    env.extend(assignment.options.env.iter().cloned());
    let command = assignment.options.effective_test_command(package);
    let timeout = Duration::from_secs(assignment.options.effective_timeout_secs(package));
    let removed: Vec<&str> = REMOVED_ENV.iter().copied().filter(|k| *k != "PYTHON_GIL").collect();
    let spec = CommandSpec {
        shell_command: &command,
        cwd: &prepared.source_dir,
        env: &env,
        env_remove: &removed,
        timeout,
    };
    let supervised = match run_command(&spec, cancel).await {
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
    let (status, signal, harness_error) = iteration_status(&supervised.ending, &package.test_framework);
    let exit_code = match supervised.ending {
        Ending::Exited { code, .. } => code,
        _ => None,
    };
    let start_latency = supervised
        .spawned_at
        .saturating_duration_since(received_at)
        .saturating_sub(setup_time);
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
        cpu_time_ms: None,
        max_rss_kb: None,
        stalled: false,
        last_output_line: supervised.last_output_line,
        stdout_tail: supervised.stdout_tail,
        stderr_tail: supervised.stderr_tail,
        crash_signature: None,
        harness_error,
        worker_id: worker_id.to_string(),
        attempt: assignment.attempt,
        start_latency_ms: Some(start_latency.as_millis() as u64),
    }))
}

fn harness_error(assignment: &Assignment, worker_id: &str, reason: String) -> IterationOutcome {
    IterationOutcome {
        iteration: assignment.iteration,
        mode: assignment.mode,
        status: domain::IterationStatus::HarnessError,
        exit_code: None,
        signal: None,
        duration_ms: 0,
        cpu_time_ms: None,
        max_rss_kb: None,
        stalled: false,
        last_output_line: String::new(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        crash_signature: None,
        harness_error: Some(reason),
        worker_id: worker_id.to_string(),
        attempt: assignment.attempt,
        start_latency_ms: None,
    }
}
