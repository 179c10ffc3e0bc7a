//! Keeps a worker's disk: at start and then every few seconds (and after each job), the
//! housekeeper deletes logs older than `--keep-logs`, evicts kept setups and sources beyond
//! `--cache-max-gb`, and checks the free space of the work dir against `--min-free-gb`: below
//! it, the oldest logs go first, and if that is not enough the worker refuses new jobs, saying
//! why, until space comes back.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::DiskPolicy;
use crate::iteration_logs;
use crate::setup::Setups;

/// How often the housekeeper looks, when no job ending wakes it first.
const EVERY: Duration = Duration::from_secs(15);
/// How often, at most, it measures the kept setups and sources: each walks every file.
const EVICTION_EVERY: Duration = Duration::from_secs(60);

/// The log directories of the iterations running now, which no cleaning removes.
pub(crate) type InUseLogs = Box<dyn Fn() -> HashSet<PathBuf> + Send + Sync>;

/// What keeps a worker's disk, and says whether it refuses new jobs.
pub(crate) struct Housekeeper {
    policy: DiskPolicy,
    /// Whose free space counts: the spool and logs live there.
    work_dir: PathBuf,
    logs_dir: PathBuf,
    setups: Arc<Setups>,
    in_use_logs: InUseLogs,
    /// Why the worker takes no new jobs; `None` while it takes them.
    refusing: watch::Sender<Option<String>>,
    last_eviction: Option<Instant>,
}

impl std::fmt::Debug for Housekeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Housekeeper")
            .field("policy", &self.policy)
            .field("work_dir", &self.work_dir)
            .field("logs_dir", &self.logs_dir)
            .finish_non_exhaustive()
    }
}

impl Housekeeper {
    /// A housekeeper of the worker's disk, and the reason it refuses new jobs as it changes.
    pub(crate) fn new(
        policy: DiskPolicy,
        work_dir: PathBuf,
        setups: Arc<Setups>,
        in_use_logs: InUseLogs,
    ) -> (Self, watch::Receiver<Option<String>>) {
        let (refusing, receiver) = watch::channel(None);
        let keeper = Housekeeper {
            policy,
            work_dir,
            logs_dir: setups.logs_dir(),
            setups,
            in_use_logs,
            refusing,
            last_eviction: None,
        };
        (keeper, receiver)
    }

