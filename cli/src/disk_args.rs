//! Flags shared by `run` and `worker` for how much disk a worker keeps: its cache of setups
//! and sources, and its iterations' logs.

use std::time::Duration;

use clap::Args;
use worker::DiskPolicy;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const DAY_SECS: f64 = 24.0 * 3600.0;

#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    /// Keep the kept setups (venvs with their trees) and fetched sources under this many GiB
    /// (fractions allowed, e.g. 0.5): the least recently used that no job uses are deleted,
    /// checked every minute (default: no limit).
    #[arg(long, env = "FTSURVEY_CACHE_MAX_GB", value_name = "GIB", value_parser = parse_amount)]
    pub(crate) cache_max_gb: Option<f64>,
    /// Delete iterations' logs older than this many days (fractions allowed; default: kept
    /// until free space runs low).
    #[arg(long, env = "FTSURVEY_KEEP_LOGS", value_name = "DAYS", value_parser = parse_amount)]
    pub(crate) keep_logs: Option<f64>,
}

impl CacheArgs {
    /// The worker's disk policy: these flags, and `min_free_gb` (0 disables the check).
    pub(crate) fn policy(&self, min_free_gb: f64) -> DiskPolicy {
        DiskPolicy {
            cache_max_bytes: self.cache_max_gb.map(|gib| (gib * GIB) as u64),
            keep_logs: self.keep_logs.map(|days| Duration::from_secs_f64(days * DAY_SECS)),
            min_free_bytes: (min_free_gb * GIB) as u64,
            min_free_shown: min_free_gb.to_string(),
        }
    }
}

/// A number of GiB or days: finite, not negative, fractions allowed.
pub(crate) fn parse_amount(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a finite number of at least 0"));
    }
    // Beyond this, the number of bytes or seconds would not fit.
    if value > 1e9 {
        return Err(format!("{text:?} is more than 1000000000"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_take_fractions_and_refuse_what_is_not_a_size() {
        assert_eq!(parse_amount("0.5"), Ok(0.5));
        assert_eq!(parse_amount("2"), Ok(2.0));
        assert_eq!(parse_amount("1000000"), Ok(1_000_000.0));
        for bad in ["-1", "NaN", "inf", "2GB", "", "1e10"] {
            assert!(parse_amount(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_policy_counts_gibibytes_and_days_and_shows_the_flag_as_given() {
        let args = CacheArgs {
            cache_max_gb: Some(0.5),
            keep_logs: Some(1.5),
        };
        let policy = args.policy(2.0);
        assert_eq!(policy.cache_max_bytes, Some(512 * 1024 * 1024));
        assert_eq!(policy.keep_logs, Some(Duration::from_secs(36 * 3600)));
        assert_eq!(policy.min_free_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(policy.min_free_shown, "2");
        let none = CacheArgs {
            cache_max_gb: None,
            keep_logs: None,
        };
        assert_eq!(
            none.policy(0.0),
            DiskPolicy {
                min_free_shown: "0".into(),
                ..DiskPolicy::default()
            }
        );
    }
}
