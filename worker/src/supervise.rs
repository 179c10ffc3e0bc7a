//! Runs one command under supervision: its own process group and a marker every descendant
//! inherits, both streams read into bounded tails and capped log files, a stall check (no
//! output and no CPU progress), a timeout and a cancel that kill the whole tree, and an exit
//! mapped to a status with the CPU time and peak memory the kernel accounted.

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::IterationStatus;
use domain::evidence::{LimitHeld, LimitHit};
use domain::outcome::CRASH_SIGNALS;
use domain::package_kind::TestFramework;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use wait4::Wait4;

use crate::output::{Output, Stream, read_stream};
use crate::proctree::{self, MARKER_VAR, Tree};
use crate::sandbox::Seal;
use crate::sandbox::cgroup::Cgroup;

/// Time between SIGTERM and SIGKILL when a tree is stopped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading pipes after the tree is gone; a process that hid from the tree
/// may still hold them open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How often the tree's CPU use and the streams' silence are checked.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How often the disk a command's files take is measured against the disk limit.
const DISK_EVERY: Duration = Duration::from_secs(1);
/// How long a stack dump may take to arrive after the dump signal.
const DUMP_WAIT: Duration = Duration::from_secs(3);
/// The signal that asks Python processes for their stacks (see [`DUMP_SIGNAL_VAR`]).
pub(crate) const DUMP_SIGNAL: Signal = Signal::SIGUSR1;
/// Set in every supervised command's environment to the dump signal's number: the worker's
/// startup hook in each venv registers faulthandler for it.
pub(crate) const DUMP_SIGNAL_VAR: &str = "FTSURVEY_DUMP_SIGNAL";

/// One command to run.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec<'a> {
    /// Run with `sh -c`.
    pub(crate) shell_command: &'a str,
    /// The working directory, as the command sees it.
    pub(crate) cwd: &'a Path,
    /// Set in order on top of the seal's environment (see [`crate::sandbox::env`]); nothing is
    /// inherited from the worker.
    pub(crate) env: &'a [(String, String)],
    /// What the command sees, writes and may use.
    pub(crate) seal: &'a Seal<'a>,
    pub(crate) timeout: Duration,
    /// Where `stdout.log` and `stderr.log` go (capped at [`crate::output::LOG_CAP_BYTES`] each); `None` keeps
    /// only the tails.
    pub(crate) log_dir: Option<&'a Path>,
    /// Silence on both streams and no CPU progress of the tree for this long is a stall;
    /// `None` never checks.
    pub(crate) stall_threshold: Option<Duration>,
    /// What the command reads on its standard input, then end of file; `None` gives it
    /// `/dev/null`. A channel only the worker writes: neither argv nor the environment, which
    /// other processes can read.
    pub(crate) stdin: Option<&'a [u8]>,
}

/// How a supervised command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Exited on its own, with a code or by a signal.
    Exited { code: Option<i32>, signal: Option<i32> },
    /// Killed at the timeout.
    TimedOut,
    /// Killed because it stalled: no output and no CPU progress for the stall threshold.
    Stalled,
    /// Killed because the job was cancelled.
    Cancelled,
    /// Killed because its files took more than the disk limit.
    OverDisk,
}

/// What a supervised command did.
#[derive(Debug, Clone)]
pub(crate) struct Supervised {
    pub(crate) ending: Ending,
    /// From spawn to exit.
    pub(crate) duration: Duration,
    /// When the process was spawned.
    pub(crate) spawned_at: Instant,
    pub(crate) stdout_tail: String,
    pub(crate) stderr_tail: String,
    /// Bytes each stream printed in all.
    pub(crate) stdout_bytes: u64,
    pub(crate) stderr_bytes: u64,
    /// The last non-empty line either stream printed.
    pub(crate) last_output_line: String,
    /// User + system CPU time of the command and the descendants it waited for.
    pub(crate) cpu_time_ms: Option<u64>,
    /// Largest resident set of the command or a descendant it waited for, KiB.
    pub(crate) max_rss_kb: Option<u64>,
    /// What the processes printed after the dump signal at a stall: their thread stacks.
    pub(crate) stall_dump: Option<String>,
    /// Processes of the tree still alive after it ended (or was stopped), all killed.
    pub(crate) leftover_processes: usize,
    /// What the stall check saw when it judged the command stalled.
    pub(crate) stall_seen: Option<StallSeen>,
    /// The limits the command ran into, each once.
    pub(crate) limits_hit: Vec<LimitHit>,
}

