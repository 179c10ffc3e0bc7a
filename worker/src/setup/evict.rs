//! Keeps what a worker caches under `--cache-max-gb`: its kept setups and the fetched sources
//! of its machine, the least recently used removed first, none that a job uses.
//!
//! A setup is in use while a job of this worker holds it (the setup's cell or its prepared
//! value) and while any worker holds the shared lock beside it; a source while a setup copies
//! it, under its lock. An eviction takes each lock at once or passes the directory by, so it
//! never waits for a job and never removes what one reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::fresh_tree;
use crate::setup::kept::{FETCHED_FILE, USED_FILE, in_use_path, lock_path, try_lock};
use crate::setup::key::CacheKey;
use crate::setup::{READY_FILE, Setups};

/// What one eviction pass found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Eviction {
    /// Disk bytes of the kept setups and sources before the pass.
    pub(crate) bytes_before: u64,
    /// Disk bytes of those left.
    pub(crate) bytes_after: u64,
    /// The directories removed, least recently used first.
    pub(crate) removed: Vec<PathBuf>,
    /// Directories that would have gone but a job uses them.
    pub(crate) in_use: Vec<PathBuf>,
}

/// A kept setup or source directory.
#[derive(Debug)]
struct KeptDir {
    dir: PathBuf,
    is_setup: bool,
    last_used: SystemTime,
    bytes: u64,
}

impl Setups {
    /// Removes the least recently used kept setups and sources that no job uses until they
    /// take `max_bytes` at most. Blocking: walks and removes directories.
    pub(crate) fn evict_to(&self, max_bytes: u64) -> Eviction {
        let mut kept_dirs = list(&self.dirs.venvs_dir, true);
        kept_dirs.extend(list(&self.dirs.repos_dir, false));
        let bytes_before: u64 = kept_dirs.iter().map(|kept| kept.bytes).sum();
        let mut eviction = Eviction {
            bytes_before,
            bytes_after: bytes_before,
            ..Eviction::default()
        };
        kept_dirs.sort_by_key(|kept| kept.last_used);
        for kept in kept_dirs {
            if eviction.bytes_after <= max_bytes {
                break;
            }
            match self.remove_unused(&kept) {
                Ok(true) => {
                    eviction.bytes_after = eviction.bytes_after.saturating_sub(kept.bytes);
                    eviction.removed.push(kept.dir);
                }
                Ok(false) => eviction.in_use.push(kept.dir),
                Err(error) => {
                    tracing::warn!(dir = %kept.dir.display(), %error, "cannot evict a kept directory");
                }
            }
        }
        eviction
    }

    /// Removes the kept directory unless something uses it; whether it did.
    fn remove_unused(&self, kept: &KeptDir) -> std::io::Result<bool> {
        if kept.is_setup && !self.forget_if_idle(&kept.dir) {
            return Ok(false);
        }
        // Both locks are taken in the order a setup takes them, and held through the removal.
        let Some(_lock) = try_lock(&lock_path(&kept.dir))? else {
            return Ok(false);
        };
        let _in_use = if kept.is_setup {
            match try_lock(&in_use_path(&kept.dir))? {
                Some(lock) => Some(lock),
                None => return Ok(false),
            }
        } else {
            None
        };
        fresh_tree::remove(&kept.dir);
        Ok(!kept.dir.exists())
    }

    /// Drops this worker's ready setup in `dir` unless a job holds it, so its shared lock goes
    /// with it; whether the setup is free to remove. A remembered failure stays remembered:
    /// only its directory goes.
    fn forget_if_idle(&self, dir: &Path) -> bool {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = cells
            .keys()
            .find(|key| self.dirs.venvs_dir.join(key.dir_name()) == dir)
            .cloned()
        else {
            return true;
        };
        let cell = &cells[&key];
        // The map's own reference is the only one when no job is preparing or running it.
        match cell.get() {
            Some(Ok(prepared)) if Arc::strong_count(cell) == 1 && Arc::strong_count(prepared) == 1 => {
                cells.remove(&key);
                true
            }
            Some(Err(_)) => true,
            _ => false,
        }
    }
}

