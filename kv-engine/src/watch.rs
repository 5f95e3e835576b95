//! Change feeds: each project's recent changes, and the watchers reading
//! them.
//!
//! # Design
//!
//! Every change of a project (set, delete, expiry, clear) gets the next
//! project version, so a project's versions have no gaps. The hub of a
//! project keeps the most recent changes in a ring (bounded by event count
//! and bytes) together with `floor`, the newest version the ring no longer
//! holds: it holds exactly the versions `floor + 1 ..= last`. A watcher is a
//! cursor into that ring. It reads what follows its cursor, filters by key
//! or prefix, and waits for the next version when it has read everything.
//!
//! There is no per-watcher buffer: a watcher that falls behind the ring
//! (its cursor below `floor`) is cut off with the version to resume from.
//! Memory is the ring's bound, whatever the number or speed of watchers.
//!
//! Every project records its changes, watched or not, so "read, then watch
//! from the version read" works on any project, and a watcher can resume
//! after a disconnect. Rings are bounded per project (events and bytes) and
//! together (`watch_history_total_bytes`, shared by all projects): a
//! project publishing past the shared budget drops its own oldest events,
//! so memory stays bounded however many projects there are.
//!
//! # Across restarts
//!
//! The durable store rebuilds every ring at start-up, so a watcher resumes
//! across a restart as across a reconnection: a snapshot holds each
//! project's ring (its `floor` and events, see [`crate::wal::codec`]), and
//! replaying the log after it publishes every logged change through the
//! same path as live application, into the same bounded rings. While a
//! snapshot's state loads, its entries publish nothing: they are states,
//! not changes, and the snapshot's own ring says what happened.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
};

use bytes::Bytes;

use super::{Settings, WatchError, WatchTarget};

/// Why a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Written (set, incr, merge).
    Set,
    /// Deleted by a call.
    Deleted,
    /// Its deadline passed.
    Expired,
    /// The whole project was cleared (the key is empty).
    Cleared,
}

/// One change of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The change's version.
    pub version: u64,
    /// Why.
    pub kind: EventKind,
    /// The key (empty for a clear).
    pub key: Arc<str>,
    /// The new value of a set (canonical encoded).
    pub value: Option<Bytes>,
    /// The new deadline of a set.
    pub expires_at: Option<crate::Deadline>,
}

/// An event's own allocation besides its key and value (the `Arc`, the
/// struct, the key's and value's headers), rounded up.
pub(crate) const EVENT_OVERHEAD: usize = 64;

impl Event {
    fn size(&self) -> usize {
        EVENT_OVERHEAD + self.key.len() + self.value.as_ref().map_or(0, Bytes::len)
    }
}

/// What holds a project's history: its watchers keep it alive, so a
/// history can live inline in its owner (the namespace) instead of in an
/// allocation of its own.
pub(crate) trait HubOwner: Send + Sync + 'static {
    /// The history.
    fn hub(&self) -> &Hub;
}

/// A project's history and its watchers.
pub(crate) struct Hub {
    state: Mutex<History>,
    /// The latest version, for watchers waiting for more. Made by the
    /// first subscription (under the history's lock): a watch channel is
    /// a few hundred bytes, and most projects are never watched.
    latest: OnceLock<tokio::sync::watch::Sender<u64>>,
}

struct History {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// The newest version not held (all versions above it are).
    floor: u64,
    /// The newest version published.
    last: u64,
    /// The project was deleted: its watchers end, nothing more is kept.
    closed: bool,
}

impl History {
    /// Appends `event` (newer than `last`), then drops the oldest events
    /// past the project's and the shared bounds.
    fn push(&mut self, event: Arc<Event>, settings: &Settings, budget: &Budget) {
        use std::sync::atomic::Ordering::Relaxed;
        if event.version != self.last + 1 {
            // A gap (a log cut by a repair, say): the ring can only hold
            // contiguous versions, so it starts again after the gap, and a
            // resume from before it is out of range rather than silently
            // missing changes.
            self.forget(budget);
            self.floor = event.version - 1;
        }
        self.last = event.version;
        let size = event.size();
        self.bytes += size;
        budget.used.fetch_add(size, Relaxed);
        if self.events.capacity() == 0 {
            // Room for one at first (a deque starts with four): most
            // projects change rarely, and a busy one doubles from here.
            self.events.reserve_exact(1);
        }
        self.events.push_back(event);
        while self.events.len() > settings.watch_history_events.max(1)
            || (self.bytes > settings.watch_history_bytes && self.events.len() > 1)
            || budget.used.load(Relaxed) > settings.watch_history_total_bytes
        {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            budget.used.fetch_sub(old.size(), Relaxed);
            self.floor = old.version;
        }
    }

