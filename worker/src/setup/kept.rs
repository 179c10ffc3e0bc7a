//! What a worker keeps between runs besides its spool: a lock per setup or fetched source, so
//! two processes never build the same one at once, the fetched sources under the repos dir,
//! copied into each setup's tree, and the stamp whose time says when each was last used.

use std::path::{Path, PathBuf};

use domain::{PackageSpec, SetupStage, Source};
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Seal;
use crate::setup::error::SetupError;
use crate::setup::key::{CacheKey, SourceKey};
use crate::setup::source::{copy_tree, fetch};

/// The file in a fetched source directory that says the fetch completed, naming the root.
pub(crate) const FETCHED_FILE: &str = "ftsurvey-fetched.json";

/// The file in a kept setup or source directory whose modification time is its last use.
pub(crate) const USED_FILE: &str = "ftsurvey-used";

/// Puts the package's source tree at `dest`: a local path is copied without build products; a
/// pinned sdist or a git clone is fetched once into `repos_dir` and copied whole; an sdist of
/// the latest version is fetched afresh. Returns the tree's root.
pub(crate) async fn source_tree(
    package: &PackageSpec,
    python: &Path,
    repos_dir: &Path,
    dest: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
) -> Result<PathBuf, SetupError> {
    let keepable = match &package.source {
        Source::Path { .. } => false,
        Source::Sdist => package.version.is_some(),
        Source::Git { .. } => true,
    };
    if !keepable {
        return fetch(package, python, dest, env, seal, cancel).await;
    }
    let key = SourceKey::of(package);
    let kept = repos_dir.join(key.dir_name());
    // Held through the copy, so that no eviction removes the source while it is read.
    let _lock = lock(lock_path(&kept)).await?;
    let fetched = kept.join(FETCHED_FILE);
    let recorded = std::fs::read(&fetched)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<PathBuf>(&bytes).ok());
    let root = match recorded {
        Some(root) if root.is_dir() && key.is_stored_in(&kept) => root,
        _ => {
            let io = |e: std::io::Error| SetupError::worker(SetupStage::Source, format!("{}: {e}", kept.display()));
            if kept.exists() {
                std::fs::remove_dir_all(&kept).map_err(io)?;
            }
            std::fs::create_dir_all(&kept).map_err(io)?;
            key.write_to(&kept).map_err(io)?;
            let root = fetch(package, python, &kept.join("tree"), env, seal, cancel).await?;
            std::fs::write(&fetched, serde_json::to_vec(&root).expect("a path serialises")).map_err(io)?;
            root
        }
    };
    mark_used(&kept);
    let (from, to) = (root.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || copy_tree(&from, &to, false))
        .await
        .map_err(|e| SetupError::worker(SetupStage::Source, format!("copy task failed: {e}")))?
        .map_err(|e| SetupError::new(SetupStage::Source, format!("cannot copy {}: {e}", root.display())))?;
    Ok(dest.to_path_buf())
}

/// The lock file of the kept directory `dir`, beside it: held exclusively while the directory
/// is made, checked, read or evicted.
pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    beside(dir, "lock")
}

/// The file beside the kept setup `dir` that each worker using the setup holds a shared lock
/// on, so that no eviction removes it under a job.
pub(crate) fn in_use_path(dir: &Path) -> PathBuf {
    beside(dir, "in-use")
}

/// `dir` with `.suffix` appended to its name (not replacing what follows a dot in a package's
/// name, as `with_extension` would).
fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// Records that the kept directory `dir` was used now, for the least-recently-used eviction; a
/// stamp that cannot be written only makes the directory look older.
pub(crate) fn mark_used(dir: &Path) {
    let stamp = dir.join(USED_FILE);
    let touched = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&stamp)
        .and_then(|file| file.set_modified(std::time::SystemTime::now()));
    if let Err(error) = touched {
        tracing::warn!(path = %stamp.display(), %error, "cannot record when a kept directory was used");
    }
}

/// Takes an exclusive lock on `path` (created if missing), waiting for another process that
/// holds it; released when the returned value is dropped.
pub(crate) async fn lock(path: PathBuf) -> Result<Flock<std::fs::File>, SetupError> {
    lock_as(path, FlockArg::LockExclusive).await
}

/// Takes a shared lock on `path` (created if missing), which keeps an eviction from taking the
/// exclusive one while the value lives.
pub(crate) async fn lock_shared(path: PathBuf) -> Result<Flock<std::fs::File>, SetupError> {
    lock_as(path, FlockArg::LockShared).await
}

async fn lock_as(path: PathBuf, arg: FlockArg) -> Result<Flock<std::fs::File>, SetupError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || lock_file(&path, arg))
        .await
        .map_err(|e| SetupError::worker(SetupStage::Source, format!("lock task failed: {e}")))?
        .map_err(|e| SetupError::worker(SetupStage::Source, format!("cannot lock {shown}: {e}")))
}

/// Takes an exclusive lock on `path` if no one holds it, at once: `None` when someone does.
pub(crate) fn try_lock(path: &Path) -> std::io::Result<Option<Flock<std::fs::File>>> {
    match lock_file(path, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error),
    }
}

pub(crate) fn lock_file(path: &Path, arg: FlockArg) -> std::io::Result<Flock<std::fs::File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    Flock::lock(file, arg).map_err(|(_, errno)| std::io::Error::from(errno))
}
