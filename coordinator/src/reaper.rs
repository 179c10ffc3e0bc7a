//! The reaper: gives expired leases back to the queue, or up as lost.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::hub::Hub;

pub(crate) async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(hub.settings.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match hub.store.reap_expired(hub.settings.max_attempts, now_ms()).await {
            Ok(report) if report.requeued + report.lost > 0 => {
                tracing::warn!(requeued = report.requeued, lost = report.lost, "expired leases reaped");
                report.runs_touched.iter().for_each(|run| hub.notify_run(*run));
                hub.jobs_available.notify_waiters();
            }
            Ok(_) => {}
            Err(error) => tracing::error!(error = %error, "reaper pass failed"),
        }
    }
}
