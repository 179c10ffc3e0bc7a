//! Each iteration's own copy of a package's pristine source tree: laid before the iteration
//! runs, measured while it runs, removed after it, so nothing one iteration writes reaches the
//! next.

use std::collections::{HashMap, HashSet};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What [`lay`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Laid {
    /// Regular files copied.
    pub files: u64,
    /// The apparent size of those files, added up.
    pub bytes: u64,
    /// Entries that are neither directories, regular files nor symlinks (FIFOs, sockets,
    /// devices): not copied.
    pub skipped: u64,
    /// Whether files were cloned copy-on-write rather than copied byte by byte.
    pub reflinked: bool,
}

/// The disk an iteration's tree takes, from [`usage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated blocks of every entry under the directory, in bytes: a sparse file counts as
    /// what it uses, a file hard-linked twice inside the tree once.
    pub bytes: u64,
    /// The apparent size of the largest regular file.
    pub largest_file: u64,
}

/// Makes `dest`, which must not exist but whose parent must, a copy of the directory
/// `pristine`.
///
/// Directories and regular files keep their read, write and execute bits (setuid, setgid and
/// sticky are dropped), files their content and times too, symlinks their target; nothing
/// inside `pristine` is followed, so a symlink to a directory is copied as a symlink. Other
/// entries are skipped and counted. Files are cloned copy-on-write where the filesystem can,
/// copied otherwise, and never hard-linked: a test writing a file in place must not reach the
/// pristine tree. On error `dest` is left half laid, for [`remove`].
pub fn lay(pristine: &Path, dest: &Path) -> io::Result<Laid> {
    let root = fs::metadata(pristine).map_err(|error| at("cannot read", pristine, &error))?;
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", pristine.display()),
        ));
    }
    let mut layer = Layer {
        laid: Laid::default(),
        cloning: Cloning::Untried,
        dirs: Vec::new(),
    };
    layer.make_dir(dest, root.mode())?;
    let mut pending = vec![(pristine.to_path_buf(), dest.to_path_buf())];
    while let Some((from_dir, to_dir)) = pending.pop() {
        let entries = fs::read_dir(&from_dir).map_err(|error| at("cannot list", &from_dir, &error))?;
        for entry in entries {
            let entry = entry.map_err(|error| at("cannot list", &from_dir, &error))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            // The entry's own type, from the directory listing: a symlink is never followed.
            let file_type = entry.file_type().map_err(|error| at("cannot read", &from, &error))?;
            if file_type.is_dir() {
                let mode = entry
                    .metadata()
                    .map_err(|error| at("cannot read", &from, &error))?
                    .mode();
                layer.make_dir(&to, mode)?;
                pending.push((from, to));
            } else if file_type.is_file() {
                layer.copy_file(&from, &to)?;
            } else if file_type.is_symlink() {
                let target = fs::read_link(&from).map_err(|error| at("cannot read", &from, &error))?;
                std::os::unix::fs::symlink(target, &to).map_err(|error| at("cannot create", &to, &error))?;
            } else {
                layer.laid.skipped += 1;
            }
        }
    }
    // Directories are made owner-writable so they can be filled, and get their own bits last,
    // children before parents, so a read-only one is laid like any other.
    for (dir, mode) in layer.dirs.iter().rev() {
        if mode & 0o777 != 0o700 {
            fs::set_permissions(dir, Permissions::from_mode(mode & 0o777))
                .map_err(|error| at("cannot set the mode of", dir, &error))?;
        }
    }
    Ok(layer.laid)
}

