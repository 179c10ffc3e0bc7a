//! Gets a package's source tree: a copy of a local path, an unpacked sdist from PyPI, or a
//! shallow git clone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::{PackageSpec, SetupStage, Source};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Seal;
use crate::setup::error::{SetupError, command_failure};
use crate::shell::shell_quote;
use crate::supervise::{CommandSpec, run_command};

/// Downloads and clones get this long.
const FETCH_TIMEOUT: Duration = domain::budget::FETCH_TIMEOUT;

/// Unpacks the sdist `argv[1]` into `argv[2]` unless its members hold more than `argv[3]` bytes
/// or number more than `argv[4]`: a tarball through tarfile's `data` filter, which refuses
/// members outside the destination, links out of it and device files, and drops setuid, setgid
/// and others' write bits; a zip through zipfile, which keeps members inside, makes regular
/// files only and reads no member past its declared size. A refusal is one line on stderr.
const UNPACK_SDIST: &str = r#"import sys, tarfile, zipfile
archive, dest = sys.argv[1:3]
max_bytes, max_entries = int(sys.argv[3]), int(sys.argv[4])
shown = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
def check(sizes):
    entries = total = 0
    for size in sizes:
        entries += 1
        total += size
        if entries > max_entries:
            sys.exit(f"the sdist has more than {max_entries} entries")
        if total > max_bytes:
            sys.exit(f"the sdist unpacks to more than {shown}")
if tarfile.is_tarfile(archive):
    with tarfile.open(archive) as tar:
        check(member.size for member in tar)
        tar.extractall(dest, filter="data")
elif zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zip:
        check(info.file_size for info in zip.infolist())
        zip.extractall(dest)
else:
    sys.exit("the sdist is neither a tarball nor a zip")
"#;

/// How big an sdist may be: a package's source, however large, is far below these, and an
/// archive above them is a bomb that would fill the worker's disk or keep it busy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SdistCaps {
    /// The archive as downloaded.
    pub(crate) download_bytes: u64,
    /// Every member's size, added up.
    pub(crate) unpacked_bytes: u64,
    /// Members, directories included.
    pub(crate) entries: u64,
}

impl SdistCaps {
    /// 256 MiB downloaded, 512 MiB unpacked, 100,000 entries.
    pub(crate) const DEFAULT: SdistCaps = SdistCaps {
        download_bytes: 256 << 20,
        unpacked_bytes: 512 << 20,
        entries: 100_000,
    };
}

/// What is kept of a copied file's mode: no setuid, setgid or sticky bit and no write for group
/// or others, as tarfile's `data` filter leaves an sdist's files, whatever the source held.
const COPIED_MODE_MASK: u32 = 0o755;

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
                .map_err(|e| SetupError::worker(SetupStage::Source, format!("copy task failed: {e}")))?
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
            unpack_sdist(python, &archive, dest, env, seal, cancel, SdistCaps::DEFAULT).await?;
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

