//! CPU time of processes, from `/proc/PID/stat`: the dispatch benchmark's cost per job.

use std::time::Duration;

use anyhow::Context;

/// The CPU time (user + system) a process has used, with that of its children it has waited
/// for when `with_children`.
pub fn process(pid: u32, with_children: bool) -> anyhow::Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading process {pid}"))?;
    let fields = fields(&stat).with_context(|| format!("malformed /proc/{pid}/stat"))?;
    let ticks = fields.utime
        + fields.stime
        + if with_children {
            fields.cutime + fields.cstime
        } else {
            0
        };
    Ok(from_ticks(ticks))
}

/// The CPU time of process `root` (with its waited-for children) and of its live children.
pub fn tree(root: u32) -> anyhow::Result<Duration> {
    let mut total = process(root, true)?;
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // A process may end between the listing and the read: it is then its parent's.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(fields) = fields(&stat)
            && fields.ppid == root
        {
            total += from_ticks(fields.utime + fields.stime);
        }
    }
    Ok(total)
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// The fields after the command name, which is in parentheses and may hold anything.
fn fields(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let at = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(at(4)?).ok()?,
        utime: at(14)?,
        stime: at(15)?,
        cutime: at(16)?,
        cstime: at(17)?,
    })
}

fn from_ticks(ticks: u64) -> Duration {
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100);
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 3 4 20 0 1 0 100 0 0";
        let fields = fields(stat).expect("parsed");
        assert_eq!(fields.ppid, 7);
        assert_eq!(
            (fields.utime, fields.stime, fields.cutime, fields.cstime),
            (250, 50, 3, 4)
        );
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(busy.elapsed());
        }
        assert!(process(std::process::id(), false).expect("read") > Duration::ZERO);
    }
}