/// The disk bytes taken under `dir` and its largest file, cheaply enough to sample every
/// second while tests run: one `lstat` per entry, no symlink followed. Entries that vanish
/// during the walk, as a running test's files do, are left out.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let root = fs::symlink_metadata(dir).map_err(|error| at("cannot read", dir, &error))?;
    let mut usage = Usage::default();
    let mut linked = HashSet::new();
    usage.add(&root, &mut linked);
    let mut pending = if root.is_dir() {
        vec![dir.to_path_buf()]
    } else {
        Vec::new()
    };
    while let Some(current) = pending.pop() {
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound && current != dir => continue,
            Err(error) => return Err(at("cannot list", &current, &error)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| at("cannot list", &current, &error))?;
            // `DirEntry::metadata` is an `lstat` relative to the open directory.
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(at("cannot read", &entry.path(), &error)),
            };
            usage.add(&metadata, &mut linked);
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Removes an iteration's tree, even one where a test made directories read-only: those are
/// made owner-accessible as the removal reaches them. What cannot be removed is logged, not
/// returned: a leftover tree costs disk, not correctness, as the next iteration lays its own.
pub fn remove(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => return,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(_) => {}
    }
    let mut failures = Vec::new();
    remove_opening_dirs(dir, &mut failures);
    const LOGGED: usize = 10;
    for (path, error) in failures.iter().take(LOGGED) {
        tracing::warn!(path = %path.display(), %error, "cannot remove part of an iteration's tree");
    }
    if failures.len() > LOGGED {
        tracing::warn!(
            dir = %dir.display(),
            failures = failures.len(),
            "cannot remove {} more entries of an iteration's tree",
            failures.len() - LOGGED
        );
    }
}

/// Whether files of this tree are cloned copy-on-write: tried on the first file, kept if it
/// worked, so a filesystem without clones costs one failed attempt per tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloning {
    Untried,
    Works,
    Unsupported,
}

/// The state of one [`lay`].
#[derive(Debug)]
struct Layer {
    laid: Laid,
    cloning: Cloning,
    /// Every directory made, parents before children, with the mode it gets at the end.
    dirs: Vec<(PathBuf, u32)>,
}

impl Layer {
    fn make_dir(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|error| at("cannot create", dir, &error))?;
        self.dirs.push((dir.to_path_buf(), mode));
        Ok(())
    }

    fn copy_file(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let source = File::open(from).map_err(|error| at("cannot open", from, &error))?;
        let metadata = source.metadata().map_err(|error| at("cannot read", from, &error))?;
        // A new file's descriptor is writable whatever its mode; the mode is set again below
        // because the umask may have taken bits away.
        let mode = metadata.mode() & 0o777;
        let dest = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(to)
            .map_err(|error| at("cannot create", to, &error))?;
        let cloned = match self.cloning {
            Cloning::Untried | Cloning::Works => match reflink_copy::reflink_file(&source, &dest) {
                Ok(()) => {
                    self.cloning = Cloning::Works;
                    self.laid.reflinked = true;
                    true
                }
                Err(_) if self.cloning == Cloning::Untried => {
                    self.cloning = Cloning::Unsupported;
                    false
                }
                // Clones worked for this tree but not for this file (another filesystem
                // mounted inside it): copy this one.
                Err(_) => false,
            },
            Cloning::Unsupported => false,
        };
        if !cloned {
            // `io::copy` between files is `copy_file_range`: the bytes stay in the kernel.
            io::copy(&mut &source, &mut &dest).map_err(|error| at("cannot copy", from, &error))?;
        }
        dest.set_permissions(Permissions::from_mode(mode))
            .map_err(|error| at("cannot set the mode of", to, &error))?;
        // The same times as the pristine file, so anything that compares a file's time with a
        // record of it (bytecode caches' source stamps, build tools) sees the pristine tree.
        let (accessed, modified) = (metadata.accessed()?, metadata.modified()?);
        let times = FileTimes::new().set_accessed(accessed).set_modified(modified);
        dest.set_times(times)
            .map_err(|error| at("cannot set the times of", to, &error))?;
        self.laid.files += 1;
        self.laid.bytes += metadata.len();
        Ok(())
    }
}

impl Usage {
    /// Adds one entry; a file with several links is counted at its first link only.
    fn add(&mut self, metadata: &fs::Metadata, linked: &mut HashSet<(u64, u64)>) {
        if !metadata.is_dir() && metadata.nlink() > 1 && !linked.insert((metadata.dev(), metadata.ino())) {
            return;
        }
        self.bytes += metadata.blocks() * 512;
        if metadata.is_file() {
            self.largest_file = self.largest_file.max(metadata.len());
        }
    }
}

