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
//!
//! Beside the map, each namespace keeps its keys in a `BTreeSet` for
//! ordered listing (sharing the key allocation with the map), its version
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
//! ([`OrderBuild`]): sorting a million keys takes most of a second, and
//! only List needs the order. Until a project's index is installed, the
//! writes that change its key set queue their change beside it, the
//! builder replays the queue onto the tree it built, and a List of that
//! project waits for the install. Gets and writes never wait for it.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    hash::{BuildHasher, Hash, Hasher},
    ops::Bound,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use dashmap::{DashMap, mapref::entry::Entry as MapEntry};

use super::{
    Applied, Backend, Clock, EngineError, Entry, ListPage, ListQuery, Mutation, Settings,
    SystemClock, Txn, TxnOutcome, Versioned, WatchError, WatchTarget,
    txn::{Evaluated, Overlay},
    watch::{Budget, Event, EventKind, Hub, Subscription},
};
use crate::project::ProjectName;

/// The hasher of every map here. SipHash (std's) dominated profiles of
/// replay and writes; aHash is several times faster on short keys and,
/// seeded at random per process, still resists hash flooding by tenants
/// who choose their keys.
type MapHasher = ahash::RandomState;

/// Project names with a version each (retired names with their last
/// version, live ones with their incarnation).
pub(crate) type Numbering = Vec<(ProjectName, u64)>;

/// Number of independently locked parts of the expiry index.
const EXPIRY_SHARDS: usize = 16;

/// The embedded in-memory store. Used alone it keeps nothing across
/// restarts and enforces no quotas (the durable store's log writer does);
/// the product runs it behind [`crate::log::DurableStore`].
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
    /// date key by key; each namespace gathers its keys unordered, to be
    /// sorted once by an [`OrderBuild`].
    loading: AtomicBool,
    /// Serialises writes when the store is used alone (the durable store's
    /// writer thread is the only writer and does not take it).
    write_lock: Mutex<()>,
    /// Deleted project names and the newest version each used: the next
    /// project of the name numbers its versions above it. Lock order: this,
    /// then a `projects` shard (creation and deletion both take it first,
    /// so a name is never half deleted for a concurrent creator).
    retired: Mutex<HashMap<ProjectName, u64, MapHasher>>,
}

/// One project's keys.
struct Namespace {
    entries: DashMap<Arc<str>, StoredEntry, MapHasher>,
    /// The same keys in byte order, for listing.
    order: RwLock<OrderIndex>,
    /// Set once `order` is ready; Lists wait for it.
    built: Built,
    /// Entries held (expired-but-unreclaimed included).
    keys: AtomicU64,
    /// Bytes of their keys and values.
    bytes: AtomicU64,
    /// The newest version applied.
    version: AtomicU64,
    /// Held for writing while a multi-key transaction applies.
    consistency: RwLock<()>,
    requests: Mutex<RequestTable>,
    hub: Arc<Hub>,
    /// The version this incarnation's numbering starts after (0 for the
    /// first project of a name). Fixed for the namespace's life: a deleted
    /// project's name gets a new namespace, never this one again.
    incarnation: u64,
    /// Set when the project is deleted: walks that collected this
    /// namespace before (snapshots) skip it.
    deleted: AtomicBool,
}

impl Namespace {
    /// A namespace created during a recovery gathers its keys for an
    /// [`OrderBuild`]; any other starts with an empty, ready index.
    fn new(loading: bool, incarnation: u64) -> Self {
        let order = if loading {
            OrderIndex::Building(Pending::default())
        } else {
            OrderIndex::Ready(BTreeSet::new())
        };
        Self {
            entries: DashMap::default(),
            order: RwLock::new(order),
            built: Built::new(!loading),
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            version: AtomicU64::new(incarnation),
            consistency: RwLock::new(()),
            requests: Mutex::default(),
            hub: Arc::new(Hub::new(incarnation)),
            incarnation,
            deleted: AtomicBool::new(false),
        }
    }
}

/// A namespace's ordered keys, or what will make them.
enum OrderIndex {
    Ready(BTreeSet<Arc<str>>),
    Building(Pending),
}

/// Key-set changes waiting for an index being built.
#[derive(Default)]
struct Pending {
    /// Keys added during the load, unordered, a key again each time it
    /// was added anew.
    loaded: Vec<Arc<str>>,
    /// Keys removed during the load: those of `loaded` the map must be
    /// asked about (a key never removed is still there).
    removed: Vec<Arc<str>>,
    /// Changes since the load ended, in the order they were applied, to be
    /// replayed onto the built tree.
    changes: Vec<OrderChange>,
}

enum OrderChange {
    Insert(Arc<str>),
    Remove(Arc<str>),
    Clear,
}

