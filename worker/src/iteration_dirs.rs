//! Where iterations run: a directory each, holding a copy of the package's pristine tree, a
//! HOME and a TMPDIR. After each iteration the copy is put back as it was laid (what the
//! tests wrote goes at once, so it takes no disk while it waits) and kept for the package's
//! next iteration, which then costs a walk and the files the tests touched rather than
//! laying every file again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fresh_tree::{self, Manifest};

/// Copies kept between iterations, at most: a few packages' worth of slots.
const KEPT: usize = 8;

/// The directories of one worker's iterations, under its `iterations/`.
#[derive(Debug)]
pub(crate) struct IterationDirs {
    root: PathBuf,
    /// Copies put back as laid, waiting for the next iteration of their package, oldest
    /// first.
    kept: Mutex<VecDeque<IterationDir>>,
}

/// One iteration's directory: `tree/` (a copy of `pristine`, as `manifest` records it laid),
/// `home/` and `tmp/`.
#[derive(Debug)]
pub(crate) struct IterationDir {
    pub(crate) dir: PathBuf,
    pristine: PathBuf,
    manifest: Manifest,
}

impl IterationDir {
    pub(crate) fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
}

impl IterationDirs {
    /// Iteration directories under `root`, emptied of what an earlier worker left.
    pub(crate) fn new(root: PathBuf) -> Self {
        fresh_tree::remove(&root);
        IterationDirs {
            root,
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// A directory whose tree is `pristine` as it is, with an empty HOME and TMPDIR: a kept
    /// one, or a fresh one.
    pub(crate) fn take(&self, pristine: &Path) -> std::io::Result<IterationDir> {
        let kept = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let found = kept.iter().position(|dir| dir.pristine == pristine);
            found.and_then(|index| kept.remove(index))
        };
        if let Some(place) = kept {
            return Ok(place);
        }
        let dir = self.root.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir)?;
        let laid = fresh_tree::lay(pristine, &dir.join("tree"))
            .and_then(|_| fresh_tree::record(&dir.join("tree")))
            .and_then(|manifest| empty_private_dirs(&dir).map(|()| manifest));
        match laid {
            Ok(manifest) => Ok(IterationDir {
                dir,
                pristine: pristine.to_path_buf(),
                manifest,
            }),
            Err(error) => {
                fresh_tree::remove(&dir);
                Err(error)
            }
        }
    }

    /// Puts `place` back as it was laid and keeps it for the next iteration of its package,
    /// making room by removing the oldest kept one; a place that cannot be put back is removed.
    pub(crate) fn give_back(&self, mut place: IterationDir) {
        let tree = place.tree();
        let reset =
            fresh_tree::reset(&place.pristine, &tree, &mut place.manifest).and_then(|_| empty_private_dirs(&place.dir));
        if let Err(error) = reset {
            tracing::warn!(dir = %place.dir.display(), %error, "cannot put an iteration's tree back as laid; removing it");
            fresh_tree::remove(&place.dir);
            return;
        }
        let evicted = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.push_back(place);
            if kept.len() > KEPT { kept.pop_front() } else { None }
        };
        if let Some(evicted) = evicted {
            fresh_tree::remove(&evicted.dir);
        }
    }
}

/// Makes `home/` and `tmp/` under `dir` exist and empty.
fn empty_private_dirs(dir: &Path) -> std::io::Result<()> {
    for private in ["home", "tmp"] {
        let path = dir.join(private);
        fresh_tree::remove(&path);
        std::fs::create_dir(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_tree_comes_back_as_laid_with_empty_private_dirs() {
        let temp = tempfile::tempdir().expect("temp dir");
        let pristine = temp.path().join("pristine");
        std::fs::create_dir_all(pristine.join("pkg")).expect("mkdir");
        std::fs::write(pristine.join("pkg/mod.py"), "X = 1\n").expect("write");
        let dirs = IterationDirs::new(temp.path().join("iterations"));

        let first = dirs.take(&pristine).expect("lay");
        std::fs::write(first.tree().join("pkg/mod.py"), "X = 2\n").expect("write");
        std::fs::write(first.tree().join("poison"), "left").expect("write");
        std::fs::write(first.dir.join("home/.bashrc"), "left").expect("write");
        std::fs::write(first.dir.join("tmp/t"), "left").expect("write");
        let first_dir = first.dir.clone();
        dirs.give_back(first);

        let second = dirs.take(&pristine).expect("reset");
        assert_eq!(second.dir, first_dir, "the kept copy is reused");
        assert_eq!(
            std::fs::read_to_string(second.tree().join("pkg/mod.py")).expect("read"),
            "X = 1\n"
        );
        assert!(!second.tree().join("poison").exists());
        assert_eq!(std::fs::read_dir(second.dir.join("home")).expect("home").count(), 0);
        assert_eq!(std::fs::read_dir(second.dir.join("tmp")).expect("tmp").count(), 0);
        // Another iteration of the same package at once gets a copy of its own.
        let third = dirs.take(&pristine).expect("lay");
        assert_ne!(third.dir, second.dir);
    }
}
