//! CPU time of processes, from `/proc` (read as the worker's supervisor reads it): the
//! dispatch benchmark's cost per job.

use std::time::Duration;

use anyhow::Context;
use worker::proctree::{Stat, all_pids, read_stat, ticks_per_second};

/// The CPU time (user + system) a process has used, all its threads together.
pub fn process(pid: u32) -> anyhow::Result<Duration> {
    Ok(from_ticks(stat(pid)?.cpu_ticks))
}

/// The CPU time of process `root` (with its waited-for children) and of its live children.
pub fn tree(root: u32) -> anyhow::Result<Duration> {
    let root_stat = stat(root)?;
    let root = root as i32;
    // A child may end between the listing and the read: its time is then its parent's.
    let children: u64 = all_pids()
        .filter_map(read_stat)
        .filter(|stat| stat.ppid == root)
        .map(|stat| stat.cpu_ticks)
        .sum();
    Ok(from_ticks(
        root_stat.cpu_ticks + root_stat.children_cpu_ticks + children,
    ))
}

fn stat(pid: u32) -> anyhow::Result<Stat> {
    let pid = i32::try_from(pid).with_context(|| format!("process id {pid}"))?;
    read_stat(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))
}

fn from_ticks(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(busy.elapsed());
        }
        assert!(process(std::process::id()).expect("read") > Duration::ZERO);
    }
}