/// Why a command was judged stalled: how long both streams had been silent, how long its tree
/// had used no noticeable CPU, and the CPU it used over the threshold's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StallSeen {
    /// From the stall's onset (the last output or CPU progress) to the verdict.
    pub(crate) detected_after: Duration,
    pub(crate) quiet_for: Duration,
    pub(crate) idle_for: Duration,
    pub(crate) window_cpu: Duration,
    /// The most CPU the window may hold for a stall: 2% of one core over the threshold.
    pub(crate) window_cpu_allowed: Duration,
}

/// Runs the command until it exits, stalls, times out or is cancelled. Only a failure to start
/// it is an error; whatever happens after is in the result.
pub(crate) async fn run_command(spec: &CommandSpec<'_>, cancel: &CancellationToken) -> std::io::Result<Supervised> {
    let seal = spec.seal;
    let sandbox = seal.sandbox;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let argv = seal.argv(spec.shell_command, spec.cwd);
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        // bubblewrap enters the working directory inside; outside it must only exist.
        .current_dir(if sandbox.bwrap.is_some() { &seal.tmp } else { spec.cwd })
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .env_clear()
        .envs(crate::sandbox::env::base(&seal.home, &seal.tmp_inside(), seal.network));
    for (key, value) in spec.env {
        command.env(key, value);
    }
    command.env(MARKER_VAR, &marker);
    command.env(DUMP_SIGNAL_VAR, (DUMP_SIGNAL as i32).to_string());
    let mut cgroup = if sandbox.cgroups.can_contain() {
        match sandbox.cgroups.create(&marker, &sandbox.limits) {
            Ok(cgroup) => Some(cgroup),
            Err(error) => {
                tracing::warn!(%error, "cannot make the command's cgroup; its limits fall back to resource limits");
                None
            }
        }
    } else {
        None
    };
    let rlimits = Rlimits {
        joins: cgroup.as_mut().map(Cgroup::take_joins).unwrap_or_else(|| Arc::new([])),
        file_size: sandbox.limits.disk_bytes,
        address_space: (cgroup.is_none() || sandbox.memory_held() == LimitHeld::Rlimit)
            .then_some(sandbox.limits.memory_bytes)
            .filter(|_| !sandbox.tsan_build),
        processes: (cgroup.is_none() || sandbox.pids_held() == LimitHeld::Rlimit).then_some(sandbox.limits.pids),
    };
    let spawned = rlimits.spawn(&mut command);
    let cgroup = cgroup.map(Arc::new);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            if let Some(cgroup) = &cgroup {
                cgroup.remove();
            }
            return Err(error);
        }
    };
    let spawned_at = Instant::now();
    if let (Some(input), Some(mut pipe)) = (spec.stdin, child.stdin.take()) {
        let input = input.to_vec();
        // Off the runtime: a command that does not read would block the write once the pipe is
        // full. One that exits unread ends it with an error that is the command's to report.
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let _ = pipe.write_all(&input);
        });
    }
    let root = child.id() as i32;
    proctree::register_root(root);
    // If this future is dropped midway (its job was cancelled), the tree dies with it.
    let mut guard = TreeGuard(Some(Tree::new(root, &marker, cgroup.clone())));
    let output = Output::new(spawned_at);
    let readers = [
        child
            .stdout
            .take()
            .and_then(|s| tokio::process::ChildStdout::from_std(s).ok())
            .map(|s| {
                let log_dir = spec.log_dir.map(Path::to_path_buf);
                let output = output.clone();
                tokio::spawn(async move { read_stream(s, Stream::Stdout, output, log_dir.as_deref()).await })
            }),
        child
            .stderr
            .take()
            .and_then(|s| tokio::process::ChildStderr::from_std(s).ok())
            .map(|s| {
                let log_dir = spec.log_dir.map(Path::to_path_buf);
                let output = output.clone();
                tokio::spawn(async move { read_stream(s, Stream::Stderr, output, log_dir.as_deref()).await })
            }),
    ];
    let mut waiter = tokio::task::spawn_blocking(move || child.wait4());

    let mut stall = StallCheck::new(spec.stall_threshold);
    let mut sampler = tokio::time::interval(SAMPLE_EVERY);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut stall_dump = None;
    let mut stall_seen = None;
    let mut disk = DiskCheck::new(seal, sandbox.limits.disk_bytes);
    let (ending, usage) = loop {
        tokio::select! {
            // The exit first: once the root is reaped its pid is free, and sampling must stop.
            biased;
            waited = &mut waiter => break (None, waited),
            _ = &mut deadline => break (Some(Ending::TimedOut), Ok(Err(std::io::Error::other("killed")))),
            _ = cancel.cancelled() => break (Some(Ending::Cancelled), Ok(Err(std::io::Error::other("killed")))),
            _ = sampler.tick() => {
                let Some(tree) = guard.0.as_mut() else { continue };
                let ticks = tree.cpu_progress();
                if let Some(seen) = stall.observe(ticks, &output) {
                    stall_seen = Some(seen);
                    stall_dump = Some(dump_stacks(tree, &output).await);
                    break (Some(Ending::Stalled), Ok(Err(std::io::Error::other("killed"))));
                }
                if disk.over().await {
                    break (Some(Ending::OverDisk), Ok(Err(std::io::Error::other("killed"))));
                }
            }
        }
    };
    let (ending, usage) = match ending {
        None => (None, usage),
        Some(ending) => {
            // Stop the tree, then collect the root's exit and usage.
            let usage = match guard.0.as_mut() {
                Some(tree) => stop_tree(tree, &mut waiter).await,
                None => (&mut waiter).await,
            };
            (Some(ending), usage)
        }
    };
    let duration = spawned_at.elapsed();
    proctree::release_root(root);
    if let Some(tree) = guard.0.as_mut() {
        tree.root_reaped();
    }
    let usage = usage.ok().and_then(Result::ok);
    let ending = match ending {
        Some(ending) => ending,
        None => match &usage {
            Some(usage) => exited(usage.status),
            None => Ending::Exited {
                code: None,
                signal: None,
            },
        },
    };
    // Whatever the command left running goes too: its group, and escapees found by marker.
    let sampled_rss_kb = guard.0.as_ref().map_or(0, Tree::sampled_max_rss_kb);
    let leftover_processes = match guard.0.take() {
        Some(mut tree) => tokio::task::spawn_blocking(move || tree.kill_all()).await.unwrap_or(0),
        None => 0,
    };
    let leftover_processes = leftover_processes.max(seal.leftovers_counted_inside().unwrap_or(0));
    for reader in readers.into_iter().flatten() {
        let mut reader = reader;
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader).await.is_err() {
            reader.abort();
        }
    }
    let mut limits_hit = Vec::new();
    // A sandbox's init exits without waiting for what it ran, so `wait4` may see only the
    // sandbox: the cgroup accounts every process's CPU, and the samples saw their memory.
    let mut cpu_time_ms = usage
        .as_ref()
        .map(|u| (u.rusage.utime + u.rusage.stime).as_millis() as u64);
    let max_rss_kb = usage.as_ref().map(|u| (u.rusage.maxrss / 1024).max(sampled_rss_kb));
    if let Some(cgroup) = &cgroup {
        if let Some(cpu) = cgroup.cpu_time() {
            cpu_time_ms = Some(cpu_time_ms.unwrap_or(0).max(cpu.as_millis() as u64));
        }
        if cgroup.oom_kills() > 0 {
            limits_hit.push(LimitHit::Memory);
        }
        if cgroup.pids_refused() > 0 {
            limits_hit.push(LimitHit::Pids);
        }
        let cgroup = cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    }
    if ending == Ending::OverDisk {
        limits_hit.push(LimitHit::Disk);
    }
    if disk.largest_file_at_limit().await {
        limits_hit.push(LimitHit::FileSize);
    }
    Ok(Supervised {
        ending,
        duration,
        spawned_at,
        stdout_tail: output.tail(Stream::Stdout),
        stderr_tail: output.tail(Stream::Stderr),
        stdout_bytes: output.total_bytes(Stream::Stdout),
        stderr_bytes: output.total_bytes(Stream::Stderr),
        last_output_line: output.last_line(),
        cpu_time_ms,
        max_rss_kb,
        stall_dump,
        leftover_processes,
        stall_seen,
        limits_hit,
    })
}

