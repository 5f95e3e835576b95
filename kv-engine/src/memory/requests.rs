//! The outcomes of recent request ids, per project, for retries.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::hash::MapHasher;
use crate::{Settings, TxnOutcome};

/// The outcome of a request id, remembered for retries.
#[derive(Debug, Clone)]
pub struct Remembered {
    /// The request's fingerprint (a reuse of the id for another request
    /// is refused).
    pub fingerprint: u64,
    /// When the request was applied (unix ms).
    pub at: u64,
    /// What it answered.
    pub outcome: Arc<TxnOutcome>,
}

/// A project's remembered request ids, oldest first for eviction.
#[derive(Default)]
pub(super) struct RequestTable {
    pub(super) by_id: HashMap<Arc<str>, Remembered, MapHasher>,
    pub(super) order: VecDeque<(u64, Arc<str>)>,
    /// Entries popped from the front of `order` since the table was
    /// made: a position in `order` plus this stays meaningful across
    /// evictions, so a walk can copy the table in steps, letting go of
    /// its lock between them.
    pub(super) evicted: u64,
}

impl RequestTable {
    pub(super) fn insert(
        &mut self,
        id: Arc<str>,
        remembered: Remembered,
        now: u64,
        settings: &Settings,
    ) {
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
            self.evicted += 1;
            // The id may have been remembered again since (after its
            // window): then it stays. One lookup either way.
            if let Some((id, newer)) = self.by_id.remove_entry(&id)
                && newer.at != at
            {
                self.by_id.insert(id, newer);
            }
        }
    }
}
