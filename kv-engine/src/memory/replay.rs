//! Applying a recovery's records on several threads ([`Replayer`]).
//!
//! Replay was one thread applying record after record while another read
//! and decoded them, and the applying thread was the bottleneck: a map
//! insert with its cache misses, table growth and first-touch page faults
//! per key. Keys are independent of each other, so the changes of a key
//! go to the worker its hash picks, and each worker applies its keys in
//! log order. What is not a single key's business stays on the calling
//! thread, in log order: version numbering, the change history (events are
//! published in version order as the records come), remembered request
//! ids. A record that touches more than keys (a clear, a catalog change, a
//! new incarnation) first waits until the workers have applied everything
//! before it ([`Replayer::flush`]), then applies as before.
//!
//! Workers keep their effects on shared counters and ordered indexes to
//! themselves until a flush, so the threads do not fight over one cache
//! line or lock per key: usage totals are summed and index changes queued
//! per namespace, then handed over at the flush.

use std::{
    sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel},
    thread::Scope,
};

use super::*;

/// Key changes handed to a worker at once.
const RUN: usize = 1024;

/// Runs queued per worker before the caller waits for it.
const QUEUED_RUNS: usize = 8;

/// The most workers a replay uses.
const MAX_WORKERS: usize = 4;

/// Workers for a replay on this machine: one per core (up to
/// [`MAX_WORKERS`]), none on a single core, where the calling thread
/// applies everything itself.
pub(crate) fn replay_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 { 0 } else { cores.min(MAX_WORKERS) }
}

/// One key's change, for the worker that owns the key.
struct KeyChange {
    key: Arc<str>,
    version: u64,
    /// The new value and deadline, or `None` for a removal.
    set: Option<(Box<[u8]>, Option<Deadline>)>,
}

enum Job {
    /// Changes of one namespace's keys, in log order.
    Run {
        project: ProjectName,
        ns: Arc<Namespace>,
        changes: Vec<KeyChange>,
    },
    /// Hand over what is kept back, then answer.
    Flush(SyncSender<()>),
}

/// Applies replayed records, the key changes of most of them on worker
/// threads (see the module).
pub(crate) struct Replayer<'env> {
    mem: &'env MemoryStore,
    workers: Vec<SyncSender<Job>>,
    /// Per worker, the changes not yet sent, all of `current`'s.
    open: Vec<Vec<KeyChange>>,
    current: Option<(ProjectName, Arc<Namespace>)>,
    /// Something was sent since the last flush.
    dirty: bool,
    hasher: MapHasher,
    horizon: Horizon,
    /// The last project looked up in the horizons, with its version.
    through: Option<(ProjectName, u64)>,
    /// Changes applied without being published (see [`Horizon`]).
    skipped: u64,
}

/// Which of the log's changes are published into the histories: all, or
/// (once the log's scan says so, `wal::scan`) only those a project's ring
/// can still hold at the end of the replay.
enum Horizon {
    All,
    /// The scan is under way; the rings held this many bytes when the log
    /// began.
    Waiting(Receiver<Option<Arc<Horizons>>>, usize),
    Known(Arc<Horizons>),
}