/// The resource limits a command's processes start with, and the cgroups they join, applied
/// in the child before exec.
struct Rlimits {
    /// `cgroup.procs` of each of the command's cgroups, open for writing.
    joins: Arc<[std::os::fd::OwnedFd]>,
    file_size: u64,
    address_space: Option<u64>,
    processes: Option<u64>,
}

impl Rlimits {
    /// Spawns `command` with these limits and in these cgroups from its first instruction, so
    /// nothing it starts is ever outside them.
    // The one unsafe call of the worker: std's only way to run code between fork and exec.
    #[allow(unsafe_code)]
    fn spawn(self, command: &mut std::process::Command) -> std::io::Result<std::process::Child> {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: it makes system calls (write, setrlimit) on
        // values prepared before the fork, and allocates nothing.
        unsafe {
            command.pre_exec(move || self.apply());
        }
        command.spawn()
    }

    fn apply(&self) -> std::io::Result<()> {
        use nix::sys::resource::{Resource, setrlimit};
        for fd in self.joins.iter() {
            // `0` is the writing process itself.
            if nix::unistd::write(fd, b"0")? != 1 {
                return Err(std::io::Error::other("short write to cgroup.procs"));
            }
        }
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        setrlimit(Resource::RLIMIT_FSIZE, self.file_size, self.file_size)?;
        if let Some(bytes) = self.address_space {
            setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
        }
        if let Some(processes) = self.processes {
            setrlimit(Resource::RLIMIT_NPROC, processes, processes)?;
        }
        Ok(())
    }
}

