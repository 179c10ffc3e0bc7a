//! How long a worker keeps its iterations' logs, `logs/<run>/<package>/<mode>-<n>-a<attempt>/`
//! (up to 2 x 64 MiB each): those older than `--keep-logs` go, and the oldest go first when
//! free space runs low. The logs of a running iteration are never removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use domain::IterationLogKey;

use crate::shell::sanitize;

/// Levels below the logs root of an iteration's log directory: run, package, iteration.
const DEPTH: usize = 3;

/// The names of an iteration's log directory below the logs root, one per level:
/// `<run>/<package>/<mode>-<iteration>-a<attempt>`.
pub(crate) fn log_dir_names(key: &IterationLogKey) -> [String; DEPTH] {
    [
        key.run_id.to_string(),
        sanitize(&key.package),
        format!("{}-{}-a{}", key.mode.as_str(), key.iteration, key.attempt),
    ]
}

/// An iteration's log directory and when it was last written.
#[derive(Debug)]
struct LogDir {
    dir: PathBuf,
    modified: SystemTime,
}

/// Removes the log directories under `root` last written before `now - keep`, except those
/// in `in_use`; returns those removed.
pub(crate) fn remove_older_than(
    root: &Path,
    keep: Duration,
    now: SystemTime,
    in_use: &HashSet<PathBuf>,
) -> Vec<PathBuf> {
    let cutoff = now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = Vec::new();
    for log in log_dirs(root) {
        if log.modified >= cutoff {
            break;
        }
        if !in_use.contains(&log.dir) && remove(root, &log.dir) {
            removed.push(log.dir);
        }
    }
    removed
}

/// Removes the log directories under `root`, oldest first and except those in `in_use`, while
/// `more` says space is still short; returns those removed.
pub(crate) fn remove_oldest_while(
    root: &Path,
    in_use: &HashSet<PathBuf>,
    mut more: impl FnMut() -> bool,
) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for log in log_dirs(root) {
        if in_use.contains(&log.dir) {
            continue;
        }
        if !more() {
            break;
        }
        if remove(root, &log.dir) {
            removed.push(log.dir);
        }
    }
    removed
}

/// Every iteration's log directory under `root`, oldest first; what cannot be read is left
/// out.
fn log_dirs(root: &Path) -> Vec<LogDir> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..DEPTH {
        level = level
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.path())
            .collect();
    }
    let mut logs: Vec<LogDir> = level
        .into_iter()
        .filter_map(|dir| {
            let modified = last_written(&dir)?;
            Some(LogDir { dir, modified })
        })
        .collect();
    logs.sort_by_key(|log| log.modified);
    logs
}

/// When the directory or a file in it was last written.
fn last_written(dir: &Path) -> Option<SystemTime> {
    let own = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    let files = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| entry.metadata().and_then(|m| m.modified()).ok());
    Some(files.fold(own, SystemTime::max))
}

/// Removes the log directory `dir`, then its package's and run's directories if that left
/// them empty; whether `dir` is gone.
fn remove(root: &Path, dir: &Path) -> bool {
    crate::fresh_tree::remove(dir);
    if dir.exists() {
        return false;
    }
    for parent in dir.ancestors().skip(1).take(DEPTH - 1) {
        // Fails, as it should, on a directory that is not empty.
        if parent == root || std::fs::remove_dir(parent).is_err() {
            break;
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// An iteration's log directory under `root`, written `days_ago`.
    pub(crate) fn log_dir(root: &Path, run: &str, package: &str, iteration: u32, age: Duration) -> PathBuf {
        let dir = root.join(run).join(package).join(format!("ft-{iteration}-a1"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let when = SystemTime::now() - age;
        for name in ["stdout.log", "stderr.log"] {
            let file = std::fs::File::create(dir.join(name)).expect("create");
            file.set_modified(when).expect("set the file's time");
        }
        std::fs::File::open(&dir)
            .and_then(|handle| handle.set_modified(when))
            .expect("set the directory's time");
        dir
    }

    #[test]
    fn logs_older_than_kept_go_with_their_emptied_parents_and_a_running_iterations_stay() {
        let temp = tempfile::tempdir().expect("tempdir");
        let root = temp.path().join("logs");
        let old_run = log_dir(&root, "run-a", "pkg", 1, DAY * 10);
        let old_running = log_dir(&root, "run-b", "pkg", 1, DAY * 9);
        let old_beside_new = log_dir(&root, "run-c", "pkg", 1, DAY * 8);
        let new = log_dir(&root, "run-c", "pkg", 2, DAY * 1);
        let in_use = HashSet::from([old_running.clone()]);

        let removed = remove_older_than(&root, DAY * 7, SystemTime::now(), &in_use);
        assert_eq!(removed, [old_run, old_beside_new.clone()]);
        assert!(!root.join("run-a").exists(), "an emptied run's directory goes too");
        assert!(old_running.exists() && new.exists());
        assert!(!old_beside_new.exists() && root.join("run-c/pkg").exists());
    }

    #[test]
    fn when_space_runs_low_the_oldest_logs_go_first_until_it_is_enough() {
        let temp = tempfile::tempdir().expect("tempdir");
        let root = temp.path().join("logs");
        let oldest = log_dir(&root, "run-a", "pkg", 1, DAY * 3);
        let running = log_dir(&root, "run-a", "pkg", 2, DAY * 2);
        let older = log_dir(&root, "run-b", "other", 1, DAY * 1);
        let newest = log_dir(&root, "run-b", "other", 2, Duration::ZERO);
        let in_use = HashSet::from([running.clone()]);

        // Short of space for two more removals.
        let mut short = 2;
        let removed = remove_oldest_while(&root, &in_use, || {
            short -= 1;
            short >= 0
        });
        assert_eq!(removed, [oldest, older]);
        assert!(running.exists() && newest.exists());
    }
}
