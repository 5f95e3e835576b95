//! The in-memory engine: one `DashMap` per project, TTLs, active expiry.
//!
//! # Layout
//!
//! `projects` maps a project name to its namespace, a sharded `DashMap`
//! from key to entry. Reads take one shard read lock of one project; projects
//! never share a map, so one tenant's hot keys do not contend with another's.
//!
//! An entry is a block (`block`): its key, its version, its deadline as a
//! [`crate::Deadline`] (absolute unix ms) and its value as canonical encoded
//! `google.protobuf.Value` bytes (in the box the write decoded); the map
//! holds one-pointer handles to the blocks. Every
//! read compares the deadline with the clock, so an expired key is invisible
//! at once. Memory is reclaimed by [`MemoryStore::purge_expired`], run by the
//! server's expiry task: an expiry index orders `(deadline, project, key)`
//! so each run touches only what is due, never a whole project.
//!
//! The index is kept exact under the map's shard lock: every write that adds
//! or drops a deadline updates the index while it still holds the key's
//! shard. Keys without a TTL never touch the index.
//!
//! Beside the map, each namespace keeps its keys in a `BTreeSet` for
//! ordered listing (of the map's own blocks, so a key is stored once), its version
//! counter, the outcomes of recent request ids, and its change history
//! ([`super::watch`]). All writes are applied by one thread at a time (the
//! log writer, or the store's write lock when used alone), so these
//! structures are only ever changed by one writer.
//!
//! A transaction touching several keys is applied under the namespace's
//! `consistency` write lock; multi-key reads (GetMany, List) take it for
//! reading, so they never see a transaction half applied.
//!
//! After a recovery the ordered indexes are built on a background thread
//! (`OrderBuild` (in `order`)): sorting a million keys takes most of a second, and
//! only List needs the order. Until a project's index is installed, the
//! writes that change its key set queue their change beside it, the
//! builder replays the queue onto the tree it built, and a List of that
//! project waits for the install. Gets and writes never wait for it.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Bound,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use dashmap::DashMap;

use super::{
    Applied, Backend, Clock, Deadline, EngineError, Entry, ListPage, ListQuery, Mutation, Settings,
    SystemClock, Txn, TxnOutcome, Versioned, WatchError, WatchTarget,
    watch::{Budget, Event, EventKind, Hub, Subscription},
};
use crate::project::ProjectName;

// Each file below either holds a part of the state (and imports nothing
// of this file) or adds methods to `MemoryStore` (importing this file,
// never imported by it), so no two files import each other.
mod alone;
mod apply;
mod block;
mod entries;
pub(crate) mod expiry;
mod hash;
mod history;
mod horizon;
mod idempotency;
pub(crate) mod load;
mod locks;
pub mod namespace;
mod order;
mod read;
#[cfg(test)]
mod remembered_tests;
pub(crate) mod replay;
pub mod requests;
mod state;
#[cfg(test)]
mod tests;

use block::Block;
pub use expiry::ExpiryTask;
use expiry::{Due, ExpiryIndex, ExpiryRecord};
use hash::MapHasher;
pub(crate) use horizon::Horizons;
use locks::{lock, read_lock, write_lock};
pub use namespace::Usage;
use namespace::{Meta, Namespace};
use order::{OrderChange, OrderIndex, Phase};
use requests::Remembered;

/// Entries a walk in key order copies under one read lock of an ordered
/// index ([`MemoryStore::for_each_stored`]): about 30 µs of copying.
const ORDER_RUN: usize = 4096;

/// Project names with a version each (retired names with their last
/// version, live ones with their incarnation).
pub(crate) type Numbering = Vec<(ProjectName, u64)>;

