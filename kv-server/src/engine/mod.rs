//! Storage engines behind the service.
//!
//! The service validates requests and resolves the project, then calls a
//! [`Backend`] with plain Rust values; a backend never sees gRPC types.
//! [`memory::MemoryStore`] is the embedded default.
//!
//! Writes are expressed as a [`Mutation`] carrying the resulting state (the
//! value and its absolute deadline), never as an operation relative to the
//! old state, so a durable log can record exactly what was applied and
//! replaying it is idempotent.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use crate::project::ProjectName;

pub mod catalog;
pub mod log;
pub mod memory;

/// A storage engine holding every project's keys.
///
/// Keys arrive validated (non-empty UTF-8 within the configured size), values
/// as canonical encoded `google.protobuf.Value` bytes (see [`crate::value`]).
///
/// ```
/// use kv_server::engine::{Backend, memory::MemoryStore};
/// use kv_server::project::ProjectName;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let shop = ProjectName::parse("shop").unwrap();
/// store.set(&shop, "k", b"\x08\x00".to_vec().into(), None).await.unwrap();
/// assert!(store.has(&shop, "k").await.unwrap());
/// # });
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The live value of `key`, or `None` when missing or expired.
    fn get(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<Option<Bytes>, EngineError>> + Send;

    /// Stores `value` under `key`, expiring `ttl_ms` milliseconds from now,
    /// or never when `None` (which also drops any earlier TTL).
    fn set(
        &self,
        project: &ProjectName,
        key: &str,
        value: Box<[u8]>,
        ttl_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Whether `key` is present and unexpired.
    fn has(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send;

    /// Removes `key`; true only when a live key was removed.
    fn delete(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send;

    /// Removes every key of `project`; returns how many live keys it removed.
    fn clear(&self, project: &ProjectName)
    -> impl Future<Output = Result<u64, EngineError>> + Send;
}

/// A write, as the resulting state it leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// `key` now holds `value`, expiring at `expires_at` (unix ms), or never
    /// when `None`.
    Set {
        /// The key.
        key: Box<str>,
        /// Canonical encoded `google.protobuf.Value`.
        value: Box<[u8]>,
        /// Absolute deadline in unix milliseconds.
        expires_at: Option<u64>,
    },
    /// `key` no longer exists.
    Delete {
        /// The key.
        key: Box<str>,
    },
    /// The project has no keys.
    Clear,
}

/// What applying a [`Mutation`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// How many live (unexpired) keys the mutation removed: 0 or 1 for a
    /// delete, any number for a clear, always 0 for a set.
    pub removed: u64,
}

/// A failure of the storage engine.
///
/// The service maps each variant to a gRPC status in one exhaustive match,
/// so adding a variant forces a decision about its code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not make a write durable (disk full, I/O error). The
    /// write was not applied.
    #[error("storage unavailable: {context}")]
    Storage {
        /// What the engine was doing.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The write would take its project over a quota. Nothing was written.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    /// A TTL would put the deadline past what the clock can represent.
    #[error("ttl of {ttl_ms} ms overflows the clock")]
    DeadlineOverflow {
        /// The refused TTL.
        ttl_ms: u64,
    },
}

/// Per-project limits on what a project may hold. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most keys the project may hold.
    pub max_keys: Option<u64>,
    /// Most bytes (keys plus encoded values) the project may hold.
    pub max_bytes: Option<u64>,
}

/// A refused write: which quota, its limit, and the usage it met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// The key quota is full.
    #[error(
        "project {project} is at its quota of {limit} keys ({usage} keys in use); delete keys or raise the quota"
    )]
    Keys {
        /// The project.
        project: ProjectName,
        /// The key quota.
        limit: u64,
        /// Keys in use.
        usage: u64,
    },
    /// The byte quota would be exceeded.
    #[error(
        "project {project} would hold {after} bytes, over its quota of {limit} bytes ({usage} bytes in use)"
    )]
    Bytes {
        /// The project.
        project: ProjectName,
        /// The byte quota.
        limit: u64,
        /// Bytes in use.
        usage: u64,
        /// Bytes the project would hold after the write.
        after: u64,
    },
}

/// Wall-clock time in unix milliseconds.
///
/// Deadlines are absolute unix milliseconds (they must survive a restart,
/// which `Instant` does not). Tests inject a [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's real-time clock.
///
/// ```
/// use kv_server::engine::{Clock, SystemClock};
/// assert!(SystemClock.now_ms() > 1_600_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken host; treat it as the epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to, for tests of TTL behaviour.
///
/// ```
/// use kv_server::engine::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(500);
/// assert_eq!(clock.now_ms(), 1_500);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}
