//! The processes of one supervised command, found through `/proc`.
//!
//! A process belongs to the tree when it is in the command's cgroup (where the worker can make
//! one: nothing a process does takes it out), in the command's process group, or when its
//! environment carries the tree's marker variable, which every descendant inherits unless it
//! clears its environment: a grandchild that left the group with `setsid` is still found. The
//! worker is a child subreaper, so such escapees become its children when their parent dies
//! and are reaped here once killed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::sandbox::cgroup::Cgroup;

/// The variable that marks every process of a supervised command.
pub(crate) const MARKER_VAR: &str = "FTSURVEY_PROCESS_TREE";

/// Root processes of supervised commands still running: their owners wait for them, so
/// [`Tree::reap`] must not, even if a pid it saw earlier was reused for one.
static ROOTS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Marks `pid` as a root that its owner waits for, until [`release_root`].
pub(crate) fn register_root(pid: i32) {
    let mut roots = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    roots.get_or_insert_with(HashSet::new).insert(pid);
}

pub(crate) fn release_root(pid: i32) {
    let mut roots = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(roots) = roots.as_mut() {
        roots.remove(&pid);
    }
}

fn is_root(pid: i32) -> bool {
    let roots = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    roots.as_ref().is_some_and(|roots| roots.contains(&pid))
}

/// Makes this process the reaper of its orphaned descendants, so a test's escaped grandchild
/// stays visible as the worker's child. Failing is not fatal: the marker still finds them.
pub(crate) fn become_subreaper() {
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%error, "cannot become a child subreaper; escaped processes are found by their environment only");
    }
}

/// The variable that marks every command a worker runs with the worker's directory, so a
/// restarted worker can find what its previous incarnation left running.
pub(crate) const WORKER_VAR: &str = "FTSURVEY_WORKER_DIR";

/// Kills every process started by an earlier worker with this directory (one killed with
/// SIGKILL leaves its iterations running). Returns how many there were.
pub(crate) fn kill_leftovers(worker_dir: &std::path::Path) -> usize {
    let marker = format!("{WORKER_VAR}={}", worker_dir.display()).into_bytes();
    let me = std::process::id() as i32;
    let mut killed = 0;
    for _ in 0..20 {
        let found: Vec<i32> = all_pids()
            .filter(|pid| *pid != me)
            .filter(|pid| environ_has(*pid, &marker))
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in &found {
            if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    killed
}

/// Every process id in `/proc`.
pub fn all_pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

fn environ_has(pid: i32, marker: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == marker))
}

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// cutime + cstime: the CPU of its children it has waited for, in clock ticks.
    pub children_cpu_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

/// Clock ticks per second, the unit of [`Stat`]'s CPU times.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t.max(1) as u64)
}

/// The processes of one command, and their CPU use between samples.
#[derive(Debug)]
pub(crate) struct Tree {
    /// `FTSURVEY_PROCESS_TREE=<id>` as it appears in `/proc/<pid>/environ`.
    marker: Vec<u8>,
    root: i32,
    /// Every process seen in the tree, for reaping.
    seen: HashSet<i32>,
    /// CPU ticks of each live member at the last sample.
    ticks: HashMap<i32, u64>,
    /// The largest resident set a member had at a sample, KiB.
    max_rss_kb: u64,
    /// The root has been waited for: its pid (and, once empty, its group id) may belong to
    /// someone else now, so only the marker and the cgroup identify members.
    root_reaped: bool,
    /// The command's cgroup, where the worker could make one.
    cgroup: Option<Arc<Cgroup>>,
}

impl Tree {
    /// The tree of the command whose root process is `root` (also its process group), whose
    /// environment has `MARKER_VAR=marker`, and whose processes are all in `cgroup`.
    pub(crate) fn new(root: i32, marker: &str, cgroup: Option<Arc<Cgroup>>) -> Self {
        Tree {
            marker: format!("{MARKER_VAR}={marker}").into_bytes(),
            root,
            seen: HashSet::new(),
            ticks: HashMap::new(),
            max_rss_kb: 0,
            root_reaped: false,
            cgroup,
        }
    }

    /// Says the root process has been waited for.
    pub(crate) fn root_reaped(&mut self) {
        self.root_reaped = true;
    }