/// Measures the files under a command's watched directories against the disk limit, at most
/// every [`DISK_EVERY`].
struct DiskCheck {
    dirs: Vec<std::path::PathBuf>,
    limit: u64,
    last: Instant,
}

impl DiskCheck {
    fn new(seal: &Seal<'_>, limit: u64) -> Self {
        DiskCheck {
            dirs: seal.disk_watch.clone(),
            limit,
            last: Instant::now(),
        }
    }

    async fn usage(&self) -> crate::fresh_tree::Usage {
        let dirs = self.dirs.clone();
        tokio::task::spawn_blocking(move || {
            let mut total = crate::fresh_tree::Usage::default();
            for dir in dirs {
                if let Ok(usage) = crate::fresh_tree::usage(&dir) {
                    total.bytes += usage.bytes;
                    total.largest_file = total.largest_file.max(usage.largest_file);
                }
            }
            total
        })
        .await
        .unwrap_or_default()
    }

    /// Whether the files now take more than the limit.
    async fn over(&mut self) -> bool {
        if self.dirs.is_empty() || self.last.elapsed() < DISK_EVERY {
            return false;
        }
        self.last = Instant::now();
        self.usage().await.bytes > self.limit
    }

    /// Whether a file reached the file-size limit (its writer got EFBIG or SIGXFSZ).
    async fn largest_file_at_limit(&self) -> bool {
        !self.dirs.is_empty() && self.usage().await.largest_file >= self.limit
    }
}

type Waited = Result<std::io::Result<wait4::ResUse>, tokio::task::JoinError>;

