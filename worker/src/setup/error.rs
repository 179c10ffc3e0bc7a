//! Why a setup failed: the stage, a one-line message, and the tail of the failing command's
//! output, as every step of the pipeline reports it.

use domain::SetupStage;
use domain::evidence::LimitHit;

use crate::setup::fault;
use crate::supervise::{Ending, Supervised};

/// Bytes of a failing setup command's output kept in the result.
const LOG_TAIL_BYTES: usize = 4096;

/// Why setting a package up failed.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub(crate) stage: SetupStage,
    /// One line, shown in the results.
    pub(crate) message: String,
    /// The end of the failing command's output; empty when no command failed.
    pub(crate) log_tail: String,
    /// The infrastructure's fault, not the package's (see [`fault`]): tried again elsewhere.
    pub(crate) infrastructure: bool,
}

impl SetupError {
    /// A failure of the package's with no command output to show, unless the message tells
    /// of a full disk, which is the infrastructure's.
    pub(crate) fn new(stage: SetupStage, message: String) -> Self {
        SetupError {
            stage,
            infrastructure: fault::is_disk_full(&message),
            message,
            log_tail: String::new(),
        }
    }

    /// A failure of the worker's own, not the package's: its directories, its locks, a task
    /// or a process it could not start.
    pub(crate) fn worker(stage: SetupStage, message: String) -> Self {
        SetupError {
            stage,
            message,
            log_tail: String::new(),
            infrastructure: true,
        }
    }
}

/// The failure of a setup command that did not succeed, `what` naming it in the message:
/// the infrastructure's when [`fault::infrastructure_cause`] finds it so, and the message
/// then names the cause.
pub(crate) fn command_failure(result: &Supervised, stage: SetupStage, what: &str) -> Option<SetupError> {
    let message = match result.ending {
        Ending::Exited { code: Some(0), .. } => return None,
        _ if result.limits_hit.contains(&LimitHit::Memory) => format!("{what} was killed at the memory limit"),
        Ending::Exited { code: Some(code), .. } => format!("{what} exited with status {code}"),
        Ending::Exited {
            signal: Some(signal), ..
        } => format!("{what} was killed by signal {signal}"),
        Ending::Exited { .. } => format!("{what} ended abnormally"),
        Ending::TimedOut => format!("{what} timed out"),
        Ending::Stalled => format!("{what} stalled"),
        Ending::Cancelled => format!("{what} was cancelled"),
        Ending::OverDisk => format!("{what} wrote more than the disk limit"),
    };
    let cause = fault::infrastructure_cause(stage, result);
    let last = result
        .stderr_tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| is_informative(l))
        .map(|line| line.chars().take(300).collect::<String>());
    let message = match (&cause, last) {
        (Some(cause), _) => format!("{message}: {cause}"),
        (None, Some(line)) => format!("{message}: {line}"),
        (None, None) => message,
    };
    Some(SetupError {
        stage,
        message,
        log_tail: output_tail(result),
        infrastructure: cause.is_some(),
    })
}

/// The last [`LOG_TAIL_BYTES`] of a command's stdout and stderr, in that order.
pub(crate) fn output_tail(result: &Supervised) -> String {
    let text = format!("{}{}", result.stdout_tail, result.stderr_tail);
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Whether a line of a failing command's stderr says something specific: pip ends its errors
/// with generic notes and hints.
fn is_informative(line: &str) -> bool {
    const GENERIC: [&str; 6] = [
        "note:",
        "hint:",
        "error: subprocess-exited-with-error",
        "error: metadata-generation-failed",
        "×",
        "╰─>",
    ];
    !line.is_empty() && !GENERIC.iter().any(|g| line.starts_with(g)) && !line.starts_with('[') && !line.starts_with('│')
}