impl<'env> Replayer<'env> {
    /// Starts `workers` threads in `scope` applying to `mem` (none: every
    /// record is applied on the calling thread).
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, 'env>,
        mem: &'env MemoryStore,
        workers: usize,
    ) -> Self {
        let senders = (0..workers)
            .map(|i| {
                let (tx, rx) = sync_channel(QUEUED_RUNS);
                std::thread::Builder::new()
                    .name(format!("kv-replay-{i}"))
                    .spawn_scoped(scope, move || work(mem, rx))
                    .map(|_| tx)
            })
            .collect::<Result<Vec<_>, _>>()
            // Without threads (the system refused one) the calling thread
            // applies everything, as on a single core.
            .unwrap_or_default();
        Self {
            mem,
            open: senders.iter().map(|_| Vec::new()).collect(),
            workers: senders,
            current: None,
            dirty: false,
            hasher: MapHasher::default(),
            horizon: Horizon::All,
            through: None,
            skipped: 0,
        }
    }

    /// The snapshot is loaded: what follows are the log's changes, whose
    /// scan sends `horizons` (when it is done: until then, and if it finds
    /// none or they do not fit, every change is published). With `wait`
    /// (a short log, whose scan takes a moment) the scan's answer is
    /// awaited here.
    pub(crate) fn begin_log(&mut self, horizons: Receiver<Option<Arc<Horizons>>>, wait: bool) {
        let restored = self.mem.history.used.load(Ordering::Relaxed);
        self.horizon = match wait {
            false => Horizon::Waiting(horizons, restored),
            true => match horizons.recv() {
                Ok(Some(horizons)) if horizons.fits(restored, &self.mem.settings) => {
                    Horizon::Known(horizons)
                }
                _ => Horizon::All,
            },
        };
    }

    /// Changes applied without being published, their rings being sure to
    /// drop them.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The newest version of `project` not to publish (0: all).
    fn through(&mut self, project: &ProjectName) -> u64 {
        if let Horizon::Waiting(scan, restored) = &self.horizon {
            self.horizon = match scan.try_recv() {
                Err(TryRecvError::Empty) => return 0,
                Ok(Some(horizons)) if horizons.fits(*restored, &self.mem.settings) => {
                    Horizon::Known(horizons)
                }
                Ok(_) | Err(TryRecvError::Disconnected) => Horizon::All,
            };
        }
        let Horizon::Known(horizons) = &self.horizon else {
            return 0;
        };
        match &self.through {
            Some((cached, through)) if cached == project => *through,
            _ => {
                let through = horizons.through(project);
                self.through = Some((project.clone(), through));
                through
            }
        }
    }

    /// Applies one committed transaction's record, as
    /// [`MemoryStore::apply_commit`] does.
    pub(crate) fn apply_commit(
        &mut self,
        project: &ProjectName,
        mutations: Vec<Versioned>,
        request: Option<(Arc<str>, Remembered)>,
    ) {
        let through = self.through(project);
        self.skipped += mutations
            .iter()
            .filter(|m| (1..=through).contains(&m.version))
            .count() as u64;
        if self.workers.is_empty()
            || mutations
                .iter()
                .any(|m| matches!(m.mutation, Mutation::Clear))
        {
            self.flush();
            self.mem
                .apply_commit_through(project, mutations, request, through);
            return;
        }
        // A namespace's changes go to the workers only once its entries
        // are a sharded map: moving a list into a map indexes every key
        // it holds, which must happen in log order with the list's other
        // changes, so lists are changed on this thread alone. A list is
        // never with a worker, so nothing need be waited for; a map never
        // becomes a list again.
        if !self
            .mem
            .namespace(project)
            .is_some_and(|ns| ns.entries.is_big())
        {
            self.mem
                .apply_commit_through(project, mutations, request, through);
            return;
        }
        if !mutations.is_empty() {
            let ns = self.namespace(project);
            let (mem, settings) = (self.mem, &self.mem.settings);
            for Versioned { version, mutation } in mutations {
                let version = match version {
                    0 => ns.version.load(Ordering::Acquire) + 1,
                    v => v,
                };
                let publish = version > through;
                let (key, set, kind) = match mutation {
                    Mutation::Set {
                        key,
                        value,
                        expires_at,
                    } => {
                        // Copied before the value leaves for its worker,
                        // and only when the history records changes and
                        // keeps this one.
                        if publish && mem.history.recording() {
                            let copy = Some(Bytes::copy_from_slice(&value));
                            ns.hub.publish(version, settings, &mem.history, || Event {
                                version,
                                kind: EventKind::Set,
                                key: Arc::clone(&key),
                                value: copy,
                                expires_at,
                            });
                        }
                        (key, Some((value, expires_at)), None)
                    }
                    Mutation::Delete { key } => (key, None, Some(EventKind::Deleted)),
                    Mutation::Expire { key } => (key, None, Some(EventKind::Expired)),
                    Mutation::Clear => unreachable!("a clear is applied above"),
                };
                if let Some(kind) = kind
                    && publish
                {
                    ns.hub.publish(version, settings, &mem.history, || Event {
                        version,
                        kind,
                        key: Arc::clone(&key),
                        value: None,
                        expires_at: None,
                    });
                }
                ns.version.fetch_max(version, Ordering::AcqRel);
                let worker = (self.hasher.hash_one(&*key) % self.workers.len() as u64) as usize;
                self.open[worker].push(KeyChange { key, version, set });
                if self.open[worker].len() == RUN {
                    self.send(worker);
                }
            }
        }
        if let Some((id, remembered)) = request {
            self.mem.remember(project, id, remembered);
        }
    }

    /// Waits until the workers have applied everything sent to them and
    /// handed over what they kept back: the store is then exactly as if
    /// every record so far had been applied on this thread.
    pub(crate) fn flush(&mut self) {
        if !self.dirty && self.open.iter().all(Vec::is_empty) {
            return;
        }
        for worker in 0..self.workers.len() {
            self.send(worker);
        }
        let (done, answers) = sync_channel(self.workers.len());
        let asked = self
            .workers
            .iter()
            .filter(|w| w.send(Job::Flush(done.clone())).is_ok())
            .count();
        drop(done);
        for _ in 0..asked {
            // A worker that died (it panicked) drops its sender: the wait
            // ends rather than hangs.
            if answers.recv().is_err() {
                break;
            }
        }
        self.dirty = false;
        // A record after the flush may replace a namespace.
        self.current = None;
    }

    /// The namespace `project`'s changes go to; a change of project first
    /// sends what is open for the previous one.
    fn namespace(&mut self, project: &ProjectName) -> Arc<Namespace> {
        if let Some((current, ns)) = &self.current
            && current == project
        {
            return Arc::clone(ns);
        }
        for worker in 0..self.workers.len() {
            self.send(worker);
        }
        let ns = self.mem.namespace_or_create(project);
        self.current = Some((project.clone(), Arc::clone(&ns)));
        ns
    }

    fn send(&mut self, worker: usize) {
        if self.open[worker].is_empty() {
            return;
        }
        let Some((project, ns)) = &self.current else {
            return;
        };
        let changes = std::mem::replace(&mut self.open[worker], Vec::with_capacity(RUN));
        let job = Job::Run {
            project: project.clone(),
            ns: Arc::clone(ns),
            changes,
        };
        // A worker that died (it panicked) has lost its keys' changes
        // anyway; the panic surfaces when the scope joins it.
        let _ = self.workers[worker].send(job);
        self.dirty = true;
    }
}