/// Removes `path` entry by entry, giving each directory owner read, write and search before
/// entering it, and collects what could not be removed.
fn remove_opening_dirs(path: &Path, failures: &mut Vec<(PathBuf, io::Error)>) {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(error) => {
            failures.push((path.to_path_buf(), error));
            return;
        }
    };
    if !metadata.is_dir() {
        if let Err(error) = fs::remove_file(path)
            && error.kind() != io::ErrorKind::NotFound
        {
            failures.push((path.to_path_buf(), error));
        }
        return;
    }
    if metadata.mode() & 0o700 != 0o700
        && let Err(error) = fs::set_permissions(path, Permissions::from_mode((metadata.mode() | 0o700) & 0o7777))
    {
        failures.push((path.to_path_buf(), error));
    }
    match fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) => remove_opening_dirs(&entry.path(), failures),
                    Err(error) => failures.push((path.to_path_buf(), error)),
                }
            }
        }
        Err(error) => failures.push((path.to_path_buf(), error)),
    }
    let failed_inside = failures.iter().any(|(failed, _)| failed.starts_with(path));
    if let Err(error) = fs::remove_dir(path) {
        // A directory left non-empty by a failure inside it is not a failure of its own.
        if !(failed_inside || error.kind() == io::ErrorKind::NotFound) {
            failures.push((path.to_path_buf(), error));
        }
    }
}

/// An I/O error that names the path it happened at.
fn at(doing: &str, path: &Path, error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

/// What a laid copy held just after it was laid or reset: each entry's identity, by path
/// under the copy. A test cannot change a file's content, mode, links or name without changing
/// its inode or its change time (only a clock change could), so an entry whose identity is
/// unchanged is still the pristine one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: HashMap<PathBuf, Stamp>,
}

/// One entry's identity: inode, change time, type and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    ctime: (i64, i64),
    kind: u32,
    mode: u32,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Stamp {
        Stamp {
            ino: metadata.ino(),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
            kind: metadata.mode() & 0o170000,
            mode: metadata.mode() & 0o7777,
        }
    }

    fn is_dir(self) -> bool {
        self.kind == 0o040000
    }
}

/// What [`reset`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reset {
    /// Entries the tests added or changed, removed.
    pub removed: u64,
    /// Pristine entries laid again in their place.
    pub restored: u64,
}

/// Records the identity of every entry under `copy`, as [`reset`] will compare them.
pub fn record(copy: &Path) -> io::Result<Manifest> {
    let mut manifest = Manifest::default();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = copy.join(&relative);
        for entry in fs::read_dir(&dir).map_err(|error| at("cannot list", &dir, &error))? {
            let entry = entry.map_err(|error| at("cannot list", &dir, &error))?;
            let metadata = entry
                .metadata()
                .map_err(|error| at("cannot read", &entry.path(), &error))?;
            let path = relative.join(entry.file_name());
            if metadata.is_dir() {
                pending.push(path.clone());
            }
            manifest.entries.insert(path, Stamp::of(&metadata));
        }
    }
    Ok(manifest)
}

