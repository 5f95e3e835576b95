//! The in-memory engine: one `DashMap` per project, TTLs, active expiry.
//!
//! # Layout
//!
//! `projects` maps a project name to its namespace, a sharded `DashMap`
//! from key to entry. Reads take one shard read lock of one project; projects
//! never share a map, so one tenant's hot keys do not contend with another's.
//!
//! An entry stores its value as canonical encoded `google.protobuf.Value`
//! bytes and its deadline as absolute unix milliseconds (0 = never). Every
//! read compares the deadline with the clock, so an expired key is invisible
//! at once. Memory is reclaimed by [`MemoryStore::purge_expired`], run by the
//! server's expiry task: an expiry index orders `(deadline, project, key)`
//! so each run touches only what is due, never a whole project.
//!
//! The index is kept exact under the map's shard lock: every write that adds
//! or drops a deadline updates the index while it still holds the key's
//! shard. Keys without a TTL never touch the index.

use std::{
    collections::BTreeSet,
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use dashmap::{DashMap, mapref::entry::Entry as MapEntry};

use super::{Applied, Backend, Clock, EngineError, Mutation, SystemClock};
use crate::project::ProjectName;

/// The hasher of every map here. SipHash (std's) dominated profiles of
/// replay and writes; aHash is several times faster on short keys and,
/// seeded at random per process, still resists hash flooding by tenants
/// who choose their keys.
type MapHasher = ahash::RandomState;

/// Number of independently locked parts of the expiry index.
const EXPIRY_SHARDS: usize = 16;

/// The embedded in-memory store. Used alone it keeps nothing across
/// restarts and enforces no quotas (the durable store's log writer does);
/// the product runs it behind [`crate::engine::log::DurableStore`].
///
/// ```
/// use kv_server::engine::{memory::MemoryStore, Mutation, Applied};
/// use kv_server::project::ProjectName;
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
}

/// One project's keys.
#[derive(Default)]
struct Namespace {
    entries: DashMap<Box<str>, StoredEntry, MapHasher>,
    /// Entries held (expired-but-unreclaimed included).
    keys: AtomicU64,
    /// Bytes of their keys and values.
    bytes: AtomicU64,
}

/// What one project holds: the figures its quotas are checked against.
/// Expired entries count until the expiry task reclaims them (within about
/// one expiry interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Keys held.
    pub keys: u64,
    /// Bytes of keys plus encoded values.
    pub bytes: u64,
}

struct StoredEntry {
    value: Box<[u8]>,
    /// Unix ms; 0 means no deadline (a real deadline is always > 0).
    expires_at: u64,
}