impl OrderIndex {
    /// Records a change of the key set. `loading`: the store is still
    /// recovering, so nothing but the builder will read the change.
    fn change(&mut self, change: OrderChange, loading: bool) {
        match (self, loading) {
            (Self::Ready(tree), _) => match change {
                OrderChange::Insert(key) => {
                    tree.insert(key);
                }
                OrderChange::Remove(key) => {
                    tree.remove(&key);
                }
                OrderChange::Clear => tree.clear(),
            },
            (Self::Building(pending), true) => match change {
                OrderChange::Insert(key) => pending.loaded.push(key),
                OrderChange::Remove(key) => pending.removed.push(key),
                OrderChange::Clear => {
                    pending.loaded.clear();
                    pending.removed.clear();
                }
            },
            (Self::Building(pending), false) => pending.changes.push(change),
        }
    }
}

/// Whether a namespace's ordered index is ready, for Lists to wait on:
/// blocking callers on the condition variable, async ones on the watch.
struct Built {
    done: Mutex<bool>,
    cond: Condvar,
    watch: tokio::sync::watch::Sender<bool>,
}

impl Built {
    fn new(done: bool) -> Self {
        Self {
            done: Mutex::new(done),
            cond: Condvar::new(),
            watch: tokio::sync::watch::Sender::new(done),
        }
    }

    fn set(&self) {
        *lock(&self.done) = true;
        self.cond.notify_all();
        self.watch.send_replace(true);
    }

    fn is_set(&self) -> bool {
        *self.watch.borrow()
    }