/// The embedded in-memory store. Used alone it keeps nothing across
/// restarts and enforces no quotas (the durable store's log writer does);
/// the product runs it behind [`crate::wal::DurableStore`].
///
/// ```
/// use kv_engine::{memory::MemoryStore, Mutation, Applied};
/// use kv_engine::project::ProjectName;
///
/// let store = MemoryStore::new();
/// let p = ProjectName::parse("p").unwrap();
/// let set = Mutation::Set { key: "k".into(), value: b"\x20\x01".to_vec().into(), expires_at: None };
/// assert_eq!(store.apply(&p, set), Applied { removed: 0 });
/// assert!(store.get_now(&p, "k").is_some());
/// ```
pub struct MemoryStore {
    projects: DashMap<ProjectName, Arc<Namespace>, MapHasher>,
    expiry: ExpiryIndex,
    clock: Arc<dyn Clock>,
    /// Bytes of keys and values held, expired-but-unreclaimed included.
    data_bytes: AtomicU64,
    settings: Settings,
    /// What all projects' change histories hold together.
    history: Budget,
    /// While a recovery loads, the ordered key indexes are not kept up to
    /// date key by key: an `OrderBuild` sorts each namespace's blocks once,
    /// read from its map after the load.
    loading: AtomicBool,
    /// Serialises writes when the store is used alone (the durable store's
    /// writer thread is the only writer and does not take it).
    write_lock: Mutex<()>,
    /// Deleted project names and the newest version each used: the next
    /// project of the name numbers its versions above it. Lock order: this,
    /// then a `projects` shard (creation and deletion both take it first,
    /// so a name is never half deleted for a concurrent creator).
    retired: Mutex<HashMap<ProjectName, u64, MapHasher>>,
    /// Keys taken by the expiry task, and how late the latest batch was.
    expired: AtomicU64,
    expiry_lag_ms: AtomicU64,
    /// While a recovery loads: the keys expected per project (see
    /// `MemoryStore::expect_sizes`).
    expected: Mutex<HashMap<ProjectName, usize, MapHasher>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store reading time from `clock`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{memory::MemoryStore, ManualClock};
    /// let store = MemoryStore::with_clock(Arc::new(ManualClock::new(1)));
    /// assert_eq!(store.stored_entries(), 0);
    /// ```
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::with_settings(clock, Settings::default())
    }

    /// An empty store reading time from `clock`, tuned by `settings`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{memory::MemoryStore, Settings, SystemClock};
    /// let settings = Settings { watch_history_events: 100, ..Settings::default() };
    /// let store = MemoryStore::with_settings(Arc::new(SystemClock), settings);
    /// assert_eq!(store.settings().watch_history_events, 100);
    /// ```
    pub fn with_settings(clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self {
            projects: DashMap::default(),
            expiry: ExpiryIndex::new(),
            clock,
            data_bytes: AtomicU64::new(0),
            settings,
            history: Budget::new(),
            loading: AtomicBool::new(false),
            write_lock: Mutex::new(()),
            retired: Mutex::default(),
            expired: AtomicU64::new(0),
            expiry_lag_ms: AtomicU64::new(0),
            expected: Mutex::default(),
        }
    }

    /// The tunables this store runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The clock deadlines are measured against.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn namespace(&self, project: &ProjectName) -> Option<Arc<Namespace>> {
        // Clone the Arc so no projects-map guard outlives this call.
        self.projects.get(project).map(|ns| Arc::clone(&ns))
    }

    fn namespace_or_create(&self, project: &ProjectName) -> Arc<Namespace> {
        if let Some(ns) = self.namespace(project) {
            return ns;
        }
        let mut retired = lock(&self.retired);
        Arc::clone(&self.projects.entry(project.clone()).or_insert_with(|| {
            // A name used before continues its numbering above the deleted
            // project's (see `incarnation`).
            let base = retired.remove(project).map_or(0, |last| last + 1);
            Arc::new(self.new_namespace(project, base))
        }))
    }

    /// The incarnation of `project`: its namespace's, or the one a
    /// namespace created now would get.
    ///
    /// ```
    /// use kv_engine::{memory::MemoryStore, Mutation};
    /// use kv_engine::project::ProjectName;
    /// let store = MemoryStore::new();
    /// let p = ProjectName::parse("p").unwrap();
    /// assert_eq!(store.incarnation(&p), 0);
    /// store.apply(&p, Mutation::Set { key: "k".into(), value: vec![0x20, 0x01].into(), expires_at: None });
    /// store.delete_project(&p);
    /// assert!(store.incarnation(&p) > 1);
    /// ```
    pub fn incarnation(&self, project: &ProjectName) -> u64 {
        // Read under the shard guard, without cloning the namespace's Arc:
        // every call asks this, and a shared count bounced between cores
        // costs more than the lookup.
        if let Some(ns) = self.projects.get(project) {
            return ns.incarnation;
        }
        let retired = lock(&self.retired);
        // Asked again under the lock: a creation may have consumed the
        // tombstone since the first look.
        if let Some(ns) = self.projects.get(project) {
            return ns.incarnation;
        }
        retired.get(project).map_or(0, |last| last + 1)
    }

    /// Whether `project` has a namespace (it was written, watched or
    /// created with a non-zero incarnation).
    pub(crate) fn has_namespace(&self, project: &ProjectName) -> bool {
        self.projects.contains_key(project)
    }

    /// Deleted names and the newest version each used, and the
    /// incarnations of the namespaces now held (non-zero ones), as of one
    /// moment, for snapshots.
    pub(crate) fn incarnations(&self) -> (Numbering, Numbering) {
        let retired = lock(&self.retired);
        let live = self
            .projects
            .iter()
            .filter(|ns| ns.incarnation != 0)
            .map(|ns| (ns.key().clone(), ns.incarnation))
            .collect();
        let gone = retired.iter().map(|(p, v)| (p.clone(), *v)).collect();
        (gone, live)
    }

    /// Records that `project` was deleted after using versions up to
    /// `last` (loading a snapshot).
    pub(crate) fn restore_retired(&self, project: &ProjectName, last: u64) {
        let mut retired = lock(&self.retired);
        let entry = retired.entry(project.clone()).or_insert(last);
        *entry = (*entry).max(last);
    }

    /// The newest version of `project` (its incarnation before its first
    /// change).
    pub fn version(&self, project: &ProjectName) -> u64 {
        match self.namespace(project) {
            Some(ns) => ns.version.load(Ordering::Acquire),
            None => self.incarnation(project),
        }
    }

    /// Subscribes to `project`'s changes.
    ///
    /// # Errors
    ///
    /// [`WatchError`] when `from_version` is outside the retained history.
    pub fn subscribe(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> Result<Subscription, WatchError> {
        let ns = self.namespace_or_create(project);
        let incarnation = ns.incarnation;
        Hub::subscribe(ns, target, from_version, incarnation)
    }

    /// The state of `key` for the transaction evaluator: dead entries
    /// included (they still occupy space until reclaimed).
    pub(crate) fn meta(&self, project: &ProjectName, key: &str) -> Option<Meta> {
        let ns = self.namespace(project)?;
        let entry = ns.entries.get(key)?;
        Some(Meta {
            expires_at: entry.expires_at(),
            version: entry.version(),
            size: entry.size() as u64,
        })
    }

    /// The stored bytes of `key`, live or not.
    pub(crate) fn value(&self, project: &ProjectName, key: &str) -> Option<Bytes> {
        let ns = self.namespace(project)?;
        let entry = ns.entries.get(key)?;
        Some(Bytes::copy_from_slice(entry.value()))
    }

    /// Live keys of `project` at `now`.
    pub(crate) fn live_count(&self, project: &ProjectName, now: u64) -> u64 {
        self.namespace(project).map_or(0, |ns| {
            let mut live = 0;
            let _ = ns.entries.try_for_each(|e| {
                live += u64::from(e.is_live(now));
                Ok::<_, std::convert::Infallible>(())
            });
            live
        })
    }

    /// Every project's version counter (snapshots record them so versions
    /// never go back, even for projects whose keys are all gone).
    pub(crate) fn versions(&self) -> Vec<(ProjectName, u64)> {
        self.live_namespaces()
            .map(|(p, ns)| (p, ns.version.load(Ordering::Acquire)))
            .collect()
    }

    /// Raises `project`'s version counter to at least `version`.
    pub(crate) fn restore_version(&self, project: &ProjectName, version: u64) {
        let ns = self.namespace_or_create(project);
        ns.version.fetch_max(version, Ordering::AcqRel);
        ns.hub.advance_to(version, &self.history);
    }

    fn namespaces(&self) -> Vec<(ProjectName, Arc<Namespace>)> {
        // Collected first so no guard on the projects map is held while
        // walking one.
        self.projects
            .iter()
            .map(|ns| (ns.key().clone(), Arc::clone(ns.value())))
            .collect()
    }

    /// [`Self::namespaces`] less those deleted since they were collected:
    /// a snapshot started after a deletion writes nothing of the deleted
    /// project, even if the deletion lands during its walk.
    fn live_namespaces(&self) -> impl Iterator<Item = (ProjectName, Arc<Namespace>)> {
        self.namespaces()
            .into_iter()
            .filter(|(_, ns)| !ns.deleted.load(Ordering::Acquire))
    }

    /// What every project holds now (for usage figures: one pass, no
    /// guard held on the projects map while reading).
    pub fn project_usages(&self) -> Vec<(ProjectName, Usage)> {
        self.live_namespaces()
            .map(|(project, ns)| {
                let usage = Usage {
                    keys: ns.keys.load(Ordering::Relaxed),
                    bytes: ns.bytes.load(Ordering::Relaxed),
                };
                (project, usage)
            })
            .collect()
    }

    /// What `project` holds now.
    ///
    /// ```
    /// use kv_engine::{memory::{MemoryStore, Usage}, Mutation};
    /// use kv_engine::project::ProjectName;
    /// let store = MemoryStore::new();
    /// let p = ProjectName::parse("p").unwrap();
    /// store.apply(&p, Mutation::Set { key: "ab".into(), value: vec![0x20, 0x01].into(), expires_at: None });
    /// assert_eq!(store.usage(&p), Usage { keys: 1, bytes: 4 });
    /// ```
    pub fn usage(&self, project: &ProjectName) -> Usage {
        self.namespace(project)
            .map_or_else(Usage::default, |ns| Usage {
                keys: ns.keys.load(Ordering::Relaxed),
                bytes: ns.bytes.load(Ordering::Relaxed),
            })
    }

    /// Bytes (key plus value) `key` occupies in `project`, if held (expired
    /// or not: it counts in the usage until reclaimed).
    pub fn stored_size(&self, project: &ProjectName, key: &str) -> Option<u64> {
        let ns = self.namespace(project)?;
        let entry = ns.entries.get(key)?;
        Some(entry.size() as u64)
    }

    /// The absolute deadline (unix ms) of a TTL starting now.
    ///
    /// # Errors
    ///
    /// [`EngineError::DeadlineOverflow`] when the deadline would not fit.
    pub fn deadline(&self, ttl_ms: Option<u64>) -> Result<Option<u64>, EngineError> {
        ttl_ms
            .map(|ttl_ms| {
                self.clock
                    .now_ms()
                    .checked_add(ttl_ms)
                    .ok_or(EngineError::DeadlineOverflow { ttl_ms })
            })
            .transpose()
    }

    /// Entries held in memory, expired-but-unreclaimed ones included.
    pub fn stored_entries(&self) -> usize {
        self.projects.iter().map(|ns| ns.entries.len()).sum()
    }

    /// Bytes of keys and values held in memory (expired-but-unreclaimed
    /// entries included): the live data a log is compared against.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(Ordering::Relaxed)
    }

    /// Calls `f` with every stored entry (project, key, encoded value,
    /// deadline, version), one project after another and each project's
    /// entries in key order, and returns how many there were. Entries
    /// whose deadline has passed but that the expiry task has not removed
    /// yet are included: their removal is a change of its own (logged,
    /// with a version and an `EXPIRED` event), which must still happen
    /// after a snapshot is loaded. A snapshot written in this order lets
    /// its load build each ordered index without sorting.
    ///
    /// The walk is fuzzy: an entry written during the walk may or may not
    /// be seen. A log that replays everything after the walk began over its
    /// output arrives at the exact state.
    ///
    /// `f` is never called with a lock held: the walk takes a run of a
    /// namespace's entries (a reference count each: an entry's block
    /// never changes, so each is a consistent copy), releases the lock,
    /// then calls `f` with them. A snapshot's `f` writes a file, and a
    /// write can wait on the filesystem's journal for as long as someone's
    /// fsync takes; under a lock a write takes, that wait would stall the
    /// log writer (and so every write) behind it. A namespace with a
    /// ready ordered index is read from it, [`ORDER_RUN`] keys per read
    /// lock (a write changing the key set waits for one run's copy at
    /// most); any other (a small one, or one whose index is still being
    /// built after a recovery) is collected from its map and sorted here,
    /// on the caller's thread.
    ///
    /// # Errors
    ///
    /// The first error `f` returns, which stops the walk.
    pub fn for_each_stored<E>(
        &self,
        mut f: impl FnMut(&ProjectName, &str, &[u8], Option<Deadline>, u64) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut count = 0;
        let mut entries: Vec<Block> = Vec::new();
        for (project, ns) in self.live_namespaces() {
            let mut after: Option<Block> = None;
            loop {
                entries.clear();
                let whole = !Self::ordered_run(&ns, after.as_ref(), &mut entries);
                if whole && after.is_some() {
                    // Not reachable (a ready index stays ready, a map never
                    // becomes a list again); a second whole walk would
                    // repeat entries.
                    break;
                }
                if whole {
                    entries.clear();
                    entries.reserve(ns.entries.len());
                    let _ = ns.entries.try_for_each(|entry| {
                        entries.push(entry.clone());
                        Ok::<(), std::convert::Infallible>(())
                    });
                    entries.sort_unstable();
                }
                let more = !whole && entries.len() == ORDER_RUN;
                for entry in &entries {
                    // A deletion during the walk: the rest of it is skipped.
                    if ns.deleted.load(Ordering::Relaxed) {
                        break;
                    }
                    f(
                        &project,
                        entry.key(),
                        entry.value(),
                        entry.expires_at(),
                        entry.version(),
                    )?;
                    count += 1;
                }
                if !more || ns.deleted.load(Ordering::Relaxed) {
                    break;
                }
                after = entries.pop();
            }
            entries.clear();
            entries.shrink_to(ORDER_RUN);
        }
        Ok(count)
    }

    /// Copies into `out` the next [`ORDER_RUN`] blocks of `ns`'s ordered
    /// index after `after` (from the first without), under one read lock
    /// of it; false when `ns` has no ready index of a sharded map (its
    /// entries are then to be collected from the map).
    fn ordered_run(ns: &Namespace, after: Option<&Block>, out: &mut Vec<Block>) -> bool {
        if !ns.entries.is_big() {
            return false;
        }
        let Some(cold) = ns.cold_if_made() else {
            return false;
        };
        let order = read_lock(&cold.order);
        let OrderIndex::Ready(tree) = &*order else {
            return false;
        };
        let start = after.map_or(std::ops::Bound::Unbounded, |block| {
            std::ops::Bound::Excluded(block.key())
        });
        out.extend(
            tree.range::<str, _>((start, std::ops::Bound::Unbounded))
                .take(ORDER_RUN)
                .cloned(),
        );
        true
    }

    /// Keys taken for reclaiming by the expiry task since the store was
    /// made (a key rewritten meanwhile is then left alone).
    pub fn expired_keys(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// How late, in ms, the expiry task reclaimed the most overdue key of
    /// its latest batch (past its deadline): how far reclaiming lags.
    pub fn expiry_lag_ms(&self) -> u64 {
        self.expiry_lag_ms.load(Ordering::Relaxed)
    }

    /// Deadline records waiting in the expiry index.
    pub fn pending_expiries(&self) -> usize {
        self.expiry.len()
    }

    /// Takes up to `limit` due deadlines out of the expiry index. Each must
    /// then be expired through the store's writer (or dropped when the
    /// entry changed meanwhile).
    pub(crate) fn take_due(&self, limit: usize) -> Vec<Due> {
        let now = self.clock.now_ms();
        let due = self.expiry.take_due(now, limit);
        if let Some(oldest) = due.iter().map(|r| r.at.ms()).min() {
            self.expired.fetch_add(due.len() as u64, Ordering::Relaxed);
            self.expiry_lag_ms
                .store(now.saturating_sub(oldest), Ordering::Relaxed);
        }
        due.into_iter()
            .map(|r| Due {
                project: r.project,
                key: r.key,
                at: r.at,
            })
            .collect()
    }
}