impl StoredEntry {
    fn is_live(&self, now: u64) -> bool {
        self.expires_at == 0 || self.expires_at > now
    }
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
    /// use kv_server::engine::{memory::MemoryStore, ManualClock};
    /// let store = MemoryStore::with_clock(Arc::new(ManualClock::new(1)));
    /// assert_eq!(store.stored_entries(), 0);
    /// ```
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            projects: DashMap::default(),
            expiry: ExpiryIndex::new(),
            clock,
            data_bytes: AtomicU64::new(0),
        }
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
        Arc::clone(&self.projects.entry(project.clone()).or_default())
    }

    /// The live value of `key` at the clock's current time.
    pub fn get_now(&self, project: &ProjectName, key: &str) -> Option<Bytes> {
        let now = self.clock.now_ms();
        let ns = self.namespace(project)?;
        let entry = ns.entries.get(key)?;
        entry
            .is_live(now)
            .then(|| Bytes::copy_from_slice(&entry.value))
    }

    /// Whether `key` is live at the clock's current time.
    pub fn has_now(&self, project: &ProjectName, key: &str) -> bool {
        let now = self.clock.now_ms();
        self.namespace(project)
            .and_then(|ns| ns.entries.get(key).map(|e| e.is_live(now)))
            .unwrap_or(false)
    }

    /// Applies a write and reports what it found.
    ///
    /// Writes change state only through here, so a durable log can apply
    /// records in log order. Liveness (for the delete and clear answers) is
    /// judged at the clock's current time.
    pub fn apply(&self, project: &ProjectName, mutation: Mutation) -> Applied {
        match mutation {
            Mutation::Set {
                key,
                value,
                expires_at,
            } => {
                self.apply_set(project, key, value, expires_at.unwrap_or(0));
                Applied::default()
            }
            Mutation::Delete { key } => Applied {
                removed: u64::from(self.apply_delete(project, &key)),
            },
            Mutation::Clear => Applied {
                removed: self.apply_clear(project),
            },
        }
    }

    fn apply_set(&self, project: &ProjectName, key: Box<str>, value: Box<[u8]>, expires_at: u64) {
        let ns = self.namespace_or_create(project);
        let added = key.len() + value.len();
        let entry = StoredEntry { value, expires_at };
        let replaced = match ns.entries.entry(key) {
            MapEntry::Occupied(mut slot) => {
                let old = slot.get().expires_at;
                self.account(&ns, -1, slot.key().len() + slot.get().value.len(), false);
                if old != expires_at {
                    let mut index = self.expiry.shard_for(project, slot.key());
                    if old != 0 {
                        index.remove(&ExpiryRecord::new(old, project, slot.key()));
                    }
                    if expires_at != 0 {
                        index.insert(ExpiryRecord::new(expires_at, project, slot.key()));
                    }
                }
                slot.insert(entry);
                true
            }
            MapEntry::Vacant(slot) => {
                if expires_at != 0 {
                    self.expiry
                        .shard_for(project, slot.key())
                        .insert(ExpiryRecord::new(expires_at, project, slot.key()));
                }
                slot.insert(entry);
                false
            }
        };
        self.account(&ns, 1, added, !replaced);
    }

    /// Counts an entry of `bytes` in (`sign` 1) or out (-1) of the totals;
    /// the key count moves only when `count_key` (a replaced value keeps its
    /// key).
    fn account(&self, ns: &Namespace, sign: i64, bytes: usize, count_key: bool) {
        // Two's-complement wrapping adds subtract when the delta is negative.
        let bytes = (sign * bytes as i64) as u64;
        self.data_bytes.fetch_add(bytes, Ordering::Relaxed);
        ns.bytes.fetch_add(bytes, Ordering::Relaxed);
        if count_key {
            ns.keys.fetch_add(sign as u64, Ordering::Relaxed);
        }
    }

    fn apply_delete(&self, project: &ProjectName, key: &str) -> bool {
        let Some(ns) = self.namespace(project) else {
            return false;
        };
        let now = self.clock.now_ms();
        let mut live = false;
        // The predicate runs under the shard's write lock: the index is
        // updated there so no concurrent set of the key can slip between.
        ns.entries.remove_if(key, |key, entry| {
            live = entry.is_live(now);
            self.expiry.forget(project, key, entry.expires_at);
            self.account(&ns, -1, key.len() + entry.value.len(), true);
            true
        });
        live
    }

    fn apply_clear(&self, project: &ProjectName) -> u64 {
        let Some(ns) = self.namespace(project) else {
            return 0;
        };
        let now = self.clock.now_ms();
        let mut live = 0;
        // retain write-locks one shard at a time; writers to the other
        // shards go on meanwhile.
        ns.entries.retain(|key, entry| {
            live += u64::from(entry.is_live(now));
            self.expiry.forget(project, key, entry.expires_at);
            self.account(&ns, -1, key.len() + entry.value.len(), true);
            false
        });
        live
    }

    /// Removes up to `limit` entries whose deadline has passed and returns
    /// how many index records it consumed (so the caller can tell whether
    /// more are due). Work is proportional to what expired.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_server::engine::{memory::MemoryStore, ManualClock, Mutation};
    /// use kv_server::project::ProjectName;
    ///
    /// let clock = Arc::new(ManualClock::new(1_000));
    /// let store = MemoryStore::with_clock(clock.clone());
    /// let p = ProjectName::parse("p").unwrap();
    /// let value = b"\x20\x01".to_vec().into_boxed_slice();
    /// store.apply(&p, Mutation::Set { key: "k".into(), value, expires_at: Some(1_500) });
    /// clock.advance(500);
    /// assert_eq!(store.stored_entries(), 1); // invisible, not yet reclaimed
    /// store.purge_expired(1024);
    /// assert_eq!(store.stored_entries(), 0);
    /// ```
    pub fn purge_expired(&self, limit: usize) -> usize {
        let now = self.clock.now_ms();
        let due = self.expiry.take_due(now, limit);
        let consumed = due.len();
        for record in due {
            if let Some(ns) = self.namespace(&record.project) {
                // Only if the entry still carries this deadline: a later set
                // may have replaced it, and then its own record governs.
                let removed = ns
                    .entries
                    .remove_if(&*record.key, |_, e| e.expires_at == record.at);
                if let Some((key, entry)) = removed {
                    self.account(&ns, -1, key.len() + entry.value.len(), true);
                }
            }
        }
        consumed
    }

    /// What `project` holds now.
    ///
    /// ```
    /// use kv_server::engine::{memory::{MemoryStore, Usage}, Mutation};
    /// use kv_server::project::ProjectName;
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
        Some((key.len() + entry.value.len()) as u64)
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

    /// Calls `f` with every live entry (project, key, encoded value,
    /// deadline or 0) and returns how many there were.
    ///
    /// The walk is fuzzy: it holds one shard's read lock at a time, so
    /// writes to other shards go on meanwhile, and an entry written during
    /// the walk may or may not be seen. A log that replays everything after
    /// the walk began over its output arrives at the exact state.
    ///
    /// # Errors
    ///
    /// The first error `f` returns, which stops the walk.
    pub fn for_each_live<E>(
        &self,
        mut f: impl FnMut(&ProjectName, &str, &[u8], u64) -> Result<(), E>,
    ) -> Result<u64, E> {
        let now = self.clock.now_ms();
        // Collect the namespaces first so no guard on the projects map is
        // held while walking one.
        let namespaces: Vec<(ProjectName, Arc<Namespace>)> = self
            .projects
            .iter()
            .map(|ns| (ns.key().clone(), Arc::clone(ns.value())))
            .collect();
        let mut count = 0;
        for (project, ns) in namespaces {
            for entry in ns.entries.iter() {
                if entry.is_live(now) {
                    f(&project, entry.key(), &entry.value, entry.expires_at)?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Deadline records waiting in the expiry index.
    pub fn pending_expiries(&self) -> usize {
        self.expiry.len()
    }
}

impl Backend for MemoryStore {
    async fn get(&self, project: &ProjectName, key: &str) -> Result<Option<Bytes>, EngineError> {
        Ok(self.get_now(project, key))
    }

    async fn set(
        &self,
        project: &ProjectName,
        key: &str,
        value: Box<[u8]>,
        ttl_ms: Option<u64>,
    ) -> Result<(), EngineError> {
        let expires_at = self.deadline(ttl_ms)?;
        self.apply_set(project, key.into(), value, expires_at.unwrap_or(0));
        Ok(())
    }

    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.has_now(project, key))
    }

    async fn delete(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.apply_delete(project, key))
    }

    async fn clear(&self, project: &ProjectName) -> Result<u64, EngineError> {
        Ok(self.apply_clear(project))
    }
}

