//! A cgroup per command: the memory and process limits, every member found however it hid,
//! and one kill that reaches all of them.
//!
//! The worker makes its command cgroups under its own, in each hierarchy the machine has:
//! cgroup v2 (the unified hierarchy, whose `cgroup.kill` ends a whole group at once, and its
//! `memory` and `pids` controllers where they are enabled there) and the cgroup v1 `memory`,
//! `pids` and `freezer` hierarchies where those hold the controllers instead. A command joins
//! its groups between fork and exec, so nothing it starts is ever outside them.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use domain::evidence::LimitHeld;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::sandbox::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// The directories under which this process can make command cgroups, by what each holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Hierarchies {
    /// This process's cgroup in the v2 hierarchy, where it may make children.
    v2: Option<PathBuf>,
    /// The v2 controllers children of `v2` get: `memory`, `pids`.
    v2_memory: bool,
    v2_pids: bool,
    /// This process's cgroups in the v1 hierarchies, where it may make children.
    v1_memory: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
    v1_freezer: Option<PathBuf>,
    v1_cpuacct: Option<PathBuf>,
}

impl Hierarchies {
    /// What this process can use, found from `/proc/self/cgroup` and the mounts under
    /// `/sys/fs/cgroup`; each part is tried by making (and removing) a child there.
    pub(crate) fn detect(name: &str) -> Hierarchies {
        let Ok(own) = fs::read_to_string("/proc/self/cgroup") else {
            return Hierarchies::default();
        };
        let root = Path::new(ROOT);
        let mut found = Hierarchies::default();
        for line in own.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let relative = path.trim_start_matches('/');
            if id == "0" && controllers.is_empty() {
                // The unified hierarchy: at the root on a pure v2 machine, under `unified`
                // on a hybrid one.
                let mount = if root.join("cgroup.controllers").is_file() {
                    root.to_path_buf()
                } else {
                    root.join("unified")
                };
                if mount.join("cgroup.controllers").is_file() {
                    let own = mount.join(relative);
                    delegate_v2_controllers(&own);
                    found.v2 = usable(&own, name);
                }
            } else {
                for controller in controllers.split(',') {
                    let dir = || usable(&root.join(controller).join(relative), name);
                    match controller {
                        "memory" => found.v1_memory = dir(),
                        "pids" => found.v1_pids = dir(),
                        "freezer" => found.v1_freezer = dir(),
                        "cpuacct" => found.v1_cpuacct = dir(),
                        _ => {}
                    }
                }
            }
        }
        if let Some(v2) = &found.v2 {
            let enabled = enable_v2_controllers(v2);
            found.v2_memory = enabled.contains(&"memory");
            found.v2_pids = enabled.contains(&"pids");
        }
        found
    }

    /// How the memory limit is held by a command cgroup made here.
    pub(crate) fn memory(&self) -> LimitHeld {
        self.held(self.v2_memory, &self.v1_memory)
    }

    /// How the process limit is held by a command cgroup made here.
    pub(crate) fn pids(&self) -> LimitHeld {
        self.held(self.v2_pids, &self.v1_pids)
    }

    /// A controller enabled in the v2 hierarchy wins over its v1 hierarchy.
    fn held(&self, in_v2: bool, v1: &Option<PathBuf>) -> LimitHeld {
        if self.v2.is_some() && in_v2 {
            LimitHeld::Cgroup2
        } else if v1.is_some() {
            LimitHeld::Cgroup1
        } else {
            LimitHeld::None
        }
    }

    /// Whether a command cgroup made here can find and kill every member.
    pub(crate) fn can_contain(&self) -> bool {
        self.v2.is_some() || self.v1_freezer.is_some() || self.v1_pids.is_some() || self.v1_memory.is_some()
    }

    /// Kills what an earlier worker of this name left in its command cgroups and removes them.
    /// Returns how many processes were killed.
    pub(crate) fn clear_leftovers(&self) -> usize {
        let mut killed = 0;
        for base in self.bases() {
            let Ok(entries) = fs::read_dir(base) else { continue };
            for entry in entries.flatten() {
                let dir = entry.path();
                if dir.is_dir() {
                    killed += kill_members(&dir, None);
                    let _ = remove(&dir);
                }
            }
        }
        killed
    }

    /// Removes the directories the command cgroups went under, once they are empty.
    pub(crate) fn remove_bases(&self) {
        for base in self.bases() {
            let _ = fs::remove_dir(base);
        }
    }

    fn bases(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.v2,
            &self.v1_memory,
            &self.v1_pids,
            &self.v1_freezer,
            &self.v1_cpuacct,
        ]
        .into_iter()
        .flatten()
    }

    /// Makes the cgroups of one command, named `name`, with `limits` applied where a
    /// controller holds them.
    pub(crate) fn create(&self, name: &str, limits: &Limits) -> std::io::Result<Cgroup> {
        let mut group = Cgroup {
            dirs: Vec::new(),
            v2: None,
            memory: None,
            pids: None,
            freezer: None,
            cpuacct: None,
            joins: Vec::new(),
        };
        let mut make = |base: &Path| -> std::io::Result<PathBuf> {
            let dir = base.join(name);
            fs::create_dir(&dir)?;
            group.dirs.push(dir.clone());
            Ok(dir)
        };
        let v2 = self.v2.as_deref().map(&mut make).transpose()?;
        let v1_memory = match self.v1_memory.as_deref() {
            Some(base) if !self.v2_memory => Some(make(base)?),
            _ => None,
        };
        let v1_pids = match self.v1_pids.as_deref() {
            Some(base) if !self.v2_pids => Some(make(base)?),
            _ => None,
        };
        let v1_freezer = match self.v1_freezer.as_deref() {
            Some(base) if v2.is_none() => Some(make(base)?),
            _ => None,
        };
        // The v2 hierarchy accounts CPU without a controller; v1 needs cpuacct.
        group.cpuacct = match self.v1_cpuacct.as_deref() {
            Some(base) if v2.is_none() => Some(make(base)?),
            _ => None,
        };
        if let Some(dir) = &v2 {
            if self.v2_memory {
                fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
                // Swap would let a suite go past its limit by another route.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                group.memory = Some(Controller::V2(dir.clone()));
            }
            if self.v2_pids {
                fs::write(dir.join("pids.max"), limits.pids.to_string())?;
                group.pids = Some(dir.clone());
            }
        }
        if let Some(dir) = v1_memory {
            fs::write(dir.join("memory.limit_in_bytes"), limits.memory_bytes.to_string())?;
            // Not every kernel accounts swap; where it does, swap would extend the limit.
            let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), limits.memory_bytes.to_string());
            group.memory = Some(Controller::V1(dir));
        }
        if let Some(dir) = v1_pids {
            fs::write(dir.join("pids.max"), limits.pids.to_string())?;
            group.pids = Some(dir);
        }
        group.v2 = v2;
        group.freezer = v1_freezer;
        for dir in &group.dirs {
            let procs = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
            group.joins.push(procs.into());
        }
        Ok(group)
    }
}

