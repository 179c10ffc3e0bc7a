//! The sandbox benchmark: what it costs a worker to run each iteration of a package's tests in
//! a place of its own.
//!
//! ```sh
//! cargo run --release -p tests --bin bench-sandbox -- [--dir DIR] [--rounds 5]
//! ```
//!
//! Everything it makes goes in a temporary directory under `--dir` (default: the system's
//! temporary directory), so `--dir` picks the filesystem measured. Each section prints its
//! figures one a line under a `== section` header:
//!
//! - fresh tree: a pristine tree of 10,000 files (100 directories of 100 files of 1 to 4 KiB)
//!   laid `--rounds` times with `worker::fresh_tree::lay`: the time of the first (which
//!   follows no removal), the median and the slowest time to lay it, whether files were cloned copy-on-write, the median time of
//!   `worker::fresh_tree::usage` on a laid copy (the disk limit samples it every second) and
//!   the median time to remove a copy; then the median time to put a kept copy back as laid
//!   (`worker::fresh_tree::reset`), untouched and after 10 files were changed and 10 added,
//!   which is what a worker does between iterations of a package instead of laying again.
//! - iteration: a trivial suite (one `unittest` test, run by the machine's `python3`) in a
//!   copy of its tree (laid for the first, kept and put back for the rest), sealed and
//!   supervised as a worker runs an iteration, `--rounds`
//!   times (at least 20) with `--sandbox none` and with `--sandbox bwrap`, alternating in
//!   blocks so load drifts reach both alike: the median and p90 wall time of each, from laying
//!   the copy to removing it, and the median added by bubblewrap. Both run in a cgroup per
//!   iteration where the machine lets this process make one, so the difference is the sandbox's.
//!
//! Reading the figures: on ext4 without a journal, allocating an inode passes over every free
//! inode of the group that was deleted in the last minute (six while its inode table block is
//! unwritten), so creating files soon after many were removed, as each round does after the
//! last and as a worker does between iterations, can cost several times a lay on a quiet
//! filesystem; other processes' deletions in the same groups count too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use worker::fresh_tree;

