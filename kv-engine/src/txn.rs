//! Evaluating transactions: checks, read-modify-write operations, quotas,
//! request ids, versions. The result is the list of resulting-state
//! mutations to log and apply, and the outcome to answer.
//!
//! Writes are evaluated one at a time by the only writer (the log writer
//! thread, or the memory store's write lock), so an increment or a
//! compare-and-swap reads a state no other write can change before it is
//! applied. The log writer evaluates a whole group of writes before one
//! append; the [`Overlay`] holds what the earlier writes of the group will
//! have done, so each write sees them although none is applied yet.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    Check, Deadline, EngineError, Mutation, Op, OpOutcome, Quota, QuotaExceeded, Ttl, Txn,
    TxnOutcome, Versioned, jsonops,
    memory::{Usage, expiry::Due, requests::Remembered},
};
use crate::project::ProjectName;

pub use crate::memory::namespace::Meta as KeyMeta;

/// The committed state a transaction is evaluated against: the memory
/// store's, or a remote backend's copy of what a transaction touches.
///
/// Every answer is about one moment; a remote backend fetches the project's
/// counters and the transaction's keys together and applies the result only
/// if nothing changed since (see `kv-redis`).
pub trait State {
    /// The newest version of `project` (its incarnation before its first
    /// change).
    fn version(&self, project: &ProjectName) -> u64;
    /// Keys and bytes held by `project`, dead entries included until
    /// they are expired.
    fn usage(&self, project: &ProjectName) -> Usage;
    /// The incarnation of `project` (see [`crate::Backend::incarnation`]).
    fn incarnation(&self, project: &ProjectName) -> u64;
    /// Whether `project` has any state (a memory store creates namespaces
    /// lazily; a remote store can answer true).
    fn has_namespace(&self, project: &ProjectName) -> bool;
    /// The outcome remembered under request `id`, if within the window.
    fn remembered(&self, project: &ProjectName, id: &str, now: u64) -> Option<Remembered>;
    /// `key`'s entry, live or dead.
    fn meta(&self, project: &ProjectName, key: &str) -> Option<KeyMeta>;
    /// `key`'s stored bytes, live or dead.
    fn value(&self, project: &ProjectName, key: &str) -> Option<Bytes>;
    /// Live keys of `project` at `now`.
    fn live_count(&self, project: &ProjectName, now: u64) -> u64;
}

/// The writer's maps hash with aHash, as the store's do: SipHash showed in
/// profiles of mass expiry.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;

/// A key's state above memory.
#[derive(Debug, Clone)]
enum Slot {
    Present {
        value: Bytes,
        expires_at: Option<Deadline>,
        version: u64,
    },
    Absent,
}

/// A key's state as a transaction sees it.
#[derive(Debug, Clone)]
enum View {
    /// Present and live.
    Live {
        expires_at: Option<Deadline>,
        version: u64,
        size: u64,
    },
    /// Present but past its deadline (still holding space).
    Dead {
        size: u64,
    },
    Absent,
}

/// What a group of writes evaluated so far will have done once applied.
#[derive(Default)]
pub struct Overlay {
    /// Per project, so a lookup by `&str` allocates nothing.
    keys: HashMap<ProjectName, HashMap<Box<str>, Slot>>,
    cleared: HashSet<ProjectName>,
    versions: HashMap<ProjectName, u64>,
    usage: HashMap<ProjectName, Usage>,
    requests: HashMap<(ProjectName, Arc<str>), (u64, Arc<TxnOutcome>)>,
    /// Incarnations begun by deletions and creations earlier in the group.
    incarnations: HashMap<ProjectName, u64>,
    /// Whether a project will have a namespace, where the group changed it
    /// (deleted, created, or first written).
    held: HashMap<ProjectName, bool>,
}

/// An evaluated transaction.
pub enum Evaluated {
    /// A retry of a remembered request: answer this, change nothing.
    Replay(Arc<TxnOutcome>),
    /// Log and apply these.
    Commit(Commit),
}

