//! The ordered key index of each namespace, and its build after a
//! recovery (see the parent module).

use std::{
    collections::BTreeSet,
    sync::{Arc, Condvar, Mutex},
};

use super::locks::lock;

/// A namespace's ordered keys, or what will make them.
pub(super) enum OrderIndex {
    Ready(BTreeSet<Arc<str>>),
    Building(Pending),
}

impl OrderIndex {
    /// Records a change of the key set. `loading`: the store is still
    /// recovering, so nothing but the builder will read the change.
    pub(super) fn change(&mut self, change: OrderChange, loading: bool) {
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

/// Key-set changes waiting for an index being built.
#[derive(Default)]
pub(super) struct Pending {
    /// Keys added during the load, unordered, a key again each time it
    /// was added anew.
    pub(super) loaded: Vec<Arc<str>>,
    /// Keys removed during the load: those of `loaded` the map must be
    /// asked about (a key never removed is still there).
    pub(super) removed: Vec<Arc<str>>,
    /// Changes since the load ended, in the order they were applied, to be
    /// replayed onto the built tree.
    pub(super) changes: Vec<OrderChange>,
}

pub(super) enum OrderChange {
    Insert(Arc<str>),
    Remove(Arc<str>),
    Clear,
}

/// Whether a namespace's ordered index is ready, for Lists to wait on:
/// blocking callers on the condition variable, async ones on the watch.
pub(super) struct Built {
    pub(super) done: Mutex<bool>,
    pub(super) cond: Condvar,
    pub(super) watch: tokio::sync::watch::Sender<bool>,
}

impl Built {
    pub(super) fn new(done: bool) -> Self {
        Self {
            done: Mutex::new(done),
            cond: Condvar::new(),
            watch: tokio::sync::watch::Sender::new(done),
        }
    }

    pub(super) fn set(&self) {
        *lock(&self.done) = true;
        self.cond.notify_all();
        self.watch.send_replace(true);
    }

    pub(super) fn is_set(&self) -> bool {
        *self.watch.borrow()
    }

    pub(super) fn wait(&self) {
        let mut done = lock(&self.done);
        while !*done {
            done = self
                .cond
                .wait(done)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub(super) async fn wait_async(&self) {
        // The sender lives as long as the namespace, which the caller holds.
        let _ = self.watch.subscribe().wait_for(|done| *done).await;
    }
}
