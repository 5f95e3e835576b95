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
    /// Records a change of the key set. `loading`: the store is still
    /// recovering; the build reads the map as the load left it, so a
    /// change during the load needs no record.
    pub(super) fn change(&mut self, change: OrderChange, loading: bool) {
        match (self, loading) {
            (Self::Ready(tree), _) => apply(tree, change),
            (Self::Building(_), true) => {}
            (Self::Building(pending), false) => pending.changes.push(change),
        }
    }
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
    /// Changes since the load ended, in the order they were applied, to be
    /// replayed onto the built tree.
    pub(super) changes: Vec<OrderChange>,
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
