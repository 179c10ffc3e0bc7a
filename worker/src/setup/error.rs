//! Why a setup failed: the stage, a one-line message, and the tail of the failing command's
//! output, as every step of the pipeline reports it.

use domain::SetupStage;
use domain::evidence::LimitHit;

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
}

impl SetupError {
    /// A failure with no command output to show.
    pub(crate) fn new(stage: SetupStage, message: String) -> Self {
        SetupError {
            stage,
            message,
            log_tail: String::new(),
        }
    }
}

/// A one-line message and the output's tail when a setup command did not succeed.
pub(crate) fn command_failure(result: &Supervised, what: &str) -> Option<(String, String)> {
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
    let last = result
        .stderr_tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| is_informative(l));
    let message = match last {
        Some(line) => format!("{message}: {}", line.chars().take(300).collect::<String>()),
        None => message,
    };
    Some((message, output_tail(result)))
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