/// Makes and removes a child named `name` (with a probe suffix) under `dir`: `dir/name` when it
/// works, where the command cgroups will go.
fn usable(dir: &Path, name: &str) -> Option<PathBuf> {
    let base = dir.join(name);
    let probe = base.join("probe");
    let made = fs::create_dir_all(&probe).is_ok()
        && fs::OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))
            .is_ok();
    let _ = fs::remove_dir(&probe);
    made.then_some(base)
}

/// Makes the `memory` and `pids` controllers this process's v2 cgroup holds available to its
/// children. The v2 hierarchy lets a group hand controllers down only while no process is in
/// it, so when this process is, it moves itself into a leaf beside the command groups first
/// (as a service manager's delegated unit would).
fn delegate_v2_controllers(own: &Path) {
    let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let delegated = fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .filter(|c| !delegated.split_whitespace().any(|d| d == *c))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let enable = || {
        wanted
            .iter()
            .all(|c| fs::write(own.join("cgroup.subtree_control"), format!("+{c}")).is_ok())
    };
    if enable() {
        return;
    }
    let leaf = own.join("ftsurvey-supervisor");
    let moved = fs::create_dir_all(&leaf).is_ok()
        && fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).is_ok();
    if moved && !enable() {
        tracing::debug!(cgroup = %own.display(), "cannot hand the memory and pids controllers down to command cgroups");
    }
}

/// Enables the `memory` and `pids` controllers for the children of `dir` in the v2
/// hierarchy, as far as its parent allows; returns those enabled.
fn enable_v2_controllers(dir: &Path) -> Vec<&'static str> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for controller in ["memory", "pids"] {
        if available.split_whitespace().any(|c| c == controller)
            && fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}")).is_ok()
        {
            enabled.push(controller);
        }
    }
    enabled
}