/// Decides when a command has stalled: silent on both streams for the threshold, and its tree
/// used less than 2% of a core over that time.
#[derive(Debug)]
struct StallCheck {
    threshold: Option<Duration>,
    /// CPU ticks per sample, newest last, covering the threshold.
    history: VecDeque<(Instant, u64)>,
    /// When the tree last used CPU noticeably (or the command started).
    last_busy: Instant,
    ticks_per_second: u64,
}

impl StallCheck {
    fn new(threshold: Option<Duration>) -> Self {
        StallCheck {
            threshold,
            history: VecDeque::new(),
            last_busy: Instant::now(),
            ticks_per_second: crate::proctree::ticks_per_second(),
        }
    }

    /// Takes the tree's CPU ticks since the last sample; returns what was seen if it has
    /// stalled.
    fn observe(&mut self, ticks: u64, output: &Output) -> Option<StallSeen> {
        let threshold = self.threshold?;
        let now = Instant::now();
        self.history.push_back((now, ticks));
        while self
            .history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > threshold)
        {
            self.history.pop_front();
        }
        // 2% of a core over one sample counts as busy.
        let busy_per_sample = (self.ticks_per_second * SAMPLE_EVERY.as_millis() as u64 / 1000 / 50).max(1);
        if ticks >= busy_per_sample {
            self.last_busy = now;
        }
        let window_ticks: u64 = self.history.iter().map(|(_, t)| t).sum();
        // Saturating: the threshold comes from a run's spec, and a bad one must not overflow.
        let allowed = (self.ticks_per_second.saturating_mul(threshold.as_secs()) / 50).max(1);
        let quiet = output.quiet_for();
        let idle = now.duration_since(self.last_busy);
        if quiet >= threshold && idle >= threshold && window_ticks < allowed {
            let as_time = |ticks: u64| Duration::from_millis(ticks.saturating_mul(1000) / self.ticks_per_second.max(1));
            Some(StallSeen {
                detected_after: quiet.min(idle),
                quiet_for: quiet,
                idle_for: idle,
                window_cpu: as_time(window_ticks),
                window_cpu_allowed: as_time(allowed),
            })
        } else {
            None
        }
    }
}

/// Asks every Python process of the tree for its thread stacks and waits for them to arrive:
/// until the dump has been quiet for a moment, or [`DUMP_WAIT`].
async fn dump_stacks(tree: &mut Tree, output: &Output) -> String {
    output.mark();
    let asked = tree.signal_catchers(DUMP_SIGNAL);
    if asked == 0 {
        return String::new();
    }
    let started = Instant::now();
    while started.elapsed() < DUMP_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = output.captured();
        if !got.is_empty() && output.quiet_for() >= Duration::from_millis(300) {
            break;
        }
    }
    output.captured()
}

/// SIGTERM to the tree, a grace period, then SIGKILL to every member; returns the root's wait.
async fn stop_tree(tree: &mut Tree, waiter: &mut tokio::task::JoinHandle<std::io::Result<wait4::ResUse>>) -> Waited {
    tree.signal_all(Signal::SIGTERM);
    if let Ok(waited) = tokio::time::timeout(KILL_GRACE, &mut *waiter).await {
        return waited;
    }
    tree.signal_all(Signal::SIGKILL);
    waiter.await
}

/// Kills a command's whole tree when dropped, unless already done.
struct TreeGuard(Option<Tree>);

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(mut tree) = self.0.take() {
            tree.kill_all();
            tree.remove_cgroup();
        }
    }
}

