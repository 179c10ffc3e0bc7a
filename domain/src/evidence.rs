//! Evidence an iteration or a package setup leaves behind, beyond its status: per-test
//! results, ThreadSanitizer warnings, stacks, and what importing the package did to the GIL.

use serde::{Deserialize, Serialize};

/// Per-test results of one iteration, from the JUnit XML the test harness wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TestReport {
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub errors: u32,
    pub skipped: u32,
    /// Ids (`classname::name`) of the tests that failed or errored, sorted, at most
    /// [`TestReport::MAX_NAMED`], each at most [`TestReport::MAX_ID_BYTES`].
    pub failing: Vec<String>,
}

impl TestReport {
    /// Failing tests named per iteration; the counts stay exact beyond it.
    pub const MAX_NAMED: usize = 200;
    /// The longest test id kept. Test names are the package's to choose: without a bound, a
    /// few hundred names of 100 KB would make one outcome larger than a message may be.
    pub const MAX_ID_BYTES: usize = 512;

    /// `id`, or when it is longer than [`TestReport::MAX_ID_BYTES`] its start, the number of
    /// bytes cut and a digest of the whole id, so two long ids that share their start stay
    /// two tests.
    pub fn bounded_id(id: &str) -> String {
        if id.len() <= Self::MAX_ID_BYTES {
            return id.to_string();
        }
        // Room for the marker: up to 20 digits of count and 16 of digest.
        let mut end = Self::MAX_ID_BYTES - 64;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        // FNV-1a: stable across builds and platforms, which a std hasher does not promise.
        let digest = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{}...[{} bytes cut, {digest:016x}]", &id[..end], id.len() - end)
    }
}

/// Which code a ThreadSanitizer warning belongs to, judged by the binaries in its stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TsanAttribution {
    /// Frames in the package's own extension modules.
    Package,
    /// Only the interpreter (the python binary, libpython, its standard extension modules).
    Cpython,
    /// Some other shared library.
    Other,
    /// No stack to judge by (the old tool kept only the kind).
    Unknown,
}

impl TsanAttribution {
    pub fn as_str(self) -> &'static str {
        match self {
            TsanAttribution::Package => "package",
            TsanAttribution::Cpython => "cpython",
            TsanAttribution::Other => "other",
            TsanAttribution::Unknown => "unknown",
        }
    }
}

/// One frame of a ThreadSanitizer stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TsanFrame {
    pub function: String,
    /// `file:line[:col]`, when the binary has debug info.
    pub location: Option<String>,
    /// The binary the frame's code is in, as TSAN printed it (a path).
    pub binary: String,
}

/// One distinct ThreadSanitizer warning: reports with the same kind and normalised stacks are one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsanWarning {
    /// e.g. `data race`, `heap-use-after-free`, `lock-order-inversion (potential deadlock)`.
    pub kind: String,
    /// A stable id: a hash of the kind and the normalised top frames.
    pub signature: String,
    /// The `SUMMARY:` line.
    pub summary: String,
    /// The first stack of the report (the racing access), top frame first.
    pub frames: Vec<TsanFrame>,
    pub attribution: TsanAttribution,
    /// How many reports had this signature.
    pub count: u32,
}

/// What importing a package did to the GIL, and what its sources declare.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionReport {
    /// Extension modules found in the installed package (dotted names), sorted.
    pub modules: Vec<String>,
    /// Extension modules whose import re-enabled the GIL, named by the interpreter's warning.
    pub gil_enabled_by: Vec<String>,
    /// `sys._is_gil_enabled()` after importing the package and all its extension modules.
    pub gil_enabled_after_import: Option<bool>,
    /// Modules that failed to import during the probe, with the error (not a package failure).
    pub import_errors: Vec<(String, String)>,
    /// Free-threading declarations found in the sources (report only).
    pub declarations: Vec<Declaration>,
    /// Why the probe itself could not run, if it could not.
    pub probe_error: Option<String>,
}

impl ExtensionReport {
    /// Whether the package ships no extension modules.
    pub fn is_pure(&self) -> bool {
        self.modules.is_empty()
    }
}

/// A free-threading declaration found in a source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declaration {
    /// Path relative to the source tree.
    pub file: String,
    pub line: u32,
    /// `Py_mod_gil`, `PyUnstable_Module_SetGIL`, `freethreading_compatible` or `gil_used`.
    pub kind: String,
    /// The line, trimmed, at most 200 characters.
    pub text: String,
    /// `Some(true)` when it declares the module runs without the GIL, `Some(false)` when it
    /// declares the module needs it, `None` when the line does not say.
    pub gil_not_used: Option<bool>,
}

/// Everything an iteration leaves behind beyond its status and output tails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IterationEvidence {
    /// Per-test results, when the harness wrote JUnit XML (pytest) or a unittest summary.
    pub tests: Option<TestReport>,
    /// Every thread's Python stack, dumped at a stall before the kill.
    pub stacks: Option<String>,
    /// Distinct unsuppressed ThreadSanitizer warnings, on a TSAN build.
    pub tsan: Vec<TsanWarning>,
    /// What importing the package did to the GIL, from the worker that ran this iteration.
    pub extensions: Option<ExtensionReport>,
    /// The directory on the worker holding `stdout.log`, `stderr.log` and `junit.xml`.
    pub log_dir: Option<String>,
    /// Bytes the two streams printed in all (the logs keep at most a capped part).
    pub output_bytes: u64,
    /// Processes of the test's tree still alive after it ended, killed by the worker.
    pub leftover_processes: u32,
    /// Milliseconds from the last output or CPU progress to the stall verdict.
    pub stall_detected_after_ms: Option<u64>,
    /// With `--parallel-threads`: how many tests ran in parallel and how many were not.
    pub parallel: Option<ParallelReport>,
    /// How the iteration was sealed and which of its limits it ran into; `None` from a worker
    /// that predates the sandbox.
    pub sandbox: Option<SandboxReport>,
    /// One line for each list the worker shortened to keep the evidence within its bounds
    /// ([`crate::bound`]), e.g. `evidence.tsan: kept 12 of 40 items`; a string cut short carries
    /// its own `… [truncated N bytes]` marker instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
}

