//! Gets a package's source tree: a copy of a local path, an unpacked sdist from PyPI, or a
//! shallow git clone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::{PackageSpec, SetupStage, Source};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Seal;
use crate::setup::error::{SetupError, command_failure};
use crate::shell::shell_quote;
use crate::supervise::{CommandSpec, run_command};

/// Downloads and clones get this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Unpacks the sdist `argv[1]` into `argv[2]`.
const UNPACK_SDIST: &str = r#"import shutil, sys, tarfile; a, d = sys.argv[1:3]; tarfile.open(a).extractall(d, filter="data") if tarfile.is_tarfile(a) else shutil.unpack_archive(a, d)"#;

/// Names not copied from a local source: build products and VCS data.
const SKIPPED_NAMES: [&str; 6] = [".git", "build", "dist", "__pycache__", ".venv", ".pytest_cache"];

/// Puts the package's source tree under `dest` (which must not exist) and returns its root.
pub(crate) async fn fetch(
    package: &PackageSpec,
    python: &Path,
    dest: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
) -> Result<PathBuf, SetupError> {
    match &package.source {
        Source::Path { path } => {
            let from = PathBuf::from(path);
            let to = dest.to_path_buf();
            tokio::task::spawn_blocking(move || copy_tree(&from, &to, true).map(|()| to))
                .await
                .map_err(|e| SetupError::new(SetupStage::Source, format!("copy task failed: {e}")))?
                .map_err(|e| SetupError::new(SetupStage::Source, format!("cannot copy {path}: {e}")))
        }
        Source::Sdist => {
            let download = dest.with_extension("download");
            std::fs::create_dir_all(&download).map_err(|e| io_error(&download, &e))?;
            let requirement = match &package.version {
                Some(version) => format!("{}=={version}", package.name),
                None => package.name.clone(),
            };
            // Only this package is asked for as an sdist: its build backend (needed to read
            // the sdist's metadata) may come as a wheel.
            let command = format!(
                "{} -m pip download --no-deps --no-binary {} --dest {} {}",
                shell_quote(&python.display().to_string()),
                shell_quote(&package.name),
                shell_quote(&download.display().to_string()),
                shell_quote(&requirement)
            );
            run_step(&command, &download, env, seal, "pip download", cancel).await?;
            let archive = only_file(&download)?;
            // A tarball through tarfile's `data` filter, which refuses members outside the
            // destination, links out of it and device files, and drops setuid, setgid and
            // others' write bits; a zip through zipfile, which keeps members inside and makes
            // regular files only.
            let unpack = format!(
                "{} -c {} {} {}",
                shell_quote(&python.display().to_string()),
                shell_quote(UNPACK_SDIST),
                shell_quote(&archive.display().to_string()),
                shell_quote(&dest.display().to_string())
            );
            run_step(&unpack, &download, env, seal, "unpacking the sdist", cancel).await?;
            single_top_dir(dest)
        }
        Source::Git { url, rev, depth } => {
            let depth = depth.map(|d| format!("--depth {d} ")).unwrap_or_default();
            // `--`: whatever the URL looks like, it is no option.
            let mut command = format!(
                "git clone --quiet {depth}-- {} {}",
                shell_quote(url),
                shell_quote(&dest.display().to_string())
            );
            if let Some(rev) = rev {
                command.push_str(&format!(
                    " && cd {} && git checkout --quiet {}",
                    shell_quote(&dest.display().to_string()),
                    shell_quote(rev)
                ));
            }
            let parent = dest.parent().unwrap_or(Path::new("/"));
            run_step(&command, parent, env, seal, "git clone", cancel).await?;
            Ok(dest.to_path_buf())
        }
    }
}

async fn run_step(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    what: &str,
    cancel: &CancellationToken,
) -> Result<(), SetupError> {
    let spec = CommandSpec {
        shell_command: command,
        cwd,
        env,
        seal,
        timeout: FETCH_TIMEOUT,
        log_dir: None,
        stall_threshold: None,
        stdin: None,
    };
    let result = run_command(&spec, cancel)
        .await
        .map_err(|e| SetupError::new(SetupStage::Source, format!("cannot run {what}: {e}")))?;
    match command_failure(&result, what) {
        Some((message, log_tail)) => Err(SetupError {
            stage: SetupStage::Source,
            message,
            log_tail,
        }),
        None => Ok(()),
    }
}

/// Copies the tree `from` to `to`; `skip_build_products` leaves out VCS data and build
/// products (for a developer's checkout), otherwise every directory, regular file and symlink
/// is copied (a git clone keeps its history for tools like setuptools-scm).
pub(crate) fn copy_tree(from: &Path, to: &Path, skip_build_products: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if skip_build_products && (SKIPPED_NAMES.contains(&name_str.as_ref()) || name_str.ends_with(".egg-info")) {
            continue;
        }
        let kind = entry.file_type()?;
        let target = to.join(&name);
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, skip_build_products)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
        // Anything else (a FIFO, whose open would wait for a writer forever; a socket; a
        // device) is no source and is left out.
    }
    Ok(())
}

fn only_file(dir: &Path) -> Result<PathBuf, SetupError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match files.len() {
        1 => Ok(files.remove(0)),
        n => Err(SetupError::new(
            SetupStage::Source,
            format!("expected one sdist in {}, found {n}", dir.display()),
        )),
    }
}

/// An sdist unpacks to one `name-version/` directory; that is the source root.
fn single_top_dir(dest: &Path) -> Result<PathBuf, SetupError> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dest)
        .map_err(|e| io_error(dest, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match entries.as_slice() {
        [only] if only.is_dir() => Ok(only.clone()),
        _ => Ok(dest.to_path_buf()),
    }
}

fn io_error(path: &Path, error: &std::io::Error) -> SetupError {
    SetupError::new(SetupStage::Source, format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copying_skips_build_products() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        for path in [
            "pkg/__init__.py",
            "pkg/__pycache__/x.pyc",
            "build/lib/x.py",
            "a.egg-info/PKG-INFO",
            "tests/t.py",
        ] {
            let path = src.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, "x").expect("write");
        }
        let dest = dir.path().join("dest");
        copy_tree(&src, &dest, true).expect("copy");
        assert!(dest.join("pkg/__init__.py").exists());
        assert!(dest.join("tests/t.py").exists());
        assert!(!dest.join("pkg/__pycache__").exists());
        assert!(!dest.join("build").exists());
        assert!(!dest.join("a.egg-info").exists());
        let whole = dir.path().join("whole");
        copy_tree(&src, &whole, false).expect("copy");
        assert!(whole.join("build/lib/x.py").exists() && whole.join("a.egg-info/PKG-INFO").exists());
    }

    #[test]
    fn a_fifo_in_a_path_source_is_left_out_instead_of_hanging_the_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("pkg")).expect("mkdir");
        std::fs::write(src.join("pkg/__init__.py"), "x").expect("write");
        nix::unistd::mkfifo(&src.join("pkg/trap"), nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
        let dest = dir.path().join("dest");
        // Opening the FIFO to copy it would wait for a writer that never comes.
        let (done, copied) = std::sync::mpsc::channel();
        let (from, to) = (src.clone(), dest.clone());
        std::thread::spawn(move || done.send(copy_tree(&from, &to, true).map_err(|e| e.to_string())));
        let result = copied
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the copy finished");
        result.expect("copy");
        assert!(dest.join("pkg/__init__.py").is_file());
        assert!(std::fs::symlink_metadata(dest.join("pkg/trap")).is_err());
    }
}