impl Drop for Replayer<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What a worker keeps back for one namespace until a flush.
struct Held {
    ns: Arc<Namespace>,
    /// Usage deltas (two's complement, wrapping).
    bytes: u64,
    keys: u64,
    order: Vec<OrderChange>,
    /// Whether key-set changes are recorded: always outside a recovery
    /// and while a snapshot's state loads (its sets seed the index in key
    /// order); during the log's replay only over a seed, since otherwise
    /// the index is built from the map after the load.
    indexing: bool,
}

/// A worker: applies the runs it receives, in order, until the replayer
/// is gone.
fn work(mem: &MemoryStore, jobs: Receiver<Job>) {
    let mut held: Vec<Held> = Vec::new();
    for job in jobs {
        match job {
            Job::Run {
                project,
                ns,
                changes,
            } => {
                let at = match held.iter().rposition(|h| Arc::ptr_eq(&h.ns, &ns)) {
                    Some(at) => at,
                    None => {
                        let indexing = match mem.phase() {
                            Phase::Live | Phase::State => true,
                            Phase::Log => ns.cold_if_made().is_some_and(|cold| {
                                matches!(&*read_lock(&cold.order),
                                    OrderIndex::Building(p) if p.seed.is_some())
                            }),
                        };
                        held.push(Held {
                            ns,
                            bytes: 0,
                            keys: 0,
                            order: Vec::new(),
                            indexing,
                        });
                        held.len() - 1
                    }
                };
                let held = &mut held[at];
                for change in changes {
                    apply_key(mem, &project, held, change);
                }
            }
            Job::Flush(done) => {
                hand_over(mem, &mut held);
                let _ = done.send(());
            }
        }
    }
    hand_over(mem, &mut held);
}

/// One key's change, as [`MemoryStore::apply_set`] and
/// [`MemoryStore::apply_delete`] make it, with the usage and index
/// changes kept in `held`. Only this worker touches the key.
fn apply_key(mem: &MemoryStore, project: &ProjectName, held: &mut Held, change: KeyChange) {
    let KeyChange { key, version, set } = change;
    let ns = &*held.ns;
    match set {
        Some((value, expires_at)) => {
            let added = (key.len() + value.len()) as u64;
            let block = Block::new(&key, value, expires_at, version);
            let mut gone = 0;
            // Only a map's namespace reaches a worker: new or replacing,
            // the block goes into the index, or its seed (see `Held`).
            let indexed = held.indexing.then(|| block.clone());
            let replaced = ns.entries.upsert(
                block,
                |old, _| {
                    gone = old.size() as u64;
                    mem.move_deadline(project, &key, old.expires_at(), expires_at);
                },
                |_| mem.move_deadline(project, &key, None, expires_at),
                |_| {},
            );
            held.order.extend(indexed.map(OrderChange::Put));
            held.bytes = held.bytes.wrapping_sub(gone);
            if !replaced {
                held.keys = held.keys.wrapping_add(1);
            }
            held.bytes = held.bytes.wrapping_add(added);
        }
        None => {
            let mut removed = None;
            ns.entries.remove_if(&key, |block| {
                removed = Some(block.clone());
                true
            });
            if let Some(block) = removed {
                mem.expiry.forget(project, &key, block.expires_at());
                held.bytes = held.bytes.wrapping_sub(block.size() as u64);
                held.keys = held.keys.wrapping_sub(1);
                if held.indexing {
                    held.order.push(OrderChange::Remove(block));
                }
            }
        }
    }
}

/// Adds what the worker kept back to the shared counters and indexes.
fn hand_over(mem: &MemoryStore, held: &mut Vec<Held>) {
    for held in held.drain(..) {
        let ns = &*held.ns;
        mem.data_bytes.fetch_add(held.bytes, Ordering::Relaxed);
        ns.bytes.fetch_add(held.bytes, Ordering::Relaxed);
        ns.keys.fetch_add(held.keys, Ordering::Relaxed);
        if !held.order.is_empty() {
            let phase = mem.phase();
            let mut order = write_lock(&ns.cold().order);
            for change in held.order {
                order.change(change, phase);
            }
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