/// Maps how an iteration ended to its status, the crash signal and a harness-error reason.
pub(crate) fn iteration_status(
    ending: &Ending,
    test_framework: TestFramework,
) -> (IterationStatus, Option<i32>, Option<String>) {
    match *ending {
        Ending::TimedOut => (IterationStatus::Timeout, None, None),
        Ending::Stalled => (IterationStatus::Deadlock, None, None),
        Ending::Cancelled => (IterationStatus::HarnessError, None, Some("cancelled".to_string())),
        // The evidence names the limit; the suite failed to run within it.
        Ending::OverDisk => (IterationStatus::Fail, None, None),
        Ending::Exited {
            signal: Some(signal), ..
        } if CRASH_SIGNALS.contains(&signal) => (IterationStatus::Crash, Some(signal), None),
        Ending::Exited { code: Some(code), .. } if code > 128 && CRASH_SIGNALS.contains(&(code - 128)) => {
            (IterationStatus::Crash, Some(code - 128), None)
        }
        Ending::Exited { code: Some(0), .. } => (IterationStatus::Pass, None, None),
        Ending::Exited {
            code: Some(code),
            signal,
        } => match harness_error(test_framework, code) {
            Some(reason) => (IterationStatus::HarnessError, None, Some(reason.to_string())),
            None => (IterationStatus::Fail, signal, None),
        },
        Ending::Exited { signal, .. } => (IterationStatus::Fail, signal, None),
    }
}

/// The exit codes a test framework uses for its own errors, which say nothing of the tests.
fn harness_error(test_framework: TestFramework, code: i32) -> Option<&'static str> {
    match (test_framework, code) {
        (TestFramework::Pytest, 2) => Some("pytest was interrupted (exit 2)"),
        (TestFramework::Pytest, 3) => Some("pytest internal error (exit 3)"),
        (TestFramework::Pytest, 4) => Some("pytest usage error (exit 4)"),
        (TestFramework::Pytest, 5) => Some("pytest collected no tests (exit 5)"),
        (TestFramework::Unittest, 5) => Some("unittest ran no tests (exit 5)"),
        _ => None,
    }
}

