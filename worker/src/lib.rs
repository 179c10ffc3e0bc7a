//! The ftsurvey worker: probes its target interpreter, connects to a coordinator, and runs the
//! jobs it is given under supervision, reporting each outcome over its session.
//!
//! [`run`] takes a config and a shutdown token: the embedded CLI, the `worker` command and the
//! tests start it the same way.

mod config;
mod evidence_file;
pub mod fresh_tree;
mod job;
mod output;
pub mod probe;
pub mod proctree;
mod sandbox;
mod session;
mod setup;
mod shell;
mod spool;
mod supervise;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

pub use crate::config::WorkerConfig;
pub use crate::sandbox::{Limits, SandboxConfig, SandboxMode};
pub use crate::setup::installer::Installer;

/// Runs the worker until `shutdown` is cancelled or the coordinator drains it.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let profile = probe::probe(&config.target_python)
        .await
        .with_context(|| format!("worker {} cannot use its target interpreter", config.worker_id))?;
    if !profile.free_threaded && !config.allow_gil_build {
        bail!(
            "{} is not a free-threaded build ({}); pass --allow-gil-build to use it anyway",
            config.target_python.display(),
            profile.summary()
        );
    }
    proctree::become_subreaper();
    let worker_dir = config.work_dir.join("workers").join(config.worker_id.as_str());
    let leftovers = proctree::kill_leftovers(&worker_dir);
    if leftovers > 0 {
        tracing::warn!(worker.id = %config.worker_id, killed = leftovers, "killed processes an earlier run of this worker left behind");
    }
    let spool = spool::Spool::open(&worker_dir.join("spool"))
        .with_context(|| format!("cannot create the outcome spool under {}", worker_dir.display()))?;
    let dirs = setup::SetupDirs {
        venvs_dir: config.venvs_dir.join(config.worker_id.as_str()),
        repos_dir: config.repos_dir.clone(),
        cache_dir: config.pip_cache_dir.clone(),
        worker_dir: worker_dir.clone(),
    };
    tracing::info!(worker.id = %config.worker_id, installer = %config.installer.name(), venvs = %dirs.venvs_dir.display(), "setting packages up");
    let setups = setup::Setups::new(
        config.target_python.clone(),
        &profile,
        dirs,
        config.installer.clone(),
        config.base_path.clone(),
        shutdown.child_token(),
    );
    session::Worker::new(config, profile, setups, spool).run(shutdown).await
}
