//! `--check-stability`: refuse to start a survey on a machine too loaded or too short of
//! memory for timings and races to mean anything, saying the figures either way.

use anyhow::{Context, bail};

/// Load per CPU above which the machine counts as busy.
const MAX_LOAD_PER_CPU: f64 = 1.0;
/// Memory that must be available, in KiB.
const MIN_AVAILABLE_KIB: u64 = 1024 * 1024;

/// What the check looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures {
    pub(crate) load_1m: f64,
    pub(crate) cpus: usize,
    pub(crate) mem_available_kib: u64,
    pub(crate) mem_total_kib: u64,
}

impl Figures {
    /// Reads `/proc/loadavg` and `/proc/meminfo`.
    pub(crate) fn read() -> anyhow::Result<Figures> {
        let loadavg = std::fs::read_to_string("/proc/loadavg").context("cannot read /proc/loadavg")?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
        let load_1m = loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .context("unreadable /proc/loadavg")?;
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("no {name} in /proc/meminfo"))
        };
        Ok(Figures {
            load_1m,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_available_kib: field("MemAvailable:")?,
            mem_total_kib: field("MemTotal:")?,
        })
    }

    fn describe(&self) -> String {
        format!(
            "load average {:.2} over the last minute on {} CPUs, {:.1} GiB of {:.1} GiB memory available",
            self.load_1m,
            self.cpus,
            self.mem_available_kib as f64 / 1024.0 / 1024.0,
            self.mem_total_kib as f64 / 1024.0 / 1024.0
        )
    }

    /// A line to print when the machine is fit, an error saying why when not.
    pub(crate) fn judge(&self) -> anyhow::Result<String> {
        let max_load = MAX_LOAD_PER_CPU * self.cpus as f64;
        if self.load_1m > max_load {
            bail!(
                "system not stable: {} (load above {max_load:.2}); wait for the machine to calm down or run without --check-stability",
                self.describe()
            );
        }
        if self.mem_available_kib < MIN_AVAILABLE_KIB {
            bail!(
                "system not stable: {} (less than {} GiB available); free memory or run without --check-stability",
                self.describe(),
                MIN_AVAILABLE_KIB / 1024 / 1024
            );
        }
        Ok(format!("system stable: {}", self.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_and_memory_decide_with_figures_in_the_message() {
        let calm = Figures {
            load_1m: 0.5,
            cpus: 2,
            mem_available_kib: 20 * 1024 * 1024,
            mem_total_kib: 24 * 1024 * 1024,
        };
        let line = calm.judge().expect("stable");
        assert!(line.contains("load average 0.50"), "{line}");
        assert!(line.contains("20.0 GiB of 24.0 GiB"), "{line}");

        let busy = Figures { load_1m: 3.2, ..calm };
        let error = busy.judge().expect_err("busy").to_string();
        assert!(
            error.contains("load average 3.20") && error.contains("above 2.00"),
            "{error}"
        );

        let short = Figures {
            mem_available_kib: 300 * 1024,
            ..calm
        };
        let error = short.judge().expect_err("short").to_string();
        assert!(error.contains("0.3 GiB of 24.0 GiB"), "{error}");
    }

    #[test]
    fn this_machine_can_be_read() {
        let figures = Figures::read().expect("figures");
        assert!(figures.cpus >= 1 && figures.mem_total_kib > 0, "{figures:?}");
    }
}
