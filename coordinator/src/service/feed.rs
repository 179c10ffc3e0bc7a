//! Run feeds: one reader of the store per watched run, however many watch it.
//!
//! A feed reads its run's summary, and the packages that finished when that count moved, each
//! time the run changes (at most once per [`FEED_GAP`]), and never while nothing changes.
//! Watchers read the feed, not the store: the results of the packages that finished last are
//! read once and kept in the feed (up to [`RECENT_BYTES`]), and only a watcher that asks for
//! output, or fell further behind, reads results from the store itself.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{RunId, RunSummary};
use prost::Message;
use proto::v1;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// The shortest time between two reads of a watched run: a busy fleet changes a run hundreds
/// of times a second, and changes that come quicker are taken together.
pub(crate) const FEED_GAP: Duration = Duration::from_millis(250);

/// Encoded bytes of the latest finished packages' results a feed keeps for its watchers.
pub(crate) const RECENT_BYTES: usize = 32 * 1024 * 1024;

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
    /// The results, without output, of the packages that finished last, by index: the newest
    /// up to [`RECENT_BYTES`].
    pub(crate) recent: Arc<BTreeMap<u32, Arc<v1::PackageResult>>>,
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

/// Follows `run_id`'s feed in `feeds`, starting it when nobody follows the run yet.
pub(crate) fn follow(
    hub: &Arc<Hub>,
    feeds: &Arc<Feeds>,
    run_id: RunId,
    shutdown: &CancellationToken,
) -> watch::Receiver<Reading> {
    let registry = feeds;
    let mut feeds = registry.lock();
    if let Some(sender) = feeds.get(&run_id) {
        return sender.subscribe();
    }
    let sender = Arc::new(watch::Sender::new(Reading::Pending));
    let receiver = sender.subscribe();
    feeds.insert(run_id, sender.clone());
    // Subscribed before the first read, so no change after it is missed.
    let changes = hub.run_changed.subscribe();
    tokio::spawn(feed(
        hub.clone(),
        registry.clone(),
        run_id,
        sender,
        changes,
        shutdown.clone(),
    ));
    receiver
}

/// Reads the run whenever it changes and tells the followers, until the run is over, the
/// store fails, nobody follows it any more, or the coordinator shuts down.
async fn feed(
    hub: Arc<Hub>,
    feeds: Arc<Feeds>,
    run_id: RunId,
    sender: Arc<watch::Sender<Reading>>,
    mut changes: broadcast::Receiver<RunId>,
    shutdown: CancellationToken,
) {
    let mut finished: Vec<u32> = Vec::new();
    let mut known: HashSet<u32> = HashSet::new();
    let mut recent = Recent::default();
    'reads: loop {
        let read_at = tokio::time::Instant::now();
        match read(&hub, run_id, &mut finished, &mut known, &mut recent).await {
            Ok(summary) => {
                let over = summary.state.is_terminal();
                sender.send_replace(Reading::Read(Arc::new(RunState {
                    summary,
                    finished: finished.clone(),
                    recent: recent.snapshot(),
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
                    let mut feeds = feeds.lock();
                    if sender.receiver_count() == 0 {
                        feeds.remove(&run_id);
                        return;
                    }
                }
            }
        }
    }
    // Followers that came after the last reading still have it; new ones start a new feed.
    let mut feeds = feeds.lock();
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

/// The run's summary; the packages that finished since the last read appended to `finished`,
/// their results to `recent`.
async fn read(
    hub: &Hub,
    run_id: RunId,
    finished: &mut Vec<u32>,
    known: &mut HashSet<u32>,
    recent: &mut Recent,
) -> Result<RunSummary, tonic::Status> {
    let (summary, _) = super::answer(hub.store.get_run(run_id), hub).await?;
    if summary.packages_finished as usize != finished.len() {
        let now = super::answer(hub.store.finished_packages(run_id), hub).await?;
        let new: Vec<u32> = now.into_iter().filter(|idx| known.insert(*idx)).collect();
        for chunk in new.chunks(super::results::DEFAULT_PAGE as usize) {
            for (idx, result) in super::results::read_at(hub, run_id, chunk, false).await? {
                recent.push(idx, result);
            }
        }
        finished.extend(new);
    }
    Ok(summary)
}

/// The latest finished packages' results, oldest first, within [`RECENT_BYTES`].
#[derive(Debug, Default)]
struct Recent {
    results: VecDeque<(u32, Arc<v1::PackageResult>, usize)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, idx: u32, result: v1::PackageResult) {
        let size = result.encoded_len();
        self.results.push_back((idx, Arc::new(result), size));
        self.bytes += size;
        while self.bytes > RECENT_BYTES {
            let Some((_, _, size)) = self.results.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    fn snapshot(&self) -> Arc<BTreeMap<u32, Arc<v1::PackageResult>>> {
        Arc::new(
            self.results
                .iter()
                .map(|(idx, result, _)| (*idx, result.clone()))
                .collect(),
        )
    }
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
