//! Where things are on this machine: paths made absolute, the cache and the default work dir,
//! the hostname, and the PATH the tests' commands get. Every command asks here, so each
//! answer is worked out one way.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The PATH a package's commands get when this process has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Creates the work dir (and any missing parent) readable by this user only: it holds the
/// embedded database, the spool and every package's logs. A work dir that exists is left as
/// its owner made it.
pub(crate) fn create_work_dir(work_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(work_dir)
        .with_context(|| format!("cannot create work dir {}", work_dir.display()))
}

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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::create_work_dir;

    #[test]
    fn a_new_work_dir_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work_dir = dir.path().join("cache/work");
        create_work_dir(&work_dir).expect("create");
        for created in [work_dir.as_path(), work_dir.parent().expect("parent")] {
            let mode = std::fs::metadata(created).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}: {mode:o}", created.display());
        }
        create_work_dir(&work_dir).expect("an existing work dir is fine");
    }
}