    /// Cleans once, then again every few seconds or when `wake` is notified, until `shutdown`.
    pub(crate) async fn run(mut self, wake: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            self = match tokio::task::spawn_blocking(move || {
                self.pass();
                self
            })
            .await
            {
                Ok(keeper) => keeper,
                Err(error) => {
                    tracing::error!(%error, "the disk housekeeping task failed; nothing more is cleaned");
                    return;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// One round: old logs, the cache, then the free space. Blocking.
    pub(crate) fn pass(&mut self) {
        if let Some(keep) = self.policy.keep_logs {
            let removed =
                iteration_logs::remove_older_than(&self.logs_dir, keep, SystemTime::now(), &(self.in_use_logs)());
            if !removed.is_empty() {
                tracing::info!(removed = removed.len(), "deleted iteration logs older than --keep-logs");
            }
        }
        if let Some(max_bytes) = self.policy.cache_max_bytes
            && self.last_eviction.is_none_or(|last| last.elapsed() >= EVICTION_EVERY)
        {
            self.last_eviction = Some(Instant::now());
            let eviction = self.setups.evict_to(max_bytes);
            if !eviction.removed.is_empty() {
                tracing::info!(
                    removed = eviction.removed.len(),
                    bytes_before = eviction.bytes_before,
                    bytes_after = eviction.bytes_after,
                    "evicted the least recently used kept setups and sources"
                );
            }
            if eviction.bytes_after > max_bytes {
                tracing::warn!(
                    bytes = eviction.bytes_after,
                    in_use = eviction.in_use.len(),
                    "kept setups and sources stay over --cache-max-gb: jobs use the rest"
                );
            }
        }
        let refusing = self.free_space_check();
        self.refusing.send_if_modified(|current| {
            if *current == refusing {
                return false;
            }
            match &refusing {
                Some(reason) => tracing::warn!(reason = %reason, "taking no new jobs"),
                None => tracing::info!("free disk is back over --min-free-gb; taking jobs again"),
            }
            *current = refusing;
            true
        });
    }

    /// Why the worker should refuse new jobs, after deleting its oldest logs to avoid it.
    fn free_space_check(&self) -> Option<String> {
        if self.policy.min_free_bytes == 0 {
            return None;
        }
        let free = || match free_bytes(&self.work_dir) {
            Ok(free) => Some(free),
            Err(error) => {
                tracing::warn!(dir = %self.work_dir.display(), %error, "cannot read the free disk space");
                None
            }
        };
        let short = |free: Option<u64>| free.is_some_and(|free| free < self.policy.min_free_bytes);
        if !short(free()) {
            return None;
        }
        let removed = iteration_logs::remove_oldest_while(&self.logs_dir, &(self.in_use_logs)(), || short(free()));
        if !removed.is_empty() {
            tracing::warn!(
                removed = removed.len(),
                "free disk under --min-free-gb: deleted the oldest iteration logs"
            );
        }
        let free = free()?;
        (free < self.policy.min_free_bytes).then(|| refusal(free, &self.policy.min_free_shown, &self.work_dir))
    }
}

/// The bytes an unprivileged user may still write on the filesystem of `dir`.
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    #[allow(clippy::useless_conversion)] // Both are u64 on some targets, not on all.
    Ok(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// What the worker says while it refuses new jobs for want of disk.
fn refusal(free: u64, min_free_shown: &str, dir: &Path) -> String {
    format!(
        "free disk {:.1} GiB in {} is under --min-free-gb {min_free_shown}",
        free as f64 / GIB,
        dir.display()
    )
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    /// A log directory of run `run`, iteration `n`, under `logs`, written `hours_ago`.
    fn log_dir(logs: &Path, run: &str, n: u32, hours_ago: u64) -> PathBuf {
        crate::iteration_logs::tests::log_dir(logs, run, "pkg", n, Duration::from_secs(hours_ago * 3600))
    }

    #[test]
    fn a_pass_deletes_old_logs_then_refuses_while_space_is_short_and_takes_jobs_once_it_is_not() {
        let temp = tempfile::tempdir().expect("tempdir");
        let setups = Arc::new(crate::setup::evict::tests::setups(temp.path()));
        let logs = setups.logs_dir();
        let expired = log_dir(&logs, "run-a", 1, 72);
        let running = log_dir(&logs, "run-b", 1, 5);
        let recent = log_dir(&logs, "run-b", 2, 1);
        let in_use: InUseLogs = {
            let running = running.clone();
            Box::new(move || HashSet::from([running.clone()]))
        };
        // No disk has this much free: short of space for real.
        let policy = DiskPolicy {
            keep_logs: Some(Duration::from_secs(48 * 3600)),
            min_free_bytes: u64::MAX,
            min_free_shown: "1000000".into(),
            ..DiskPolicy::default()
        };
        let (mut keeper, refusing) = Housekeeper::new(policy, temp.path().to_path_buf(), setups, in_use);

        keeper.pass();
        assert!(!expired.exists(), "a log older than --keep-logs is deleted");
        assert!(!recent.exists(), "the oldest logs go when space is short");
        assert!(running.exists(), "a running iteration's logs stay");
        let reason = refusing.borrow().clone().expect("refusing");
        assert!(
            reason.starts_with("free disk ")
                && reason.ends_with(&format!("in {} is under --min-free-gb 1000000", temp.path().display())),
            "{reason}"
        );

        keeper.policy.min_free_bytes = 1;
        keeper.pass();
        assert_eq!(*refusing.borrow(), None);
    }

    #[test]
    fn the_refusal_names_the_free_space_the_dir_and_the_flag() {
        let reason = refusal(1_288_490_189, "2", Path::new("/var/cache/ftsurvey"));
        assert_eq!(
            reason,
            "free disk 1.2 GiB in /var/cache/ftsurvey is under --min-free-gb 2"
        );
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        let temp = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(temp.path()).expect("statvfs");
        assert!(free > 0, "{free}");
        let error = free_bytes(&temp.path().join("missing")).expect_err("no such directory");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
