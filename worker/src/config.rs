//! What a worker is told to run with: its id, the coordinator, the target interpreter, its
//! directories and its credentials.

use std::path::PathBuf;
use std::time::Duration;

use domain::WorkerId;

use crate::sandbox::SandboxConfig;
use crate::setup::installer::Installer;

/// What a worker needs to run. Its `Debug` output hides the token.
#[derive(Clone)]
pub struct WorkerConfig {
    pub worker_id: WorkerId,
    /// e.g. `http://127.0.0.1:50051`.
    pub coordinator_url: String,
    pub target_python: PathBuf,
    /// Jobs run at once.
    pub slots: u32,
    /// The outcome spool and iteration logs live here, under `workers/<id>`.
    pub work_dir: PathBuf,
    /// Venvs with their source trees, kept across runs (under `<id>/` per worker).
    pub venvs_dir: PathBuf,
    /// Fetched sources, kept across runs and shared by the workers of the machine.
    pub repos_dir: PathBuf,
    /// The pip (and uv) cache shared by every venv.
    pub pip_cache_dir: PathBuf,
    /// uv when the machine has it, pip otherwise.
    pub installer: Installer,
    /// `PATH` for package commands, after the venv's `bin`.
    pub base_path: String,
    /// Accept a target that is not free-threaded.
    pub allow_gil_build: bool,
    /// The bearer token the coordinator requires of workers.
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for an `https://` coordinator.
    pub ca_cert: Option<Vec<u8>>,
    /// The sandbox and limits of every command run for a package.
    pub sandbox: SandboxConfig,
    /// How much of its disk the worker keeps, and when it stops taking jobs.
    pub disk: DiskPolicy,
}

/// What a worker deletes to keep its disk, and the free space it needs to take jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskPolicy {
    /// The most bytes kept setups and fetched sources may take together; the least recently
    /// used of those no job uses go first. `None` keeps them all.
    pub cache_max_bytes: Option<u64>,
    /// Iteration logs older than this are deleted. `None` keeps them until space runs low.
    pub keep_logs: Option<Duration>,
    /// Below this many free bytes in the work dir the worker deletes its oldest logs, then
    /// takes no new jobs until space comes back. 0 disables the check.
    pub min_free_bytes: u64,
    /// `--min-free-gb` as the operator gave it, to say so in the refusal.
    pub min_free_shown: String,
}

// By hand, so that logging a config never writes the token out.
impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("worker_id", &self.worker_id)
            .field("coordinator_url", &self.coordinator_url)
            .field("target_python", &self.target_python)
            .field("slots", &self.slots)
            .field("work_dir", &self.work_dir)
            .field("venvs_dir", &self.venvs_dir)
            .field("repos_dir", &self.repos_dir)
            .field("pip_cache_dir", &self.pip_cache_dir)
            .field("installer", &self.installer)
            .field("base_path", &self.base_path)
            .field("allow_gil_build", &self.allow_gil_build)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            // A certificate is public, but its bytes say nothing to a reader of logs.
            .field(
                "ca_cert",
                &self.ca_cert.as_ref().map(|pem| format!("<{} bytes of PEM>", pem.len())),
            )
            .field("sandbox", &self.sandbox)
            .field("disk", &self.disk)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: Option<&str>) -> WorkerConfig {
        WorkerConfig {
            worker_id: WorkerId::parse("gpu-box-7").expect("a valid id"),
            coordinator_url: "http://127.0.0.1:50051".to_string(),
            target_python: PathBuf::from("/opt/python3.13t/bin/python3"),
            slots: 4,
            work_dir: PathBuf::from("/var/cache/ftsurvey"),
            venvs_dir: PathBuf::from("/var/cache/ftsurvey/venvs"),
            repos_dir: PathBuf::from("/var/cache/ftsurvey/repos"),
            pip_cache_dir: PathBuf::from("/var/cache/ftsurvey/cache"),
            installer: Installer::Pip,
            base_path: "/usr/bin:/bin".to_string(),
            allow_gil_build: false,
            token: token.map(str::to_string),
            ca_cert: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            sandbox: SandboxConfig::default(),
            disk: DiskPolicy::default(),
        }
    }

    #[test]
    fn the_debug_output_of_a_config_hides_its_token_and_shows_the_rest() {
        let shown = format!("{:?}", config(Some("s3cret-worker-token")));
        assert!(!shown.contains("s3cret-worker-token"), "{shown}");
        assert!(shown.contains(r#"token: Some("<redacted>")"#), "{shown}");
        assert!(shown.contains("http://127.0.0.1:50051"), "{shown}");
        assert!(shown.contains("gpu-box-7"), "{shown}");
        let shown = format!("{:?}", config(None));
        assert!(shown.contains("token: None"), "{shown}");
    }
}
