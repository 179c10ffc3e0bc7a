//! The outcome spool: every outcome is on disk before it is sent and stays there until the
//! coordinator acknowledges it, so neither a coordinator outage nor a worker restart loses it.

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
    /// The spool in `dir`, created if missing.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
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
        std::fs::rename(&temp, self.dir.join(name))
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
            match std::fs::read(&path).map(|bytes| serde_json::from_slice::<SpooledOutcome>(&bytes)) {
                Ok(Ok(outcome)) => outcomes.push(outcome),
                Ok(Err(error)) => tracing::warn!(path = %path.display(), error = %error, "unreadable spooled outcome"),
                Err(error) => tracing::warn!(path = %path.display(), error = %error, "unreadable spooled outcome"),
            }
        }
        outcomes.sort_by_key(|o| o.job_id);
        Ok(outcomes)
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
}