/// Unpacks the sdist `archive` into `dest` unless it is over `caps`, which is the package's
/// source failure.
pub(crate) async fn unpack_sdist(
    python: &Path,
    archive: &Path,
    dest: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
    caps: SdistCaps,
) -> Result<(), SetupError> {
    let size = std::fs::metadata(archive).map_err(|e| io_error(archive, &e))?.len();
    if size > caps.download_bytes {
        return Err(SetupError::new(
            SetupStage::Source,
            format!(
                "the sdist is {}, more than the {} allowed",
                bytes_text(size),
                bytes_text(caps.download_bytes)
            ),
        ));
    }
    let unpack = format!(
        "{} -c {} {} {} {} {}",
        shell_quote(&python.display().to_string()),
        shell_quote(UNPACK_SDIST),
        shell_quote(&archive.display().to_string()),
        shell_quote(&dest.display().to_string()),
        caps.unpacked_bytes,
        caps.entries
    );
    let cwd = archive.parent().unwrap_or(Path::new("/"));
    run_step(&unpack, cwd, env, seal, "unpacking the sdist", cancel).await
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
        .map_err(|e| SetupError::worker(SetupStage::Source, format!("cannot run {what}: {e}")))?;
    match command_failure(&result, SetupStage::Source, what) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Copies the tree `from` to `to`: directories, regular files and symlinks only, each file
/// with its mode masked by [`COPIED_MODE_MASK`]. `skip_build_products` leaves out VCS data and
/// build products (for a developer's checkout), otherwise everything of those kinds is copied
/// (a git clone keeps its history for tools like setuptools-scm).
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
            let mode = entry.metadata()?.permissions().mode() & COPIED_MODE_MASK;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
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

/// `300 MiB`, or `1200 bytes` below a MiB.
fn bytes_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// An I/O error on the worker's own download and unpack directories: the worker's fault.
fn io_error(path: &Path, error: &std::io::Error) -> SetupError {
    SetupError::worker(SetupStage::Source, format!("{}: {error}", path.display()))
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

    #[test]
    fn copied_files_lose_setuid_setgid_sticky_and_others_write_bits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        let modes = [
            ("setuid", 0o4755),
            ("setgid", 0o2775),
            ("sticky", 0o1777),
            ("shared", 0o666),
            ("script", 0o755),
            ("private", 0o600),
        ];
        for (name, mode) in modes {
            let path = src.join("sub").join(name);
            std::fs::write(&path, name).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        std::os::unix::fs::symlink("setuid", src.join("sub/link")).expect("symlink");
        let dest = dir.path().join("dest");
        copy_tree(&src, &dest, false).expect("copy");
        let mode_of = |name: &str| {
            std::fs::symlink_metadata(dest.join("sub").join(name))
                .expect("copied")
                .permissions()
                .mode()
                & 0o7777
        };
        let copied: Vec<(&str, u32)> = modes.iter().map(|(name, _)| (*name, mode_of(name))).collect();
        assert_eq!(
            copied,
            vec![
                ("setuid", 0o755),
                ("setgid", 0o755),
                ("sticky", 0o755),
                ("shared", 0o644),
                ("script", 0o755),
                ("private", 0o600),
            ]
        );
        assert_eq!(
            std::fs::read_link(dest.join("sub/link")).expect("a symlink"),
            Path::new("setuid")
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/setuid")).expect("read"),
            "setuid"
        );
    }

    /// Makes `archive` with python3's tarfile or zipfile: `n_files` files of `file_bytes`
    /// bytes each under `pkg-1.0/`.
    fn make_sdist(archive: &Path, n_files: usize, file_bytes: usize) {
        let script = r#"import io, sys, tarfile, zipfile
archive, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if archive.endswith(".zip"):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(n):
            z.writestr(f"pkg-1.0/f{i}", b"x" * size)
else:
    with tarfile.open(archive, "w:gz") as t:
        for i in range(n):
            info = tarfile.TarInfo(f"pkg-1.0/f{i}")
            info.size = size
            t.addfile(info, io.BytesIO(b"x" * size))
"#;
        let status = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(archive)
            .args([n_files.to_string(), file_bytes.to_string()])
            .status()
            .expect("python3 runs");
        assert!(status.success(), "cannot make {}", archive.display());
    }

    async fn unpack_with(archive: &Path, caps: SdistCaps) -> Result<PathBuf, SetupError> {
        let sandbox = crate::sandbox::Sandbox::unsealed();
        let tmp = std::env::temp_dir();
        let seal = Seal::new(&sandbox, tmp.clone(), tmp);
        let dest = archive.with_extension("unpacked");
        let cancel = CancellationToken::new();
        unpack_sdist(Path::new("python3"), archive, &dest, &[], &seal, &cancel, caps).await?;
        Ok(dest)
    }

    #[tokio::test]
    async fn an_sdist_over_its_caps_is_a_source_failure_of_one_line_and_one_within_them_unpacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let caps = SdistCaps {
            download_bytes: 1 << 20,
            unpacked_bytes: 4096,
            entries: 10,
        };
        for archive in ["many.tar.gz", "many.zip"] {
            let archive = dir.path().join(archive);
            make_sdist(&archive, 11, 1);
            let error = unpack_with(&archive, caps).await.expect_err("too many entries");
            assert_eq!(error.stage, SetupStage::Source);
            assert!(
                error.message.ends_with("the sdist has more than 10 entries") && !error.message.contains('\n'),
                "{}",
                error.message
            );
        }
        for archive in ["big.tar.gz", "big.zip"] {
            let archive = dir.path().join(archive);
            make_sdist(&archive, 2, 4000);
            let error = unpack_with(&archive, caps).await.expect_err("too big");
            assert!(
                error.message.ends_with("the sdist unpacks to more than 4096 bytes"),
                "{}",
                error.message
            );
            let small_download = SdistCaps {
                download_bytes: 16,
                ..caps
            };
            let error = unpack_with(&archive, small_download)
                .await
                .expect_err("too big a download");
            assert!(
                error.message.starts_with("the sdist is ") && error.message.ends_with("more than the 16 bytes allowed"),
                "{}",
                error.message
            );
        }
        for archive in ["fits.tar.gz", "fits.zip"] {
            let archive = dir.path().join(archive);
            make_sdist(&archive, 10, 400);
            let dest = unpack_with(&archive, caps).await.expect("within the caps");
            assert_eq!(std::fs::read_dir(dest.join("pkg-1.0")).expect("unpacked").count(), 10);
        }
    }

    /// Writes `archive` (a tar.gz, or a zip) with the members `(name, mode)` holding a line of
    /// text each.
    fn make_hostile_sdist(archive: &Path, members: &[(&str, u32)]) {
        let script = r#"import io, sys, tarfile, zipfile
archive, members = sys.argv[1], sys.argv[2:]
if archive.endswith(".zip"):
    with zipfile.ZipFile(archive, "w") as z:
        for name, mode in zip(members[::2], members[1::2]):
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | int(mode, 8)) << 16
            z.writestr(info, b"hostile\n")
else:
    with tarfile.open(archive, "w:gz") as t:
        for name, mode in zip(members[::2], members[1::2]):
            info = tarfile.TarInfo(name)
            info.size, info.mode = 8, int(mode, 8)
            t.addfile(info, io.BytesIO(b"hostile\n"))
"#;
        let mut command = std::process::Command::new("python3");
        command.args(["-c", script]).arg(archive);
        for (name, mode) in members {
            command.arg(name).arg(format!("{mode:o}"));
        }
        assert!(command.status().expect("python3 runs").success());
    }

    #[tokio::test]
    async fn an_sdist_reaching_out_of_its_folder_fails_and_one_with_setuid_files_loses_the_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let caps = SdistCaps::DEFAULT;
        let archive = dir.path().join("traversal.tar.gz");
        make_hostile_sdist(&archive, &[("pkg-1.0/setup.py", 0o644), ("../outside", 0o644)]);
        let error = unpack_with(&archive, caps)
            .await
            .expect_err("a member out of the folder");
        assert_eq!(error.stage, SetupStage::Source);
        assert!(!error.message.contains('\n'), "{}", error.message);
        assert!(
            !dir.path().join("outside").exists(),
            "nothing was written beside the folder"
        );
        // An absolute name loses its leading slash: it lands inside.
        let archive = dir.path().join("absolute.tar.gz");
        let absolute = dir.path().join("absolute-member");
        let absolute = absolute.to_str().expect("utf-8");
        make_hostile_sdist(&archive, &[("pkg-1.0/setup.py", 0o644), (absolute, 0o644)]);
        let dest = unpack_with(&archive, caps).await.expect("unpacked inside");
        assert!(!Path::new(absolute).exists() && dest.join(absolute.trim_start_matches('/')).exists());
        // A zip's `..` and absolute names are made relative by zipfile: they land inside.
        let archive = dir.path().join("traversal.zip");
        make_hostile_sdist(&archive, &[("pkg-1.0/setup.py", 0o644), ("../outside", 0o644)]);
        let dest = unpack_with(&archive, caps).await.expect("unpacked inside");
        assert!(dest.join("outside").exists() && !dir.path().join("outside").exists());

        let archive = dir.path().join("setuid.tar.gz");
        make_hostile_sdist(&archive, &[("pkg-1.0/setup.py", 0o644), ("pkg-1.0/suid", 0o6777)]);
        let dest = unpack_with(&archive, caps).await.expect("unpacked");
        let mode = std::fs::metadata(dest.join("pkg-1.0/suid"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "setuid, setgid and sticky bits dropped: {mode:o}");
        assert_eq!(mode & 0o022, 0, "nobody else may write it: {mode:o}");
    }
}
