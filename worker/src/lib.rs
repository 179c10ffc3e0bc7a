//! The ftsurvey worker: probes its target interpreter, connects to a coordinator, and runs the
//! jobs it is given under supervision, reporting each outcome over its session.
//!
//! [`run`] takes a config and a shutdown token: the embedded CLI, the `worker` command and the
//! tests start it the same way.

mod config;
mod disk;
mod evidence_file;
pub mod fresh_tree;
mod iteration_dirs;
mod iteration_logs;
mod job;
mod log_requests;
mod outbound;
mod output;
pub mod probe;
pub mod proctree;
mod sandbox;
mod session;
mod setup;
mod shell;
mod spool;
mod supervise;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

pub use crate::config::{DiskPolicy, WorkerConfig};
pub use crate::sandbox::cost::time_iterations;
pub use crate::sandbox::{Limits, SandboxConfig, SandboxMode, find_on_path};
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
    let sandbox = Arc::new(sandbox::Sandbox::resolve(
        &config.sandbox,
        sandbox_paths(&config, &profile),
    )?);
    if sandbox.bwrap.is_none() && config.sandbox.mode == SandboxMode::Auto {
        tracing::warn!(worker.id = %config.worker_id, "no `bwrap` on PATH: package commands run unsealed (install bubblewrap, or pass --sandbox none to say so)");
    }
    tracing::info!(worker.id = %config.worker_id, "{}", sandbox.describe());
    let leftovers = proctree::kill_leftovers(&worker_dir) + sandbox.cgroups.clear_leftovers();
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
        sandbox,
        shutdown.child_token(),
    );
    session::Worker::new(config, profile, setups, spool).run(shutdown).await
}

/// Names the worker's cgroups by its id and its directory: a restarted worker finds what the
/// last one with this directory left, and workers of the same id on other work dirs (two runs
/// side by side, each with its `local-1`) never touch each other's.
fn cgroup_name(config: &WorkerConfig) -> String {
    use sha2::Digest;
    let worker_dir = config.work_dir.join("workers").join(config.worker_id.as_str());
    let digest = sha2::Sha256::digest(worker_dir.as_os_str().as_encoded_bytes());
    format!("ftsurvey-{}-{}", config.worker_id.as_str(), &hex::encode(digest)[..12])
}

/// What the sandbox hides (the worker's directories, its user's home) and what commands still
/// read beneath them (the target interpreter, the tools on PATH).
fn sandbox_paths(config: &WorkerConfig, profile: &domain::InterpreterProfile) -> sandbox::SandboxPaths {
    let mut hidden = vec![
        config.work_dir.clone(),
        config.venvs_dir.clone(),
        config.repos_dir.clone(),
        config.pip_cache_dir.clone(),
    ];
    hidden.extend(std::env::var_os("HOME").map(PathBuf::from));
    // The interpreter's installation: two levels above `bin/python3`.
    let interpreter = config
        .target_python
        .canonicalize()
        .ok()
        .and_then(|python| python.parent()?.parent().map(PathBuf::from));
    let mut readable: Vec<PathBuf> = interpreter.into_iter().collect();
    readable.extend(std::env::split_paths(&config.base_path).filter(|dir| dir.is_dir()));
    sandbox::SandboxPaths {
        hidden,
        readable,
        cgroup_name: cgroup_name(config),
        tsan_build: profile.tsan,
    }
}
