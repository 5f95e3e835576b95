//! Applying resulting-state mutations, and deleting or starting a
//! project incarnation. Only the one writer (the log writer, or the
//! store's write lock when used alone) calls these.

use super::*;
use crate::Deadline;

impl MemoryStore {
    /// Deletes `project`: its keys, history, request ids and version
    /// counter go, its watchers end ([`crate::watch::Lagged::Deleted`]),
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
        if let Some(cold) = ns.cold_if_made() {
            *lock(&cold.requests) = None;
        }
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
            let fresh = Arc::new(self.new_namespace(project, base));
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
        self.apply_in(project, &ns, versioned, 0)
    }

    /// Applies one committed transaction: its mutations, all visible
    /// together to multi-key readers, then the outcome remembered under
    /// its request id. The one apply path of every writer: the log writer
    /// after its append, the store used alone, and recovery replaying a
    /// record, so the three cannot drift apart. (A set replayed after its
    /// deadline passed while the server was down is applied as it was:
    /// reads treat it as absent, and the expiry task removes it right
    /// after start-up as a logged change with its `EXPIRED` event, so a
    /// watch resumed across the restart learns it is gone.)
    pub(crate) fn apply_commit(
        &self,
        project: &ProjectName,
        mutations: Vec<Versioned>,
        request: Option<(Arc<str>, Remembered)>,
    ) {
        self.apply_commit_through(project, mutations, request, 0);
    }

    /// [`Self::apply_commit`], publishing none of the changes up to version
    /// `through` (a replay's, which the history would drop by its end).
    pub(crate) fn apply_commit_through(
        &self,
        project: &ProjectName,
        mutations: Vec<Versioned>,
        request: Option<(Arc<str>, Remembered)>,
        through: u64,
    ) {
        if !mutations.is_empty() {
            let ns = self.namespace_or_create(project);
            // Every write holds the namespace exclusively, even a single
            // one: a List page or a GetMany then shows one moment, and its
            // version covers exactly what it shows.
            let _exclusive = write_lock(&ns.consistency);
            for m in mutations {
                self.apply_in(project, &ns, m, through);
            }
        }
        if let Some((id, remembered)) = request {
            self.remember(project, id, remembered);
        }
    }

    /// Applies the expiries of deadlines the expiry task took out of the
    /// expiry index (the log writer's path for them), like
    /// [`Self::apply_commit`] but without searching the index for their
    /// records, which [`Self::take_due`] already removed: in a mass expiry
    /// that search (a tree walk and a key copy per key) was a fifth of the
    /// writer's time.
    pub(crate) fn apply_expiries(&self, project: &ProjectName, expiries: Vec<Versioned>) {
        if expiries.is_empty() {
            return;
        }
        let ns = self.namespace_or_create(project);
        let _exclusive = write_lock(&ns.consistency);
        // The run's events are published together once its entries are
        // gone (one history lock and one wake-up, not one per key), so a
        // watcher reading a key after its event still finds it gone.
        let mut events = Vec::with_capacity(expiries.len());
        let mut newest = 0;
        for versioned in expiries {
            let Versioned {
                version,
                mutation: Mutation::Expire { key },
            } = versioned
            else {
                // Anything else publishes itself: the events before it go
                // first, so the history stays in version order.
                self.publish_expired(&ns, &mut events, &mut newest);
                self.apply_in(project, &ns, versioned, 0);
                continue;
            };
            let version = match version {
                0 => ns.version.load(Ordering::Acquire).max(newest) + 1,
                v => v,
            };
            // A record left behind (the key was deleted and set again with
            // the same deadline meanwhile) is dropped by a later take: its
            // expiry finds no entry with that deadline.
            self.remove_entry(project, &ns, &key, self.clock.now_ms(), false);
            events.push(Event {
                version,
                kind: EventKind::Expired,
                key,
                value: None,
                expires_at: None,
            });
            newest = newest.max(version);
        }
        self.publish_expired(&ns, &mut events, &mut newest);
    }

    /// Publishes the expiries applied so far as one run and makes the
    /// newest of them the namespace's version.
    fn publish_expired(&self, ns: &Namespace, events: &mut Vec<Event>, newest: &mut u64) {
        if events.is_empty() {
            return;
        }
        ns.hub
            .publish_many(events.drain(..), &self.settings, &self.history);
        ns.version.fetch_max(*newest, Ordering::AcqRel);
        *newest = 0;
    }

    /// Applies one change; changes up to version `through` are not
    /// published (see [`Self::apply_commit_through`]).
    pub(super) fn apply_in(
        &self,
        project: &ProjectName,
        ns: &Namespace,
        versioned: Versioned,
        through: u64,
    ) -> Applied {
        let version = match versioned.version {
            0 => ns.version.load(Ordering::Acquire) + 1,
            v => v,
        };
        let now = self.clock.now_ms();
        let settings = &self.settings;
        let publish = version > through;
        let (applied, kind, key, value, expires_at) = match versioned.mutation {
            Mutation::Set {
                key,
                value,
                expires_at,
            } => {
                let key: Arc<str> = key;
                // The event's copy is taken before the value moves into the
                // map (looking the entry up again costs a shard lock and a
                // hash, which a replay of millions of records feels), and
                // only when the history records changes and keeps this one.
                let copy =
                    (publish && self.history.recording()).then(|| Bytes::copy_from_slice(&value));
                let block = Block::new(&key, value, expires_at, version);
                self.apply_set(project, ns, block);
                (Applied::default(), EventKind::Set, key, copy, expires_at)
            }
            Mutation::Delete { key } => {
                let removed = u64::from(self.apply_delete(project, ns, &key, now));
                (Applied { removed }, EventKind::Deleted, key, None, None)
            }
            Mutation::Expire { key } => {
                let removed = u64::from(self.apply_delete(project, ns, &key, now));
                (Applied { removed }, EventKind::Expired, key, None, None)
            }
            Mutation::Clear => {
                let removed = self.apply_clear(project, ns, now);
                (
                    Applied { removed },
                    EventKind::Cleared,
                    "".into(),
                    None,
                    None,
                )
            }
        };
        // Published once the change is in place, so a watcher reading the
        // key after the event sees at least this write.
        if publish {
            ns.hub.publish(version, settings, &self.history, || Event {
                version,
                kind,
                key,
                value,
                expires_at,
            });
        }
        ns.version.fetch_max(version, Ordering::AcqRel);
        applied
    }

    pub(super) fn apply_set(&self, project: &ProjectName, ns: &Namespace, block: Block) {
        let added = block.size();
        let expires_at = block.expires_at();
        // Lock order in every callback: map shard, then the order index or
        // an expiry shard (readers of the index never wait for a shard
        // while holding it).
        let replaced = ns.entries.upsert(
            block,
            |old, new| {
                self.account(ns, -1, old.size(), false);
                self.move_deadline(project, new.key(), old.expires_at(), expires_at);
                // The index holds the old block (a small namespace's list
                // has no index): replaced, or it would keep the old value.
                if ns.entries.is_big() {
                    self.change_order(ns, OrderChange::Put(new.clone()));
                }
            },
            |new| self.move_deadline(project, new.key(), None, expires_at),
            |new| self.change_order(ns, OrderChange::Put(new.clone())),
        );
        self.account(ns, 1, added, !replaced);
    }

    /// Moves `key`'s place in the expiry index from deadline `old` to
    /// `new` (either may be none). Called under the key's lock, so no
    /// concurrent write of the key slips between.
    pub(super) fn move_deadline(
        &self,
        project: &ProjectName,
        key: &str,
        old: Option<Deadline>,
        new: Option<Deadline>,
    ) {
        if old == new {
            return;
        }
        let mut index = self.expiry.shard_for(project, key);
        if let Some(old) = old {
            index.remove(&ExpiryRecord::new(old, project, key));
        }
        if let Some(at) = new {
            index.insert(ExpiryRecord::new(at, project, key));
        }
    }

    /// Counts an entry of `bytes` in (`sign` 1) or out (-1) of the totals;
    /// the key count moves only when `count_key` (a replaced value keeps its
    /// key).
    pub(super) fn account(&self, ns: &Namespace, sign: i64, bytes: usize, count_key: bool) {
        // Two's-complement wrapping adds subtract when the delta is negative.
        let bytes = (sign * bytes as i64) as u64;
        self.data_bytes.fetch_add(bytes, Ordering::Relaxed);
        ns.bytes.fetch_add(bytes, Ordering::Relaxed);
        if count_key {
            ns.keys.fetch_add(sign as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn apply_delete(
        &self,
        project: &ProjectName,
        ns: &Namespace,
        key: &str,
        now: u64,
    ) -> bool {
        self.remove_entry(project, ns, key, now, true)
    }

    /// Removes `key`; `indexed`: its deadline may still be in the expiry
    /// index (false only for a deadline the expiry task took out).
    fn remove_entry(
        &self,
        project: &ProjectName,
        ns: &Namespace,
        key: &str,
        now: u64,
        indexed: bool,
    ) -> bool {
        let mut live = false;
        // The predicate runs under the shard's write lock: the index is
        // updated there so no concurrent set of the key can slip between.
        ns.entries.remove_if(key, |entry| {
            live = entry.is_live(now);
            if indexed {
                self.expiry.forget(project, key, entry.expires_at());
            }
            self.account(ns, -1, entry.size(), true);
            // A small namespace's keys are not in the index (see
            // `entries`); only the writer, this thread, moves them there.
            if ns.entries.is_big() {
                self.change_order(ns, OrderChange::Remove(entry.clone()));
            }
            true
        });
        live
    }

    pub(super) fn apply_clear(&self, project: &ProjectName, ns: &Namespace, now: u64) -> u64 {
        let mut live = 0;
        // retain write-locks one shard (or the small list) at a time; other
        // readers go on meanwhile.
        ns.entries.retain(|entry| {
            live += u64::from(entry.is_live(now));
            self.expiry.forget(project, entry.key(), entry.expires_at());
            self.account(ns, -1, entry.size(), true);
            false
        });
        if ns.entries.is_big() {
            self.change_order(ns, OrderChange::Clear);
        }
        live
    }
}
