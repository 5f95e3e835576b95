//! The expiry index (deadlines in order) and the task that reclaims
//! expired entries.

use std::{
    collections::BTreeSet,
    hash::{BuildHasher, Hash, Hasher},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{hash::MapHasher, locks::lock};
use crate::{Backend, Deadline, project::ProjectName};

/// Number of independently locked parts of the expiry index.
pub(super) const EXPIRY_SHARDS: usize = 16;

/// A deadline that has come: expire `key` if it still carries it.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub(crate) project: ProjectName,
    pub(crate) key: Arc<str>,
    pub(crate) at: Deadline,
}

/// `(deadline, project, key)` records in deadline order, split into shards
/// by key so writers to different keys rarely share a lock.
///
/// Lock order: a map shard, then an index shard. The purge takes index
/// shards alone and releases them before touching a map.
pub(super) struct ExpiryIndex {
    pub(super) shards: Box<[Mutex<BTreeSet<ExpiryRecord>>]>,
    pub(super) hasher: MapHasher,
}

impl ExpiryIndex {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..EXPIRY_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    pub(super) fn shard_for(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> MutexGuard<'_, BTreeSet<ExpiryRecord>> {
        let mut h = self.hasher.build_hasher();
        project.hash(&mut h);
        key.hash(&mut h);
        let i = (h.finish() % self.shards.len() as u64) as usize;
        lock(&self.shards[i])
    }

    /// Drops the record of an entry that is going away.
    pub(super) fn forget(&self, project: &ProjectName, key: &str, at: Option<Deadline>) {
        if let Some(at) = at {
            self.shard_for(project, key)
                .remove(&ExpiryRecord::new(at, project, key));
        }
    }

    /// Removes and returns up to `limit` records due at `now`, earliest
    /// first within each shard.
    pub(super) fn take_due(&self, now: u64, limit: usize) -> Vec<ExpiryRecord> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while due.len() < limit && shard.first().is_some_and(|r| r.at.passed(now)) {
                due.extend(shard.pop_first());
            }
        }
        due
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ExpiryRecord {
    pub(super) at: Deadline,
    pub(super) project: ProjectName,
    pub(super) key: Arc<str>,
}

impl ExpiryRecord {
    pub(super) fn new(at: Deadline, project: &ProjectName, key: &str) -> Self {
        Self {
            at,
            project: project.clone(),
            key: key.into(),
        }
    }
}

/// Records popped from the expiry index per purge step; between steps the
/// task yields so a mass expiry never monopolises a worker thread.
pub(super) const PURGE_BATCH: usize = 1024;

/// Purge steps in flight at once. While the log writer logs and applies
/// one step, the next ones are taken from the index and queued behind it,
/// so the writer goes from one group of expiries to the next without
/// waiting for this task to be scheduled (one step at a time, a mass
/// expiry left the writer idle about half of the time). Few enough that a
/// watcher of the project still reads every event before the history
/// (10 000 events by default) drops it.
pub(super) const PURGE_IN_FLIGHT: usize = 3;

/// The background task that reclaims expired entries.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use kv_engine::memory::{ExpiryTask, MemoryStore};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let task = ExpiryTask::spawn(Arc::new(MemoryStore::new()), Duration::from_millis(100));
/// task.stop().await;
/// # });
/// ```
pub struct ExpiryTask {
    pub(super) stop: tokio::sync::oneshot::Sender<()>,
    pub(super) handle: tokio::task::JoinHandle<()>,
}

impl ExpiryTask {
    /// Starts expiring `store`'s due entries every `interval` on the
    /// current runtime.
    pub fn spawn<B: Backend>(store: Arc<B>, interval: std::time::Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                purge(&store).await;
            }
        });
        Self { stop, handle }
    }

    /// Stops the task and waits for it to finish. A purge under way is
    /// finished first.
    pub async fn stop(self) {
        // The task may already be gone (runtime shutting down); either way
        // there is nothing left to stop.
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

/// Expires everything due, [`PURGE_BATCH`] records a step, up to
/// [`PURGE_IN_FLIGHT`] steps at once, until a step finds less than a full
/// batch due.
async fn purge<B: Backend>(store: &Arc<B>) {
    let mut steps = tokio::task::JoinSet::new();
    let mut more = true;
    loop {
        while more && steps.len() < PURGE_IN_FLIGHT {
            let store = Arc::clone(store);
            steps.spawn(async move { store.expire_due(PURGE_BATCH).await });
            // Lets the step take its batch before the next one looks, and
            // lets watchers of a mass expiry read between steps.
            tokio::task::yield_now().await;
        }
        match steps.join_next().await {
            Some(Ok(taken)) => more &= taken == PURGE_BATCH,
            // A step panicked: what it took is lost to this run (the
            // entries stay invisible; a restart expires them).
            Some(Err(e)) => {
                tracing::error!("an expiry step failed: {e}");
                more = false;
            }
            None => return,
        }
    }
}