/// What a transaction changes, and what it answers.
pub struct Commit {
    /// The resulting-state changes, numbered.
    pub mutations: Vec<Versioned>,
    /// The answer.
    pub outcome: Arc<TxnOutcome>,
    /// Remember the outcome under this request id and fingerprint.
    pub remember: Option<(Arc<str>, u64)>,
}

impl Commit {
    /// The outcome to remember under the request id, as applied at `now`.
    pub fn remembered(&mut self, now: u64) -> Option<(Arc<str>, Remembered)> {
        self.remember.take().map(|(id, fingerprint)| {
            let remembered = Remembered {
                fingerprint,
                at: now,
                outcome: Arc::clone(&self.outcome),
            };
            (id, remembered)
        })
    }
}

impl Overlay {
    /// The version of `project` after the writes evaluated so far.
    pub fn version<S: State + ?Sized>(&self, mem: &S, project: &ProjectName) -> u64 {
        self.versions
            .get(project)
            .copied()
            .unwrap_or_else(|| mem.version(project))
    }

    /// What `project` holds after the writes evaluated so far.
    pub fn usage<S: State + ?Sized>(&self, mem: &S, project: &ProjectName) -> Usage {
        self.usage
            .get(project)
            .copied()
            .unwrap_or_else(|| mem.usage(project))
    }

    /// The state of `key` after the writes evaluated so far.
    fn slot(&self, project: &ProjectName, key: &str) -> Option<Slot> {
        if let Some(slot) = self.keys.get(project).and_then(|keys| keys.get(key)) {
            return Some(slot.clone());
        }
        if self.cleared.contains(project) {
            return Some(Slot::Absent);
        }
        None
    }

    /// The incarnation of `project` after the writes evaluated so far.
    pub(crate) fn incarnation<S: State + ?Sized>(&self, mem: &S, project: &ProjectName) -> u64 {
        self.incarnations
            .get(project)
            .copied()
            .unwrap_or_else(|| mem.incarnation(project))
    }

    /// A deleted project's data goes with the group, and later writes of
    /// the name belong to the next incarnation (numbered as
    /// [`crate::memory::MemoryStore::delete_project`] numbers it).
    pub(crate) fn drop_project<S: State + ?Sized>(&mut self, mem: &S, project: &ProjectName) {
        let last = self
            .version(mem, project)
            .max(self.incarnation(mem, project));
        self.begin(project, last + 1);
        self.held.insert(project.clone(), false);
    }

    /// Whether `project` will have a namespace once the group is applied.
    pub(crate) fn holds_namespace<S: State + ?Sized>(
        &self,
        mem: &S,
        project: &ProjectName,
    ) -> bool {
        self.held
            .get(project)
            .copied()
            .unwrap_or_else(|| mem.has_namespace(project))
    }

    /// A project created afresh under `project`, numbered after `base`.
    pub(crate) fn begin(&mut self, project: &ProjectName, base: u64) {
        self.keys.remove(project);
        self.cleared.insert(project.clone());
        self.usage.insert(project.clone(), Usage::default());
        self.requests.retain(|(p, _), _| p != project);
        self.versions.insert(project.clone(), base);
        self.incarnations.insert(project.clone(), base);
        self.held.insert(project.clone(), true);
    }

