//! An iteration's full logs, which only the worker that ran it keeps: which log is asked for,
//! and the bound of the chunks it travels in.

use std::fmt;

use crate::{Mode, RunId};

/// The most bytes of a log one chunk carries: a worker reads no more at once, and a client
/// receives no larger piece.
pub const MAX_LOG_CHUNK_BYTES: u32 = 1024 * 1024;

/// One of an iteration's two logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which attempt of which iteration a log is of: a job's place in its run and the attempt its
/// worker ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IterationLogKey {
    pub run_id: RunId,
    pub package: String,
    pub mode: Mode,
    pub iteration: u32,
    pub attempt: u32,
}

/// A coordinator's request for a piece of a log, as a worker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    /// The coordinator's number for the request, which the answer carries back.
    pub request_id: u64,
    pub key: IterationLogKey,
    pub stream: LogStream,
    pub offset: u64,
    /// At most this many bytes, never more than [`MAX_LOG_CHUNK_BYTES`].
    pub max_bytes: u32,
}
