//! What sealing costs an iteration, measured the way the worker runs one: the package's tree
//! laid (or the kept copy taken), the command sealed and supervised, the copy put back as
//! laid.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::iteration_dirs::IterationDirs;
use crate::sandbox::{Sandbox, SandboxConfig, SandboxPaths, Seal};
use crate::supervise::{CommandSpec, Ending, run_command};

/// Runs `command` in a fresh copy of `tree` under `work` (a directory of its own), sealed as
/// `config` says, `rounds` times; returns the wall time of each round, from taking the copy to
/// putting it back.
pub async fn time_iterations(
    config: &SandboxConfig,
    tree: &Path,
    work: &Path,
    command: &str,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let paths = SandboxPaths {
        hidden: vec![work.join("hidden")],
        cgroup_name: format!("ftsurvey-bench-{}", std::process::id()),
        ..SandboxPaths::default()
    };
    let sandbox = Sandbox::resolve(config, paths)?;
    let dirs = IterationDirs::new(work.join("iterations"));
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let place = dirs.take(tree)?;
        let (dir, copy) = (place.dir.clone(), place.tree());
        let mut seal = Seal::new(&sandbox, dir.join("home"), dir.join("tmp"));
        seal.disk_watch.push(dir.clone());
        seal.count_leftovers = true;
        let cwd = if sandbox.bwrap.is_some() {
            seal.mounts.push((copy.clone(), tree.to_path_buf()));
            tree.to_path_buf()
        } else {
            copy
        };
        let spec = CommandSpec {
            shell_command: command,
            cwd: &cwd,
            env: &[],
            seal: &seal,
            timeout: Duration::from_secs(60),
            log_dir: None,
            stall_threshold: None,
            stdin: None,
        };
        let result = run_command(&spec, &CancellationToken::new()).await?;
        dirs.give_back(place);
        times.push(started.elapsed());
        if !matches!(result.ending, Ending::Exited { code: Some(0), .. }) {
            anyhow::bail!(
                "`{command}` failed under --sandbox {}: {}",
                config.mode,
                result.stderr_tail.trim()
            );
        }
    }
    sandbox.cgroups.remove_bases();
    Ok(times)
}
