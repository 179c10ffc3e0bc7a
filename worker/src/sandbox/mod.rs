//! How a worker seals the commands it runs for a package off from itself and the machine:
//! which sandbox, and the limits each iteration runs under.

use std::path::PathBuf;

/// Which sandbox the worker puts every install, probe and iteration in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// bubblewrap when `bwrap` is on PATH, else none, said once at start.
    #[default]
    Auto,
    /// bubblewrap, or the worker refuses to start.
    Bwrap,
    /// Commands run as the worker's user with its view of the machine; limits still hold
    /// where cgroups or resource limits can hold them.
    None,
}

impl SandboxMode {
    pub const ALL: [SandboxMode; 3] = [SandboxMode::Auto, SandboxMode::Bwrap, SandboxMode::None];

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Auto => "auto",
            SandboxMode::Bwrap => "bwrap",
            SandboxMode::None => "none",
        }
    }
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| format!("unknown sandbox {s:?}: expected auto, bwrap or none"))
    }
}

/// What one iteration may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of all the iteration's processes together.
    pub memory_bytes: u64,
    /// Processes (and threads) alive at once.
    pub pids: u64,
    /// The largest file, and all the files under the iteration's directories together.
    pub disk_bytes: u64,
}

impl Limits {
    pub const DEFAULT_MEMORY_BYTES: u64 = 4 << 30;
    pub const DEFAULT_PIDS: u64 = 1024;
    pub const DEFAULT_DISK_BYTES: u64 = 2 << 30;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Limits::DEFAULT_MEMORY_BYTES,
            pids: Limits::DEFAULT_PIDS,
            disk_bytes: Limits::DEFAULT_DISK_BYTES,
        }
    }
}

/// How a worker seals what it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub limits: Limits,
    /// Files the sandbox must hide besides the worker's own directories: its token file and
    /// TLS files.
    pub hidden: Vec<PathBuf>,
}
