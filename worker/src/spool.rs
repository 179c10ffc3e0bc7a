//! The outcome spool: every outcome is on disk before it is sent and stays there until the
//! coordinator acknowledges it, so neither a coordinator outage nor a worker restart loses it.
//! A file that cannot be read back is moved to `bad/` and reported once, never resent.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use domain::{JobId, JobResult, LeaseToken};
use serde::{Deserialize, Serialize};

/// An outcome waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SpooledOutcome {
    pub(crate) job_id: JobId,
    pub(crate) lease_token: LeaseToken,
    pub(crate) result: JobResult,
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
        let name = format!("{}-{}.json", outcome.job_id, outcome.lease_token);
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

    /// Every outcome still waiting; unreadable files are skipped with a warning.
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
                Err(error) => self.set_aside(&path, &error),
            }
        }
        outcomes.sort_by_key(|o| o.job_id);
        Ok(outcomes)
    }

    /// Moves an unreadable file to `bad/`, so it is reported once and never sent.
    fn set_aside(&self, path: &Path, error: &str) {
        let bad = self.dir.join("bad");
        let moved = std::fs::create_dir_all(&bad)
            .and_then(|()| std::fs::rename(path, bad.join(path.file_name().unwrap_or_default())));
        match moved {
            Ok(()) => tracing::warn!(path = %path.display(), %error, "unreadable spooled outcome moved to bad/"),
            Err(move_error) => {
                tracing::warn!(path = %path.display(), %error, %move_error, "unreadable spooled outcome left in place");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{SetupFailure, SetupStage};

    #[test]
    fn outcomes_stay_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let outcome = SpooledOutcome {
            job_id: JobId(7),
            lease_token: LeaseToken::random(),
            result: JobResult::SetupFailed(SetupFailure {
                stage: SetupStage::Install,
                message: "m".into(),
                log_tail: "t".into(),
                duration_ms: 1,
            }),
        };
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
}
