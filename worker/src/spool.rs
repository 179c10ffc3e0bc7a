//! The outcome spool: every outcome is on disk before it is sent and stays there until the
//! coordinator acknowledges it, so neither a coordinator outage nor a worker restart loses it.
//! A file that cannot be read back, or an outcome sent in [`MAX_SESSIONS_SENT`] sessions without
//! an acknowledgement, is moved to `bad/` and reported once, never resent.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use domain::{JobId, JobResult, LeaseToken};
use serde::{Deserialize, Serialize};

/// The most sessions an outcome is sent in: one that the coordinator has not acknowledged by
/// then (it cannot decode it, or fails every time it records it) is given up.
pub(crate) const MAX_SESSIONS_SENT: u32 = 5;

/// An outcome waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SpooledOutcome {
    pub(crate) job_id: JobId,
    pub(crate) lease_token: LeaseToken,
    pub(crate) result: JobResult,
    /// In how many sessions it was sent, counted on disk so a restart does not reset it; 0 in
    /// a file spooled before the count was kept.
    #[serde(default)]
    pub(crate) sessions_sent: u32,
}

/// A directory of spooled outcomes, one file per job.
#[derive(Debug, Clone)]
pub(crate) struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool in `dir`, created if missing, readable by this user only.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Spool { dir: dir.to_path_buf() })
    }

    /// Writes the outcome durably (temp file, fsync, rename).
    pub(crate) fn put(&self, outcome: &SpooledOutcome) -> std::io::Result<()> {
        use std::io::Write;
        let name = file_name(outcome);
        let temp = self.dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&serde_json::to_vec(outcome)?)?;
        file.sync_all()?;
        std::fs::rename(&temp, self.dir.join(name))?;
        // The rename is durable only once the directory that records it is.
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets every outcome of the job.
    pub(crate) fn remove(&self, job_id: JobId) -> std::io::Result<()> {
        let prefix = format!("{job_id}-");
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Every outcome still waiting, for a session that is starting to send again: each is
    /// counted as sent once more, durably, before it is returned; one already sent in
    /// [`MAX_SESSIONS_SENT`] sessions is set aside instead.
    pub(crate) fn resend(&self) -> std::io::Result<Vec<SpooledOutcome>> {
        let mut outcomes = Vec::new();
        for mut outcome in self.pending()? {
            if outcome.sessions_sent >= MAX_SESSIONS_SENT {
                let path = self.dir.join(file_name(&outcome));
                let reason = format!(
                    "job {}: sent in {} sessions without an acknowledgement",
                    outcome.job_id, outcome.sessions_sent
                );
                self.set_aside(&path, &reason);
                continue;
            }
            outcome.sessions_sent += 1;
            if let Err(error) = self.put(&outcome) {
                // Sent all the same: an outcome is worth more than its count.
                tracing::warn!(job.id = %outcome.job_id, %error, "cannot count a resent outcome in the spool");
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Every outcome still waiting; unreadable files are set aside.
    pub(crate) fn pending(&self) -> std::io::Result<Vec<SpooledOutcome>> {
        let mut outcomes = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(|error| error.to_string())
                .and_then(|bytes| serde_json::from_slice::<SpooledOutcome>(&bytes).map_err(|error| error.to_string()));
            match read {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => self.set_aside(&path, &format!("unreadable: {error}")),
            }
        }
        outcomes.sort_by_key(|o| o.job_id);
        Ok(outcomes)
    }

    /// Moves a file that must not be sent to `bad/`, so it is reported once and never sent.
    fn set_aside(&self, path: &Path, reason: &str) {
        let bad = self.dir.join("bad");
        let moved = std::fs::create_dir_all(&bad)
            .and_then(|()| std::fs::rename(path, bad.join(path.file_name().unwrap_or_default())));
        match moved {
            Ok(()) => {
                tracing::warn!(path = %path.display(), %reason, "spooled outcome moved to bad/, never to be sent");
            }
            Err(move_error) => {
                tracing::warn!(path = %path.display(), %reason, %move_error, "spooled outcome that must not be sent left in place");
            }
        }
    }
}

/// The file that holds `outcome`: one per job and lease.
fn file_name(outcome: &SpooledOutcome) -> String {
    format!("{}-{}.json", outcome.job_id, outcome.lease_token)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use domain::{SetupFailure, SetupStage};

    /// A spooled setup failure of job `job_id`, sent once.
    pub(crate) fn setup_failure(job_id: i64) -> SpooledOutcome {
        SpooledOutcome {
            job_id: JobId(job_id),
            lease_token: LeaseToken::random(),
            result: JobResult::SetupFailed(SetupFailure {
                stage: SetupStage::Install,
                message: "m".into(),
                log_tail: "t".into(),
                duration_ms: 1,
                infrastructure: false,
            }),
            sessions_sent: 1,
        }
    }

    #[test]
    fn outcomes_stay_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let outcome = setup_failure(7);
        spool.put(&outcome).expect("put");
        let reopened = Spool::open(dir.path()).expect("reopen");
        assert_eq!(reopened.pending().expect("pending"), vec![outcome]);
        reopened.remove(JobId(7)).expect("remove");
        assert!(reopened.pending().expect("pending").is_empty());
    }

    #[test]
    fn an_unreadable_outcome_is_set_aside_once_and_the_spool_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let spool_dir = dir.path().join("spool");
        let spool = Spool::open(&spool_dir).expect("open");
        let mode = std::fs::metadata(&spool_dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        std::fs::write(spool_dir.join("9-garbage.json"), b"{not json").expect("write");
        assert!(spool.pending().expect("pending").is_empty());
        assert!(spool_dir.join("bad/9-garbage.json").exists(), "moved to bad/");
        assert!(!spool_dir.join("9-garbage.json").exists());
        assert!(spool.pending().expect("pending again").is_empty());
    }

    #[test]
    fn an_outcome_never_acknowledged_is_given_up_after_its_sessions_even_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool_dir = dir.path().join("spool");
        let outcome = setup_failure(5);
        Spool::open(&spool_dir).expect("open").put(&outcome).expect("put");
        // Sent once when spooled, then once at the start of each later session, each by a
        // worker that restarted and opened the spool anew.
        for sessions_sent in 2..=MAX_SESSIONS_SENT {
            let resent = Spool::open(&spool_dir).expect("reopen").resend().expect("resend");
            assert_eq!(resent.len(), 1, "session {sessions_sent}");
            assert_eq!(resent[0].sessions_sent, sessions_sent);
            assert_eq!(resent[0].result, outcome.result);
        }
        let spool = Spool::open(&spool_dir).expect("reopen");
        assert!(spool.resend().expect("resend").is_empty(), "given up");
        let name = format!("5-{}.json", outcome.lease_token);
        assert!(spool_dir.join("bad").join(&name).exists(), "moved to bad/");
        assert!(spool.resend().expect("resend again").is_empty());
    }

    #[test]
    fn an_outcome_spooled_before_sessions_were_counted_is_read_as_never_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let outcome = setup_failure(3);
        let mut json = serde_json::to_value(&outcome).expect("json");
        json.as_object_mut().expect("object").remove("sessions_sent");
        let name = format!("3-{}.json", outcome.lease_token);
        std::fs::write(dir.path().join(name), json.to_string()).expect("write");
        let resent = spool.resend().expect("resend");
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].sessions_sent, 1);
    }
}