/// `(deadline, project, key)` records in deadline order, split into shards
/// by key so writers to different keys rarely share a lock.
///
/// Lock order: a map shard, then an index shard. The purge takes index
/// shards alone and releases them before touching a map.
struct ExpiryIndex {
    shards: Box<[Mutex<BTreeSet<ExpiryRecord>>]>,
    hasher: MapHasher,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ExpiryRecord {
    at: u64,
    project: ProjectName,
    key: Box<str>,
}

impl ExpiryRecord {
    fn new(at: u64, project: &ProjectName, key: &str) -> Self {
        Self {
            at,
            project: project.clone(),
            key: key.into(),
        }
    }
}

impl ExpiryIndex {
    fn new() -> Self {
        Self {
            shards: (0..EXPIRY_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    fn shard_for(
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
    fn forget(&self, project: &ProjectName, key: &str, at: u64) {
        if at != 0 {
            self.shard_for(project, key)
                .remove(&ExpiryRecord::new(at, project, key));
        }
    }

    /// Removes and returns up to `limit` records due at `now`, earliest
    /// first within each shard.
    fn take_due(&self, now: u64, limit: usize) -> Vec<ExpiryRecord> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while due.len() < limit && shard.first().is_some_and(|r| r.at <= now) {
                due.extend(shard.pop_first());
            }
        }
        due
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// A std `Mutex` is right here: it is held only for short, non-async
/// critical sections. A panic while holding it cannot leave the set half
/// updated (BTreeSet operations are atomic from the outside), so poisoning is
/// ignored rather than turned into a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records popped from the expiry index per purge step; between steps the
/// task yields so a mass expiry never monopolises a worker thread.
const PURGE_BATCH: usize = 1024;

/// The background task that reclaims expired entries.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use kv_server::engine::memory::{ExpiryTask, MemoryStore};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let task = ExpiryTask::spawn(Arc::new(MemoryStore::new()), Duration::from_millis(100));
/// task.stop().await;
/// # });
/// ```
pub struct ExpiryTask {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl ExpiryTask {
    /// Starts purging `store` every `interval` on the current runtime.
    pub fn spawn(store: Arc<MemoryStore>, interval: std::time::Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                while store.purge_expired(PURGE_BATCH) == PURGE_BATCH {
                    tokio::task::yield_now().await;
                }
            }
        });
        Self { stop, handle }
    }

    /// Stops the task and waits for it to finish.
    pub async fn stop(self) {
        // The task may already be gone (runtime shutting down); either way
        // there is nothing left to stop.
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}