    /// Evaluates `txn` on `project` at time `now` against memory plus the
    /// writes evaluated before it, and records its effect in the overlay.
    ///
    /// # Errors
    ///
    /// [`EngineError`] when an operation or the quota refuses it; the
    /// overlay is then unchanged.
    pub fn evaluate<S: State + ?Sized>(
        &mut self,
        mem: &S,
        project: &ProjectName,
        txn: Txn,
        now: u64,
        quota: Quota,
    ) -> Result<Evaluated, EngineError> {
        if let Some(expected) = txn.incarnation
            && self.incarnation(mem, project) != expected
        {
            return Err(EngineError::ProjectGone {
                project: project.clone(),
            });
        }
        if let Some(request) = &txn.request {
            let pending = self
                .requests
                .get(&(project.clone(), request.id.clone()))
                .cloned();
            let known = pending.or_else(|| {
                mem.remembered(project, &request.id, now)
                    .map(|r| (r.fingerprint, r.outcome))
            });
            if let Some((fingerprint, outcome)) = known {
                return if fingerprint == request.fingerprint {
                    Ok(Evaluated::Replay(outcome))
                } else {
                    Err(EngineError::RequestIdReused {
                        id: Box::from(&*request.id),
                    })
                };
            }
        }
        let mut eval = Eval {
            mem,
            overlay: self,
            project,
            now,
            local: HashMap::default(),
            cleared: false,
            version: self.version(mem, project),
            usage: self.usage(mem, project),
            quota,
            out: Vec::new(),
        };
        let Txn {
            checks,
            ops,
            request,
            max_value_bytes,
            incarnation: _,
        } = txn;
        let outcome = eval.run(&checks, ops, max_value_bytes)?;
        let Eval {
            local,
            cleared,
            version,
            usage,
            out,
            ..
        } = eval;
        if cleared {
            self.keys.remove(project);
            self.cleared.insert(project.clone());
        }
        if !local.is_empty() {
            self.keys.entry(project.clone()).or_default().extend(local);
        }
        // A write that changed nothing in a project that has no state (a
        // delete or clear where nothing exists) has an outcome that holds
        // without storing anything: a retry finds the same nothing. Its
        // request id is not remembered, so such calls create no namespace
        // and take no memory, however many projects they name.
        let request = request.filter(|_| !out.is_empty() || self.holds_namespace(mem, project));
        self.versions.insert(project.clone(), version);
        self.usage.insert(project.clone(), usage);
        if !out.is_empty() || request.is_some() {
            // Applying it (or remembering its outcome) creates the
            // namespace if there was none.
            self.held.insert(project.clone(), true);
        }
        let outcome = Arc::new(outcome);
        let remember = request.map(|r| {
            self.requests.insert(
                (project.clone(), r.id.clone()),
                (r.fingerprint, Arc::clone(&outcome)),
            );
            (r.id, r.fingerprint)
        });
        Ok(Evaluated::Commit(Commit {
            mutations: out,
            outcome,
            remember,
        }))
    }

    /// The expiry of a due deadline, if the entry still carries it.
    pub(crate) fn expire<S: State + ?Sized>(
        &mut self,
        mem: &S,
        due: &Due,
        now: u64,
    ) -> Option<Versioned> {
        if !due.at.passed(now) {
            return None;
        }
        let size = match self.slot(&due.project, &due.key) {
            Some(Slot::Present {
                expires_at, value, ..
            }) if expires_at == Some(due.at) => (due.key.len() + value.len()) as u64,
            Some(_) => return None,
            None => {
                mem.meta(&due.project, &due.key)
                    .filter(|m| m.expires_at == Some(due.at))?
                    .size
            }
        };
        let version = self.version(mem, &due.project) + 1;
        let mut usage = self.usage(mem, &due.project);
        usage.keys = usage.keys.saturating_sub(1);
        usage.bytes = usage.bytes.saturating_sub(size);
        self.versions.insert(due.project.clone(), version);
        self.usage.insert(due.project.clone(), usage);
        self.keys
            .entry(due.project.clone())
            .or_default()
            .insert((*due.key).into(), Slot::Absent);
        Some(Versioned {
            version,
            // The index's own allocation of the key: an expiry of a million
            // keys costs a million fewer copies.
            mutation: Mutation::Expire {
                key: Arc::clone(&due.key),
            },
        })
    }

    fn view<S: State + ?Sized>(&self, mem: &S, project: &ProjectName, key: &str, now: u64) -> View {
        match self.slot(project, key) {
            Some(slot) => view_of_slot(key, &slot, now),
            None => view_of_meta(mem.meta(project, key), now),
        }
    }

    fn value<S: State + ?Sized>(&self, mem: &S, project: &ProjectName, key: &str) -> Option<Bytes> {
        match self.slot(project, key) {
            Some(Slot::Present { value, .. }) => Some(value),
            Some(Slot::Absent) => None,
            None => mem.value(project, key),
        }
    }
}