/// Puts `copy`, laid from `pristine` and recorded in `manifest`, back as it was laid: what the
/// tests added or changed is removed, and the pristine entries they changed or removed are laid
/// again. Costs one walk and the copies of what was touched, where laying afresh costs every
/// file, and on some filesystems much more after a removal. On error `copy` is half reset: lay
/// a fresh one instead. `manifest` is brought up to date.
pub fn reset(pristine: &Path, copy: &Path, manifest: &mut Manifest) -> io::Result<Reset> {
    let mut done = Reset::default();
    // Directories the tests made unreadable are opened as the walk reaches them; their modes
    // are put back below.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = copy.join(&relative);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                fs::set_permissions(&dir, Permissions::from_mode(0o700)).map_err(|e| at("cannot open", &dir, &e))?;
                fs::read_dir(&dir).map_err(|error| at("cannot list", &dir, &error))?
            }
            Err(error) => return Err(at("cannot list", &dir, &error)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| at("cannot list", &dir, &error))?;
            let metadata = entry
                .metadata()
                .map_err(|error| at("cannot read", &entry.path(), &error))?;
            let path = relative.join(entry.file_name());
            let now = Stamp::of(&metadata);
            let kept = manifest.entries.get(&path).is_some_and(|laid| {
                // A directory's change time moves with its entries, which the walk compares
                // one by one; the directory itself must be the same one.
                if laid.is_dir() {
                    now.is_dir() && now.ino == laid.ino
                } else {
                    now == *laid
                }
            });
            if kept {
                if now.is_dir() {
                    pending.push(path.clone());
                }
                seen.insert(path);
            } else {
                let full = entry.path();
                if metadata.is_dir() {
                    fs::set_permissions(&full, Permissions::from_mode(0o700)).ok();
                    fs::remove_dir_all(&full).or_else(|_| {
                        remove(&full);
                        if full.exists() {
                            Err(io::Error::other("left behind"))
                        } else {
                            Ok(())
                        }
                    })
                } else {
                    fs::remove_file(&full)
                }
                .map_err(|error| at("cannot remove", &full, &error))?;
                done.removed += 1;
            }
        }
    }
    // What was laid and is gone now, shallowest first so a directory is laid whole before
    // anything inside it is looked for.
    let mut missing: Vec<&PathBuf> = manifest.entries.keys().filter(|path| !seen.contains(*path)).collect();
    missing.sort_by_key(|path| path.components().count());
    let mut restored: HashSet<&PathBuf> = HashSet::new();
    for path in missing {
        if path
            .ancestors()
            .skip(1)
            .any(|ancestor| restored.contains(&ancestor.to_path_buf()))
        {
            continue;
        }
        let (from, to) = (pristine.join(path), copy.join(path));
        let metadata = fs::symlink_metadata(&from).map_err(|error| at("cannot read", &from, &error))?;
        if metadata.is_dir() {
            lay(&from, &to)?;
        } else if metadata.is_file() {
            let mut layer = Layer {
                laid: Laid::default(),
                cloning: Cloning::Untried,
                dirs: Vec::new(),
            };
            layer.copy_file(&from, &to)?;
        } else if metadata.is_symlink() {
            let target = fs::read_link(&from).map_err(|error| at("cannot read", &from, &error))?;
            std::os::unix::fs::symlink(target, &to).map_err(|error| at("cannot create", &to, &error))?;
        }
        restored.insert(path);
        done.restored += 1;
    }
    // Directory modes a test changed (or the walk opened), back as laid.
    for (path, laid) in &manifest.entries {
        if laid.is_dir() {
            let dir = copy.join(path);
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.mode() & 0o7777 != laid.mode) {
                fs::set_permissions(&dir, Permissions::from_mode(laid.mode))
                    .map_err(|error| at("cannot set the mode of", &dir, &error))?;
            }
        }
    }
    // Restored entries and the directories around them have new identities.
    *manifest = record(copy)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, symlink};

    use super::*;

    /// A pristine tree of every kind of entry, beside a directory outside it that one of its
    /// symlinks points to.
    struct Fixture {
        _temp: tempfile::TempDir,
        pristine: PathBuf,
        outside: PathBuf,
        /// Where the copy goes: does not exist yet.
        dest: PathBuf,
    }

    fn fixture() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let pristine = temp.path().join("pristine");
        let outside = temp.path().join("outside");
        fs::create_dir_all(pristine.join("pkg/sub/deeper")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret.txt"), "outside the tree").unwrap();
        fs::write(pristine.join("pkg/__init__.py"), "VALUE = 1\n").unwrap();
        fs::write(pristine.join("pkg/sub/deeper/data.bin"), vec![7u8; 10_000]).unwrap();
        fs::write(pristine.join("run.sh"), "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(pristine.join("run.sh"), Permissions::from_mode(0o755)).unwrap();
        fs::write(pristine.join("setuid"), "x").unwrap();
        fs::set_permissions(pristine.join("setuid"), Permissions::from_mode(0o4755)).unwrap();
        symlink("pkg/__init__.py", pristine.join("init-link")).unwrap();
        symlink(&outside, pristine.join("outside-link")).unwrap();
        nix::unistd::mkfifo(&pristine.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let dest = temp.path().join("copy");
        Fixture {
            _temp: temp,
            pristine,
            outside,
            dest,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn lay_copies_dirs_files_and_symlinks_and_skips_a_fifo() {
        let fixture = fixture();
        let laid = lay(&fixture.pristine, &fixture.dest).unwrap();
        assert_eq!(laid.files, 4, "{laid:?}");
        assert_eq!(laid.bytes, 10 + 10_000 + 17 + 1, "{laid:?}");
        assert_eq!(laid.skipped, 1, "{laid:?}");
        let dest = &fixture.dest;
        assert_eq!(fs::read_to_string(dest.join("pkg/__init__.py")).unwrap(), "VALUE = 1\n");
        assert_eq!(
            fs::read(dest.join("pkg/sub/deeper/data.bin")).unwrap(),
            vec![7u8; 10_000]
        );
        assert!(dest.join("pkg/sub/deeper").is_dir());
        assert!(!dest.join("fifo").exists());
        assert!(
            fs::symlink_metadata(fixture.pristine.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let pristine_time = fs::metadata(fixture.pristine.join("run.sh"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            fs::metadata(dest.join("run.sh")).unwrap().modified().unwrap(),
            pristine_time
        );
    }

    #[test]
    fn lay_keeps_the_executable_bit_and_drops_setuid() {
        let fixture = fixture();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        assert_eq!(mode(&fixture.dest.join("run.sh")), 0o755);
        assert_eq!(mode(&fixture.pristine.join("setuid")), 0o4755);
        assert_eq!(mode(&fixture.dest.join("setuid")), 0o755);
    }

    #[test]
    fn lay_recreates_symlinks_without_following_them() {
        let fixture = fixture();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        let file_link = fixture.dest.join("init-link");
        assert!(fs::symlink_metadata(&file_link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&file_link).unwrap(), Path::new("pkg/__init__.py"));
        assert_eq!(fs::read_to_string(&file_link).unwrap(), "VALUE = 1\n");
        let dir_link = fixture.dest.join("outside-link");
        assert!(fs::symlink_metadata(&dir_link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&dir_link).unwrap(), fixture.outside);
        // The directory's contents were not copied: the one file reachable is the outside one.
        fs::write(fixture.outside.join("later.txt"), "").unwrap();
        assert!(dir_link.join("later.txt").exists());
    }

    #[test]
    fn writing_a_copied_file_in_place_leaves_the_pristine_one_unchanged() {
        let fixture = fixture();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        let copied = fixture.dest.join("pkg/__init__.py");
        let pristine = fixture.pristine.join("pkg/__init__.py");
        assert_ne!(
            fs::metadata(&copied).unwrap().ino(),
            fs::metadata(&pristine).unwrap().ino()
        );
        let mut file = OpenOptions::new().write(true).open(&copied).unwrap();
        file.write_all(b"CHANGED").unwrap();
        drop(file);
        assert_eq!(fs::read_to_string(&copied).unwrap(), "CHANGED 1\n");
        assert_eq!(fs::read_to_string(&pristine).unwrap(), "VALUE = 1\n");
    }

    #[test]
    fn lay_copies_a_read_only_directory_with_its_mode() {
        let fixture = fixture();
        fs::set_permissions(fixture.pristine.join("pkg/sub"), Permissions::from_mode(0o555)).unwrap();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        assert_eq!(mode(&fixture.dest.join("pkg/sub")), 0o555);
        assert!(fixture.dest.join("pkg/sub/deeper/data.bin").is_file());
        remove(&fixture.dest);
        fs::set_permissions(fixture.pristine.join("pkg/sub"), Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn lay_refuses_an_existing_destination() {
        let fixture = fixture();
        fs::create_dir(&fixture.dest).unwrap();
        let error = lay(&fixture.pristine, &fixture.dest).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
    }

    #[test]
    fn usage_counts_a_sparse_file_by_its_blocks() {
        let temp = tempfile::tempdir().unwrap();
        let sparse = temp.path().join("sparse");
        let file = File::create(&sparse).unwrap();
        file.set_len(256 << 20).unwrap();
        drop(file);
        fs::write(temp.path().join("small"), vec![1u8; 100_000]).unwrap();
        let usage = usage(temp.path()).unwrap();
        assert_eq!(usage.largest_file, 256 << 20);
        assert!(usage.bytes >= 100_000, "{usage:?}");
        assert!(usage.bytes < 1 << 20, "a sparse file counted by its length: {usage:?}");
    }

    #[test]
    fn usage_does_not_follow_symlinks_and_counts_hard_links_once() {
        let fixture = fixture();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        let before = usage(&fixture.dest).unwrap();
        fs::write(fixture.outside.join("big"), vec![1u8; 1 << 20]).unwrap();
        fs::hard_link(
            fixture.dest.join("pkg/sub/deeper/data.bin"),
            fixture.dest.join("data-again.bin"),
        )
        .unwrap();
        assert_eq!(usage(&fixture.dest).unwrap(), before);
        assert_eq!(before.largest_file, 10_000);
    }

    #[test]
    fn remove_removes_a_tree_with_read_only_directories() {
        let fixture = fixture();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        fs::set_permissions(fixture.dest.join("pkg/sub/deeper"), Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(fixture.dest.join("pkg"), Permissions::from_mode(0o000)).unwrap();
        remove(&fixture.dest);
        assert!(!fixture.dest.exists());
        assert!(fixture.outside.join("secret.txt").exists());
        assert!(fixture.pristine.join("pkg/__init__.py").exists());
    }

    #[test]
    fn removing_by_hand_opens_read_only_directories() {
        let fixture = fixture();
        lay(&fixture.pristine, &fixture.dest).unwrap();
        fs::set_permissions(fixture.dest.join("pkg/sub"), Permissions::from_mode(0o500)).unwrap();
        let mut failures = Vec::new();
        remove_opening_dirs(&fixture.dest, &mut failures);
        assert!(failures.is_empty(), "{failures:?}");
        assert!(!fixture.dest.exists());
        assert!(fixture.outside.join("secret.txt").exists());
    }

    /// Every entry under `root`: its path, type, permission bits and content (or link target).
    fn snapshot(root: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let metadata = fs::symlink_metadata(&path).unwrap();
                let content = if metadata.is_dir() {
                    pending.push(path.clone());
                    Vec::new()
                } else if metadata.is_symlink() {
                    fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
                } else {
                    fs::read(&path).unwrap()
                };
                entries.push((path.strip_prefix(root).unwrap().to_path_buf(), metadata.mode(), content));
            }
        }
        entries.sort();
        entries
    }

    #[test]
    fn reset_undoes_every_kind_of_change_and_keeps_what_was_not_touched() {
        let fx = fixture();
        fs::remove_file(fx.pristine.join("fifo")).ok();
        lay(&fx.pristine, &fx.dest).unwrap();
        let laid = snapshot(&fx.dest);
        let mut manifest = record(&fx.dest).unwrap();

        // In place, added, removed, renamed, replaced by a symlink, a new directory, a removed
        // one, a directory made unreadable, a mode changed, a hard link to a pristine file.
        let mut file = OpenOptions::new()
            .write(true)
            .open(fx.dest.join("pkg/__init__.py"))
            .unwrap();
        file.write_all(b"VALUE = 2\n").unwrap();
        drop(file);
        fs::write(fx.dest.join("pkg/new.py"), "added").unwrap();
        fs::rename(fx.dest.join("run.sh"), fx.dest.join("moved.sh")).unwrap();
        fs::remove_file(fx.dest.join("init-link")).unwrap();
        symlink(&fx.outside, fx.dest.join("init-link")).unwrap();
        fs::create_dir_all(fx.dest.join("build/lib")).unwrap();
        fs::write(fx.dest.join("build/lib/out.so"), "built").unwrap();
        fs::set_permissions(fx.dest.join("setuid"), Permissions::from_mode(0o777)).unwrap();
        fs::hard_link(fx.dest.join("pkg/sub/deeper/data.bin"), fx.dest.join("pkg/linked.bin")).unwrap();
        fs::set_permissions(fx.dest.join("pkg/sub"), Permissions::from_mode(0o000)).unwrap();

        let done = reset(&fx.pristine, &fx.dest, &mut manifest).unwrap();
        assert_eq!(snapshot(&fx.dest), laid, "{done:?}");
        assert!(done.removed >= 6 && done.restored >= 4, "{done:?}");
        assert_eq!(fs::read(fx.outside.join("secret.txt")).unwrap(), b"outside the tree");

        // With nothing touched, nothing is laid again.
        let kept = fs::metadata(fx.dest.join("pkg/__init__.py")).unwrap().ino();
        let done = reset(&fx.pristine, &fx.dest, &mut manifest).unwrap();
        assert_eq!(done, Reset::default());
        assert_eq!(fs::metadata(fx.dest.join("pkg/__init__.py")).unwrap().ino(), kept);
        assert_eq!(snapshot(&fx.dest), laid);
    }
}
