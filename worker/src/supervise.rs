//! Runs one command under supervision: its own process group, both streams read into bounded
//! tails, a timeout and a cancel that kill the whole group, and an exit mapped to a status.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::IterationStatus;
use domain::outcome::CRASH_SIGNALS;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Bytes of each stream kept in memory.
pub const TAIL_BYTES: usize = 16 * 1024;
/// Time between SIGTERM and SIGKILL when a group is stopped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading pipes after the command exited; an orphan may hold them open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// One command to run.
#[derive(Debug, Clone)]
pub struct CommandSpec<'a> {
    /// Run with `sh -c`.
    pub shell_command: &'a str,
    pub cwd: &'a Path,
    /// Set on top of the inherited environment, in order.
    pub env: &'a [(String, String)],
    /// Removed from the inherited environment.
    pub env_remove: &'a [&'a str],
    pub timeout: Duration,
}

/// How a supervised command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Exited on its own, with a code or by a signal.
    Exited { code: Option<i32>, signal: Option<i32> },
    /// Killed at the timeout.
    TimedOut,
    /// Killed because the job was cancelled.
    Cancelled,
}

/// What a supervised command did.
#[derive(Debug, Clone)]
pub struct Supervised {
    pub ending: Ending,
    /// From spawn to exit.
    pub duration: Duration,
    /// When the process was spawned.
    pub spawned_at: Instant,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// The last non-empty line either stream printed.
    pub last_output_line: String,
}

/// Runs the command until it exits, times out or is cancelled. Only a failure to start it is
/// an error; whatever happens after is in the result.
pub async fn run_command(spec: &CommandSpec<'_>, cancel: &CancellationToken) -> std::io::Result<Supervised> {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(spec.shell_command)
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for key in spec.env_remove {
        command.env_remove(key);
    }
    for (key, value) in spec.env {
        command.env(key, value);
    }
    let mut child = command.spawn()?;
    let spawned_at = Instant::now();
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // If this future is dropped midway (its job was cancelled), the group dies with it.
    let mut guard = GroupGuard(pgid);
    let last_line = Arc::new(Mutex::new(String::new()));
    let stdout_buffer = Arc::new(Mutex::new(Vec::new()));
    let stderr_buffer = Arc::new(Mutex::new(Vec::new()));
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_tail(s, stdout_buffer.clone(), last_line.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(read_tail(s, stderr_buffer.clone(), last_line.clone())));

    let ending = tokio::select! {
        status = child.wait() => exited(status?),
        _ = tokio::time::sleep(spec.timeout) => {
            stop_group(&mut child, pgid).await;
            Ending::TimedOut
        }
        _ = cancel.cancelled() => {
            stop_group(&mut child, pgid).await;
            Ending::Cancelled
        }
    };
    let duration = spawned_at.elapsed();
    // Whatever the command left running in its group goes too.
    if let Some(pgid) = guard.0.take() {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let stdout_tail = collect(stdout, &stdout_buffer).await;
    let stderr_tail = collect(stderr, &stderr_buffer).await;
    let last_output_line = last_line.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(Supervised {
        ending,
        duration,
        spawned_at,
        stdout_tail,
        stderr_tail,
        last_output_line,
    })
}

/// Kills a process group when dropped, unless already done.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Maps how an iteration ended to its status, the crash signal and a harness-error reason.
pub fn iteration_status(ending: &Ending, test_framework: &str) -> (IterationStatus, Option<i32>, Option<String>) {
    match *ending {
        Ending::TimedOut => (IterationStatus::Timeout, None, None),
        Ending::Cancelled => (IterationStatus::HarnessError, None, Some("cancelled".to_string())),
        Ending::Exited {
            signal: Some(signal), ..
        } if CRASH_SIGNALS.contains(&signal) => (IterationStatus::Crash, Some(signal), None),
        Ending::Exited { code: Some(code), .. } if code > 128 && CRASH_SIGNALS.contains(&(code - 128)) => {
            (IterationStatus::Crash, Some(code - 128), None)
        }
        Ending::Exited { code: Some(0), .. } => (IterationStatus::Pass, None, None),
        Ending::Exited { code: Some(code), .. } if test_framework == "pytest" && (2..=5).contains(&code) => {
            let reason = match code {
                2 => "pytest was interrupted (exit 2)",
                3 => "pytest internal error (exit 3)",
                4 => "pytest usage error (exit 4)",
                _ => "pytest collected no tests (exit 5)",
            };
            (IterationStatus::HarnessError, None, Some(reason.to_string()))
        }
        Ending::Exited { signal, .. } => (IterationStatus::Fail, signal, None),
    }
}

fn exited(status: ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    Ending::Exited {
        code: status.code(),
        signal: status.signal(),
    }
}

/// SIGTERM to the group, a grace period, then SIGKILL; waits for the direct child.
async fn stop_group(child: &mut tokio::process::Child, pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
            return;
        }
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Reads a stream to its end into `tail`, keeping its last `TAIL_BYTES` and the last
/// non-empty line.
async fn read_tail(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<Vec<u8>>>, last_line: Arc<Mutex<String>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &chunk[..n];
        let text = String::from_utf8_lossy(data);
        if let Some(line) = text.lines().rev().map(str::trim).find(|l| !l.is_empty())
            && let Ok(mut last) = last_line.lock()
        {
            *last = line.chars().take(500).collect();
        }
        if let Ok(mut tail) = tail.lock() {
            tail.extend_from_slice(data);
            if tail.len() > 2 * TAIL_BYTES {
                let excess = tail.len() - TAIL_BYTES;
                tail.drain(..excess);
            }
        }
    }
}