    /// Drops every event held, and their bytes from the shared budget.
    fn forget(&mut self, budget: &Budget) {
        self.events.clear();
        budget
            .used
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
        self.bytes = 0;
    }
}

/// What every project's history may hold together.
pub(crate) struct Budget {
    /// Bytes held by all rings.
    pub(crate) used: std::sync::atomic::AtomicUsize,
    /// On while a recovery loads a snapshot's entries: they are the state
    /// at the snapshot, not changes, so publishing them would put events
    /// out of order into the ring the snapshot restores ([`Hub::restore`]).
    pub(crate) frozen: std::sync::atomic::AtomicBool,
}

impl Budget {
    pub(crate) fn new() -> Self {
        Self {
            used: std::sync::atomic::AtomicUsize::new(0),
            frozen: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether changes published now are recorded.
    pub(crate) fn recording(&self) -> bool {
        !self.frozen.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Hub {
    /// The history of a project incarnation whose versions start after
    /// `base`.
    pub(crate) fn new(base: u64) -> Self {
        Self {
            state: Mutex::new(History {
                events: VecDeque::new(),
                bytes: 0,
                floor: base,
                last: base,
                closed: false,
            }),
            latest: OnceLock::new(),
        }
    }

    /// Wakes the watchers waiting for more, if any ever subscribed. Called
    /// after a change to the history is made under its lock: a subscriber
    /// makes the channel under that lock too, so either it made the
    /// channel before the change (and is woken here) or its first read of
    /// the history comes after the change.
    fn wake(&self, version: u64) {
        if let Some(latest) = self.latest.get() {
            latest.send_replace(version);
        }
    }

    /// Ends the history of a deleted project: its watchers end with
    /// [`Lagged::Deleted`] at their next look, whatever they had not read
    /// yet, and its events leave the shared budget.
    pub(crate) fn close(&self, budget: &Budget) {
        let mut h = self.lock();
        h.closed = true;
        h.forget(budget);
        let last = h.last;
        drop(h);
        // Wakes every waiting watcher so it sees the end now, not at the
        // next change (there will be none on this hub).
        self.wake(last);
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // Each update below leaves the history consistent before anything
        // can panic, so a poisoned lock still guards a sound value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records change `version`; `event` builds it under the hub's lock,
    /// so it may read the map (lock order: hub, then map shard; nothing
    /// takes them the other way round). Nothing is recorded while a
    /// snapshot's state loads.
    pub(crate) fn publish(
        &self,
        version: u64,
        settings: &Settings,
        budget: &Budget,
        event: impl FnOnce() -> Event,
    ) {
        if !budget.recording() {
            return;
        }
        let mut h = self.lock();
        if version <= h.last || h.closed {
            // Replays of changes already counted (a fuzzy snapshot's
            // overlap), or a deleted project's hub, which nothing reads.
            return;
        }
        h.push(Arc::new(event()), settings, budget);
        drop(h);
        // Only a wake-up for waiting watchers (they read the history, not
        // this value): skip it, and its lock, when nobody waits.
        if let Some(latest) = self.latest.get()
            && latest.receiver_count() > 0
        {
            latest.send_replace(version);
        }
    }

    /// Records a run of changes, in version order, under one lock of the
    /// history and with one wake-up for the newest: a mass expiry publishes
    /// thousands of events a group, and a lock and a wake-up per event were
    /// a measurable share of the log writer's time. Each event is kept or
    /// skipped by the same rules as [`Hub::publish`] (nothing while a
    /// snapshot's state loads, nothing already counted, nothing on a closed
    /// hub), and a gap restarts the ring as [`History::push`] does, so a
    /// watcher sees the same history either way.
    pub(crate) fn publish_many(
        &self,
        events: impl IntoIterator<Item = Event>,
        settings: &Settings,
        budget: &Budget,
    ) {
        if !budget.recording() {
            return;
        }
        let mut h = self.lock();
        if h.closed {
            return;
        }
        let before = h.last;
        for event in events {
            if event.version > h.last {
                h.push(Arc::new(event), settings, budget);
            }
        }
        let last = h.last;
        drop(h);
        if last > before
            && let Some(latest) = self.latest.get()
            && latest.receiver_count() > 0
        {
            latest.send_replace(last);
        }
    }

    /// Restarts the ring as holding nothing after `floor` (loading a
    /// snapshot's ring, whose events follow).
    pub(crate) fn restore(&self, floor: u64, budget: &Budget) {
        let mut h = self.lock();
        if h.closed {
            return;
        }
        h.forget(budget);
        h.floor = floor;
        h.last = floor;
        drop(h);
        self.wake(floor);
    }

    /// Appends an event of a snapshot's ring after [`Hub::restore`], under
    /// the same bounds as a live change.
    pub(crate) fn restore_event(&self, event: Event, settings: &Settings, budget: &Budget) {
        let mut h = self.lock();
        if event.version <= h.last || h.closed {
            return;
        }
        let version = event.version;
        h.push(Arc::new(event), settings, budget);
        drop(h);
        self.wake(version);
    }

    /// The ring as of now: `floor` and the events after it, shared, not
    /// copied (writing a snapshot); `None` once the project is deleted.
    pub(crate) fn window(&self) -> Option<(u64, Vec<Arc<Event>>)> {
        let h = self.lock();
        (!h.closed).then(|| (h.floor, h.events.iter().cloned().collect()))
    }

    /// Adopts `version` as the project's current version without an event
    /// (recovery of a snapshot's counter).
    pub(crate) fn advance_to(&self, version: u64, budget: &Budget) {
        let mut h = self.lock();
        if version > h.last {
            h.last = version;
            h.floor = version;
            h.forget(budget);
            drop(h);
            self.wake(version);
        }
    }

    /// Starts a watcher of `owner`'s history after `from` (default: now;
    /// 0: the incarnation's first change) on the project incarnation whose
    /// versions start after `incarnation`.
    pub(crate) fn subscribe(
        owner: Arc<dyn HubOwner>,
        target: WatchTarget,
        from: Option<u64>,
        incarnation: u64,
    ) -> Result<Subscription, WatchError> {
        let (cursor, latest) = {
            let hub = owner.hub();
            let h = hub.lock();
            let cursor = start_cursor(from, incarnation, h.floor, h.last)?;
            // Made and subscribed to under the lock (see `wake`).
            let latest = hub
                .latest
                .get_or_init(|| tokio::sync::watch::Sender::new(h.last))
                .subscribe();
            (cursor, latest)
        };
        Ok(Subscription {
            source: Source::Hub { owner, latest },
            target,
            cursor,
            incarnation,
        })
    }
}

/// Where a watcher starts, by the rules every backend shares: `from` 0 is
/// the incarnation's first change; a version before the incarnation
/// belongs to another project; the history holds `floor + 1 ..= last`;
/// `None` starts after `last`.
///
/// ```
/// use kv_engine::{WatchError, watch::start_cursor};
/// assert_eq!(start_cursor(None, 0, 5, 9).unwrap(), 9);
/// assert_eq!(start_cursor(Some(0), 100, 100, 120).unwrap(), 100);
/// assert!(matches!(start_cursor(Some(3), 0, 5, 9), Err(WatchError::TooOld { .. })));
/// assert!(matches!(start_cursor(Some(10), 0, 5, 9), Err(WatchError::Ahead { .. })));
/// assert!(matches!(start_cursor(Some(50), 100, 100, 120), Err(WatchError::Recreated { .. })));
/// ```
///
/// # Errors
///
/// The [`WatchError`] naming which rule the start breaks.
pub fn start_cursor(
    from: Option<u64>,
    incarnation: u64,
    floor: u64,
    last: u64,
) -> Result<u64, WatchError> {
    let asked = from;
    let from = match from {
        Some(0) => Some(incarnation),
        Some(from) if from < incarnation => {
            return Err(WatchError::Recreated { from, incarnation });
        }
        other => other,
    };
    match from {
        None => Ok(last),
        Some(from) if from > last => Err(WatchError::Ahead {
            from,
            current: last,
        }),
        Some(from) if from < floor => Err(WatchError::TooOld {
            from: asked.unwrap_or(from),
            oldest: floor,
        }),
        Some(from) => Ok(from),
    }
}

/// Why a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lagged {
    /// The watcher read too slowly and the history moved past it.
    #[error(
        "watch fell behind: changes after version {cursor} are no longer retained (history keeps the newest changes, here from version {oldest}); read the current state and watch again"
    )]
    Behind {
        /// The last version the watcher was given.
        cursor: u64,
        /// The newest version no longer retained.
        oldest: u64,
    },
    /// The project was deleted: nothing of it is delivered any more, and a
    /// project recreated under the name is another one.
    #[error("the project was deleted")]
    Deleted,
}

/// One watcher: a cursor into its project's history.
pub struct Subscription {
    source: Source,
    target: WatchTarget,
    cursor: u64,
    incarnation: u64,
}

/// Where a watcher's changes come from.
enum Source {
    /// This process's history of the project.
    Hub {
        owner: Arc<dyn HubOwner>,
        latest: tokio::sync::watch::Receiver<u64>,
    },
    /// A task reading another store's change feed: every change in
    /// version order, unfiltered, and what was left of the last batch.
    Feed {
        feed: tokio::sync::mpsc::Receiver<Result<Vec<Arc<Event>>, Lagged>>,
        left: VecDeque<Arc<Event>>,
    },
}

/// What a task feeding a remote watcher sends: every change of the
/// project in version order (the subscription filters), or why the feed
/// ended.
pub type FeedSender = tokio::sync::mpsc::Sender<Result<Vec<Arc<Event>>, Lagged>>;

impl Subscription {
    /// The incarnation of the project this watcher follows.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The version of the last change looked at (delivered or filtered out).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// A watcher fed by a task that reads another store's change feed
    /// (a remote backend): `feed` yields every change after `cursor` of the
    /// incarnation after `incarnation`, in version order. The task ends
    /// when its receiver is dropped.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{WatchTarget, watch::{Event, EventKind, Subscription}};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let (tx, rx) = tokio::sync::mpsc::channel(4);
    /// let mut sub = Subscription::from_feed(WatchTarget::Prefix("a".into()), 0, 0, rx);
    /// let event = |version, key: &str| Arc::new(Event {
    ///     version, kind: EventKind::Deleted, key: key.into(), value: None, expires_at: None,
    /// });
    /// tx.send(Ok(vec![event(1, "b"), event(2, "a1")])).await.unwrap();
    /// let batch = sub.next_batch(10).await.unwrap();
    /// assert_eq!(batch.len(), 1);
    /// assert_eq!(sub.cursor(), 2);
    /// # });
    /// ```
    pub fn from_feed(
        target: WatchTarget,
        incarnation: u64,
        cursor: u64,
        feed: tokio::sync::mpsc::Receiver<Result<Vec<Arc<Event>>, Lagged>>,
    ) -> Self {
        Self {
            source: Source::Feed {
                feed,
                left: VecDeque::new(),
            },
            target,
            cursor,
            incarnation,
        }
    }

    /// Waits for the next matching changes (up to `max`), in version order.
    ///
    /// # Errors
    ///
    /// [`Lagged`] when the history no longer holds what follows the cursor.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Arc<Event>>, Lagged> {
        let (owner, latest) = match &mut self.source {
            Source::Hub { owner, latest } => (owner, latest),
            Source::Feed { feed, left } => {
                return next_from_feed(feed, left, &self.target, &mut self.cursor, max).await;
            }
        };
        loop {
            // Mark the current version seen before reading, so a change
            // published after the read wakes the wait below.
            latest.borrow_and_update();
            let mut out = Vec::new();
            {
                let h = owner.hub().lock();
                if h.closed {
                    return Err(Lagged::Deleted);
                }
                if self.cursor < h.floor {
                    return Err(Lagged::Behind {
                        cursor: self.cursor,
                        oldest: h.floor,
                    });
                }
                // Versions are contiguous: the event after the cursor sits
                // at a computed index.
                let start = (self.cursor - h.floor) as usize;
                for event in h.events.iter().skip(start) {
                    self.cursor = event.version;
                    if event.kind == EventKind::Cleared || self.target.matches(&event.key) {
                        out.push(Arc::clone(event));
                        if out.len() == max {
                            break;
                        }
                    }
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if latest.changed().await.is_err() {
                // The hub is gone with its store; nothing more will come.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn next_from_feed(
    feed: &mut tokio::sync::mpsc::Receiver<Result<Vec<Arc<Event>>, Lagged>>,
    left: &mut VecDeque<Arc<Event>>,
    target: &WatchTarget,
    cursor: &mut u64,
    max: usize,
) -> Result<Vec<Arc<Event>>, Lagged> {
    let mut out = Vec::new();
    loop {
        while let Some(event) = left.pop_front() {
            // A feed resumed after a reconnection may repeat what it sent.
            if event.version <= *cursor {
                continue;
            }
            *cursor = event.version;
            if event.kind == EventKind::Cleared || target.matches(&event.key) {
                out.push(event);
                if out.len() == max {
                    return Ok(out);
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        match feed.recv().await {
            Some(batch) => left.extend(batch?),
            // The feeding task is gone with its store; nothing more will
            // come.
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(version: u64) -> Event {
        Event {
            version,
            kind: EventKind::Expired,
            key: format!("k{version}").into(),
            value: None,
            expires_at: None,
        }
    }

    fn versions(hub: &Hub) -> (u64, Vec<u64>) {
        let (floor, events) = hub.window().unwrap();
        (floor, events.iter().map(|e| e.version).collect())
    }

    /// A run published at once leaves the history one by one would: old
    /// versions skipped, a gap restarting the ring, the event bound kept.
    #[test]
    fn a_run_keeps_the_rules_of_single_publishes() {
        let settings = Settings {
            watch_history_events: 4,
            ..Settings::DEFAULT
        };
        let run = [1, 2, 2, 3, 7, 8, 9, 10, 11];
        let (one, many) = (Hub::new(0), Hub::new(0));
        let (budget_one, budget_many) = (Budget::new(), Budget::new());
        for v in run {
            one.publish(v, &settings, &budget_one, || expired(v));
        }
        many.publish_many(run.map(expired), &settings, &budget_many);
        assert_eq!(versions(&many), (7, vec![8, 9, 10, 11]));
        assert_eq!(versions(&many), versions(&one));
        assert_eq!(
            budget_many.used.load(std::sync::atomic::Ordering::Relaxed),
            budget_one.used.load(std::sync::atomic::Ordering::Relaxed)
        );
        many.close(&budget_many);
        many.publish_many([expired(12)], &settings, &budget_many);
        assert!(many.window().is_none());
    }

    /// A watcher waiting for more is woken by a run and reads all of it.
    #[tokio::test]
    async fn a_waiting_watcher_reads_the_whole_run() {
        struct Owner(Hub);
        impl HubOwner for Owner {
            fn hub(&self) -> &Hub {
                &self.0
            }
        }
        let owner = Arc::new(Owner(Hub::new(0)));
        let budget = Budget::new();
        let mut watch = Hub::subscribe(owner.clone(), WatchTarget::All, Some(0), 0).unwrap();
        let waiting = tokio::spawn(async move { watch.next_batch(100).await });
        tokio::task::yield_now().await;
        owner
            .0
            .publish_many((1..=5).map(expired), &Settings::DEFAULT, &budget);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the run wakes the watcher")
            .unwrap()
            .unwrap();
        let got: Vec<_> = got.iter().map(|e| e.version).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
    }
}
