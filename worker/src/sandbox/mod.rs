//! How a worker seals the commands it runs for a package off from itself and the machine:
//! which sandbox, and the limits each iteration runs under.

mod bwrap;
pub(crate) mod cgroup;
pub(crate) mod cost;
pub(crate) mod env;

use std::path::{Path, PathBuf};

use domain::evidence::{LimitHeld, SandboxKind, SandboxReport};

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

impl SandboxConfig {
    /// Fails, in one line, when the sandbox asked for cannot be had on this machine: for a
    /// command to say so before it starts any work.
    pub fn check(&self) -> anyhow::Result<()> {
        bwrap_for(self.mode, std::env::var_os("PATH").as_deref()).map(|_| ())
    }
}

/// The `bwrap` the mode asks for, looked for on `path_var`; an error when it insists on one
/// that is not there.
fn bwrap_for(mode: SandboxMode, path_var: Option<&std::ffi::OsStr>) -> anyhow::Result<Option<PathBuf>> {
    match mode {
        SandboxMode::None => Ok(None),
        SandboxMode::Auto => Ok(path_var.and_then(|path| find_on_path("bwrap", path))),
        SandboxMode::Bwrap => path_var.and_then(|path| find_on_path("bwrap", path)).map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "--sandbox bwrap: no `bwrap` on PATH; install bubblewrap (Debian: apt-get install bubblewrap) or pass --sandbox none"
            )
        }),
    }
}

/// The sandbox a worker resolved at start, shared by every command it runs.
#[derive(Debug, Default)]
pub(crate) struct Sandbox {
    /// The `bwrap` to run commands under; `None` runs them unsealed.
    pub(crate) bwrap: Option<PathBuf>,
    pub(crate) limits: Limits,
    /// Where command cgroups can be made, and what they hold.
    pub(crate) cgroups: cgroup::Hierarchies,
    /// Directories and files no command may see: the worker's directories, its user's home,
    /// its token and TLS files.
    pub(crate) hidden: Vec<PathBuf>,
    /// What commands must still read under the hidden directories: the target interpreter's
    /// installation, the tools on PATH.
    pub(crate) readable: Vec<PathBuf>,
    /// The target is a ThreadSanitizer build, whose shadow memory an address-space limit would
    /// break.
    pub(crate) tsan_build: bool,
}

impl Sandbox {
    /// No sandbox and no limits: for commands of the worker's own tests.
    #[cfg(test)]
    pub(crate) fn unsealed() -> Sandbox {
        Sandbox::default()
    }

    /// Resolves `config` on this machine: finds `bwrap` (or refuses `--sandbox bwrap`
    /// without it), the cgroups this process can make, and what to hide.
    pub(crate) fn resolve(config: &SandboxConfig, paths: SandboxPaths) -> anyhow::Result<Sandbox> {
        Sandbox::resolve_in(config, paths, std::env::var_os("PATH").as_deref())
    }

    /// [`Sandbox::resolve`] with `bwrap` looked for on `path_var`.
    fn resolve_in(
        config: &SandboxConfig,
        paths: SandboxPaths,
        path_var: Option<&std::ffi::OsStr>,
    ) -> anyhow::Result<Sandbox> {
        let bwrap = bwrap_for(config.mode, path_var)?;
        let cgroups = cgroup::Hierarchies::detect(&paths.cgroup_name);
        let mut hidden = paths.hidden;
        hidden.extend(config.hidden.iter().cloned());
        hidden.retain(|path| path.parent().is_some());
        let hidden: Vec<PathBuf> = hidden.into_iter().map(|p| p.canonicalize().unwrap_or(p)).collect();
        // Only what lies strictly beneath a hidden directory needs binding back, and nothing
        // else may be: binding a hidden directory itself would show it again.
        let readable = paths
            .readable
            .into_iter()
            .filter(|p| p.is_absolute())
            .filter_map(|p| p.canonicalize().ok())
            .filter(|p| hidden.iter().any(|h| p.starts_with(h) && p != h))
            .collect();
        Ok(Sandbox {
            bwrap,
            limits: config.limits,
            cgroups,
            hidden,
            readable,
            tsan_build: paths.tsan_build,
        })
    }

    pub(crate) fn kind(&self) -> SandboxKind {
        if self.bwrap.is_some() {
            SandboxKind::Bwrap
        } else {
            SandboxKind::None
        }
    }

    /// How the memory limit is held on this machine.
    pub(crate) fn memory_held(&self) -> LimitHeld {
        match self.cgroups.memory() {
            LimitHeld::None if !self.tsan_build => LimitHeld::Rlimit,
            held => held,
        }
    }

    /// How the process limit is held on this machine. `RLIMIT_NPROC` does not bind root.
    pub(crate) fn pids_held(&self) -> LimitHeld {
        match self.cgroups.pids() {
            LimitHeld::None if !nix::unistd::geteuid().is_root() => LimitHeld::Rlimit,
            held => held,
        }
    }