/// What a reader collected, waiting only briefly for it to finish: an orphan may hold the
/// pipe open, and then the reader is stopped and the tail so far is kept.
async fn collect(reader: Option<tokio::task::JoinHandle<()>>, tail: &Mutex<Vec<u8>>) -> String {
    if let Some(mut reader) = reader
        && tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader).await.is_err()
    {
        reader.abort();
    }
    let tail = tail.lock().map(|t| t.clone()).unwrap_or_default();
    let start = tail.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(command: &str, timeout: Duration) -> Supervised {
        let dir = std::env::temp_dir();
        let spec = CommandSpec {
            shell_command: command,
            cwd: &dir,
            env: &[],
            env_remove: &[],
            timeout,
        };
        run_command(&spec, &CancellationToken::new()).await.expect("spawn")
    }

    #[test]
    fn exits_map_to_statuses() {
        let exit = |code: Option<i32>, signal: Option<i32>| Ending::Exited { code, signal };
        let cases = [
            (exit(Some(0), None), "pytest", IterationStatus::Pass, None),
            (exit(Some(1), None), "pytest", IterationStatus::Fail, None),
            (exit(None, Some(11)), "pytest", IterationStatus::Crash, Some(11)),
            (exit(Some(139), None), "pytest", IterationStatus::Crash, Some(11)),
            (exit(Some(134), None), "unittest", IterationStatus::Crash, Some(6)),
            (exit(Some(130), None), "pytest", IterationStatus::Fail, None),
            (exit(None, Some(9)), "pytest", IterationStatus::Fail, Some(9)),
            (exit(Some(5), None), "pytest", IterationStatus::HarnessError, None),
            (exit(Some(5), None), "unittest", IterationStatus::Fail, None),
            (Ending::TimedOut, "pytest", IterationStatus::Timeout, None),
        ];
        for (ending, framework, status, signal) in cases {
            let (got, got_signal, _) = iteration_status(&ending, framework);
            assert_eq!((got, got_signal), (status, signal), "{ending:?} {framework}");
        }
        let (_, _, reason) = iteration_status(&exit(Some(5), None), "pytest");
        assert_eq!(reason.as_deref(), Some("pytest collected no tests (exit 5)"));
    }

    #[tokio::test]
    async fn exit_codes_signals_and_output_are_reported() {
        let ok = run("echo first; echo last-line >&2; exit 0", Duration::from_secs(10)).await;
        assert_eq!(
            ok.ending,
            Ending::Exited {
                code: Some(0),
                signal: None
            }
        );
        assert_eq!(ok.stdout_tail, "first\n");
        assert_eq!(ok.last_output_line, "last-line");
        let segv = run("kill -SEGV $$", Duration::from_secs(10)).await;
        assert_eq!(
            segv.ending,
            Ending::Exited {
                code: None,
                signal: Some(11)
            }
        );
        let shell = run("sh -c 'kill -SEGV $$'; exit $?", Duration::from_secs(10)).await;
        assert_eq!(
            shell.ending,
            Ending::Exited {
                code: Some(139),
                signal: None
            }
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_and_leaves_nothing_behind() {
        // Durations no other test uses, so pgrep finds only these.
        let marker = "sleep 1237";
        let command = "sleep 1237 & sleep 1237";
        let started = Instant::now();
        let result = run(command, Duration::from_millis(500)).await;
        assert_eq!(result.ending, Ending::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let left = std::process::Command::new("pgrep")
            .args(["-f", marker])
            .output()
            .expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "processes left: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }

    #[tokio::test]
    async fn an_orphan_holding_the_pipes_does_not_hang_the_supervisor() {
        // setsid puts the background sleep outside the group: it keeps stdout open.
        let started = Instant::now();
        let result = run("setsid sleep 30 & echo done", Duration::from_secs(60)).await;
        assert_eq!(
            result.ending,
            Ending::Exited {
                code: Some(0),
                signal: None
            }
        );
        assert_eq!(result.stdout_tail, "done\n");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        let _ = std::process::Command::new("pkill").args(["-f", "^sleep 30$"]).status();
    }

    #[tokio::test]
    async fn a_flood_of_output_keeps_bounded_tails() {
        let result = run("yes ftsurvey | head -c 50000000; echo end", Duration::from_secs(60)).await;
        assert_eq!(
            result.ending,
            Ending::Exited {
                code: Some(0),
                signal: None
            }
        );
        assert!(result.stdout_tail.len() <= TAIL_BYTES, "{}", result.stdout_tail.len());
        assert!(result.stdout_tail.ends_with("end\n"));
    }

    #[tokio::test]
    async fn cancelling_kills_the_command() {
        let dir = std::env::temp_dir();
        let spec = CommandSpec {
            shell_command: "sleep 1000",
            cwd: &dir,
            env: &[],
            env_remove: &[],
            timeout: Duration::from_secs(600),
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = run_command(&spec, &cancel).await.expect("spawn");
        assert_eq!(result.ending, Ending::Cancelled);
    }
}
