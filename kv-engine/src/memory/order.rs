//! The ordered key index of each namespace, and its build after a
//! recovery (see the parent module).

use std::{
    collections::BTreeSet,
    sync::{Condvar, Mutex},
};

use super::{entries::Block, locks::lock};

/// A namespace's ordered keys, or what will make them.
///
/// The index holds the map's own blocks (one pointer each), ordered by
/// key: no second copy of a key. A block replaced in the map is replaced
/// here too, under the key's lock, so the index never keeps an old value
/// alive.
pub(super) enum OrderIndex {
    Ready(BTreeSet<Block>),
    /// Boxed: only namespaces created during a recovery have one, and
    /// inline it would make every namespace three vectors larger.
    Building(Box<Pending>),
}

impl OrderIndex {
    /// Records a change of the key set, made in `phase`.
    pub(super) fn change(&mut self, change: OrderChange, phase: Phase) {
        match (self, phase) {
            (Self::Ready(tree), _) => apply(tree, change),
            (Self::Building(pending), Phase::Live) => pending.changes.push(change),
            (Self::Building(pending), Phase::State) => pending.seed_state(change),
            (Self::Building(pending), Phase::Log) => pending.seed_log(change),
        }
    }
}

/// When a key-set change is made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Outside a recovery.
    Live,
    /// A recovery loading a snapshot's state.
    State,
    /// A recovery replaying the log after the snapshot.
    Log,
}

fn apply(tree: &mut BTreeSet<Block>, change: OrderChange) {
    match change {
        OrderChange::Put(block) => {
            // `replace`, not `insert`: an insert of a present key would
            // keep the old block (and its value).
            tree.replace(block);
        }
        OrderChange::Remove(block) => {
            tree.remove(&block);
        }
        OrderChange::Clear => tree.clear(),
    }
}

/// Key-set changes waiting for an index being built.
#[derive(Default)]
pub(super) struct Pending {
    /// Changes to replay onto the built tree, in the order they were
    /// applied: those since the load ended, and with a `seed`, the log
    /// replay's before them.
    pub(super) changes: Vec<OrderChange>,
    /// The blocks a snapshot's load put into the map, in load order
    /// (`None`: the build walks the map and sorts). A snapshot lists each
    /// project's entries in key order, so collecting them is one linear
    /// pass; an older snapshot's hash order is sorted by the collect.
    pub(super) seed: Option<Vec<Block>>,
}

/// Log changes replayed over a seed beyond this share of it (one in
/// `LOG_CHANGES_PER_SEED`, plus a thousand) give the seed up: replaying
/// each into the tree costs a tree search, and past a point walking and
/// sorting the final map costs less than the seed saves. It also bounds
/// what the seed keeps alive of values the log has replaced.
const LOG_CHANGES_PER_SEED: usize = 2;

impl Pending {
    /// A change while a snapshot's state loads: its sets enter the seed in
    /// file order (a key set twice leaves both blocks in load order, and
    /// the collect keeps the last of equal keys, the map's). A removal
    /// cannot be rebuilt from a seed, so the build walks the map instead.
    fn seed_state(&mut self, change: OrderChange) {
        match (change, &mut self.seed) {
            (OrderChange::Put(block), Some(seed)) => seed.push(block),
            (_, seed) => *seed = None,
        }
    }

    /// A change while the log is replayed during a recovery: kept to be
    /// replayed over the seed, or nothing when the build walks the map
    /// (which then holds it).
    fn seed_log(&mut self, change: OrderChange) {
        let Some(seed) = &self.seed else {
            return;
        };
        if self.changes.len() >= seed.len() / LOG_CHANGES_PER_SEED + 1024 {
            self.seed = None;
            self.changes = Vec::new();
            return;
        }
        self.changes.push(change);
    }
}

pub(super) enum OrderChange {
    /// The block now held under its key: a new key, or a new block for a
    /// key already indexed.
    Put(Block),
    Remove(Block),
    Clear,
}

/// Whether a namespace's ordered index is ready, for Lists to wait on:
/// blocking callers on the condition variable, async ones on the watch.
///
/// Only a namespace created during a recovery ever waits; every other one
/// is ready from the start and allocates nothing for waiting (the condition
/// variable and the watch channel together cost about half a kilobyte,
/// which a million idle projects would pay for nothing).
pub(super) struct Built {
    /// `None`: ready from the start.
    waiting: Option<Box<Waiting>>,
}

struct Waiting {
    done: Mutex<bool>,
    cond: Condvar,
    watch: tokio::sync::watch::Sender<bool>,
}

impl Built {
    pub(super) fn new(done: bool) -> Self {
        Self {
            waiting: (!done).then(|| {
                Box::new(Waiting {
                    done: Mutex::new(false),
                    cond: Condvar::new(),
                    watch: tokio::sync::watch::Sender::new(false),
                })
            }),
        }
    }

    pub(super) fn set(&self) {
        let Some(w) = &self.waiting else {
            return;
        };
        *lock(&w.done) = true;
        w.cond.notify_all();
        w.watch.send_replace(true);
    }

    pub(super) fn is_set(&self) -> bool {
        self.waiting.as_ref().is_none_or(|w| *w.watch.borrow())
    }

    pub(super) fn wait(&self) {
        let Some(w) = &self.waiting else {
            return;
        };
        let mut done = lock(&w.done);
        while !*done {
            done = w
                .cond
                .wait(done)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub(super) async fn wait_async(&self) {
        let Some(w) = &self.waiting else {
            return;
        };
        // The sender lives as long as the namespace, which the caller holds.
        let _ = w.watch.subscribe().wait_for(|done| *done).await;
    }
}
