//! What the session sends for a finished job: its result within the bounds of `domain::bound`,
//! and no larger, as the `JobOutcome` it travels in, than [`proto::MAX_OUTCOME_BYTES`]. Part of
//! the session's gRPC edge: with `session.rs`, the only worker file that names wire types.

use domain::bound::{cut_end, cut_start};
use domain::evidence::IterationEvidence;
use domain::{IterationOutcome, JobId, JobResult, LeaseToken, SetupFailure};
use prost::Message;
use proto::v1;
use proto::v1::worker_message::Msg as Out;

use crate::spool::SpooledOutcome;

/// Room left beside a cut for its marker, when a text is cut to bring a message under a size.
const MARKER_ROOM: usize = 64;

/// `result` bounded, then kept within `max_bytes` as the `JobOutcome` of `job_id` under
/// `lease_token`: an iteration still over it becomes a harness error of the same iteration that
/// says so; a setup failure keeps less of its log, then of its message.
pub(crate) fn within_limits(job_id: JobId, lease_token: LeaseToken, result: JobResult, max_bytes: usize) -> JobResult {
    let result = result.bounded();
    let bytes = encoded_len(job_id, lease_token, &result);
    if bytes <= max_bytes {
        return result;
    }
    tracing::warn!(job.id = %job_id, bytes, max_bytes, "outcome over the size limit even once bounded");
    match result {
        JobResult::Iteration(outcome) => JobResult::Iteration(too_large(outcome, bytes, max_bytes)),
        JobResult::SetupFailed(failure) => JobResult::SetupFailed(shortened(job_id, lease_token, failure, max_bytes)),
    }
}

/// The session message that reports a spooled outcome.
pub(crate) fn outcome_message(spooled: &SpooledOutcome) -> v1::WorkerMessage {
    v1::WorkerMessage {
        msg: Some(Out::Outcome(wire_outcome(
            spooled.job_id,
            spooled.lease_token,
            &spooled.result,
        ))),
    }
}

fn wire_outcome(job_id: JobId, lease_token: LeaseToken, result: &JobResult) -> v1::JobOutcome {
    v1::JobOutcome {
        job_id: job_id.0,
        lease_token: lease_token.to_string(),
        result: Some(result.into()),
    }
}

fn encoded_len(job_id: JobId, lease_token: LeaseToken, result: &JobResult) -> usize {
    wire_outcome(job_id, lease_token, result).encoded_len()
}

/// A harness error in place of an outcome too large to send: the same iteration, attempt and
/// resource use, and where its logs are.
fn too_large(outcome: IterationOutcome, bytes: usize, max_bytes: usize) -> IterationOutcome {
    let reason = format!("the outcome was {bytes} bytes, over the {max_bytes}-byte limit");
    IterationOutcome {
        duration_ms: outcome.duration_ms,
        cpu_time_ms: outcome.cpu_time_ms,
        max_rss_kb: outcome.max_rss_kb,
        start_latency_ms: outcome.start_latency_ms,
        evidence: IterationEvidence {
            log_dir: outcome.evidence.log_dir,
            ..IterationEvidence::default()
        },
        provenance: outcome.provenance,
        ..IterationOutcome::harness_error(
            outcome.iteration,
            outcome.mode,
            &outcome.worker_id,
            outcome.attempt,
            reason,
        )
    }
}

/// `failure` with less of its log's start, then of its message's end, until it fits.
fn shortened(job_id: JobId, lease_token: LeaseToken, mut failure: SetupFailure, max_bytes: usize) -> SetupFailure {
    let over = |failure: &SetupFailure| {
        encoded_len(job_id, lease_token, &JobResult::SetupFailed(failure.clone())).saturating_sub(max_bytes)
    };
    let excess = over(&failure);
    if excess > 0 {
        failure.log_tail = cut_start(
            &failure.log_tail,
            failure.log_tail.len().saturating_sub(excess + MARKER_ROOM),
        );
    }
    let excess = over(&failure);
    if excess > 0 {
        failure.message = cut_end(
            &failure.message,
            failure.message.len().saturating_sub(excess + MARKER_ROOM),
        );
    }
    failure
}

#[cfg(test)]
mod tests {
    use domain::IterationStatus;
    use domain::outcome::SetupStage;
    use domain::spec::Mode;

    use super::*;

    fn outcome(stdout_tail: String) -> IterationOutcome {
        IterationOutcome {
            iteration: 7,
            mode: Mode::Ft,
            status: IterationStatus::Fail,
            exit_code: Some(1),
            signal: None,
            duration_ms: 2_000,
            cpu_time_ms: Some(1_500),
            max_rss_kb: Some(30_000),
            stalled: false,
            last_output_line: "FAILED t::a".into(),
            stdout_tail,
            stderr_tail: String::new(),
            crash_signature: None,
            harness_error: None,
            worker_id: "w1".into(),
            attempt: 2,
            start_latency_ms: Some(3),
            evidence: IterationEvidence {
                log_dir: Some("/logs/r/p/ft-7-a2".into()),
                ..IterationEvidence::default()
            },
            provenance: Default::default(),
        }
    }

    #[test]
    fn an_outcome_under_the_limit_is_sent_bounded() {
        let mut long = outcome("ok\n".into());
        long.crash_signature = Some("s".repeat(100_000));
        let result = JobResult::Iteration(long);
        let sent = within_limits(JobId(1), LeaseToken::random(), result.clone(), proto::MAX_OUTCOME_BYTES);
        assert_eq!(sent, result.bounded());
    }

    #[test]
    fn an_outcome_over_the_limit_becomes_a_harness_error_of_the_same_iteration() {
        let lease_token = LeaseToken::random();
        let result = JobResult::Iteration(outcome("x".repeat(16 * 1024)));
        let sent = within_limits(JobId(1), lease_token, result, 4096);
        assert!(encoded_len(JobId(1), lease_token, &sent) <= 4096);
        let JobResult::Iteration(sent) = sent else {
            panic!("still an iteration")
        };
        assert_eq!(
            (sent.iteration, sent.mode, sent.attempt, sent.status),
            (7, Mode::Ft, 2, IterationStatus::HarnessError)
        );
        let reason = sent.harness_error.expect("a reason");
        assert!(
            reason.starts_with("the outcome was ") && reason.ends_with(" bytes, over the 4096-byte limit"),
            "{reason}"
        );
        assert_eq!(sent.evidence.log_dir.as_deref(), Some("/logs/r/p/ft-7-a2"));
        assert_eq!(sent.duration_ms, 2_000);
    }

    #[test]
    fn a_setup_failure_over_the_limit_keeps_the_end_of_its_log() {
        let lease_token = LeaseToken::random();
        let failure = SetupFailure {
            stage: SetupStage::Install,
            message: "install command exited with 1".into(),
            log_tail: format!("{}the last line", "l".repeat(16_000)),
            duration_ms: 4,
            infrastructure: false,
        };
        let sent = within_limits(JobId(2), lease_token, JobResult::SetupFailed(failure), 2048);
        assert!(encoded_len(JobId(2), lease_token, &sent) <= 2048);
        let JobResult::SetupFailed(sent) = sent else {
            panic!("still a setup failure")
        };
        assert_eq!(sent.message, "install command exited with 1");
        assert!(sent.log_tail.starts_with("[truncated ") && sent.log_tail.ends_with("the last line"));
    }
}
