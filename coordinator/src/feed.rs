//! Run feeds: one reader of the store per watched run, however many watch it.
//!
//! A feed reads its run's summary, and the indexes of its finished packages when that count
//! moved, each time the run changes (at most once per [`FEED_GAP`]), and never while nothing
//! changes. Watchers read the feed, not the store: only the results of packages they have not
//! sent yet come from the store, each once per watcher.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{RunId, RunSummary};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::service::status_from_store;

/// The shortest time between two reads of a watched run: a busy fleet changes a run hundreds
/// of times a second, and changes that come quicker are taken together.
pub(crate) const FEED_GAP: Duration = Duration::from_millis(250);

/// What a feed last read of its run.
#[derive(Debug, Clone)]
pub(crate) enum Reading {
    /// Not read yet.
    Pending,
    Read(Arc<RunState>),
    /// The store failed; the feed has ended.
    Failed(tonic::Code, String),
}

/// A run as its feed last read it.
#[derive(Debug)]
pub(crate) struct RunState {
    pub(crate) summary: RunSummary,
    /// Indexes of the run's finished packages, in the order the feed found them finished:
    /// only ever appended to, so a watcher's position in it says what it has sent.
    pub(crate) finished: Vec<u32>,
}

/// The live feeds, by run.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    feeds: Mutex<HashMap<RunId, Arc<watch::Sender<Reading>>>>,
}

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Arc<watch::Sender<Reading>>>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Follows `run_id`'s feed, starting it when nobody follows the run yet.
pub(crate) fn follow(hub: &Arc<Hub>, run_id: RunId, shutdown: &CancellationToken) -> watch::Receiver<Reading> {
    let mut feeds = hub.feeds.lock();
    if let Some(sender) = feeds.get(&run_id) {
        return sender.subscribe();
    }
    let sender = Arc::new(watch::Sender::new(Reading::Pending));
    let receiver = sender.subscribe();
    feeds.insert(run_id, sender.clone());
    // Subscribed before the first read, so no change after it is missed.
    let changes = hub.run_changed.subscribe();
    tokio::spawn(feed(hub.clone(), run_id, sender, changes, shutdown.clone()));
    receiver
}

/// Reads the run whenever it changes and tells the followers, until the run is over, the
/// store fails, nobody follows it any more, or the coordinator shuts down.
async fn feed(
    hub: Arc<Hub>,
    run_id: RunId,
    sender: Arc<watch::Sender<Reading>>,
    mut changes: broadcast::Receiver<RunId>,
    shutdown: CancellationToken,
) {
    let mut finished: Vec<u32> = Vec::new();
    let mut known: HashSet<u32> = HashSet::new();
    'reads: loop {
        let read_at = tokio::time::Instant::now();
        match read(&hub, run_id, &mut finished, &mut known).await {
            Ok(summary) => {
                let over = summary.state.is_terminal();
                sender.send_replace(Reading::Read(Arc::new(RunState {
                    summary,
                    finished: finished.clone(),
                })));
                if over {
                    break;
                }
            }
            Err(status) => {
                sender.send_replace(Reading::Failed(status.code(), status.message().to_string()));
                break;
            }
        }
        loop {
            match wait_for_change(run_id, &sender, &mut changes, read_at, &shutdown).await {
                Wake::Changed => continue 'reads,
                Wake::Shutdown => break 'reads,
                // Decided under the lock `follow` subscribes under: nobody can start
                // following this feed between the count and its removal.
                Wake::Unfollowed => {
                    let mut feeds = hub.feeds.lock();
                    if sender.receiver_count() == 0 {
                        feeds.remove(&run_id);
                        return;
                    }
                }
            }
        }
    }
    // Followers that came after the last reading still have it; new ones start a new feed.
    let mut feeds = hub.feeds.lock();
    if feeds.get(&run_id).is_some_and(|current| Arc::ptr_eq(current, &sender)) {
        feeds.remove(&run_id);
    }
}

/// Why a feed stopped waiting.
enum Wake {
    /// The run changed and the gap since the last read passed.
    Changed,
    Shutdown,
    /// The last follower went away.
    Unfollowed,
}

/// The run's summary, and the packages that finished since the last read appended to
/// `finished`.
async fn read(
    hub: &Hub,
    run_id: RunId,
    finished: &mut Vec<u32>,
    known: &mut HashSet<u32>,
) -> Result<RunSummary, tonic::Status> {
    let (summary, _) = hub.store.get_run(run_id).await.map_err(status_from_store)?;
    if summary.packages_finished as usize != finished.len() {
        let now = hub.store.finished_packages(run_id).await.map_err(status_from_store)?;
        finished.extend(now.into_iter().filter(|idx| known.insert(*idx)));
    }
    Ok(summary)
}

/// Waits until the run changed and [`FEED_GAP`] passed since `read_at`, the coordinator shuts
/// down or the last follower goes away.
async fn wait_for_change(
    run_id: RunId,
    sender: &watch::Sender<Reading>,
    changes: &mut broadcast::Receiver<RunId>,
    read_at: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> Wake {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Wake::Shutdown,
            _ = sender.closed() => return Wake::Unfollowed,
            changed = changes.recv() => match changed {
                Ok(id) if id != run_id => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return Wake::Shutdown,
            },
        }
    }
    tokio::select! {
        _ = shutdown.cancelled() => Wake::Shutdown,
        _ = tokio::time::sleep_until(read_at + FEED_GAP) => Wake::Changed,
    }
}