#[derive(Debug)]
struct Options {
    /// Where the scratch directory goes.
    dir: Option<PathBuf>,
    rounds: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options { dir: None, rounds: 5 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => options.dir = Some(PathBuf::from(value()?)),
            "--rounds" => {
                options.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?;
                if options.rounds == 0 {
                    return Err("--rounds must be at least 1".into());
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

/// A section of the benchmark: given its own scratch directory, prints its figures.
type Section = fn(&Path, &Options) -> anyhow::Result<()>;

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let sections: &[(&str, Section)] = &[("fresh tree", bench_fresh_tree), ("iteration", bench_iteration)];
    for (name, section) in sections {
        println!("== {name}");
        if let Err(error) = run_section(*section, &options) {
            eprintln!("error: {name}: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Runs one section in a scratch directory of its own, removed after it.
fn run_section(section: Section, options: &Options) -> anyhow::Result<()> {
    let parent = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("bench-sandbox-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot make a scratch directory in {}", parent.display()))?;
    section(scratch.path(), options)
}

const TREE_DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;

/// Laying, measuring and removing an iteration's copy of a package's source tree.
fn bench_fresh_tree(scratch: &Path, options: &Options) -> anyhow::Result<()> {
    let pristine = scratch.join("pristine");
    let tree_bytes = make_tree(&pristine)?;
    println!(
        "pristine tree: {} files in {TREE_DIRS} directories, {:.1} MiB",
        TREE_DIRS * FILES_PER_DIR,
        tree_bytes as f64 / (1 << 20) as f64
    );
    let mut lays = Vec::new();
    let mut usages = Vec::new();
    let mut removals = Vec::new();
    let mut reflinked = false;
    for round in 0..options.rounds {
        let copy = scratch.join(format!("copy-{round}"));
        let started = Instant::now();
        let laid = fresh_tree::lay(&pristine, &copy)?;
        lays.push(started.elapsed());
        anyhow::ensure!(
            laid.files == (TREE_DIRS * FILES_PER_DIR) as u64 && laid.bytes == tree_bytes,
            "laid {laid:?}, not the whole tree"
        );
        reflinked |= laid.reflinked;
        // A few samples per copy, as the disk limit takes one a second.
        for _ in 0..3 {
            let started = Instant::now();
            let usage = fresh_tree::usage(&copy)?;
            usages.push(started.elapsed());
            anyhow::ensure!(usage.bytes >= tree_bytes, "usage {usage:?} below the tree's size");
        }
        let started = Instant::now();
        fresh_tree::remove(&copy);
        removals.push(started.elapsed());
        anyhow::ensure!(!copy.exists(), "{} left behind", copy.display());
    }
    // The first copy follows no removal; the later ones follow the last one's, as a worker's
    // iterations follow each other.
    println!("lay: first {}", millis(lays[0]));
    println!("lay: median {}", millis(median(&mut lays)));
    println!("lay: max {}", millis(lays.iter().copied().max().unwrap_or_default()));
    println!(
        "reflinks: {}",
        if reflinked {
            "yes, files cloned copy-on-write"
        } else {
            "no, files copied"
        }
    );
    println!("usage: median {}", millis(median(&mut usages)));
    // What a worker does between two iterations of a package instead of laying again: put the
    // copy back as laid, untouched, and after a test changed 10 files and added 10.
    let copy = scratch.join("kept");
    fresh_tree::lay(&pristine, &copy)?;
    let mut manifest = fresh_tree::record(&copy)?;
    let (mut untouched, mut touched) = (Vec::new(), Vec::new());
    for _ in 0..options.rounds {
        let started = Instant::now();
        let done = fresh_tree::reset(&pristine, &copy, &mut manifest)?;
        untouched.push(started.elapsed());
        anyhow::ensure!(
            done == fresh_tree::Reset::default(),
            "an untouched copy was changed: {done:?}"
        );
        for i in 0..10 {
            std::fs::write(copy.join(format!("module_{i:03}/file_000.py")), "changed")?;
            std::fs::write(copy.join(format!("module_{i:03}/added.py")), "added")?;
        }
        let started = Instant::now();
        let done = fresh_tree::reset(&pristine, &copy, &mut manifest)?;
        touched.push(started.elapsed());
        anyhow::ensure!(done.removed == 20 && done.restored == 10, "reset {done:?}");
    }
    println!("reset, untouched: median {}", millis(median(&mut untouched)));
    println!("reset, 20 files touched: median {}", millis(median(&mut touched)));
    println!("remove: median {}", millis(median(&mut removals)));
    Ok(())
}

/// One iteration of a trivial suite, unsealed and in bubblewrap, side by side.
fn bench_iteration(scratch: &Path, options: &Options) -> anyhow::Result<()> {
    const BLOCK: usize = 5;
    let tree = scratch.join("suite");
    std::fs::create_dir_all(&tree)?;
    std::fs::write(
        tree.join("test_trivial.py"),
        "import unittest\n\nclass Trivial(unittest.TestCase):\n    def test_it(self):\n        self.assertTrue(True)\n",
    )?;
    let command = "python3 -m unittest -q test_trivial";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rounds = options.rounds.max(20).div_ceil(BLOCK) * BLOCK;
    let modes = [worker::SandboxMode::None, worker::SandboxMode::Bwrap];
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for block in 0..rounds / BLOCK {
        for (mode, times) in modes.iter().zip(times.iter_mut()) {
            let config = worker::SandboxConfig {
                mode: *mode,
                ..worker::SandboxConfig::default()
            };
            let work = scratch.join(format!("{mode}-{block}"));
            std::fs::create_dir_all(&work)?;
            times.extend(runtime.block_on(worker::time_iterations(&config, &tree, &work, command, BLOCK))?);
        }
    }
    println!("trivial suite: `{command}`, {rounds} iterations each");
    let mut medians = [Duration::ZERO; 2];
    for ((mode, times), median_out) in modes.iter().zip(times.iter_mut()).zip(medians.iter_mut()) {
        times.sort_unstable();
        *median_out = median(times);
        let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
        println!("--sandbox {mode}: median {}, p90 {}", millis(*median_out), millis(p90));
    }
    let added = medians[1].as_secs_f64() - medians[0].as_secs_f64();
    println!(
        "bwrap adds: {:.1} ms per iteration (median against median)",
        added * 1000.0
    );
    Ok(())
}

/// Writes the pristine tree: `TREE_DIRS` directories of `FILES_PER_DIR` files of 1 to 4 KiB.
/// Returns the bytes written.
fn make_tree(root: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for dir_idx in 0..TREE_DIRS {
        let dir = root.join(format!("module_{dir_idx:03}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for file_idx in 0..FILES_PER_DIR {
            // Sizes spread over 1 to 4 KiB, the same on every run.
            let size = 1024 + (dir_idx * FILES_PER_DIR + file_idx) * 997 % (3 * 1024 + 1);
            let path = dir.join(format!("file_{file_idx:03}.py"));
            std::fs::write(&path, vec![b'#'; size]).with_context(|| format!("cannot write {}", path.display()))?;
            bytes += size as u64;
        }
    }
    Ok(bytes)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