fn exited(status: ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    Ending::Exited {
        code: status.code(),
        signal: status.signal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::TAIL_BYTES;
    use crate::sandbox::Sandbox;

    /// Runs unsealed, with the temporary directory as HOME and TMPDIR.
    fn seal(sandbox: &Sandbox) -> Seal<'_> {
        Seal::new(sandbox, std::env::temp_dir(), std::env::temp_dir())
    }

    async fn run(command: &str, timeout: Duration) -> Supervised {
        let dir = std::env::temp_dir();
        let sandbox = Sandbox::unsealed();
        let spec = CommandSpec {
            shell_command: command,
            cwd: &dir,
            env: &[],
            seal: &seal(&sandbox),
            timeout,
            log_dir: None,
            stall_threshold: None,
            stdin: None,
        };
        run_command(&spec, &CancellationToken::new()).await.expect("spawn")
    }

    #[test]
    fn exits_map_to_statuses() {
        let exit = |code: Option<i32>, signal: Option<i32>| Ending::Exited { code, signal };
        let cases = [
            (exit(Some(0), None), TestFramework::Pytest, IterationStatus::Pass, None),
            (exit(Some(1), None), TestFramework::Pytest, IterationStatus::Fail, None),
            (
                exit(None, Some(11)),
                TestFramework::Pytest,
                IterationStatus::Crash,
                Some(11),
            ),
            (
                exit(Some(139), None),
                TestFramework::Pytest,
                IterationStatus::Crash,
                Some(11),
            ),
            (
                exit(Some(134), None),
                TestFramework::Unittest,
                IterationStatus::Crash,
                Some(6),
            ),
            (
                exit(Some(130), None),
                TestFramework::Pytest,
                IterationStatus::Fail,
                None,
            ),
            (
                exit(None, Some(9)),
                TestFramework::Pytest,
                IterationStatus::Fail,
                Some(9),
            ),
            (
                exit(Some(5), None),
                TestFramework::Pytest,
                IterationStatus::HarnessError,
                None,
            ),
            (
                exit(Some(5), None),
                TestFramework::Unittest,
                IterationStatus::HarnessError,
                None,
            ),
            (exit(Some(5), None), TestFramework::Other, IterationStatus::Fail, None),
            (Ending::TimedOut, TestFramework::Pytest, IterationStatus::Timeout, None),
        ];
        for (ending, framework, status, signal) in cases {
            let (got, got_signal, _) = iteration_status(&ending, framework);
            assert_eq!((got, got_signal), (status, signal), "{ending:?} {framework}");
        }
        let (_, _, reason) = iteration_status(&exit(Some(5), None), TestFramework::Pytest);
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
        let result = run(command, Duration::from_millis(500)).await;
        assert_eq!(result.ending, Ending::TimedOut);
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

    fn running(marker: &str) -> String {
        let found = std::process::Command::new("pgrep")
            .args(["-f", marker])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&found.stdout).into_owned()
    }

    #[tokio::test]
    async fn an_escaped_grandchild_holding_the_pipes_is_found_and_killed() {
        // setsid puts the background sleep outside the group, holding stdout open; the marker
        // in its environment still ties it to the command.
        let result = run("setsid sleep 1238 & echo done", Duration::from_secs(60)).await;
        assert_eq!(
            result.ending,
            Ending::Exited {
                code: Some(0),
                signal: None
            }
        );
        assert_eq!(result.stdout_tail, "done\n");
        assert!(result.leftover_processes >= 1, "{result:?}");
        assert_eq!(running("^sleep 1238$"), "", "the escapee outlived its command");
    }

    async fn run_with_stall_check(command: &str, threshold: Duration) -> Supervised {
        let dir = std::env::temp_dir();
        let sandbox = Sandbox::unsealed();
        let spec = CommandSpec {
            shell_command: command,
            cwd: &dir,
            env: &[],
            seal: &seal(&sandbox),
            timeout: Duration::from_secs(60),
            log_dir: None,
            stall_threshold: Some(threshold),
            stdin: None,
        };
        run_command(&spec, &CancellationToken::new()).await.expect("spawn")
    }

    #[tokio::test]
    async fn silence_without_cpu_is_a_stall_but_silent_work_is_not() {
        let threshold = Duration::from_secs(1);
        let stalled = run_with_stall_check("echo started; sleep 1240", threshold).await;
        // Stalled, not timed out: judged on silence and idle CPU, each for the threshold.
        assert_eq!(stalled.ending, Ending::Stalled);
        let seen = stalled.stall_seen.expect("what the stall check saw");
        assert!(seen.quiet_for >= threshold && seen.idle_for >= threshold, "{seen:?}");
        assert!(seen.window_cpu < seen.window_cpu_allowed, "{seen:?}");
        let after = seen.detected_after;
        assert!(after >= threshold, "onset {after:?} before the threshold");
        assert_eq!(running("^sleep 1240$"), "");

        // Three seconds of silent busy work with a one-second threshold.
        let busy = run_with_stall_check(
            "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done; echo finished",
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            busy.ending,
            Ending::Exited {
                code: Some(0),
                signal: None
            },
            "{busy:?}"
        );
        assert_eq!(busy.stdout_tail, "finished\n");
        assert_eq!(busy.stall_seen, None);
    }

    #[tokio::test]
    async fn cpu_time_and_peak_memory_are_measured() {
        let result = run(
            "python3 -c 'x = bytearray(64 * 1024 * 1024); sum(range(3_000_000))'",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            result.ending,
            Ending::Exited {
                code: Some(0),
                signal: None
            },
            "{result:?}"
        );
        let rss = result.max_rss_kb.expect("max rss");
        assert!(rss >= 64 * 1024, "max rss {rss} KiB");
        let cpu = result.cpu_time_ms.expect("cpu time");
        assert!(cpu > 0, "cpu {cpu} ms");
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
        let sandbox = Sandbox::unsealed();
        let spec = CommandSpec {
            shell_command: "sleep 1000",
            cwd: &dir,
            env: &[],
            seal: &seal(&sandbox),
            timeout: Duration::from_secs(600),
            log_dir: None,
            stall_threshold: None,
            stdin: None,
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = run_command(&spec, &cancel).await.expect("spawn");
        assert_eq!(result.ending, Ending::Cancelled);
    }
}