impl IterationEvidence {
    pub fn is_empty(&self) -> bool {
        *self == IterationEvidence::default()
    }
}

/// One iteration's thread-stress coverage under pytest-run-parallel (`--parallel-threads N`):
/// a green stress run covers only the tests it ran in parallel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParallelReport {
    /// Threads each parallel test ran in.
    pub threads: u32,
    /// Tests the plugin ran in parallel; `None` when it printed no count (it did not load).
    pub in_parallel: Option<u32>,
    /// Tests run single-threaded because they are thread-unsafe.
    pub thread_unsafe: u32,
}

/// How one command was sealed off from the worker and the machine, and what it ran into.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxReport {
    pub kind: SandboxKind,
    /// How the memory limit was held, and at how many bytes.
    pub memory: LimitHeld,
    pub memory_limit_bytes: u64,
    /// How the process limit was held, and at how many processes.
    pub pids: LimitHeld,
    pub pids_limit: u64,
    /// The most bytes one file, and all the files under the iteration's directories, may take.
    pub disk_limit_bytes: u64,
    /// The tests could reach the host's network (the registry's `network: true` or
    /// `--test-network`); otherwise they had loopback only, where the sandbox could do that.
    pub network: bool,
    /// The limits the command ran into, each once, in the order first seen.
    pub limits_hit: Vec<LimitHit>,
}

/// What sealed a command off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SandboxKind {
    /// Nothing: the command ran as the worker's user, with the worker's view of the machine.
    #[default]
    None,
    /// bubblewrap: its own PID, network, IPC and UTS namespaces, the system read-only, the
    /// worker's files out of sight, no capabilities.
    Bwrap,
}

impl SandboxKind {
    pub const ALL: [SandboxKind; 2] = [SandboxKind::None, SandboxKind::Bwrap];

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::None => "none",
            SandboxKind::Bwrap => "bwrap",
        }
    }
}

/// What held a limit on a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LimitHeld {
    /// Nothing could: the limit was not enforced.
    #[default]
    None,
    /// A cgroup v2 controller (`memory.max`, `pids.max`).
    Cgroup2,
    /// A cgroup v1 controller (`memory.limit_in_bytes`, `pids.max`).
    Cgroup1,
    /// A resource limit on each process (`RLIMIT_AS`, `RLIMIT_NPROC`).
    Rlimit,
}

impl LimitHeld {
    pub const ALL: [LimitHeld; 4] = [
        LimitHeld::None,
        LimitHeld::Cgroup2,
        LimitHeld::Cgroup1,
        LimitHeld::Rlimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitHeld::None => "none",
            LimitHeld::Cgroup2 => "cgroup2",
            LimitHeld::Cgroup1 => "cgroup1",
            LimitHeld::Rlimit => "rlimit",
        }
    }
}

/// A limit a command ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitHit {
    /// The kernel killed a process at the memory limit.
    Memory,
    /// A fork failed at the process limit.
    Pids,
    /// A file reached the file-size limit.
    FileSize,
    /// The files under the iteration's directories reached the disk limit; the command was
    /// killed.
    Disk,
}

impl LimitHit {
    pub const ALL: [LimitHit; 4] = [LimitHit::Memory, LimitHit::Pids, LimitHit::FileSize, LimitHit::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Memory => "memory",
            LimitHit::Pids => "pids",
            LimitHit::FileSize => "file_size",
            LimitHit::Disk => "disk",
        }
    }

    /// The limit in words, as in `hit the memory limit`.
    pub fn label(self) -> &'static str {
        match self {
            LimitHit::Memory => "memory",
            LimitHit::Pids => "process",
            LimitHit::FileSize => "file-size",
            LimitHit::Disk => "disk",
        }
    }
}

crate::package_kind::string_enum!(SandboxKind, "sandbox");
crate::package_kind::string_enum!(LimitHeld, "limit enforcement");
crate::package_kind::string_enum!(LimitHit, "limit");

/// How many thread blocks `stacks` holds (as the worker keeps them, or any faulthandler
/// output).
pub fn count_threads(stacks: &str) -> usize {
    stacks
        .lines()
        .filter(|line| thread_header_start(line).is_some())
        .count()
}

/// Where a thread block header starts in `line`, if `line` is one.
pub(crate) fn thread_header_start(line: &str) -> Option<usize> {
    const SUFFIX: &str = " (most recent call first):";
    let line = line.trim_end();
    if !line.ends_with(SUFFIX) {
        return None;
    }
    // `Current thread 0x` contains `thread 0x`, not `Thread 0x`, so the order is safe.
    ["Current thread 0x", "Thread 0x", "Stack (most recent call first):"]
        .iter()
        .find_map(|marker| line.find(marker))
}
