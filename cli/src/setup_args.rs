//! Flags shared by `run` and `worker` for where package setups live and what installs them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use worker::Installer;

use crate::places;

/// Which installer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum InstallerChoice {
    /// uv when it is on PATH (or given with --uv), pip otherwise.
    Auto,
    Uv,
    Pip,
}

#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Venvs with their source trees, kept across runs and reused when the package, version,
    /// interpreter build, install command and extra deps are the same (default:
    /// `<work-dir>/venvs`).
    #[arg(long, env = "FTSURVEY_VENVS_DIR", value_name = "DIR")]
    pub(crate) venvs_dir: Option<PathBuf>,
    /// Fetched sources (pinned sdists, git clones), kept across runs (default:
    /// `<work-dir>/repos`).
    #[arg(long, env = "FTSURVEY_REPOS_DIR", value_name = "DIR")]
    pub(crate) repos_dir: Option<PathBuf>,
    /// The wheel cache shared by every venv, pip's and uv's (default: `<work-dir>/pip-cache`).
    #[arg(long, env = "FTSURVEY_PIP_CACHE_DIR", value_name = "DIR")]
    pub(crate) pip_cache_dir: Option<PathBuf>,
    /// What makes venvs and installs packages.
    #[arg(long, value_enum, default_value = "auto", env = "FTSURVEY_INSTALLER")]
    pub(crate) installer: InstallerChoice,
    /// The uv binary (default: `uv` on PATH).
    #[arg(long, env = "FTSURVEY_UV", value_name = "PATH")]
    pub(crate) uv: Option<PathBuf>,
}

/// The setup flags with defaults filled in; every path absolute.
#[derive(Debug, Clone)]
pub(crate) struct SetupPlaces {
    pub(crate) venvs_dir: PathBuf,
    pub(crate) repos_dir: PathBuf,
    pub(crate) pip_cache_dir: PathBuf,
    pub(crate) installer: Installer,
}

impl SetupArgs {
    /// Fills in defaults under `work_dir` and finds uv; `path_var` is `PATH`.
    pub(crate) fn resolve(&self, work_dir: &Path, path_var: Option<&std::ffi::OsStr>) -> anyhow::Result<SetupPlaces> {
        let dir = |given: &Option<PathBuf>, default: &str| match given {
            Some(dir) => places::absolute(dir),
            None => Ok(work_dir.join(default)),
        };
        let uv = match &self.uv {
            Some(uv) => {
                let uv = places::absolute(uv)?;
                anyhow::ensure!(uv.is_file(), "--uv {} does not exist", uv.display());
                Some(uv)
            }
            None => path_var.and_then(|path| worker::find_on_path("uv", path)),
        };
        let installer = match (self.installer, uv) {
            (InstallerChoice::Pip, _) | (InstallerChoice::Auto, None) => Installer::Pip,
            (InstallerChoice::Uv | InstallerChoice::Auto, Some(uv)) => Installer::Uv { uv: check_uv(&uv)? },
            (InstallerChoice::Uv, None) => {
                bail!("--installer uv: no uv on PATH; install it with `pip install uv` or name it with --uv")
            }
        };
        Ok(SetupPlaces {
            venvs_dir: dir(&self.venvs_dir, "venvs")?,
            repos_dir: dir(&self.repos_dir, "repos")?,
            pip_cache_dir: dir(&self.pip_cache_dir, "pip-cache")?,
            installer,
        })
    }
}

/// Runs `uv --version` so a broken uv is an error now rather than a failed install later.
fn check_uv(uv: &Path) -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new(uv)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run uv at {}", uv.display()))?;
    if !output.status.success() {
        bail!(
            "uv at {} does not run: `uv --version` exited with {}",
            uv.display(),
            output.status
        );
    }
    Ok(uv.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn args(installer: InstallerChoice) -> SetupArgs {
        SetupArgs {
            venvs_dir: None,
            repos_dir: Some("relative/repos".into()),
            pip_cache_dir: None,
            installer,
            uv: None,
        }
    }

    #[test]
    fn defaults_go_under_the_work_dir_and_uv_is_taken_from_path_when_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uv = dir.path().join("uv");
        std::fs::write(&uv, "#!/bin/sh\necho uv 0.0.0\n").expect("write");
        std::fs::set_permissions(&uv, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path_var = std::env::join_paths([dir.path()]).expect("join");
        let work = Path::new("/work-dir");
        let places = args(InstallerChoice::Auto)
            .resolve(work, Some(&path_var))
            .expect("resolve");
        assert_eq!(places.venvs_dir, work.join("venvs"));
        assert_eq!(places.pip_cache_dir, work.join("pip-cache"));
        assert!(places.repos_dir.is_absolute() && places.repos_dir.ends_with("relative/repos"));
        assert_eq!(places.installer, Installer::Uv { uv: uv.clone() });
        let none = std::env::join_paths([dir.path().join("empty")]).expect("join");
        let places = args(InstallerChoice::Auto).resolve(work, Some(&none)).expect("resolve");
        assert_eq!(places.installer, Installer::Pip);
        let places = args(InstallerChoice::Pip)
            .resolve(work, Some(&path_var))
            .expect("resolve");
        assert_eq!(places.installer, Installer::Pip);
        let error = args(InstallerChoice::Uv).resolve(work, Some(&none)).expect_err("no uv");
        assert!(error.to_string().contains("no uv on PATH"), "{error}");
    }
}
