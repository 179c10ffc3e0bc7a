//! Which tool makes venvs and installs packages into them: `uv` when the worker has it (much
//! faster), `pip` otherwise. Both share one cache directory across every venv.
//!
//! Registry install commands call `pip install ...`. With uv, the venv's `pip` is a small
//! script that hands `install`, `uninstall`, `freeze`, `list`, `show` and `check` to
//! `uv pip` and everything else (and any arguments uv rejects) to the real pip, which the
//! venv also has, so a command written for pip works either way.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::shell::shell_quote;

/// How venvs are made and packages installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// `python -m venv` and pip.
    Pip,
    /// `uv venv --seed` and `uv pip`, through the `uv` binary at this path.
    Uv { uv: PathBuf },
}

impl Installer {
    /// `pip` or `uv`, for logs and results.
    pub fn name(&self) -> &'static str {
        match self {
            Installer::Pip => "pip",
            Installer::Uv { .. } => "uv",
        }
    }

    /// The shell command that creates a venv for `python` at `venv`.
    pub(crate) fn venv_command(&self, python: &Path, venv: &Path) -> String {
        let python = shell_quote(&python.display().to_string());
        let venv = shell_quote(&venv.display().to_string());
        match self {
            Installer::Pip => format!("{python} -m venv {venv}"),
            // --seed puts pip in the venv too, for commands that run `python -m pip`.
            Installer::Uv { uv } => format!(
                "{} venv --quiet --seed --python {python} {venv}",
                shell_quote(&uv.display().to_string())
            ),
        }
    }

    /// Environment for every setup command: the shared caches, and no interpreter downloads
    /// by uv (the target interpreter is the one to use).
    pub(crate) fn env(&self, cache_dir: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            ("PIP_CACHE_DIR".to_string(), cache_dir.display().to_string()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".to_string(), "1".to_string()),
            ("PIP_NO_INPUT".to_string(), "1".to_string()),
        ];
        if let Installer::Uv { .. } = self {
            env.push(("UV_CACHE_DIR".to_string(), cache_dir.join("uv").display().to_string()));
            env.push(("UV_PYTHON_DOWNLOADS".to_string(), "never".to_string()));
            env.push(("UV_NO_PROGRESS".to_string(), "1".to_string()));
        }
        env
    }

    /// After the venv exists: with uv, its `pip` commands become the script that hands
    /// installs to `uv pip`.
    pub(crate) fn finish_venv(&self, venv: &Path) -> std::io::Result<()> {
        let Installer::Uv { uv } = self else {
            return Ok(());
        };
        let bin = venv.join("bin");
        let python = bin.join("python");
        let script = pip_shim(uv, &python);
        let mut names = vec!["pip".to_string(), "pip3".to_string()];
        if let Ok(entries) = std::fs::read_dir(&bin) {
            names.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.starts_with("pip3.")),
            );
        }
        for name in names {
            let path = bin.join(name);
            // The seeded entry point is replaced, not written through (it may be a link).
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, &script)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }
}

/// The `pip` of a uv venv.
fn pip_shim(uv: &Path, python: &Path) -> String {
    let uv = shell_quote(&uv.display().to_string());
    let python = shell_quote(&python.display().to_string());
    format!(
        r#"#!/bin/sh
# pip for this venv, made by ftsurvey: installs go through uv (sharing its cache), other
# subcommands and arguments uv rejects (exit 2) go to pip itself.
case "$1" in
  install|uninstall|freeze|list|show|check)
    sub="$1"; shift
    {uv} pip "$sub" --python {python} "$@"
    status=$?
    [ "$status" -ne 2 ] && exit "$status"
    echo "ftsurvey: uv rejected these pip arguments; running pip" >&2
    exec {python} -m pip "$sub" "$@"
    ;;
esac
exec {python} -m pip "$@"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_makes_seeded_venvs_and_shares_the_cache_under_one_directory() {
        let uv = Installer::Uv { uv: "/opt/uv".into() };
        assert_eq!(
            uv.venv_command(Path::new("/py/python3"), Path::new("/v")),
            "'/opt/uv' venv --quiet --seed --python '/py/python3' '/v'"
        );
        assert_eq!(
            Installer::Pip.venv_command(Path::new("/py/python3"), Path::new("/v")),
            "'/py/python3' -m venv '/v'"
        );
        let env = uv.env(Path::new("/cache"));
        assert!(env.contains(&("PIP_CACHE_DIR".into(), "/cache".into())));
        assert!(env.contains(&("UV_CACHE_DIR".into(), "/cache/uv".into())));
        assert!(
            !Installer::Pip
                .env(Path::new("/cache"))
                .iter()
                .any(|(k, _)| k.starts_with("UV_"))
        );
    }

    #[test]
    fn the_pip_of_a_uv_venv_hands_installs_to_uv_and_the_rest_to_pip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        // A fake uv and python that print what they were asked.
        let fake = |name: &str, what: &str| {
            let path = bin.join(name);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho {what} \"$@\"\nexit ${{FAKE_EXIT:-0}}\n"),
            )
            .expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        let uv = fake("uv", "uv");
        fake("python", "python");
        std::fs::write(bin.join("pip3.13"), "seeded").expect("write");
        Installer::Uv { uv }.finish_venv(dir.path()).expect("shim");
        let pip = |args: &[&str], exit: &str| {
            let output = std::process::Command::new(bin.join("pip3.13"))
                .args(args)
                .env("FAKE_EXIT", exit)
                .output()
                .expect("run the shim");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let python = bin.join("python").display().to_string();
        assert_eq!(
            pip(&["install", "-e", "."], "0"),
            format!("uv pip install --python {python} -e .\n")
        );
        assert_eq!(pip(&["download", "x"], "0"), "python -m pip download x\n");
        assert_eq!(
            pip(&["install", "--user", "x"], "2"),
            format!("uv pip install --python {python} --user x\npython -m pip install --user x\n"),
            "arguments uv rejects go to pip"
        );
        assert!(bin.join("pip").is_file() && bin.join("pip3").is_file());
    }
}
