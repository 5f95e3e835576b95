//! One project's state: its map of entries and everything kept beside it.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64},
    },
};

use super::{
    entries::Entries,
    order::{Built, OrderIndex},
    requests::RequestTable,
};
use crate::{Deadline, watch::Hub};

/// One project's keys.
pub(super) struct Namespace {
    pub(super) entries: Entries,
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
    /// Made by the first request id remembered: most projects never send
    /// one, and an empty table is still a hundred bytes.
    pub(super) requests: Mutex<Option<Box<RequestTable>>>,
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
            OrderIndex::Building(Box::default())
        } else {
            OrderIndex::Ready(BTreeSet::new())
        };
        Self {
            entries: Entries::new(),
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
