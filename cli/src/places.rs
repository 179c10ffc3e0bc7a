//! Where things are on this machine: paths made absolute, the cache and the default work dir,
//! the hostname, and the PATH the tests' commands get. Every command asks here, so each
//! answer is worked out one way.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The PATH a package's commands get when this process has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `path` made absolute against the current directory (not resolving symlinks).
pub(crate) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// `$FTSURVEY_CACHE_DIR`, else `$XDG_CACHE_HOME/ftsurvey`, else `~/.cache/ftsurvey`: the
/// same place the builder script uses.
pub(crate) fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FTSURVEY_CACHE_DIR").filter(|v| !v.is_empty()) {
        return absolute(Path::new(&dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("ftsurvey"));
    }
    let home = std::env::var_os("HOME").context("none of FTSURVEY_CACHE_DIR, XDG_CACHE_HOME and HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("ftsurvey"))
}

/// `--work-dir` made absolute; without one, `work/` in the [`cache_dir`]. Sources, venvs and
/// the embedded database live there.
pub(crate) fn work_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => absolute(dir),
        None => Ok(cache_dir().context("no --work-dir given")?.join("work")),
    }
}

/// This machine's name, if the kernel tells it.
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
}

/// `PATH`, or a usual one when it is unset, for the commands workers run.
pub(crate) fn base_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| FALLBACK_PATH.to_string())
}
