//! The queue into the log writer: bounded by count and by bytes, and
//! drained fairly across projects.
//!
//! Each project has its own lane (first in, first out: a project's writes
//! are logged exactly in the order they were submitted). The writer fills
//! each group commit by serving the lanes round-robin with a deficit
//! counted in bytes ([`QUANTUM`] per turn, a write that overdraws it goes
//! and the debt is paid in later turns), so a project submitting large
//! batches back to back delays another project's single write by at most
//! about one of its batches.
//!
//! Admission: the queue holds at most `max_writes` writes and
//! `max_bytes` bytes, and one project at most half of each, so a project
//! that keeps the queue full still leaves room for everyone else. A write
//! larger than the byte bound is admitted only when the queue (or, for the
//! share, its project's lane) is empty, so it never waits forever.
//!
//! The server's own changes (expiries, admin changes) are not bounded:
//! they are few and must not be lost to a busy queue. Those of a project
//! wait in its lane like its writes, so they keep their place in its order
//! (a project deletion removes exactly what was written before it); the
//! rest (token revocations) go in a lane of their own, served first.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use tokio::sync::oneshot;

use crate::{EngineError, QueueFull, project::ProjectName};

/// Bytes of credit a lane gets per round-robin turn: a turn takes writes
/// until this is spent, or one write, however large.
pub(super) const QUANTUM: i64 = 64 << 10;

/// How full the queue may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    /// Most writes queued.
    pub(super) max_writes: usize,
    /// Most bytes of writes queued.
    pub(super) max_bytes: usize,
}

impl Limits {
    /// Most writes one project may have queued.
    fn share_writes(self) -> usize {
        (self.max_writes / 2).max(1)
    }

    /// Most bytes one project may have queued.
    fn share_bytes(self) -> usize {
        self.max_bytes / 2
    }
}

/// Writes queued and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Client writes waiting for the log writer.
    pub writes: usize,
    /// Their bytes (keys, values and patches, plus a fixed overhead each).
    pub bytes: usize,
}

/// A queued item: its bytes, and whether it counts against the bounds.
struct Item<T> {
    item: T,
    bytes: usize,
    bounded: bool,
}

struct Lane<T> {
    items: VecDeque<Item<T>>,
    /// Bounded writes in `items`, and their bytes.
    writes: usize,
    bytes: usize,
    /// Credit left of this lane's turns; negative after a write larger
    /// than the credit went.
    deficit: i64,
}

struct State<T> {
    /// The server's own changes, served first.
    system: VecDeque<T>,
    lanes: HashMap<ProjectName, Lane<T>>,
    /// Projects with queued writes, in the order they are served.
    ring: VecDeque<ProjectName>,
    queued: QueueStats,
    /// Set once the store closes (or is dropped): nothing more is queued,
    /// and the writer stops once it has taken everything.
    closing: bool,
    /// Who asked to be told when the writer has stopped.
    shutdown: Vec<oneshot::Sender<io::Result<()>>>,
    /// The writer is gone: nobody will answer anything queued.
    finished: bool,
    /// Why writes are refused for now (the log could not be synced).
    stopped: Option<Arc<str>>,
    /// Tests hold the writer back to fill the queue deterministically.
    #[cfg(test)]
    paused: bool,
}

impl<T> State<T> {
    fn enqueue(&mut self, project: &ProjectName, item: Item<T>) {
        let lane = self.lanes.entry(project.clone()).or_insert_with(|| {
            self.ring.push_back(project.clone());
            Lane {
                items: VecDeque::new(),
                writes: 0,
                bytes: 0,
                deficit: 0,
            }
        });
        if item.bounded {
            lane.writes += 1;
            lane.bytes += item.bytes;
        }
        lane.items.push_back(item);
    }

    fn has_work(&self) -> bool {
        #[cfg(test)]
        if self.paused {
            return false;
        }
        !self.system.is_empty() || !self.ring.is_empty()
    }
}

/// What the writer takes from the queue.
pub(super) enum Take<T> {
    /// The next group commit, in the order to evaluate it.
    Batch(Vec<T>),
    /// Nothing came before the deadline.
    Idle,
    /// The store is closing and everything queued has been taken: finish,
    /// then answer these.
    Stop(Vec<oneshot::Sender<io::Result<()>>>),
}

/// The queue; the store pushes, the one writer thread takes.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Signalled when something is queued or the store closes.
    ready: Condvar,
    limits: Limits,
}