fn view_of_slot(key: &str, slot: &Slot, now: u64) -> View {
    match slot {
        Slot::Absent => View::Absent,
        Slot::Present {
            value,
            expires_at,
            version,
        } => {
            let size = (key.len() + value.len()) as u64;
            if expires_at.is_some_and(|d| d.passed(now)) {
                View::Dead { size }
            } else {
                View::Live {
                    expires_at: *expires_at,
                    version: *version,
                    size,
                }
            }
        }
    }
}

fn view_of_meta(meta: Option<KeyMeta>, now: u64) -> View {
    match meta {
        None => View::Absent,
        Some(m) if m.expires_at.is_some_and(|d| d.passed(now)) => View::Dead { size: m.size },
        Some(m) => View::Live {
            expires_at: m.expires_at,
            version: m.version,
            size: m.size,
        },
    }
}

/// A live entry as a write found it.
#[derive(Debug, Clone, Copy)]
struct Live {
    expires_at: Option<Deadline>,
    /// Key plus value bytes.
    size: u64,
}

/// One transaction being evaluated: its own writes sit in `local` until it
/// succeeds as a whole.
struct Eval<'a, S: ?Sized> {
    mem: &'a S,
    overlay: &'a Overlay,
    project: &'a ProjectName,
    now: u64,
    local: HashMap<Box<str>, Slot>,
    cleared: bool,
    version: u64,
    usage: Usage,
    quota: Quota,
    out: Vec<Versioned>,
}

