//! One project's state: its map of entries and everything kept beside it.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64},
    },
};

use dashmap::DashMap;

use super::{
    hash::MapHasher,
    order::{Built, OrderIndex, Pending},
    requests::RequestTable,
};
use crate::{Deadline, watch::Hub};

/// One project's keys.
pub(super) struct Namespace {
    pub(super) entries: DashMap<Arc<str>, StoredEntry, MapHasher>,
    /// The same keys in byte order, for listing.
    pub(super) order: RwLock<OrderIndex>,
    /// Set once `order` is ready; Lists wait for it.
    pub(super) built: Built,
    /// Entries held (expired-but-unreclaimed included).
    pub(super) keys: AtomicU64,
    /// Bytes of their keys and values.
    pub(super) bytes: AtomicU64,
    /// The newest version applied.
    pub(super) version: AtomicU64,
    /// Held for writing while a multi-key transaction applies.
    pub(super) consistency: RwLock<()>,
    pub(super) requests: Mutex<RequestTable>,
    pub(super) hub: Arc<Hub>,
    /// The version this incarnation's numbering starts after (0 for the
    /// first project of a name). Fixed for the namespace's life: a deleted
    /// project's name gets a new namespace, never this one again.
    pub(super) incarnation: u64,
    /// Set when the project is deleted: walks that collected this
    /// namespace before (snapshots) skip it.
    pub(super) deleted: AtomicBool,
}

impl Namespace {
    /// A namespace created during a recovery gathers its keys for an
    /// `OrderBuild`; any other starts with an empty, ready index.
    pub(super) fn new(loading: bool, incarnation: u64) -> Self {
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

pub(super) struct StoredEntry {
    pub(super) value: Box<[u8]>,
    pub(super) expires_at: Option<Deadline>,
    pub(super) version: u64,
}

impl StoredEntry {
    pub(super) fn is_live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|d| !d.passed(now))
    }
}

/// An entry as the transaction evaluator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its deadline, if any.
    pub expires_at: Option<Deadline>,
    /// The version that wrote it.
    pub version: u64,
    /// Key plus value bytes.
    pub size: u64,
}