impl<T> Queue<T> {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State {
                system: VecDeque::new(),
                lanes: HashMap::new(),
                ring: VecDeque::new(),
                queued: QueueStats::default(),
                closing: false,
                shutdown: Vec::new(),
                finished: false,
                stopped: None,
                #[cfg(test)]
                paused: false,
            }),
            ready: Condvar::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The state stays consistent at every unlock: a panic elsewhere
        // while holding it leaves nothing half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a client write of `project`, `bytes` long, behind that
    /// project's earlier writes.
    ///
    /// # Errors
    ///
    /// [`EngineError::Overloaded`] or [`EngineError::QueueFull`] when a
    /// bound is reached, [`EngineError::WritesStopped`] while the log is
    /// not writable, `closed()` once the store is closing; the item is
    /// dropped.
    pub(super) fn push(
        &self,
        project: &ProjectName,
        bytes: usize,
        item: T,
        closed: fn() -> EngineError,
    ) -> Result<(), EngineError> {
        let mut state = self.lock();
        if state.closing {
            return Err(closed());
        }
        if let Some(reason) = &state.stopped {
            return Err(EngineError::WritesStopped {
                reason: Arc::clone(reason),
            });
        }
        let limits = self.limits;
        let (lane_writes, lane_bytes) = state
            .lanes
            .get(project)
            .map_or((0, 0), |lane| (lane.writes, lane.bytes));
        if lane_writes >= limits.share_writes() {
            return Err(EngineError::QueueFull(QueueFull::ProjectWrites {
                project: project.clone(),
                queued: lane_writes,
                limit: limits.share_writes(),
            }));
        }
        if lane_bytes > 0 && lane_bytes + bytes > limits.share_bytes() {
            return Err(EngineError::QueueFull(QueueFull::ProjectBytes {
                project: project.clone(),
                queued: lane_bytes,
                limit: limits.share_bytes(),
            }));
        }
        if state.queued.writes >= limits.max_writes {
            return Err(EngineError::Overloaded {
                capacity: limits.max_writes,
            });
        }
        if state.queued.bytes > 0 && state.queued.bytes + bytes > limits.max_bytes {
            return Err(EngineError::QueueFull(QueueFull::Bytes {
                queued: state.queued.bytes,
                limit: limits.max_bytes,
            }));
        }
        state.queued.writes += 1;
        state.queued.bytes += bytes;
        state.enqueue(
            project,
            Item {
                item,
                bytes,
                bounded: true,
            },
        );
        self.ready.notify_one();
        Ok(())
    }

    /// Queues one of the server's own changes (not bounded): behind the
    /// writes of `project` already queued, or, without a project, ahead of
    /// every project's.
    ///
    /// # Errors
    ///
    /// As [`Queue::push`], except the bounds.
    pub(super) fn push_system(
        &self,
        project: Option<&ProjectName>,
        bytes: usize,
        item: T,
        closed: fn() -> EngineError,
    ) -> Result<(), EngineError> {
        let mut state = self.lock();
        if state.closing {
            return Err(closed());
        }
        if let Some(reason) = &state.stopped {
            return Err(EngineError::WritesStopped {
                reason: Arc::clone(reason),
            });
        }
        match project {
            Some(project) => state.enqueue(
                project,
                Item {
                    item,
                    bytes,
                    bounded: false,
                },
            ),
            None => state.system.push_back(item),
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Asks the writer to stop once it has taken everything queued;
    /// `reply` is answered when it has. Nothing is queued after this.
    pub(super) fn close(&self, reply: Option<oneshot::Sender<io::Result<()>>>) {
        let mut state = self.lock();
        state.closing = true;
        if !state.finished {
            // Once the writer is gone, dropping `reply` answers it.
            state.shutdown.extend(reply);
        }
        self.ready.notify_one();
    }

    /// The writer has stopped (or died): refuse everything from now on and
    /// drop what is still queued, which answers its callers with an error
    /// rather than leaving them waiting.
    pub(super) fn abandon(&self) {
        let mut state = self.lock();
        state.closing = true;
        state.finished = true;
        state.system.clear();
        state.lanes.clear();
        state.ring.clear();
        state.shutdown.clear();
        state.queued = QueueStats::default();
    }

    /// Refuses writes with `reason` from now on (`None`: accepts them
    /// again). Writes already queued are still taken; the writer answers
    /// them.
    pub(super) fn set_stopped(&self, reason: Option<Arc<str>>) {
        self.lock().stopped = reason;
    }

    /// Why writes are refused, if they are.
    pub(super) fn stopped(&self) -> Option<Arc<str>> {
        self.lock().stopped.clone()
    }

    /// Holds the writer back (`true`) until released (`false`).
    #[cfg(test)]
    pub(super) fn pause(&self, paused: bool) {
        self.lock().paused = paused;
        self.ready.notify_one();
    }

    /// What is queued now.
    pub(super) fn stats(&self) -> QueueStats {
        self.lock().queued
    }

    /// Waits (until `deadline`, or for ever) for something to do, then
    /// takes the next group commit: every system change, then project
    /// writes round-robin until about `max_bytes` are taken.
    pub(super) fn take(&self, max_bytes: usize, deadline: Option<Instant>) -> Take<T> {
        let mut state = self.lock();
        loop {
            if state.has_work() {
                break;
            }
            if state.closing && state.system.is_empty() && state.ring.is_empty() {
                state.finished = true;
                return Take::Stop(std::mem::take(&mut state.shutdown));
            }
            state = match deadline {
                None => self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        return Take::Idle;
                    }
                    self.ready
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        let state = &mut *state;
        let mut batch: Vec<T> = state.system.drain(..).collect();
        let mut taken = 0;
        while taken < max_bytes
            && let Some(project) = state.ring.pop_front()
        {
            let Some(lane) = state.lanes.get_mut(&project) else {
                continue;
            };
            lane.deficit = lane.deficit.saturating_add(QUANTUM);
            while lane.deficit > 0 && taken < max_bytes {
                let Some(Item {
                    item,
                    bytes,
                    bounded,
                }) = lane.items.pop_front()
                else {
                    break;
                };
                lane.deficit = lane.deficit.saturating_sub(bytes as i64);
                if bounded {
                    lane.writes -= 1;
                    lane.bytes -= bytes;
                    state.queued.writes -= 1;
                    state.queued.bytes -= bytes;
                }
                taken += bytes;
                batch.push(item);
            }
            if lane.items.is_empty() {
                // An idle project starts afresh: neither credit nor debt
                // carries over to its next burst.
                state.lanes.remove(&project);
            } else {
                state.ring.push_back(project);
            }
        }
        Take::Batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn project(name: &str) -> ProjectName {
        ProjectName::parse(name).unwrap()
    }

    fn closed() -> EngineError {
        EngineError::Internal("closed")
    }

    fn batch<T>(queue: &Queue<T>, max_bytes: usize) -> Vec<T> {
        match queue.take(max_bytes, Some(Instant::now())) {
            Take::Batch(batch) => batch,
            Take::Idle | Take::Stop(_) => Vec::new(),
        }
    }

    /// Project `a` keeps its share of the queue full of 1 MiB batches,
    /// refilled before every group commit; project `b` submits one small
    /// write before each. Every write of `b` goes in the very next group
    /// commit, behind at most one batch of `a`; without fairness it would
    /// wait behind all of `a`'s queue.
    #[test]
    fn a_project_full_of_large_batches_delays_single_writes_by_one_batch() {
        let limits = Limits {
            max_writes: 1000,
            max_bytes: 16 * MIB,
        };
        let queue = Queue::new(limits);
        let (a, b) = (project("a"), project("b"));
        let mut next_a = 0;
        let mut logged_a = Vec::new();
        for round in 0..50 {
            // Keep a's share full: it is refused only at its share.
            loop {
                match queue.push(&a, MIB, ('a', next_a), closed) {
                    Ok(()) => next_a += 1,
                    Err(EngineError::QueueFull(QueueFull::ProjectBytes { limit, .. })) => {
                        assert_eq!(limit, 8 * MIB);
                        break;
                    }
                    Err(e) => panic!("a refused for another reason: {e}"),
                }
            }
            // b is admitted although a keeps its share full.
            queue.push(&b, 100, ('b', round), closed).unwrap();
            let group = batch(&queue, 8 * MIB);
            let at = group
                .iter()
                .position(|&(p, n)| p == 'b' && n == round)
                .unwrap_or_else(|| panic!("round {round}: b's write is not in the next group"));
            let before = group[..at].iter().filter(|(p, _)| *p == 'a').count();
            assert!(
                before <= 1,
                "round {round}: b waited behind {before} of a's batches"
            );
            logged_a.extend(group.iter().filter(|(p, _)| *p == 'a').map(|&(_, n)| n));
        }
        // a's writes went in submit order, none lost or repeated.
        assert!(
            logged_a.windows(2).all(|w| w[1] == w[0] + 1),
            "{logged_a:?}"
        );
        assert!(logged_a.len() >= 50, "a made progress: {}", logged_a.len());
    }

    #[test]
    fn round_robin_by_bytes_keeps_each_projects_order() {
        let queue = Queue::new(Limits {
            max_writes: 1000,
            max_bytes: 64 * MIB,
        });
        let (a, b, c) = (project("a"), project("b"), project("c"));
        for i in 0..10 {
            queue.push(&a, 256 << 10, ('a', i), closed).unwrap();
        }
        for i in 0..3 {
            queue.push(&b, 10, ('b', i), closed).unwrap();
        }
        queue.push(&c, 10, ('c', 0), closed).unwrap();
        let group = batch(&queue, usize::MAX);
        assert_eq!(group.len(), 14);
        // One turn each: a's first batch, all of b (small), c; then a's rest.
        let order: Vec<_> = group.iter().take(5).copied().collect();
        assert_eq!(
            order,
            [('a', 0), ('b', 0), ('b', 1), ('b', 2), ('c', 0)],
            "{group:?}"
        );
        let a_order: Vec<_> = group
            .iter()
            .filter(|(p, _)| *p == 'a')
            .map(|x| x.1)
            .collect();
        assert_eq!(a_order, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_bounds_refuse_with_the_limit_named() {
        let queue = Queue::new(Limits {
            max_writes: 4,
            max_bytes: 10 * MIB,
        });
        let (a, b, c) = (project("a"), project("b"), project("c"));
        queue.push(&a, 10, 0, closed).unwrap();
        queue.push(&a, 10, 1, closed).unwrap();
        let e = queue.push(&a, 10, 2, closed).unwrap_err();
        assert!(
            e.to_string()
                .contains("project a already has 2 writes waiting")
                && e.to_string().contains("at most 2"),
            "{e}"
        );
        queue.push(&b, 10, 3, closed).unwrap();
        queue.push(&c, 10, 4, closed).unwrap();
        let e = queue.push(&c, 10, 5, closed).unwrap_err();
        assert!(matches!(e, EngineError::Overloaded { capacity: 4 }), "{e}");
        assert_eq!(batch(&queue, usize::MAX).len(), 4);
        assert_eq!(queue.stats(), QueueStats::default());

        // Bytes: one project at most half, everyone at most the bound; a
        // write larger than either still goes into an empty queue.
        queue.push(&a, 4 * MIB, 6, closed).unwrap();
        let e = queue.push(&a, 2 * MIB, 7, closed).unwrap_err();
        assert!(
            e.to_string().contains("its share is at most 5242880 bytes"),
            "{e}"
        );
        queue.push(&b, 5 * MIB, 8, closed).unwrap();
        let e = queue.push(&c, 2 * MIB, 9, closed).unwrap_err();
        assert!(e.to_string().contains("the limit is 10485760 bytes"), "{e}");
        assert_eq!(batch(&queue, usize::MAX), [6, 8]);
        queue.push(&c, 30 * MIB, 10, closed).unwrap();
        assert_eq!(batch(&queue, usize::MAX), [10]);
    }

    #[test]
    fn stopped_refuses_and_closing_drains_first() {
        let queue = Queue::new(Limits {
            max_writes: 10,
            max_bytes: MIB,
        });
        let a = project("a");
        queue.push(&a, 10, 1, closed).unwrap();
        queue.set_stopped(Some("disk gone".into()));
        let e = queue.push(&a, 10, 2, closed).unwrap_err();
        assert!(e.to_string().starts_with("disk gone"), "{e}");
        assert!(queue.push_system(None, 10, 3, closed).is_err());
        queue.set_stopped(None);
        queue.push_system(None, 10, 4, closed).unwrap();
        queue.close(None);
        assert!(matches!(
            queue.push(&a, 10, 5, closed),
            Err(EngineError::Internal(_))
        ));
        // System changes first, then what was queued before the close.
        assert_eq!(batch(&queue, usize::MAX), [4, 1]);
        assert!(matches!(queue.take(usize::MAX, None), Take::Stop(_)));
    }

    /// A project's system changes (an expiry, a deletion) keep their
    /// place among its writes, are admitted whatever the bounds, and are
    /// not counted in them.
    #[test]
    fn system_changes_of_a_project_keep_their_place_in_its_order() {
        let queue = Queue::new(Limits {
            max_writes: 2,
            max_bytes: MIB,
        });
        let (a, b) = (project("a"), project("b"));
        queue.push(&a, 10, "a-write", closed).unwrap();
        queue.push_system(Some(&a), 10, "a-expiry", closed).unwrap();
        queue.push(&b, 10, "b-write", closed).unwrap();
        queue.push_system(Some(&b), 10, "b-delete", closed).unwrap();
        queue.push_system(None, 10, "revoke", closed).unwrap();
        assert_eq!(queue.stats().writes, 2);
        assert_eq!(
            batch(&queue, usize::MAX),
            ["revoke", "a-write", "a-expiry", "b-write", "b-delete"]
        );
        assert_eq!(queue.stats(), QueueStats::default());
    }
}
