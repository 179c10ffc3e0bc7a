//! What a worker keeps between runs besides its spool: a lock per setup or fetched source, so
//! two processes never build the same one at once, and the fetched sources under the repos
//! dir, copied into each setup's tree.

use std::path::{Path, PathBuf};

use domain::{PackageSpec, SetupStage, Source};
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Seal;
use crate::setup::error::SetupError;
use crate::setup::key::{CacheKey, SourceKey};
use crate::setup::source::{copy_tree, fetch};

/// The file in a fetched source directory that says the fetch completed, naming the root.
const FETCHED_FILE: &str = "ftsurvey-fetched.json";

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
    let root = {
        let _lock = lock(kept.with_extension("lock")).await?;
        let fetched = kept.join(FETCHED_FILE);
        let recorded = std::fs::read(&fetched)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<PathBuf>(&bytes).ok());
        match recorded {
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
        }
    };
    let (from, to) = (root.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || copy_tree(&from, &to, false))
        .await
        .map_err(|e| SetupError::worker(SetupStage::Source, format!("copy task failed: {e}")))?
        .map_err(|e| SetupError::new(SetupStage::Source, format!("cannot copy {}: {e}", root.display())))?;
    Ok(dest.to_path_buf())
}

/// Takes an exclusive lock on `path` (created if missing), waiting for another process that
/// holds it; released when the returned value is dropped.
pub(crate) async fn lock(path: PathBuf) -> Result<Flock<std::fs::File>, SetupError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await
    .map_err(|e| SetupError::worker(SetupStage::Source, format!("lock task failed: {e}")))?
    .map_err(|e| SetupError::worker(SetupStage::Source, format!("cannot lock {shown}: {e}")))
}
