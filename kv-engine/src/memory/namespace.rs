//! One project's state: its map of entries and everything kept beside it.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64},
    },
};

use super::{
    entries::Entries,
    order::{Built, OrderIndex, Pending, Phase},
    requests::RequestTable,
};
use crate::{
    Deadline,
    watch::{Hub, HubOwner},
};

/// One project's keys.
///
/// What a project that is only written and read uses sits inline (its
/// entries, counters, consistency lock and change history); what few
/// projects ever use waits in [`Cold`], made on first use, so an idle
/// project costs its entries and a few cache lines.
pub(super) struct Namespace {
    pub(super) entries: Entries,
    /// Entries held (expired-but-unreclaimed included).
    pub(super) keys: AtomicU64,
    /// Bytes of their keys and values.
    pub(super) bytes: AtomicU64,
    /// The newest version applied.
    pub(super) version: AtomicU64,
    /// The version this incarnation's numbering starts after (0 for the
    /// first project of a name). Fixed for the namespace's life: a deleted
    /// project's name gets a new namespace, never this one again.
    pub(super) incarnation: u64,
    /// Held for writing while a transaction applies. Inline, not in
    /// [`Cold`]: every write takes it, so a box for it would be made by
    /// every project's first write; it is 12 bytes.
    pub(super) consistency: RwLock<()>,
    /// Set when the project is deleted: walks that collected this
    /// namespace before (snapshots) skip it. Inline: it fills the
    /// consistency lock's padding, and walks read it for every namespace.
    pub(super) deleted: AtomicBool,
    /// The project's change history (watchers hold the namespace for it).
    pub(super) hub: Hub,
    cold: OnceLock<Box<Cold>>,
}

/// The parts of a namespace most projects never use, made together on
/// the first use of any.
pub(super) struct Cold {
    /// The keys in byte order, for listing: only a namespace whose entries
    /// moved to a sharded map, or one made by a recovery, has one.
    pub(super) order: RwLock<OrderIndex>,
    /// Set once `order` is ready; Lists wait for it.
    pub(super) built: Built,
    /// Made by the first request id remembered.
    pub(super) requests: Mutex<Option<Box<RequestTable>>>,
}

impl Cold {
    fn new(phase: Phase) -> Self {
        let order = match phase {
            Phase::Live => OrderIndex::Ready(BTreeSet::new()),
            // Made by a snapshot's load: its entries come in key order.
            Phase::State => OrderIndex::Building(Box::new(Pending {
                changes: Vec::new(),
                seed: Some(Vec::new()),
            })),
            Phase::Log => OrderIndex::Building(Box::default()),
        };
        Self {
            order: RwLock::new(order),
            built: Built::new(phase == Phase::Live),
            requests: Mutex::default(),
        }
    }
}

impl Namespace {
    /// A namespace created during a recovery (`phase` other than live)
    /// gathers its keys for an `OrderBuild` (its cold part is made at once,
    /// index building); any other has an empty, ready index, made when
    /// first asked for.
    pub(super) fn new(phase: Phase, incarnation: u64) -> Self {
        let cold = OnceLock::new();
        if phase != Phase::Live {
            let _ = cold.set(Box::new(Cold::new(phase)));
        }
        Self {
            entries: Entries::new(),
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            version: AtomicU64::new(incarnation),
            incarnation,
            consistency: RwLock::new(()),
            deleted: AtomicBool::new(false),
            hub: Hub::new(incarnation),
            cold,
        }
    }

    /// The cold part, made now if it was not. Only namespaces made by a
    /// recovery are made with one, so one made here has a ready index.
    pub(super) fn cold(&self) -> &Cold {
        self.cold.get_or_init(|| Box::new(Cold::new(Phase::Live)))
    }

    /// The cold part if it was made.
    pub(super) fn cold_if_made(&self) -> Option<&Cold> {
        self.cold.get().map(|cold| &**cold)
    }

    /// Whether the ordered index is ready (always, without a cold part).
    pub(super) fn order_built(&self) -> bool {
        self.cold_if_made().is_none_or(|cold| cold.built.is_set())
    }
}

impl HubOwner for Namespace {
    fn hub(&self) -> &Hub {
        &self.hub
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