    /// Live (not zombie) members now.
    pub(crate) fn members(&mut self) -> Vec<(i32, Stat)> {
        let mut members = Vec::new();
        let in_cgroup: HashSet<i32> = self
            .cgroup
            .as_ref()
            .map(|c| c.members())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for pid in all_pids() {
            let Some(stat) = read_stat(pid) else { continue };
            if stat.state == 'Z' || stat.state == 'X' {
                continue;
            }
            let by_root = !self.root_reaped && (pid == self.root || stat.pgrp == self.root);
            if by_root || in_cgroup.contains(&pid) || self.has_marker(pid) {
                self.seen.insert(pid);
                members.push((pid, stat));
            }
        }
        members
    }

    fn has_marker(&self, pid: i32) -> bool {
        environ_has(pid, &self.marker)
    }

    /// CPU ticks the tree used since the last sample: the growth of every member's counter,
    /// and the whole counter of a member not seen before.
    pub(crate) fn cpu_progress(&mut self) -> u64 {
        let members = self.members();
        let mut progress = 0;
        let mut ticks = HashMap::with_capacity(members.len());
        let page_kb = page_kb();
        for (pid, stat) in members {
            self.max_rss_kb = self.max_rss_kb.max(stat.rss_pages * page_kb);
            let before = self.ticks.get(&pid).copied().unwrap_or(0);
            progress += stat.cpu_ticks.saturating_sub(before);
            ticks.insert(pid, stat.cpu_ticks);
        }
        self.ticks = ticks;
        progress
    }

    /// Sends `signal` to the members that catch it; returns how many got it. Used for the
    /// faulthandler stack dump, which only processes that registered a handler survive.
    pub(crate) fn signal_catchers(&mut self, signal: Signal) -> usize {
        let mut sent = 0;
        for (pid, _) in self.members() {
            if catches(pid, signal) && kill(Pid::from_raw(pid), signal).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// Sends `signal` to the group and to every member. The group is signalled only while a
    /// member is in it: an empty group's id is free for the kernel to reuse, and a process
    /// group that took it over is not ours.
    pub(crate) fn signal_all(&mut self, signal: Signal) {
        let members = self.members();
        if !self.root_reaped && members.iter().any(|(_, stat)| stat.pgrp == self.root) {
            let _ = killpg(Pid::from_raw(self.root), signal);
        }
        for (pid, _) in members {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILLs every member until none is left (a fork racing the kill is caught by the next
    /// round), then reaps the ones that ended up as this process's children. Returns how many
    /// members were alive when it started.
    pub(crate) fn kill_all(&mut self) -> usize {
        let initially = self.members().len();
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
        for _ in 0..50 {
            self.signal_all(Signal::SIGKILL);
            if self.members().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.reap();
        initially
    }

    /// The largest resident set a member had when the tree was sampled, KiB.
    pub(crate) fn sampled_max_rss_kb(&self) -> u64 {
        self.max_rss_kb
    }

    /// Kills what is left in the command's cgroup and removes it.
    pub(crate) fn remove_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
    }

    /// Waits for the seen members that are this process's children (escapees it inherited as
    /// subreaper), except the root, which its owner waits for.
    pub(crate) fn reap(&mut self) {
        let me = std::process::id() as i32;
        for &pid in &self.seen {
            if pid == self.root || is_root(pid) {
                continue;
            }
            if read_stat(pid).is_some_and(|stat| stat.ppid == me) {
                let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

/// KiB per page, the unit of [`Stat::rss_pages`].
fn page_kb() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4, |bytes| (bytes.max(1024) as u64) / 1024)
}

/// Whether `pid` has a handler installed for `signal` (its `SigCgt` mask has the bit).
fn catches(pid: i32, signal: Signal) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (signal as i32 - 1)) != 0)
}

/// The process's `/proc/<pid>/stat`, if it is there and readable.
pub fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`; the command name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) ... utime(14) stime(15) cutime(16) cstime(17)
    // ... rss(24), numbered as in proc(5).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        cpu_ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
        children_cpu_ticks: field(16)?.parse::<u64>().ok()? + field(17)?.parse::<u64>().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 37 5 3 4 20 0 1 0 1 1 1";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                cpu_ticks: 42,
                children_cpu_ticks: 7,
                rss_pages: 1,
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_seen_with_its_marker_and_catches_nothing_unusual() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).expect("own stat");
        assert!(matches!(stat.state, 'R' | 'S'), "{stat:?}");
        // The test process does not handle SIGUSR2.
        assert!(!catches(me, Signal::SIGUSR2));
    }
}