    /// One line for the worker's start: what seals its commands.
    pub(crate) fn describe(&self) -> String {
        format!(
            "sandbox {}, memory limit {} ({}), process limit {} ({}), disk limit {}",
            self.kind().as_str(),
            human_bytes(self.limits.memory_bytes),
            self.memory_held(),
            self.limits.pids,
            self.pids_held(),
            human_bytes(self.limits.disk_bytes)
        )
    }

    /// What the evidence says of a command run here.
    pub(crate) fn report(&self, network: bool) -> SandboxReport {
        SandboxReport {
            kind: self.kind(),
            memory: self.memory_held(),
            memory_limit_bytes: self.limits.memory_bytes,
            pids: self.pids_held(),
            pids_limit: self.limits.pids,
            disk_limit_bytes: self.limits.disk_bytes,
            network,
            limits_hit: Vec::new(),
        }
    }
}

/// What a worker tells [`Sandbox::resolve`] about itself.
#[derive(Debug, Default)]
pub(crate) struct SandboxPaths {
    /// The worker's directories and its user's home.
    pub(crate) hidden: Vec<PathBuf>,
    /// What commands need to read under them.
    pub(crate) readable: Vec<PathBuf>,
    /// Names this worker's cgroups, so a restarted worker finds what the last one left.
    pub(crate) cgroup_name: String,
    pub(crate) tsan_build: bool,
}

/// How one command is sealed: what of the machine it may write, its home and temporary
/// directory, its network.
#[derive(Debug, Clone)]
pub(crate) struct Seal<'a> {
    pub(crate) sandbox: &'a Sandbox,
    /// Directories the command may write, at their own paths.
    pub(crate) writable: Vec<PathBuf>,
    /// Directories it may read beyond the sandbox's own list (its setup, under the hidden
    /// venvs directory).
    pub(crate) readable: Vec<PathBuf>,
    /// `(what, where)`: the directory `what` mounted writable at `where` (an iteration's fresh
    /// tree at the pristine tree's path, where its install expects it).
    pub(crate) mounts: Vec<(PathBuf, PathBuf)>,
    /// The command's HOME and temporary directory (its `/tmp` in the sandbox).
    pub(crate) home: PathBuf,
    pub(crate) tmp: PathBuf,
    /// The command may reach the network (installs, or a package whose tests need it).
    pub(crate) network: bool,
    /// Directories whose files together the disk limit holds, while the command runs.
    pub(crate) disk_watch: Vec<PathBuf>,
    /// Count the processes the command leaves behind where only the sandbox can see them.
    pub(crate) count_leftovers: bool,
}

impl<'a> Seal<'a> {
    /// A seal that writes only `home` and `tmp`, with no network.
    pub(crate) fn new(sandbox: &'a Sandbox, home: PathBuf, tmp: PathBuf) -> Self {
        Seal {
            sandbox,
            writable: Vec::new(),
            readable: Vec::new(),
            mounts: Vec::new(),
            home,
            tmp,
            network: false,
            disk_watch: Vec::new(),
            count_leftovers: false,
        }
    }

    /// How many processes the command left behind, as counted inside the sandbox (which kills
    /// them as it ends); `None` where the worker counts them itself.
    pub(crate) fn leftovers_counted_inside(&self) -> Option<usize> {
        if self.sandbox.bwrap.is_none() || !self.count_leftovers {
            return None;
        }
        let path = self.tmp.join(bwrap::LEFTOVERS_FILE);
        // The tests could have written the file themselves: it is read as theirs, capped, and
        // only ever raises their own count.
        let text = crate::evidence_file::read_capped(&path, 64).ok()?;
        let count: usize = String::from_utf8_lossy(&text).trim().parse().ok()?;
        Some(count.min(self.sandbox.limits.pids as usize))
    }

    /// The command's TMPDIR as the command sees it.
    pub(crate) fn tmp_inside(&self) -> PathBuf {
        if self.sandbox.bwrap.is_some() {
            PathBuf::from("/tmp")
        } else {
            self.tmp.clone()
        }
    }

    /// The program and arguments that run `sh -c command` in `cwd` (as the command sees it)
    /// under this seal.
    pub(crate) fn argv(&self, command: &str, cwd: &Path) -> Vec<std::ffi::OsString> {
        match &self.sandbox.bwrap {
            Some(bwrap) => bwrap::argv(bwrap, self, command, cwd),
            None => vec!["sh".into(), "-c".into(), command.into()],
        }
    }
}

/// The first `name` on the search path `path_var` (a `PATH` value) that is a file.
pub fn find_on_path(name: &str, path_var: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024 && value.is_multiple_of(1024) && unit < UNITS.len() - 1 {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod tests;
