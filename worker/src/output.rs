//! Reading a supervised command's output: each stream goes to a log file on disk, up to a cap,
//! while memory holds only a bounded tail, the last non-empty line, the time of the last
//! output, and on request what arrives after a mark (the stacks a dump signal produces).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Bytes of each stream kept in memory.
pub(crate) const TAIL_BYTES: usize = 16 * 1024;
/// Bytes of each stream written to its log file; the rest is counted, not kept.
pub(crate) const LOG_CAP_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes kept of what arrives after a mark.
const CAPTURE_BYTES: usize = 256 * 1024;
const CHUNK_BYTES: usize = 64 * 1024;

/// What has been read of one stream so far.
#[derive(Debug, Default)]
struct StreamState {
    tail: Vec<u8>,
    total_bytes: u64,
    /// Output after [`Output::mark`], while capturing.
    capture: Option<Vec<u8>>,
}

/// Both streams of one command, shared between their readers and the supervisor.
#[derive(Debug)]
pub(crate) struct Output {
    started: Instant,
    stdout: Mutex<StreamState>,
    stderr: Mutex<StreamState>,
    last_line: Mutex<String>,
    /// Milliseconds after `started` of the last read that returned data.
    last_output_ms: AtomicU64,
}

/// Which stream a reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn file_name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout.log",
            Stream::Stderr => "stderr.log",
        }
    }
}

impl Output {
    pub(crate) fn new(started: Instant) -> Arc<Self> {
        Arc::new(Output {
            started,
            stdout: Mutex::default(),
            stderr: Mutex::default(),
            last_line: Mutex::default(),
            last_output_ms: AtomicU64::new(0),
        })
    }

    fn state(&self, stream: Stream) -> std::sync::MutexGuard<'_, StreamState> {
        let lock = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time since either stream last produced output (or since the start, if never).
    pub(crate) fn quiet_for(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_output_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Starts keeping everything both streams print from now on.
    pub(crate) fn mark(&self) {
        self.state(Stream::Stdout).capture = Some(Vec::new());
        self.state(Stream::Stderr).capture = Some(Vec::new());
    }

    /// What both streams printed since [`Output::mark`], stderr first.
    pub(crate) fn captured(&self) -> String {
        let mut text = String::new();
        for stream in [Stream::Stderr, Stream::Stdout] {
            if let Some(bytes) = &self.state(stream).capture {
                text.push_str(&String::from_utf8_lossy(bytes));
            }
        }
        text
    }

    pub(crate) fn tail(&self, stream: Stream) -> String {
        let state = self.state(stream);
        let start = state.tail.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(&state.tail[start..]).into_owned()
    }

    pub(crate) fn total_bytes(&self, stream: Stream) -> u64 {
        self.state(stream).total_bytes
    }

    pub(crate) fn last_line(&self) -> String {
        self.last_line.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn record(&self, stream: Stream, data: &[u8]) {
        self.last_output_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let text = String::from_utf8_lossy(data);
        if let Some(line) = text.lines().rev().map(str::trim).find(|l| !l.is_empty())
            && let Ok(mut last) = self.last_line.lock()
        {
            *last = line.chars().take(500).collect();
        }
        let mut state = self.state(stream);
        state.total_bytes += data.len() as u64;
        state.tail.extend_from_slice(data);
        if state.tail.len() > 2 * TAIL_BYTES {
            let excess = state.tail.len() - TAIL_BYTES;
            state.tail.drain(..excess);
        }
        if let Some(capture) = state.capture.as_mut() {
            let room = CAPTURE_BYTES.saturating_sub(capture.len());
            capture.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

/// Reads `stream` to its end into `output`, writing the first [`LOG_CAP_BYTES`] to
/// `<log_dir>/<stream>.log` when a log directory is given. A log that cannot be written is
/// given up (with a warning), never the reading.
pub(crate) async fn read_stream(
    mut reader: impl AsyncRead + Unpin,
    which: Stream,
    output: Arc<Output>,
    log_dir: Option<&Path>,
) {
    let mut log = match log_dir {
        Some(dir) => match tokio::fs::File::create(dir.join(which.file_name())).await {
            Ok(file) => Some(tokio::io::BufWriter::with_capacity(CHUNK_BYTES, file)),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot write an iteration log");
                None
            }
        },
        None => None,
    };
    let mut written: u64 = 0;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &chunk[..n];
        output.record(which, data);
        if let Some(file) = log.as_mut() {
            let room = LOG_CAP_BYTES.saturating_sub(written) as usize;
            let keep = &data[..data.len().min(room)];
            let mut ok = file.write_all(keep).await.is_ok();
            written += keep.len() as u64;
            if ok && keep.len() < data.len() {
                let note = format!("\n[ftsurvey: log truncated at {LOG_CAP_BYTES} bytes]\n");
                ok = file.write_all(note.as_bytes()).await.is_ok() && file.flush().await.is_ok();
                log = None;
            }
            if !ok {
                log = None;
            }
        }
    }
    if let Some(mut file) = log {
        let _ = file.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tails_stay_bounded_and_logs_keep_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Output::new(Instant::now());
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        read_stream(data.as_slice(), Stream::Stdout, output.clone(), Some(dir.path())).await;
        let tail = output.tail(Stream::Stdout);
        assert!(tail.len() <= TAIL_BYTES);
        assert!(tail.ends_with("line 199999\n"));
        assert_eq!(output.last_line(), "line 199999");
        assert_eq!(output.total_bytes(Stream::Stdout), data.len() as u64);
        let log = std::fs::read(dir.path().join("stdout.log")).expect("log");
        assert_eq!(log, data);
    }

    #[tokio::test]
    async fn what_follows_a_mark_is_captured() {
        let output = Output::new(Instant::now());
        read_stream(&b"before\n"[..], Stream::Stderr, output.clone(), None).await;
        output.mark();
        read_stream(
            &b"Thread 0x1 (most recent call first):\n"[..],
            Stream::Stderr,
            output.clone(),
            None,
        )
        .await;
        assert_eq!(output.captured(), "Thread 0x1 (most recent call first):\n");
    }
}