impl<S: State + ?Sized> Eval<'_, S> {
    fn view(&self, key: &str) -> View {
        if let Some(slot) = self.local.get(key) {
            return view_of_slot(key, slot, self.now);
        }
        if self.cleared {
            return View::Absent;
        }
        self.overlay.view(self.mem, self.project, key, self.now)
    }

    fn value(&self, key: &str) -> Option<Bytes> {
        if let Some(slot) = self.local.get(key) {
            return match slot {
                Slot::Present { value, .. } => Some(value.clone()),
                Slot::Absent => None,
            };
        }
        if self.cleared {
            return None;
        }
        self.overlay.value(self.mem, self.project, key)
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn emit(&mut self, mutation: Mutation) -> u64 {
        let version = self.next_version();
        self.out.push(Versioned { version, mutation });
        version
    }

    /// The live state of `key` for a write to it. A dead entry is expired
    /// first (its own event and version), so watchers see why it went.
    fn touch(&mut self, key: &str) -> Option<Live> {
        match self.view(key) {
            View::Live {
                expires_at, size, ..
            } => Some(Live { expires_at, size }),
            View::Dead { size } => {
                self.emit(Mutation::Expire { key: key.into() });
                self.usage.keys = self.usage.keys.saturating_sub(1);
                self.usage.bytes = self.usage.bytes.saturating_sub(size);
                self.local.insert(key.into(), Slot::Absent);
                None
            }
            View::Absent => None,
        }
    }

    /// Stores `value` under `key` (quota permitting) and returns its version.
    /// `live` is what [`Eval::touch`] found there.
    fn put(
        &mut self,
        key: Box<str>,
        live: Option<Live>,
        value: Box<[u8]>,
        expires_at: Option<Deadline>,
    ) -> Result<u64, EngineError> {
        let old = live.map(|l| l.size);
        let size = (key.len() + value.len()) as u64;
        let current = self.usage;
        let next = Usage {
            keys: current.keys + u64::from(old.is_none()),
            bytes: current.bytes.saturating_sub(old.unwrap_or(0)) + size,
        };
        if let Some(limit) = self.quota.max_keys
            && old.is_none()
            && next.keys > limit
        {
            return Err(EngineError::QuotaExceeded(QuotaExceeded::Keys {
                project: self.project.clone(),
                limit,
                usage: current.keys,
            }));
        }
        // A write that shrinks the project is allowed even over quota.
        if let Some(limit) = self.quota.max_bytes
            && next.bytes > limit
            && next.bytes > current.bytes
        {
            return Err(EngineError::QuotaExceeded(QuotaExceeded::Bytes {
                project: self.project.clone(),
                limit,
                usage: current.bytes,
                after: next.bytes,
            }));
        }
        self.usage = next;
        let bytes = Bytes::copy_from_slice(&value);
        let version = self.emit(Mutation::Set {
            key: Arc::from(&*key),
            value,
            expires_at,
        });
        self.local.insert(
            key,
            Slot::Present {
                value: bytes,
                expires_at,
                version,
            },
        );
        Ok(version)
    }

    fn deadline(&self, ttl_ms: u64) -> Result<Option<Deadline>, EngineError> {
        self.now
            .checked_add(ttl_ms)
            .map(Deadline::at)
            .ok_or(EngineError::DeadlineOverflow { ttl_ms })
    }

    fn run(
        &mut self,
        checks: &[Check],
        ops: Vec<Op>,
        max_value_bytes: usize,
    ) -> Result<TxnOutcome, EngineError> {
        for (i, check) in checks.iter().enumerate() {
            let (key, holds) = match check {
                Check::Version { key, version } => (
                    key,
                    matches!(self.view(key), View::Live { version: v, .. } if v == *version),
                ),
                Check::Absent { key } => (key, !matches!(self.view(key), View::Live { .. })),
            };
            if !holds {
                let current_version = match self.view(key) {
                    View::Live { version, .. } => version,
                    View::Dead { .. } | View::Absent => 0,
                };
                return Ok(TxnOutcome {
                    applied: false,
                    failed_check: Some(i as u32),
                    current_version,
                    results: Vec::new(),
                });
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(self.op(op, max_value_bytes)?);
        }
        Ok(TxnOutcome {
            applied: true,
            failed_check: None,
            current_version: 0,
            results,
        })
    }

    fn op(&mut self, op: Op, max_value_bytes: usize) -> Result<OpOutcome, EngineError> {
        Ok(match op {
            Op::Set { key, value, ttl } => {
                let live = self.touch(&key);
                let expires_at = match ttl {
                    Ttl::Never => None,
                    Ttl::Keep => live.and_then(|l| l.expires_at),
                    Ttl::After(ms) => self.deadline(ms)?,
                };
                OpOutcome::Set {
                    version: self.put(key, live, value, expires_at)?,
                }
            }
            Op::Delete { key } => match self.touch(&key) {
                Some(Live { size, .. }) => {
                    self.usage.keys = self.usage.keys.saturating_sub(1);
                    self.usage.bytes = self.usage.bytes.saturating_sub(size);
                    let version = self.emit(Mutation::Delete {
                        key: Arc::from(&*key),
                    });
                    self.local.insert(key, Slot::Absent);
                    OpOutcome::Delete {
                        deleted: true,
                        version,
                    }
                }
                None => OpOutcome::Delete {
                    deleted: false,
                    version: 0,
                },
            },
            Op::Incr { key, delta, ttl_ms } => {
                let live = self.touch(&key);
                let current = live.and_then(|_| self.value(&key));
                let (value, number) =
                    jsonops::incr(current.as_deref(), delta).map_err(|e| match e {
                        jsonops::NumberError::NotANumber { kind } => EngineError::NotANumber {
                            key: key.clone(),
                            kind,
                        },
                        other => EngineError::NumberOutOfRange {
                            key: key.clone(),
                            source: other,
                        },
                    })?;
                // A fixed window: the deadline is set when the key is made
                // and kept by later increments.
                let expires_at = match (live, ttl_ms) {
                    (Some(l), _) => l.expires_at,
                    (None, Some(ms)) => self.deadline(ms)?,
                    (None, None) => None,
                };
                OpOutcome::Incr {
                    value: number,
                    version: self.put(key, live, value, expires_at)?,
                }
            }
            Op::Merge { key, patch, ttl_ms } => {
                let live = self.touch(&key);
                let current = live.and_then(|_| self.value(&key));
                let merged =
                    jsonops::merge_patch(current.as_deref(), &patch).map_err(|source| {
                        EngineError::Unmergeable {
                            key: key.clone(),
                            source,
                        }
                    })?;
                if merged.len() > max_value_bytes {
                    return Err(EngineError::MergedTooLarge {
                        key: key.clone(),
                        len: merged.len(),
                        limit: max_value_bytes,
                    });
                }
                let expires_at = match (ttl_ms, live) {
                    (Some(ms), _) => self.deadline(ms)?,
                    (None, Some(l)) => l.expires_at,
                    (None, None) => None,
                };
                let value = Bytes::copy_from_slice(&merged);
                OpOutcome::Merge {
                    version: self.put(key, live, merged, expires_at)?,
                    value,
                }
            }
            Op::Clear => {
                let removed = self.live_count();
                if self.usage.keys == 0 && removed == 0 {
                    OpOutcome::Clear {
                        removed: 0,
                        version: 0,
                    }
                } else {
                    let version = self.emit(Mutation::Clear);
                    self.local.clear();
                    self.cleared = true;
                    self.usage = Usage::default();
                    OpOutcome::Clear { removed, version }
                }
            }
        })
    }

    /// Live keys of the project as this transaction sees it.
    fn live_count(&self) -> u64 {
        let base_cleared = self.cleared || self.overlay.cleared.contains(self.project);
        let mut count = if base_cleared {
            0
        } else {
            self.mem.live_count(self.project, self.now) as i64
        };
        let mut seen: HashSet<&str> = HashSet::default();
        let above = self.local.keys().map(|k| &**k).chain(
            self.overlay
                .keys
                .get(self.project)
                .into_iter()
                .flat_map(|keys| keys.keys().map(|k| &**k)),
        );
        for key in above {
            if !seen.insert(key) {
                continue;
            }
            let live_now = matches!(self.view(key), View::Live { .. });
            let live_below = !base_cleared
                && matches!(
                    view_of_meta(self.mem.meta(self.project, key), self.now),
                    View::Live { .. }
                );
            count += i64::from(live_now) - i64::from(live_below);
        }
        count.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        EngineError, Op, RequestId, Txn, memory::MemoryStore, project::ProjectName,
        types::OpOutcome,
    };

    fn with_id(op: Op, id: &str, fingerprint: u64) -> Txn {
        Txn {
            request: Some(RequestId {
                id: id.into(),
                fingerprint,
            }),
            ..Txn::op(op)
        }
    }

    #[test]
    fn deletes_and_clears_where_nothing_exists_store_nothing() {
        let store = MemoryStore::new();
        for p in 0..100 {
            let project = ProjectName::parse(&format!("gone{p}")).unwrap();
            let delete = with_id(Op::Delete { key: "k".into() }, "d", 1);
            let outcome = store.write_now(&project, delete).unwrap();
            assert!(matches!(
                outcome.results[..],
                [OpOutcome::Delete { deleted: false, .. }]
            ));
            store
                .write_now(&project, with_id(Op::Clear, "c", 2))
                .unwrap();
            assert!(!store.has_namespace(&project), "{project}");
            // Nothing remembered: the id is free for another request.
            store
                .write_now(&project, with_id(Op::Delete { key: "x".into() }, "d", 3))
                .unwrap();
        }
    }

    #[test]
    fn a_write_that_changes_nothing_in_an_existing_project_is_remembered() {
        let store = MemoryStore::new();
        let project = ProjectName::parse("here").unwrap();
        store
            .write_now(
                &project,
                Txn::op(Op::Set {
                    key: "k".into(),
                    value: vec![0x20, 0x01].into(),
                    ttl: crate::Ttl::Never,
                }),
            )
            .unwrap();
        let delete = with_id(
            Op::Delete {
                key: "absent".into(),
            },
            "d",
            1,
        );
        store.write_now(&project, delete).unwrap();
        let reused = with_id(
            Op::Delete {
                key: "other".into(),
            },
            "d",
            2,
        );
        assert!(matches!(
            store.write_now(&project, reused),
            Err(EngineError::RequestIdReused { .. })
        ));
    }
}
