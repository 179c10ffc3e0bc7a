//! Flags shared by `run` and `worker` for the sandbox every package command runs in and the
//! limits each iteration runs under.

use std::path::PathBuf;

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use worker::{Limits, SandboxConfig, SandboxMode};

#[derive(Debug, Args)]
pub(crate) struct SandboxArgs {
    /// What every install, probe and test run is sealed in: `bwrap` (bubblewrap, required),
    /// `none`, or `auto` (bubblewrap when `bwrap` is on PATH, else none).
    #[arg(long, default_value_t = SandboxMode::Auto, env = "FTSURVEY_SANDBOX", value_name = "SANDBOX",
          value_parser = PossibleValuesParser::new(SandboxMode::ALL.map(SandboxMode::as_str))
              .try_map(|mode| mode.parse::<SandboxMode>()))]
    pub(crate) sandbox: SandboxMode,
    /// Memory of all of an iteration's processes together: bytes, or a number with K, M, G
    /// or T in powers of 1024 (`512M`, `4GiB`).
    #[arg(long, default_value = "4GiB", env = "FTSURVEY_MEMORY_LIMIT", value_name = "SIZE",
          value_parser = parse_limit_size)]
    pub(crate) memory_limit: u64,
    /// Processes and threads an iteration may have alive at once.
    #[arg(long, default_value_t = Limits::DEFAULT_PIDS, env = "FTSURVEY_PIDS_LIMIT", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) pids_limit: u64,
    /// Disk an iteration may fill: its largest file, and all its files together (a size as
    /// for --memory-limit).
    #[arg(long, default_value = "2GiB", env = "FTSURVEY_DISK_LIMIT", value_name = "SIZE",
          value_parser = parse_limit_size)]
    pub(crate) disk_limit: u64,
}

impl SandboxArgs {
    /// The sandbox these flags ask for, hiding `hidden` (the worker's secrets) besides the
    /// worker's own directories.
    pub(crate) fn config(&self, hidden: Vec<PathBuf>) -> SandboxConfig {
        SandboxConfig {
            mode: self.sandbox,
            limits: Limits {
                memory_bytes: self.memory_limit,
                pids: self.pids_limit,
                disk_bytes: self.disk_limit,
            },
            hidden,
        }
    }
}

/// A size such as `512M`, `4GiB` or `2g`: bytes, or K, M, G or T with an optional `iB` or `B`,
/// in any case, always in powers of 1024. A limit of nothing is refused.
fn parse_limit_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|_| "expected bytes, or a number with K, M, G or T in powers of 1024 (512M, 4GiB)".to_string())?;
    if bytes == 0 {
        return Err("a limit of 0 would let nothing run".to_string());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        sandbox: SandboxArgs,
    }

    #[test]
    fn sizes_are_bytes_or_binary_multiples_in_any_case() {
        let cases: &[(&str, u64)] = &[
            ("1", 1),
            ("4096", 4096),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("512MB", 512 << 20),
            ("512MiB", 512 << 20),
            ("4GiB", 4 << 30),
            ("4gib", 4 << 30),
            ("2g", 2 << 30),
            ("2G", 2 << 30),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("1T", 1 << 40),
            ("1tb", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_limit_size(text), Ok(*bytes), "{text}");
        }
    }

    #[test]
    fn zero_and_garbage_are_not_sizes() {
        for text in [
            "0",
            "0G",
            "",
            "G",
            "four gigabytes",
            "-1G",
            "4 GB of RAM",
            "99999999999T",
        ] {
            assert!(parse_limit_size(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn the_defaults_are_the_workers_defaults() {
        let flags = Flags::try_parse_from(["ftsurvey"]).expect("no flags parse");
        assert_eq!(flags.sandbox.config(Vec::new()), SandboxConfig::default());
    }

    #[test]
    fn the_flags_fill_the_sandbox_config() {
        let flags = Flags::try_parse_from([
            "ftsurvey",
            "--sandbox",
            "bwrap",
            "--memory-limit",
            "512M",
            "--pids-limit",
            "64",
            "--disk-limit",
            "1g",
        ])
        .expect("valid flags");
        let hidden = vec![PathBuf::from("/etc/ftsurvey/token")];
        assert_eq!(
            flags.sandbox.config(hidden.clone()),
            SandboxConfig {
                mode: SandboxMode::Bwrap,
                limits: Limits {
                    memory_bytes: 512 << 20,
                    pids: 64,
                    disk_bytes: 1 << 30,
                },
                hidden,
            }
        );
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_flag() {
        let cases: &[(&str, &str)] = &[
            ("--sandbox", "docker"),
            ("--memory-limit", "0"),
            ("--memory-limit", "lots"),
            ("--pids-limit", "0"),
            ("--pids-limit", "many"),
            ("--disk-limit", "0M"),
        ];
        for (flag, value) in cases {
            let error = Flags::try_parse_from(["ftsurvey", flag, value]).expect_err("a bad value");
            let message = error.to_string();
            assert!(
                message.contains(flag) && message.contains(value),
                "{flag} {value}: {message}"
            );
        }
    }
}