    fn wait(&self) {
        let mut done = lock(&self.done);
        while !*done {
            done = self
                .cond
                .wait(done)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    async fn wait_async(&self) {
        // The sender lives as long as the namespace, which the caller holds.
        let _ = self.watch.subscribe().wait_for(|done| *done).await;
    }
}

/// Namespaces whose ordered indexes are still to be built after a
/// recovery; [`OrderBuild::run`] builds them (on a thread of its own).
pub(crate) struct OrderBuild {
    namespaces: Vec<(ProjectName, Arc<Namespace>)>,
}

/// Up to this many keys, all projects together, indexes are built at once
/// when the load ends (small projects first): a few milliseconds at most,
/// and a store of small projects then needs no thread. Past it, many
/// mid-sized projects would add up to the delay the background build
/// avoids.
const INLINE_BUILD_KEYS: usize = 4096;

impl OrderBuild {
    /// Whether there is anything left to build.
    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Keys held by the namespaces left to build.
    pub(crate) fn keys(&self) -> usize {
        self.namespaces.iter().map(|(_, ns)| ns.entries.len()).sum()
    }

    /// Builds every index, one namespace after another, and marks each
    /// ready as soon as it is installed.
    pub(crate) fn run(self) {
        for (_, ns) in self.namespaces {
            let tree = Self::sorted(&ns);
            Self::install(&ns, tree);
        }
    }

    /// The namespace's keys as of the end of its load, in order. Only
    /// the gathering and the install take the index's lock; sorting (the
    /// slow part) holds nothing, so writers go on meanwhile.
    fn sorted(ns: &Namespace) -> BTreeSet<Arc<str>> {
        let (mut keys, mut removed) = match &mut *write_lock(&ns.order) {
            OrderIndex::Building(pending) => (
                std::mem::take(&mut pending.loaded),
                std::mem::take(&mut pending.removed),
            ),
            OrderIndex::Ready(_) => return BTreeSet::new(),
        };
        // The map yields keys unordered: an unstable sort is the fastest
        // way to order them, and a BTreeSet collected from sorted keys is
        // built in one linear pass.
        keys.sort_unstable();
        keys.dedup();
        if !removed.is_empty() {
            removed.sort_unstable();
            removed.dedup();
            // A key removed during the load may have been added again. The
            // map is asked now, not as of the load's end: a change since
            // then is also queued in `changes`, and the install replays
            // it over whatever was seen here.
            keys.retain(|key| {
                removed.binary_search(key).is_err() || ns.entries.contains_key(&**key)
            });
        }
        keys.into_iter().collect()
    }

    /// Replays the changes queued since the load onto `tree` and makes it
    /// the namespace's index.
    fn install(ns: &Namespace, mut tree: BTreeSet<Arc<str>>) {
        {
            let mut order = write_lock(&ns.order);
            if let OrderIndex::Building(pending) = &mut *order {
                let mut ready = OrderIndex::Ready(std::mem::take(&mut tree));
                for change in pending.changes.drain(..) {
                    ready.change(change, false);
                }
                *order = ready;
            }
        }
        ns.built.set();
    }
}

/// The outcome of a request id, remembered for retries.
#[derive(Debug, Clone)]
pub(crate) struct Remembered {
    pub(crate) fingerprint: u64,
    /// When the request was applied (unix ms).
    pub(crate) at: u64,
    pub(crate) outcome: Arc<TxnOutcome>,
}

/// A project's remembered request ids, oldest first for eviction.
#[derive(Default)]
struct RequestTable {
    by_id: HashMap<Box<str>, Remembered, MapHasher>,
    order: VecDeque<(u64, Box<str>)>,
}

impl RequestTable {
    fn insert(&mut self, id: Box<str>, remembered: Remembered, now: u64, settings: &Settings) {
        self.order.push_back((remembered.at, id.clone()));
        self.by_id.insert(id, remembered);
        while let Some((at, _)) = self.order.front() {
            let expired = at.saturating_add(settings.idempotency_window_ms) <= now;
            if !expired && self.by_id.len() <= settings.idempotency_max_ids {
                break;
            }
            let Some((at, id)) = self.order.pop_front() else {
                break;
            };
            // The id may have been remembered again since (after its window).
            if self.by_id.get(&id).is_some_and(|r| r.at == at) {
                self.by_id.remove(&id);
            }
        }
    }
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
    version: u64,
}

/// An entry as the transaction evaluator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) expires_at: u64,
    pub(crate) version: u64,
    /// Key plus value bytes.
    pub(crate) size: u64,
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
        }
    }

    /// Puts the store in bulk loading, for a recovery: no change history is
    /// recorded (nobody can watch yet) and the ordered key indexes are not
    /// kept key by key (see [`MemoryStore::end_load`]).
    pub(crate) fn begin_load(&self) {
        self.history.recording.store(false, Ordering::Relaxed);
        self.loading.store(true, Ordering::Relaxed);
    }

    /// Ends the bulk load. Small namespaces get their ordered index at
    /// once; the others are returned, to be built by [`OrderBuild::run`]
    /// while the store serves (their Lists wait until then).
    pub(crate) fn end_load(&self) -> OrderBuild {
        self.history.recording.store(true, Ordering::Relaxed);
        self.loading.store(false, Ordering::Relaxed);
        let mut namespaces: Vec<_> = self
            .namespaces()
            .into_iter()
            .filter_map(|(project, ns)| {
                let loaded = match &*read_lock(&ns.order) {
                    OrderIndex::Ready(_) => return None,
                    OrderIndex::Building(pending) => pending.loaded.len(),
                };
                Some((loaded, project, ns))
            })
            .collect();
        namespaces.sort_unstable_by_key(|(loaded, _, _)| *loaded);
        let mut budget = INLINE_BUILD_KEYS;
        namespaces.retain(|(loaded, _, ns)| {
            let inline = *loaded <= budget;
            if inline {
                budget -= loaded;
                OrderBuild::install(ns, OrderBuild::sorted(ns));
            }
            !inline
        });
        OrderBuild {
            namespaces: namespaces
                .into_iter()
                .map(|(_, project, ns)| (project, ns))
                .collect(),
        }
    }

    fn loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

    /// Records a change of `ns`'s key set in its ordered index.
    fn change_order(&self, ns: &Namespace, change: OrderChange) {
        write_lock(&ns.order).change(change, self.loading());
    }

    /// Waits until `project`'s ordered index is ready (it is being built
    /// after a recovery), without blocking the thread.
    pub(crate) async fn order_ready(&self, project: &ProjectName) {
        if let Some(ns) = self.namespace(project)
            && !ns.built.is_set()
        {
            ns.built.wait_async().await;
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
            Arc::new(Namespace::new(self.loading(), base))
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

    /// Deletes `project`: its keys, history, request ids and version
    /// counter go, its watchers end ([`super::watch::Lagged::Deleted`]),
    /// and the name's next project numbers its versions above every
    /// version this one used. Returns how many live keys it held.
    pub fn delete_project(&self, project: &ProjectName) -> Applied {
        let ns = {
            let mut retired = lock(&self.retired);
            let ns = self.projects.remove(project).map(|(_, ns)| ns);
            let last = match &ns {
                Some(ns) => ns.version.load(Ordering::Acquire).max(ns.incarnation),
                None => retired.get(project).map_or(0, |last| last + 1),
            };
            retired.insert(project.clone(), last);
            ns
        };
        let Some(ns) = ns else {
            return Applied::default();
        };
        ns.deleted.store(true, Ordering::Release);
        let now = self.clock.now_ms();
        // The namespace is out of the map, so nothing new reaches it; what
        // it holds leaves memory, the expiry index and the usage totals.
        let removed = {
            let _exclusive = write_lock(&ns.consistency);
            self.apply_clear(project, &ns, now)
        };
        *lock(&ns.requests) = RequestTable::default();
        ns.hub.close(&self.history);
        Applied { removed }
    }

    /// Starts a new, empty incarnation of `project` numbered after `base`,
    /// replacing anything held under the name (CreateProject of a name
    /// used before, and its replay).
    pub(crate) fn start_incarnation(&self, project: &ProjectName, base: u64) {
        let old = {
            let mut retired = lock(&self.retired);
            retired.remove(project);
            let fresh = Arc::new(Namespace::new(self.loading(), base));
            self.projects.insert(project.clone(), fresh)
        };
        if let Some(old) = old {
            old.deleted.store(true, Ordering::Release);
            let now = self.clock.now_ms();
            {
                let _exclusive = write_lock(&old.consistency);
                self.apply_clear(project, &old, now);
            }
            old.hub.close(&self.history);
        }
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

    /// The live value of `key` at the clock's current time.
    pub fn get_now(&self, project: &ProjectName, key: &str) -> Option<Bytes> {
        self.entry_now(project, key).map(|e| e.value)
    }

    /// The live entry under `key` at the clock's current time.
    pub fn entry_now(&self, project: &ProjectName, key: &str) -> Option<Entry> {
        let now = self.clock.now_ms();
        let ns = self.namespace(project)?;
        Self::read_entry(&ns, key, now, false)
    }

    fn read_entry(ns: &Namespace, key: &str, now: u64, keys_only: bool) -> Option<Entry> {
        let entry = ns.entries.get(key)?;
        entry.is_live(now).then(|| Entry {
            value: if keys_only {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&entry.value)
            },
            version: entry.version,
            expires_at: (entry.expires_at != 0).then_some(entry.expires_at),
        })
    }

    /// The live entries under `keys`, as of one moment.
    pub fn entries_now(&self, project: &ProjectName, keys: &[String]) -> Vec<Option<Entry>> {
        let now = self.clock.now_ms();
        let Some(ns) = self.namespace(project) else {
            return vec![None; keys.len()];
        };
        let _consistent = read_lock(&ns.consistency);
        keys.iter()
            .map(|key| Self::read_entry(&ns, key, now, false))
            .collect()
    }

    /// One page of live entries in byte order of key.
    ///
    /// ```
    /// use kv_engine::{memory::MemoryStore, ListQuery, Mutation};
    /// use kv_engine::project::ProjectName;
    /// let store = MemoryStore::new();
    /// let p = ProjectName::parse("p").unwrap();
    /// for key in ["b", "a", "c"] {
    ///     store.apply(&p, Mutation::Set { key: key.into(), value: vec![0x20, 0x01].into(), expires_at: None });
    /// }
    /// let query = ListQuery { limit: 2, ..ListQuery::default() };
    /// let page = store.list_now(&p, &query);
    /// let keys: Vec<&str> = page.entries.iter().map(|(k, _)| &**k).collect();
    /// assert_eq!((keys, page.more), (vec!["a", "b"], true));
    /// ```
    pub fn list_now(&self, project: &ProjectName, query: &ListQuery) -> ListPage {
        let now = self.clock.now_ms();
        let Some(ns) = self.namespace(project) else {
            return ListPage {
                version: self.incarnation(project),
                ..ListPage::default()
            };
        };
        let limit = query.limit.max(1);
        // Before the consistency lock: the builder's install must not wait
        // for this reader. Once ready, an index stays ready.
        if !ns.built.is_set() {
            ns.built.wait();
        }
        let _consistent = read_lock(&ns.consistency);
        let version = ns.version.load(Ordering::Acquire);
        let prefix = query.prefix.as_str();
        let mut entries = Vec::new();
        let mut after: Option<Arc<str>> = None;
        let mut more = false;
        'pages: loop {
            // Collect candidates under the order lock, then read them with it
            // released: the lock is never held while waiting for a map shard.
            let candidates: Vec<Arc<str>> = {
                let order = read_lock(&ns.order);
                let OrderIndex::Ready(order) = &*order else {
                    unreachable!("the index was built before the lock was taken")
                };
                let start = match &after {
                    Some(key) => Bound::Excluded(&**key),
                    None if query.start_after.as_str() >= prefix => {
                        Bound::Excluded(query.start_after.as_str())
                    }
                    None => Bound::Included(prefix),
                };
                order
                    .range::<str, _>((start, Bound::Unbounded))
                    .take_while(|key| key.starts_with(prefix))
                    .take(limit + 1 - entries.len())
                    .cloned()
                    .collect()
            };
            let exhausted = candidates.len() < limit + 1 - entries.len();
            for key in candidates {
                if let Some(entry) = Self::read_entry(&ns, &key, now, query.keys_only) {
                    if entries.len() == limit {
                        more = true;
                        break 'pages;
                    }
                    entries.push((Arc::clone(&key), entry));
                }
                after = Some(key);
            }
            if exhausted {
                break;
            }
        }
        ListPage {
            entries,
            more,
            version,
        }
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
        ns.hub.subscribe(target, from_version, ns.incarnation)
    }

    /// The state of `key` for the transaction evaluator: dead entries
    /// included (they still occupy space until reclaimed).
    pub(crate) fn meta(&self, project: &ProjectName, key: &str) -> Option<Meta> {
        let ns = self.namespace(project)?;
        let entry = ns.entries.get(key)?;
        Some(Meta {
            expires_at: entry.expires_at,
            version: entry.version,
            size: (key.len() + entry.value.len()) as u64,
        })
    }

    /// The stored bytes of `key`, live or not.
    pub(crate) fn value(&self, project: &ProjectName, key: &str) -> Option<Bytes> {
        let ns = self.namespace(project)?;
        let entry = ns.entries.get(key)?;
        Some(Bytes::copy_from_slice(&entry.value))
    }

    /// Live keys of `project` at `now`.
    pub(crate) fn live_count(&self, project: &ProjectName, now: u64) -> u64 {
        self.namespace(project).map_or(0, |ns| {
            ns.entries.iter().filter(|e| e.is_live(now)).count() as u64
        })
    }

    /// The remembered outcome of request `id`, if within the window.
    pub(crate) fn remembered(
        &self,
        project: &ProjectName,
        id: &str,
        now: u64,
    ) -> Option<Remembered> {
        let ns = self.namespace(project)?;
        let table = lock(&ns.requests);
        table
            .by_id
            .get(id)
            .filter(|r| r.at.saturating_add(self.settings.idempotency_window_ms) > now)
            .cloned()
    }

    /// Remembers the outcome of request `id` (replay and the writer).
    pub(crate) fn remember(&self, project: &ProjectName, id: Box<str>, remembered: Remembered) {
        let now = self.clock.now_ms();
        if remembered
            .at
            .saturating_add(self.settings.idempotency_window_ms)
            <= now
        {
            return;
        }
        let ns = self.namespace_or_create(project);
        lock(&ns.requests).insert(id, remembered, now, &self.settings);
    }

    /// Calls `f` with every remembered request id still in its window.
    pub(crate) fn for_each_remembered<E>(
        &self,
        mut f: impl FnMut(&ProjectName, &str, &Remembered) -> Result<(), E>,
    ) -> Result<(), E> {
        let now = self.clock.now_ms();
        for (project, ns) in self.live_namespaces() {
            // Copied out first: `f` writes a file, and the writer must not
            // wait on that to remember a new request of this project.
            let live: Vec<(Box<str>, Remembered)> = lock(&ns.requests)
                .by_id
                .iter()
                .filter(|(_, r)| r.at.saturating_add(self.settings.idempotency_window_ms) > now)
                .map(|(id, r)| (id.clone(), r.clone()))
                .collect();
            for (id, r) in &live {
                f(&project, id, r)?;
            }
        }
        Ok(())
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

    /// Whether `key` is live at the clock's current time.
    pub fn has_now(&self, project: &ProjectName, key: &str) -> bool {
        let now = self.clock.now_ms();
        self.namespace(project)
            .and_then(|ns| ns.entries.get(key).map(|e| e.is_live(now)))
            .unwrap_or(false)
    }

    /// Applies a write as the project's next version and reports what it
    /// found. Liveness (for the delete and clear answers) is judged at the
    /// clock's current time.
    pub fn apply(&self, project: &ProjectName, mutation: Mutation) -> Applied {
        self.apply_versioned(project, Versioned::unnumbered(mutation))
    }

    /// Applies a write with its version (0: the project's next one).
    ///
    /// Writes change state only through here, so a durable log can apply
    /// records in log order; the change is published to the project's
    /// watchers.
    pub fn apply_versioned(&self, project: &ProjectName, versioned: Versioned) -> Applied {
        let ns = self.namespace_or_create(project);
        let _exclusive = write_lock(&ns.consistency);
        self.apply_in(project, &ns, versioned)
    }

    /// Applies the mutations of one transaction, all visible together to
    /// multi-key readers.
    pub(crate) fn apply_txn(&self, project: &ProjectName, mutations: Vec<Versioned>) {
        let ns = self.namespace_or_create(project);
        // Every write holds the namespace exclusively, even a single one:
        // a List page or a GetMany then shows one moment, and its version
        // covers exactly what it shows.
        let _exclusive = write_lock(&ns.consistency);
        for m in mutations {
            self.apply_in(project, &ns, m);
        }
    }

    fn apply_in(&self, project: &ProjectName, ns: &Namespace, versioned: Versioned) -> Applied {
        let version = match versioned.version {
            0 => ns.version.load(Ordering::Acquire) + 1,
            v => v,
        };
        let now = self.clock.now_ms();
        let settings = &self.settings;
        let applied = match versioned.mutation {
            Mutation::Set {
                key,
                value,
                expires_at,
            } => {
                let expires_at = expires_at.unwrap_or(0);
                let key: Arc<str> = key;
                self.apply_set(project, ns, Arc::clone(&key), value, expires_at, version);
                // Published once the value is in place, so a watcher reading
                // the key after the event sees at least this write. The
                // event copies the value only when history is kept; only
                // this thread writes, so the entry is still this write's.
                ns.hub.publish(version, settings, &self.history, || Event {
                    version,
                    kind: EventKind::Set,
                    key: Arc::clone(&key),
                    value: ns
                        .entries
                        .get(&*key)
                        .map(|e| Bytes::copy_from_slice(&e.value)),
                    expires_at,
                });
                Applied::default()
            }
            Mutation::Delete { key } => {
                let removed = u64::from(self.apply_delete(project, ns, &key, now));
                ns.hub.publish(version, settings, &self.history, || Event {
                    version,
                    kind: EventKind::Deleted,
                    key,
                    value: None,
                    expires_at: 0,
                });
                Applied { removed }
            }
            Mutation::Expire { key } => {
                let removed = u64::from(self.apply_delete(project, ns, &key, now));
                ns.hub.publish(version, settings, &self.history, || Event {
                    version,
                    kind: EventKind::Expired,
                    key,
                    value: None,
                    expires_at: 0,
                });
                Applied { removed }
            }
            Mutation::Clear => {
                let removed = self.apply_clear(project, ns, now);
                ns.hub.publish(version, settings, &self.history, || Event {
                    version,
                    kind: EventKind::Cleared,
                    key: "".into(),
                    value: None,
                    expires_at: 0,
                });
                Applied { removed }
            }
        };
        ns.version.fetch_max(version, Ordering::AcqRel);
        applied
    }

    fn apply_set(
        &self,
        project: &ProjectName,
        ns: &Namespace,
        key: Arc<str>,
        value: Box<[u8]>,
        expires_at: u64,
        version: u64,
    ) {
        let added = key.len() + value.len();
        let entry = StoredEntry {
            value,
            expires_at,
            version,
        };
        let replaced = match ns.entries.entry(key) {
            MapEntry::Occupied(mut slot) => {
                let old = slot.get().expires_at;
                self.account(ns, -1, slot.key().len() + slot.get().value.len(), false);
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
                // Lock order: map shard, then the order index (readers of
                // the index never wait for a shard while holding it).
                self.change_order(ns, OrderChange::Insert(Arc::clone(slot.key())));
                slot.insert(entry);
                false
            }
        };
        self.account(ns, 1, added, !replaced);
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

    fn apply_delete(&self, project: &ProjectName, ns: &Namespace, key: &str, now: u64) -> bool {
        let mut live = false;
        // The predicate runs under the shard's write lock: the index is
        // updated there so no concurrent set of the key can slip between.
        ns.entries.remove_if(key, |key, entry| {
            live = entry.is_live(now);
            self.expiry.forget(project, key, entry.expires_at);
            self.account(ns, -1, key.len() + entry.value.len(), true);
            self.change_order(ns, OrderChange::Remove(Arc::clone(key)));
            true
        });
        live
    }

    fn apply_clear(&self, project: &ProjectName, ns: &Namespace, now: u64) -> u64 {
        let mut live = 0;
        // retain write-locks one shard at a time; other readers go on
        // meanwhile.
        ns.entries.retain(|key, entry| {
            live += u64::from(entry.is_live(now));
            self.expiry.forget(project, key, entry.expires_at);
            self.account(ns, -1, key.len() + entry.value.len(), true);
            false
        });
        self.change_order(ns, OrderChange::Clear);
        live
    }

    /// Removes up to `limit` entries whose deadline has passed and returns
    /// how many index records it consumed (so the caller can tell whether
    /// more are due). Work is proportional to what expired.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{memory::MemoryStore, ManualClock, Mutation};
    /// use kv_engine::project::ProjectName;
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
        let due = self.take_due(limit);
        let consumed = due.len();
        let _writer = lock(&self.write_lock);
        let mut overlay = Overlay::default();
        for due in due {
            if let Some(expire) = overlay.expire(self, &due, self.clock.now_ms()) {
                self.apply_versioned(&due.project, expire);
            }
        }
        consumed
    }

    /// Takes up to `limit` due deadlines out of the expiry index. Each must
    /// then be expired through the store's writer (or dropped when the
    /// entry changed meanwhile).
    pub(crate) fn take_due(&self, limit: usize) -> Vec<Due> {
        self.expiry
            .take_due(self.clock.now_ms(), limit)
            .into_iter()
            .map(|r| Due {
                project: r.project,
                key: r.key,
                at: r.at,
            })
            .collect()
    }

    /// Evaluates and applies `txn` under the store's own write lock (the
    /// store used alone; the durable store evaluates in its log writer).
    ///
    /// # Errors
    ///
    /// [`EngineError`] when an operation is refused; nothing is applied.
    pub fn write_now(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> Result<Arc<TxnOutcome>, EngineError> {
        let _writer = lock(&self.write_lock);
        let mut overlay = Overlay::default();
        let now = self.clock.now_ms();
        match overlay.evaluate(self, project, txn, now, super::Quota::default())? {
            Evaluated::Replay(outcome) => Ok(outcome),
            Evaluated::Commit(commit) => {
                self.apply_txn(project, commit.mutations);
                if let Some((id, fingerprint)) = commit.remember {
                    let remembered = Remembered {
                        fingerprint,
                        at: now,
                        outcome: Arc::clone(&commit.outcome),
                    };
                    self.remember(project, id, remembered);
                }
                Ok(commit.outcome)
            }
        }
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
    /// deadline or 0, version) and returns how many there were.
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
        mut f: impl FnMut(&ProjectName, &str, &[u8], u64, u64) -> Result<(), E>,
    ) -> Result<u64, E> {
        let now = self.clock.now_ms();
        let mut count = 0;
        for (project, ns) in self.live_namespaces() {
            for entry in ns.entries.iter() {
                if ns.deleted.load(Ordering::Relaxed) {
                    break;
                }
                if entry.is_live(now) {
                    f(
                        &project,
                        entry.key(),
                        &entry.value,
                        entry.expires_at,
                        entry.version,
                    )?;
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
    async fn get(&self, project: &ProjectName, key: &str) -> Result<Option<Entry>, EngineError> {
        Ok(self.entry_now(project, key))
    }

    async fn get_many(
        &self,
        project: &ProjectName,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        Ok(self.entries_now(project, keys))
    }

    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.has_now(project, key))
    }

    async fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        Ok(self.list_now(project, query))
    }

    async fn write(&self, project: &ProjectName, txn: Txn) -> Result<Arc<TxnOutcome>, EngineError> {
        self.write_now(project, txn)
    }

    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> Result<Subscription, WatchError> {
        self.subscribe(project, target, from_version)
    }

    async fn expire_due(&self, limit: usize) -> usize {
        self.purge_expired(limit)
    }

    fn incarnation(&self, project: &ProjectName) -> u64 {
        MemoryStore::incarnation(self, project)
    }
}

/// A deadline that has come: expire `key` if it still carries it.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub(crate) project: ProjectName,
    pub(crate) key: Arc<str>,
    pub(crate) at: u64,
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
    key: Arc<str>,
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

/// As [`lock`]: the guarded sets and tables are changed by single calls
/// that leave them whole.
fn read_lock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records popped from the expiry index per purge step; between steps the
/// task yields so a mass expiry never monopolises a worker thread.
const PURGE_BATCH: usize = 1024;

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
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
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
                while store.expire_due(PURGE_BATCH).await == PURGE_BATCH {
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

#[cfg(test)]
mod tests {
    //! The ordered index built after a recovery: whatever writes (inserts,
    //! deletes, expiries, clears) run before, during and after the build,
    //! the installed index holds exactly the map's keys, and a List waiting
    //! for it shows exactly the project's keys at the page's version.

    use super::*;
    use crate::ManualClock;

    fn project() -> ProjectName {
        ProjectName::parse("p").unwrap()
    }

    fn set(store: &MemoryStore, key: &str, expires_at: Option<u64>) {
        let value = vec![0x20, 0x01].into_boxed_slice();
        let key = key.into();
        store.apply(
            &project(),
            Mutation::Set {
                key,
                value,
                expires_at,
            },
        );
    }

    fn remove(store: &MemoryStore, key: &str, expire: bool) {
        let key = key.into();
        let mutation = if expire {
            Mutation::Expire { key }
        } else {
            Mutation::Delete { key }
        };
        store.apply(&project(), mutation);
    }

    fn ns(store: &MemoryStore) -> Arc<Namespace> {
        store.namespace(&project()).unwrap()
    }

    /// The installed index and the map's keys, both in byte order.
    fn index_and_map(store: &MemoryStore) -> (Vec<String>, Vec<String>) {
        let ns = ns(store);
        let index = match &*read_lock(&ns.order) {
            OrderIndex::Ready(tree) => tree.iter().map(|k| k.to_string()).collect(),
            OrderIndex::Building(_) => panic!("index not installed"),
        };
        let mut map: Vec<String> = ns.entries.iter().map(|e| e.key().to_string()).collect();
        map.sort_unstable();
        (index, map)
    }

    fn listed(store: &MemoryStore) -> ListPage {
        let query = ListQuery {
            limit: 10_000_000,
            keys_only: true,
            ..ListQuery::default()
        };
        store.list_now(&project(), &query)
    }

    /// xorshift64*: deterministic, seed printed by the caller.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Random writes over a key space larger than an inline build: sets
    /// (some with deadlines), deletes, expiries through the purge, and
    /// now and then a clear.
    fn random_writes(store: &MemoryStore, clock: &ManualClock, rng: &mut Rng, n: usize) {
        for _ in 0..n {
            let key = format!("k{:06}", rng.below(12_000));
            match rng.below(10_000) {
                0 => {
                    store.apply(&project(), Mutation::Clear);
                }
                1..=5_499 => set(store, &key, None),
                5_500..=6_999 => set(store, &key, Some(clock.now_ms() + 1 + rng.below(5))),
                7_000..=8_999 => remove(store, &key, false),
                9_000..=9_899 => {
                    // A recovery turns sets already due into expiries; after
                    // it, the purge expires what fell due.
                    if store.loading() {
                        remove(store, &key, true);
                    } else {
                        clock.advance(1);
                        store.purge_expired(64);
                    }
                }
                _ => clock.advance(1),
            }
        }
    }

    #[test]
    fn an_index_built_after_the_load_replays_the_changes_queued_meanwhile() {
        for seed in 1..=8u64 {
            let clock = Arc::new(ManualClock::new(1_000_000));
            let store = MemoryStore::with_clock(clock.clone());
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            store.begin_load();
            random_writes(&store, &clock, &mut rng, 20_000);
            // Enough keys added since the load's last clear for a build in
            // the background.
            for i in 0..8_000 {
                set(&store, &format!("k{:06}", i), None);
            }
            let build = store.end_load();
            assert!(!build.is_empty(), "seed {seed}: the build was inlined");
            // Before the builder gathers the load's keys, between that and
            // the install, and after it.
            random_writes(&store, &clock, &mut rng, 5_000);
            let (_, ns) = &build.namespaces[0];
            let tree = OrderBuild::sorted(ns);
            random_writes(&store, &clock, &mut rng, 5_000);
            assert!(!ns.built.is_set());
            OrderBuild::install(ns, tree);
            assert!(ns.built.is_set());
            let (index, map) = index_and_map(&store);
            assert_eq!(index, map, "seed {seed}");
            random_writes(&store, &clock, &mut rng, 5_000);
            let (index, map) = index_and_map(&store);
            assert_eq!(index, map, "seed {seed}");
            let now = clock.now_ms();
            let live: Vec<String> = ns
                .entries
                .iter()
                .filter(|e| e.is_live(now))
                .map(|e| e.key().to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let page: Vec<String> = listed(&store)
                .entries
                .iter()
                .map(|(k, _)| k.to_string())
                .collect();
            assert_eq!(page, live, "seed {seed}");
        }
    }

    #[test]
    fn a_load_cleared_or_small_needs_no_background_build() {
        let store = MemoryStore::new();
        store.begin_load();
        for i in 0..10_000 {
            set(&store, &format!("k{i:06}"), None);
        }
        store.apply(&project(), Mutation::Clear);
        set(&store, "b", None);
        set(&store, "a", None);
        remove(&store, "b", false);
        let build = store.end_load();
        assert!(build.is_empty());
        let (index, map) = index_and_map(&store);
        assert_eq!((index, map), (vec!["a".to_string()], vec!["a".to_string()]));
    }

    #[test]
    fn many_mid_sized_projects_are_not_all_built_before_the_open_returns() {
        let store = MemoryStore::new();
        store.begin_load();
        for name in ["a", "b", "c"] {
            let project = ProjectName::parse(name).unwrap();
            for i in 0..3_000 {
                let key = format!("k{i:05}").into();
                let value = vec![0x20, 0x01].into_boxed_slice();
                let expires_at = None;
                store.apply(
                    &project,
                    Mutation::Set {
                        key,
                        value,
                        expires_at,
                    },
                );
            }
        }
        let build = store.end_load();
        assert_eq!(build.keys(), 6_000);
        build.run();
        for name in ["a", "b", "c"] {
            let project = ProjectName::parse(name).unwrap();
            let query = ListQuery {
                limit: 10_000,
                ..ListQuery::default()
            };
            assert_eq!(store.list_now(&project, &query).entries.len(), 3_000);
        }
    }

    /// A List started right after the load, while writes go on and the
    /// builder runs on its own thread: every page it returns is exactly the
    /// project's keys at the page's version.
    #[test]
    fn lists_during_the_build_wait_and_see_exactly_the_keys_of_their_version() {
        const LOADED: usize = 200_000;
        let store = Arc::new(MemoryStore::new());
        store.begin_load();
        for i in 0..LOADED {
            set(&store, &format!("k{:07}", i * 2), None);
        }
        let build = store.end_load();
        assert_eq!(build.keys(), LOADED);
        let loaded_version = store.version(&project());

        // What each version changed, to rebuild the key set a page shows.
        enum Op {
            Insert(String),
            Remove(String),
            Clear,
        }
        let done = Arc::new(AtomicBool::new(false));
        let lister = {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut pages = Vec::new();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let page = listed(&store);
                    assert!(!page.more);
                    let keys: Vec<String> =
                        page.entries.iter().map(|(k, _)| k.to_string()).collect();
                    pages.push((page.version, keys));
                    if finished {
                        return pages;
                    }
                }
            })
        };
        let builder = std::thread::spawn(move || build.run());
        let mut ops = Vec::new();
        let mut rng = Rng(0x5eed);
        for round in 0..20_000u64 {
            let key = format!("k{:07}", rng.below(LOADED as u64 * 2));
            let op = match rng.below(10) {
                0..=4 => {
                    set(&store, &key, None);
                    Op::Insert(key)
                }
                5..=7 => {
                    remove(&store, &key, false);
                    Op::Remove(key)
                }
                _ => {
                    remove(&store, &key, true);
                    Op::Remove(key)
                }
            };
            ops.push((store.version(&project()), op));
            if round == 15_000 {
                store.apply(&project(), Mutation::Clear);
                ops.push((store.version(&project()), Op::Clear));
            }
        }
        done.store(true, Ordering::Release);
        builder.join().unwrap();
        let pages = lister.join().unwrap();
        let (index, map) = index_and_map(&store);
        assert_eq!(index, map);

        let mut model: BTreeSet<String> = (0..LOADED).map(|i| format!("k{:07}", i * 2)).collect();
        let mut applied = ops.iter().peekable();
        let mut at = loaded_version;
        for (version, keys) in &pages {
            assert!(*version >= at, "pages go forward");
            while let Some((_, op)) = applied.next_if(|(v, _)| v <= version) {
                match op {
                    Op::Insert(key) => {
                        model.insert(key.clone());
                    }
                    Op::Remove(key) => {
                        model.remove(key);
                    }
                    Op::Clear => model.clear(),
                }
            }
            at = *version;
            assert!(keys.iter().eq(model.iter()), "page at version {version}");
        }
        assert!(pages.len() >= 2);
    }
}
