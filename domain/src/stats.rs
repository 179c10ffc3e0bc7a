//! How sure a pass rate is: the Wilson 95% interval, and the failure rate that a run of all
//! passes rules out.

use serde::{Deserialize, Serialize};

/// The normal quantile of a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// A pass rate with its Wilson score 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PassRate {
    pub passes: u32,
    pub completed: u32,
    /// `passes / completed`.
    pub rate: f64,
    /// Lower bound of the 95% interval.
    pub low: f64,
    /// Upper bound of the 95% interval.
    pub high: f64,
}

impl PassRate {
    /// The rate of `passes` out of `completed`; `None` when nothing completed (or the counts
    /// contradict each other).
    pub fn of(passes: u32, completed: u32) -> Option<PassRate> {
        if completed == 0 || passes > completed {
            return None;
        }
        let (low, high) = wilson_interval(passes, completed);
        Some(PassRate {
            passes,
            completed,
            rate: f64::from(passes) / f64::from(completed),
            low,
            high,
        })
    }

    /// `7/10 (40-89%)`: the counts, then the interval in whole percent.
    pub fn describe(&self) -> String {
        format!("{}/{} ({})", self.passes, self.completed, self.interval())
    }

    /// `40-89%`.
    pub fn interval(&self) -> String {
        format!("{:.0}-{:.0}%", self.low * 100.0, self.high * 100.0)
    }

    /// For a run of all passes, the smallest per-iteration failure rate a race would need to
    /// have shown up with 95% probability; `None` unless every iteration passed.
    pub fn ruled_out_failure_rate(&self) -> Option<f64> {
        (self.passes == self.completed).then(|| ruled_out_failure_rate(self.completed))
    }
}

/// The Wilson score interval at 95% for `successes` out of `trials` (`(0, 1)` for no trials).
pub fn wilson_interval(successes: u32, trials: u32) -> (f64, f64) {
    if trials == 0 {
        return (0.0, 1.0);
    }
    let n = f64::from(trials);
    let p = f64::from(successes.min(trials)) / n;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half_width = Z_95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // At the edges the bound is exactly 0 or 1; clamping also hides rounding just past them.
    let low = if successes == 0 {
        0.0
    } else {
        (centre - half_width).max(0.0)
    };
    let high = if successes >= trials {
        1.0
    } else {
        (centre + half_width).min(1.0)
    };
    (low, high)
}

/// The per-iteration failure rate `f` for which `passes` passes in a row had only a 5% chance:
/// `(1 - f)^passes = 0.05`. A race failing at least this often would, with 95% probability,
/// have failed some iteration. 1.0 for no passes (nothing is ruled out).
pub fn ruled_out_failure_rate(passes: u32) -> f64 {
    if passes == 0 {
        return 1.0;
    }
    1.0 - 0.05_f64.powf(1.0 / f64::from(passes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.0005
    }

    #[test]
    fn wilson_intervals_match_published_values() {
        // (successes, trials, low, high), from the Wilson formula at z = 1.96.
        let cases = [
            (0, 10, 0.0, 0.2775),
            (10, 10, 0.7225, 1.0),
            (5, 10, 0.2366, 0.7634),
            (7, 10, 0.3968, 0.8922),
            (1, 1, 0.2065, 1.0),
            (0, 1, 0.0, 0.7935),
            (95, 100, 0.8883, 0.9785),
        ];
        for (successes, trials, low, high) in cases {
            let (got_low, got_high) = wilson_interval(successes, trials);
            assert!(
                close(got_low, low) && close(got_high, high),
                "{successes}/{trials}: got ({got_low:.4}, {got_high:.4}), want ({low}, {high})"
            );
        }
    }

    #[test]
    fn intervals_hold_the_rate_and_stay_in_bounds() {
        for trials in 1..=60 {
            for successes in 0..=trials {
                let (low, high) = wilson_interval(successes, trials);
                let rate = f64::from(successes) / f64::from(trials);
                assert!(
                    (0.0..=rate).contains(&low) && (rate..=1.0).contains(&high),
                    "{successes}/{trials}: ({low}, {high})"
                );
            }
        }
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
    }

    #[test]
    fn all_passes_rule_out_frequent_races() {
        let cases = [(1, 0.95), (3, 0.6316), (10, 0.2589), (50, 0.0582), (100, 0.0295)];
        for (passes, rate) in cases {
            assert!(
                close(ruled_out_failure_rate(passes), rate),
                "{passes}: {}",
                ruled_out_failure_rate(passes)
            );
        }
        assert_eq!(ruled_out_failure_rate(0), 1.0);
    }

    #[test]
    fn pass_rates_describe_themselves() {
        let rate = PassRate::of(7, 10).expect("rate");
        assert_eq!(rate.describe(), "7/10 (40-89%)");
        assert_eq!(rate.ruled_out_failure_rate(), None);
        let all = PassRate::of(10, 10).expect("rate");
        assert_eq!(all.describe(), "10/10 (72-100%)");
        assert!(close(all.ruled_out_failure_rate().expect("all passed"), 0.2589));
        assert_eq!(PassRate::of(0, 0), None);
        assert_eq!(PassRate::of(3, 2), None);
    }
}