/// The kept directories under `root` with their sizes and last uses; a directory that cannot
/// be measured is left out.
fn list(root: &Path, is_setup: bool) -> Vec<KeptDir> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut kept_dirs = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let bytes = match fresh_tree::usage(&dir) {
            Ok(usage) => usage.bytes,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot measure a kept directory");
                continue;
            }
        };
        let marker = if is_setup { READY_FILE } else { FETCHED_FILE };
        let last_used = [dir.join(USED_FILE), dir.join(marker), dir.clone()]
            .iter()
            .find_map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        kept_dirs.push(KeptDir {
            dir,
            is_setup,
            last_used,
            bytes,
        });
    }
    kept_dirs
}

/// Records that the kept directory `dir` was used at `when`, as a job's use does with the
/// time of day.
#[cfg(test)]
pub(crate) fn mark_used_at(dir: &Path, when: SystemTime) {
    crate::setup::kept::mark_used(dir);
    let stamp = std::fs::File::options()
        .write(true)
        .open(dir.join(USED_FILE))
        .expect("the stamp exists");
    stamp.set_modified(when).expect("set the stamp's time");
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use domain::{InterpreterProfile, Source};
    use nix::fcntl::FlockArg;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::sandbox::Sandbox;
    use crate::setup::kept::lock_file;
    use crate::setup::key::{SourceKey, VenvKey};
    use crate::setup::{Installer, Prepared, SetupCell, SetupDirs};

    const MIB: u64 = 1024 * 1024;

    fn profile() -> InterpreterProfile {
        InterpreterProfile {
            executable: "/opt/python3.13t/bin/python3".into(),
            version: "3.13.5".into(),
            version_short: "3.13.5".into(),
            major_minor: "3.13".into(),
            abi_tag: "cp313t".into(),
            free_threaded: true,
            gil_enabled_by_default: Some(false),
            tsan: false,
            debug: false,
            platform: "linux-x86_64".into(),
            configure_args: String::new(),
        }
    }

    pub(crate) fn setups(root: &Path) -> Setups {
        let dirs = SetupDirs {
            venvs_dir: root.join("venvs"),
            repos_dir: root.join("repos"),
            cache_dir: root.join("cache"),
            worker_dir: root.join("worker"),
        };
        std::fs::create_dir_all(&dirs.venvs_dir).expect("mkdir");
        Setups::new(
            "/opt/python3.13t/bin/python3".into(),
            &profile(),
            dirs,
            Installer::Pip,
            "/usr/bin:/bin".into(),
            Arc::new(Sandbox::unsealed()),
            CancellationToken::new(),
        )
    }

    fn venv_key(name: &str) -> VenvKey {
        VenvKey {
            package: SourceKey {
                name: name.into(),
                version: Some("1.0".into()),
                source: Source::Sdist,
            },
            interpreter: "ft".into(),
            install_command: "pip install .".into(),
            setup_deps: Vec::new(),
        }
    }

    /// A kept directory of `MIB` bytes, `root/name`, last used `hours_ago`.
    fn kept_dir(root: &Path, name: &str, hours_ago: u64) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("tree")).expect("mkdir");
        std::fs::write(dir.join("tree/payload"), vec![7u8; MIB as usize]).expect("write");
        mark_used_at(&dir, SystemTime::now() - Duration::from_secs(hours_ago * 3600));
        dir
    }

    /// A ready setup `name` kept by `setups`, last used `hours_ago`, as a job of this worker
    /// left it: its cell holds it with its shared lock.
    fn ready_setup(setups: &Setups, name: &str, hours_ago: u64) -> (PathBuf, Arc<Prepared>) {
        let key = venv_key(name);
        let dir = kept_dir(&setups.dirs.venvs_dir, &key.dir_name(), hours_ago);
        let in_use = lock_file(&in_use_path(&dir), FlockArg::LockShared).expect("shared lock");
        let prepared = Arc::new(Prepared {
            setup_dir: dir.clone(),
            source_dir: dir.join("tree"),
            env: Vec::new(),
            extensions: None,
            installed: Default::default(),
            _in_use: Some(in_use),
        });
        let cell: SetupCell = Arc::new(tokio::sync::OnceCell::new_with(Some(Ok(prepared.clone()))));
        setups.cells.lock().expect("cells").insert(key, cell);
        (dir, prepared)
    }

    #[test]
    fn the_least_recently_used_setups_and_sources_go_first_and_none_that_a_job_uses() {
        let temp = tempfile::tempdir().expect("tempdir");
        let setups = setups(temp.path());
        let venvs = setups.dirs.venvs_dir.clone();
        let repos = setups.dirs.repos_dir.clone();
        let (oldest, _) = ready_setup(&setups, "oldest", 50);
        // Another worker of the machine runs a job in this one: it holds the shared lock.
        let elsewhere = kept_dir(&venvs, "elsewhere-0011223344556677", 48);
        let _other_worker = lock_file(&in_use_path(&elsewhere), FlockArg::LockShared).expect("shared lock");
        let old_source = kept_dir(&repos, "old-source", 45);
        // A job of this worker runs the setup: it holds the prepared value.
        let (running, running_job) = ready_setup(&setups, "running", 40);
        let idle = kept_dir(&venvs, "idle-8899aabbccddeeff", 30);
        // A setup copies this source now, under its lock.
        let copied_source = kept_dir(&repos, "copied-source", 20);
        let copy = try_lock(&lock_path(&copied_source)).expect("lock").expect("free");
        let recent = kept_dir(&venvs, "recent-0123456789abcdef", 1);

        let eviction = setups.evict_to(2 * MIB + MIB / 2);
        assert!(eviction.bytes_before >= 7 * MIB, "{eviction:?}");
        // What is left is over the limit, but each of it is in use.
        assert!((3 * MIB..4 * MIB).contains(&eviction.bytes_after), "{eviction:?}");
        assert_eq!(
            eviction.removed,
            [oldest.clone(), old_source, idle, recent],
            "{eviction:?}"
        );
        assert_eq!(
            eviction.in_use,
            [elsewhere.clone(), running.clone(), copied_source.clone()]
        );
        for removed in &eviction.removed {
            assert!(!removed.exists(), "{} is still there", removed.display());
        }
        for kept in [&elsewhere, &running, &copied_source] {
            assert!(kept.join("tree/payload").exists(), "{} was evicted", kept.display());
        }
        let cells = setups.cells.lock().expect("cells");
        assert!(
            !cells.contains_key(&venv_key("oldest")),
            "the evicted setup is forgotten"
        );
        assert!(cells.contains_key(&venv_key("running")), "the running one is not");
        drop(cells);

        // Once the job and the copy are done, the next pass may take them.
        drop(running_job);
        drop(copy);
        let eviction = setups.evict_to(2 * MIB + MIB / 2);
        assert_eq!(eviction.removed, [running], "{eviction:?}");
        assert_eq!(eviction.in_use, [elsewhere]);
        assert!(copied_source.exists(), "the limit was met before the source's turn");
        assert!(!setups.cells.lock().expect("cells").contains_key(&venv_key("running")));
    }

    #[test]
    fn a_cache_under_its_limit_is_left_alone() {
        let temp = tempfile::tempdir().expect("tempdir");
        let setups = setups(temp.path());
        let dir = kept_dir(&setups.dirs.venvs_dir, "small-0011223344556677", 100);
        let eviction = setups.evict_to(10 * MIB);
        assert!(
            eviction.removed.is_empty() && eviction.in_use.is_empty(),
            "{eviction:?}"
        );
        assert_eq!(eviction.bytes_before, eviction.bytes_after);
        assert!(dir.exists());
    }
}
