//! Retention: moves the jobs of runs finished longer ago than `keep_finished_jobs` to the
//! archive, so the table dispatch reads holds the runs still going and the recent ones only.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::hub::Hub;

/// The longest between two passes; a shorter keep gets passes as often as a tenth of it, and
/// a keep of zero one a second, so a run is archived about as soon as it finishes.
const LONGEST_PASS_INTERVAL: Duration = Duration::from_secs(60);

/// Runs archived in one pass at most; the next pass takes the rest.
const RUNS_PER_PASS: u32 = 16;

pub(crate) async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let Some(keep) = hub.settings.keep_finished_jobs else {
        return;
    };
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(pass_interval(keep));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let finished_before_ms = now_ms().saturating_sub(keep_ms);
        let runs = match hub.store.runs_to_archive(finished_before_ms, RUNS_PER_PASS).await {
            Ok(runs) => runs,
            Err(error) => {
                tracing::error!(error = %error, "retention pass failed");
                continue;
            }
        };
        for run_id in runs {
            if shutdown.is_cancelled() {
                return;
            }
            match hub.store.archive_run(run_id, now_ms()).await {
                Ok(summary) => tracing::info!(run.id = %run_id, jobs = summary.jobs_total, "finished run archived"),
                Err(error) => tracing::error!(run.id = %run_id, error = %error, "archiving a finished run failed"),
            }
        }
    }
}

/// How often a pass looks for runs to archive under a keep of `keep`.
fn pass_interval(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_secs(1), LONGEST_PASS_INTERVAL)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::pass_interval;

    #[test]
    fn a_shorter_keep_is_looked_at_more_often() {
        assert_eq!(pass_interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(pass_interval(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(pass_interval(Duration::from_secs(24 * 3600)), Duration::from_secs(60));
    }
}