#[derive(Debug)]
enum Controller {
    V1(PathBuf),
    V2(PathBuf),
}

/// The cgroups of one command: one per hierarchy used.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: Option<PathBuf>,
    memory: Option<Controller>,
    pids: Option<PathBuf>,
    freezer: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    /// Each group's `cgroup.procs`, open for the child to write itself into between fork and
    /// exec (nothing may be allocated there).
    joins: Vec<OwnedFd>,
}

impl Cgroup {
    /// The descriptors the child writes `0` (itself) into before exec; the group keeps none,
    /// so they close once the command is spawned.
    pub(crate) fn take_joins(&mut self) -> Arc<[OwnedFd]> {
        std::mem::take(&mut self.joins).into()
    }

    /// The processes in the group now.
    pub(crate) fn members(&self) -> Vec<i32> {
        self.dirs.first().map(|dir| procs(dir)).unwrap_or_default()
    }

    /// CPU time the group's processes used, all of them, however they ended: the one figure a
    /// sandbox's init, which exits without waiting for its children, cannot hide.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        if let Some(v2) = &self.v2 {
            return Some(Duration::from_micros(counter(&v2.join("cpu.stat"), "usage_usec")));
        }
        let nanos = fs::read_to_string(self.cpuacct.as_ref()?.join("cpuacct.usage")).ok()?;
        nanos.trim().parse().ok().map(Duration::from_nanos)
    }

    /// Times the kernel killed a process at the memory limit.
    pub(crate) fn oom_kills(&self) -> u64 {
        match &self.memory {
            Some(Controller::V2(dir)) => counter(&dir.join("memory.events"), "oom_kill"),
            Some(Controller::V1(dir)) => counter(&dir.join("memory.oom_control"), "oom_kill"),
            None => 0,
        }
    }

    /// Times a fork failed at the process limit.
    pub(crate) fn pids_refused(&self) -> u64 {
        self.pids
            .as_ref()
            .map_or(0, |dir| counter(&dir.join("pids.events"), "max"))
    }

    /// Kills every member, however it left the process group or cleared its environment;
    /// returns how many there were.
    pub(crate) fn kill_all(&self) -> usize {
        let Some(dir) = self.dirs.first() else { return 0 };
        let found = procs(dir).len();
        if found == 0 {
            return 0;
        }
        if let Some(v2) = &self.v2
            && fs::write(v2.join("cgroup.kill"), "1").is_ok()
        {
            wait_empty(v2);
            return found;
        }
        kill_members(dir, self.freezer.as_deref());
        found
    }

    /// Kills what is left and removes the groups.
    pub(crate) fn remove(&self) {
        self.kill_all();
        for dir in self.dirs.iter().rev() {
            if let Err(error) = remove(dir) {
                tracing::warn!(cgroup = %dir.display(), %error, "cannot remove a command's cgroup");
            }
        }
    }
}

/// Kills the members of the group at `dir` until none is left, freezing them first where a
/// freezer group is given so none can fork in between. Returns how many were found at first.
fn kill_members(dir: &Path, freezer: Option<&Path>) -> usize {
    let found = procs(dir).len();
    if let Some(freezer) = freezer {
        let _ = fs::write(freezer.join("freezer.state"), "FROZEN");
    }
    for _ in 0..100 {
        let members = procs(dir);
        if members.is_empty() {
            break;
        }
        for pid in members {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(freezer) = freezer {
            let _ = fs::write(freezer.join("freezer.state"), "THAWED");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    found
}

fn wait_empty(dir: &Path) {
    for _ in 0..200 {
        if procs(dir).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes a group once its last member is gone (a killed process leaves it a moment later).
fn remove(dir: &Path) -> std::io::Result<()> {
    let mut last = Ok(());
    for _ in 0..100 {
        last = fs::remove_dir(dir);
        match &last {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    last
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 3`).
fn counter(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_counters_are_read_by_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("memory.events");
        fs::write(&path, "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n").expect("write");
        assert_eq!(counter(&path, "oom_kill"), 1);
        assert_eq!(counter(&path, "max"), 12);
        assert_eq!(counter(&path, "oom_group_kill"), 0);
        assert_eq!(counter(&dir.path().join("missing"), "max"), 0);
    }
}
