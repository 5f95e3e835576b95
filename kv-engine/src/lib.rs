//! `kv-engine`: the storage engine of kv, knowing nothing of gRPC or of
//! the server's configuration (the compiler keeps it so: this crate does
//! not depend on either).
//!
//! The service validates requests and resolves the project, then calls a
//! [`Backend`] with plain Rust values. [`memory::MemoryStore`] holds the
//! state; [`wal::DurableStore`], the embedded default, makes it durable.
//! Project names ([`project`]) and stored JSON values ([`value`]) are
//! defined here, so every backend and the server agree on them.
//!
//! Writes are expressed as a [`Mutation`] carrying the resulting state (the
//! value and its absolute deadline), never as an operation relative to the
//! old state, so a durable log can record exactly what was applied and
//! replaying it is idempotent.
//!
//! # Layout
//!
//! - `lib.rs`: the [`Backend`] trait (the only way in), transactions
//!   ([`Txn`], [`Op`], [`Check`]), outcomes, errors, clocks.
//! - [`memory`]: the state. `memory/mod.rs` namespaces and lookups,
//!   `apply.rs` applying mutations (the one apply path, `apply_commit`),
//!   `read.rs` reads and List pages, `order.rs` the ordered key index,
//!   `requests.rs` remembered request ids, `expiry.rs` the deadline index
//!   and [`memory::ExpiryTask`], `alone.rs` the store used without a log.
//! - `txn.rs`: evaluating a transaction (checks, read-modify-write, quotas,
//!   request ids, versions) into the mutations to log and apply.
//! - [`watch`]: change history and watchers; [`catalog`]: projects,
//!   quotas, tokens; [`jsonops`]: increments and merge patches.
//! - [`wal`]: the write-ahead log. `wal/mod.rs` the [`wal::DurableStore`],
//!   `options.rs` its settings, `dir.rs` file names and segments,
//!   [`wal::codec`] the record format, `writer.rs` the writer thread (group
//!   commit, admin changes, snapshot triggers), `snapshot.rs` snapshots,
//!   `recovery.rs` start-up.
//!
//! # Life of a write
//!
//! A `Set` of key `k` in project `shop`, from the gRPC handler to the log
//! record and back:
//!
//! 1. `kv-server/src/service/mod.rs` (`KvService::set`) admits the call:
//!    credentials and project (`auth.rs`), and the project's incarnation
//!    ([`Backend::incarnation`]).
//! 2. `kv-server/src/service/mutate.rs` (`KvService::start`, with
//!    `service/validate.rs`) validates the request into a [`Txn`] (key,
//!    canonical value, TTL, conditions, request-id fingerprint, the
//!    incarnation) and calls [`Backend::submit`].
//! 3. `wal/mod.rs` (`DurableStore::submit`) queues it for the writer
//!    before returning (bounded by [`MAX_QUEUED_WRITES`]): this is where
//!    the order of writes is fixed.
//! 4. `wal/writer.rs` (`Writer::commit`) takes everything queued, evaluates
//!    each transaction in order with `txn.rs` (`Overlay::evaluate`: checks,
//!    quota, version, request id) and encodes the resulting state with
//!    [`wal::codec`] into one buffer.
//! 5. `wal/writer.rs` (`Writer::append`) writes the buffer with one
//!    `write` and, under [`wal::FsyncPolicy::Always`], one `fdatasync`: the
//!    write is now durable. A failed append refuses every write of the
//!    batch and none is applied.
//! 6. `memory/apply.rs` (`MemoryStore::apply_commit`) applies the mutations
//!    under the namespace's consistency lock, publishes each change to the
//!    project's history ([`watch`]), and remembers the request id.
//! 7. The writer answers the submission; `service/mutate.rs` turns the
//!    [`TxnOutcome`] into a `SetResponse`, and tonic sends it. Watchers of
//!    the project wake and read the change from the history
//!    (`kv-server/src/service/watch.rs`).
//!
//! Reads never go through the writer: `memory/read.rs` reads the map,
//! checking each entry's deadline against the clock.
//!
//! # Life of an expiry
//!
//! 1. A write with a TTL stores the absolute deadline with its entry and in
//!    the deadline index (`memory/expiry.rs`, under the key's map shard).
//! 2. From that deadline on, reads treat the key as absent
//!    (`memory/read.rs` compares deadlines with the clock), whether or not
//!    it has been reclaimed.
//! 3. [`memory::ExpiryTask`] (started by `kv-server/src/server.rs`) wakes
//!    every expiry interval and calls [`Backend::expire_due`]: the durable
//!    store takes the due records out of the index
//!    (`MemoryStore::take_due`) and hands them to the writer like a write.
//! 4. The writer (`Writer::commit`) checks that each entry still carries
//!    that deadline (`Overlay::expire`: a rewrite may have moved it), gives
//!    each expiry the project's next version, logs them, and applies them
//!    with `apply_commit`: the memory is reclaimed and watchers get an
//!    EXPIRED event.
//! 5. At recovery (`wal/recovery.rs`), a logged set whose deadline has
//!    passed replays as an expiry, so nothing expired comes back.

use std::{future::Future, sync::Arc};

use bytes::Bytes;

use crate::project::ProjectName;

pub mod catalog;
mod clock;
mod error;
pub mod jsonops;
pub mod memory;
pub mod project;
mod txn;
pub mod value;
pub mod wal;
pub mod watch;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{EngineError, QuotaExceeded, WatchError};

/// Most client transactions a backend queues ahead of its writer; past
/// it, [`Backend::submit`] refuses with [`EngineError::Overloaded`]. About
/// a second of writes at the log writer's measured peak, so a burst is
/// absorbed and a sustained overload is refused within a second.
pub const MAX_QUEUED_WRITES: usize = 65_536;

/// Largest value limit any configuration may set (1 GiB); gRPC frames carry
/// at most 4 GiB and a single value that size would not be a key-value
/// workload. The log's record bound derives from it.
pub const MAX_VALUE_LIMIT: usize = 1024 * 1024 * 1024;

/// A storage engine holding every project's keys.
///
/// Keys arrive validated (non-empty UTF-8 within the configured size), values
/// as canonical encoded `google.protobuf.Value` bytes (see [`crate::value`]).
/// Every write goes through [`Backend::submit`]: one [`Txn`] of checks and
/// operations, evaluated against the current state and applied all or
/// nothing, one transaction after another (so read-modify-write operations
/// such as increments never lose updates).
///
/// ```
/// use kv_engine::{Backend, memory::MemoryStore};
/// use kv_engine::project::ProjectName;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let shop = ProjectName::parse("shop").unwrap();
/// store.set(&shop, "k", b"\x08\x00".to_vec().into(), None).await.unwrap();
/// assert!(store.has(&shop, "k").await.unwrap());
/// assert_eq!(store.get(&shop, "k").await.unwrap().unwrap().version, 1);
/// # });
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The live entry under `key`, or `None` when missing or expired.
    fn get(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<Option<Entry>, EngineError>> + Send;

    /// The live entries under `keys`, in order, as of one moment (no
    /// transaction is seen half applied).
    fn get_many(
        &self,
        project: &ProjectName,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Entry>>, EngineError>> + Send;

    /// Whether `key` is present and unexpired.
    fn has(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send;

    /// One page of live keys in byte order.
    fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> impl Future<Output = Result<ListPage, EngineError>> + Send;

    /// Submits `txn`, to be evaluated and applied atomically; the future
    /// resolves with its outcome once it is applied (and, for a durable
    /// backend, logged).
    ///
    /// # Ordering
    ///
    /// The transaction is queued before this call returns, not when the
    /// returned future is first polled. So of two `submit` calls made one
    /// after the other on one thread, awaited or not, the first is
    /// evaluated and applied first: a stream that submits its writes in
    /// the order it received them applies them in that order. The future
    /// holds no borrow of the backend.
    ///
    /// # Backpressure
    ///
    /// The queue is bounded ([`MAX_QUEUED_WRITES`]). When it is full the
    /// future resolves at once with [`EngineError::Overloaded`] and nothing
    /// is applied: load shows as refusals to retry, never as memory growth.
    fn submit(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> impl Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static;

    /// Subscribes to the changes of `project` matching `target`, from just
    /// after `from_version` (or from now).
    ///
    /// # Errors
    ///
    /// [`WatchError`] when `from_version` is outside the retained history.
    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> Result<watch::Subscription, WatchError>;

    /// Removes up to `limit` entries whose deadline has passed (each an
    /// expiry event) and returns how many due deadlines it consumed.
    fn expire_due(&self, limit: usize) -> impl Future<Output = usize> + Send;

    /// The current incarnation of `project`: 0 for the first project of a
    /// name; after a deletion, a number above every version the deleted
    /// project used. Reads compare it before and after, writes carry it in
    /// [`Txn::incarnation`], and streams re-check it, so nothing of one
    /// incarnation reaches a caller admitted for another.
    fn incarnation(&self, project: &ProjectName) -> u64;

    /// Stores `value` under `key`, expiring `ttl_ms` milliseconds from now,
    /// or never when `None` (which also drops any earlier TTL).
    fn set(
        &self,
        project: &ProjectName,
        key: &str,
        value: Box<[u8]>,
        ttl_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        let ttl = ttl_ms.map_or(Ttl::Never, Ttl::After);
        let txn = Txn::op(Op::Set {
            key: key.into(),
            value,
            ttl,
        });
        let submitted = self.submit(project, txn);
        async move { submitted.await.map(|_| ()) }
    }

    /// Removes `key`; true only when a live key was removed.
    fn delete(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send {
        let submitted = self.submit(project, Txn::op(Op::Delete { key: key.into() }));
        async move {
            let outcome = submitted.await?;
            Ok(matches!(
                outcome.results.first(),
                Some(OpOutcome::Delete { deleted: true, .. })
            ))
        }
    }

    /// Removes every key of `project`; returns how many live keys it removed.
    fn clear(
        &self,
        project: &ProjectName,
    ) -> impl Future<Output = Result<u64, EngineError>> + Send {
        let submitted = self.submit(project, Txn::op(Op::Clear));
        async move {
            let outcome = submitted.await?;
            Ok(match outcome.results.first() {
                Some(OpOutcome::Clear { removed, .. }) => *removed,
                _ => 0,
            })
        }
    }
}

/// A live entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Canonical encoded `google.protobuf.Value`.
    pub value: Bytes,
    /// The version of the change that last wrote it.
    pub version: u64,
    /// Its deadline in unix ms, if it has a TTL.
    pub expires_at: Option<u64>,
}

/// The deadline a write gives its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No deadline (an earlier one is dropped).
    Never,
    /// Whatever deadline the key has now (none when absent).
    Keep,
    /// This many milliseconds from now.
    After(u64),
}

/// One operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Store a value.
    Set {
        /// The key.
        key: Box<str>,
        /// Canonical encoded value.
        value: Box<[u8]>,
        /// Its deadline.
        ttl: Ttl,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Box<str>,
    },
    /// Add to a JSON number (absent counts as 0).
    Incr {
        /// The key.
        key: Box<str>,
        /// What to add.
        delta: f64,
        /// TTL of a key this creates; an existing key keeps its deadline.
        ttl_ms: Option<u64>,
    },
    /// Apply an RFC 7386 merge patch.
    Merge {
        /// The key.
        key: Box<str>,
        /// Canonical encoded patch.
        patch: Box<[u8]>,
        /// `None` keeps the deadline; `Some` sets a new one.
        ttl_ms: Option<u64>,
    },
    /// Remove every key of the project.
    Clear,
}

/// A condition of a [`Txn`], judged before any of its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key is live at exactly this version.
    Version {
        /// The key.
        key: Box<str>,
        /// The expected version.
        version: u64,
    },
    /// The key is absent or expired.
    Absent {
        /// The key.
        key: Box<str>,
    },
}

/// A client-chosen id that makes a write safe to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// The id as sent.
    pub id: Box<str>,
    /// A digest of the request it came with: the same id with a different
    /// request is refused.
    pub fingerprint: u64,
}

/// Checks plus operations on one project, applied all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    /// All must hold, or nothing is applied.
    pub checks: Vec<Check>,
    /// Applied in order; later ones see earlier ones.
    pub ops: Vec<Op>,
    /// Remember the outcome under this id.
    pub request: Option<RequestId>,
    /// Largest encoded value a merge may produce.
    pub max_value_bytes: usize,
    /// Apply only to this incarnation of the project (the one the caller's
    /// credentials were checked against); `None` applies to whichever is
    /// current. A project deleted (and maybe recreated) since the check
    /// refuses the write with [`EngineError::ProjectGone`], so a write
    /// admitted for a deleted tenant never lands in its successor.
    pub incarnation: Option<u64>,
}

impl Txn {
    /// A transaction of one unconditional operation.
    ///
    /// ```
    /// use kv_engine::{Op, Txn};
    /// let txn = Txn::op(Op::Clear);
    /// assert!(txn.checks.is_empty() && txn.request.is_none());
    /// ```
    pub fn op(op: Op) -> Self {
        Self {
            checks: Vec::new(),
            ops: vec![op],
            request: None,
            max_value_bytes: crate::MAX_VALUE_LIMIT,
            incarnation: None,
        }
    }
}

/// What a [`Txn`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TxnOutcome {
    /// False when a check failed: nothing was applied.
    pub applied: bool,
    /// The index of the first failed check.
    pub failed_check: Option<u32>,
    /// The current version of the failed check's key (0 when absent).
    pub current_version: u64,
    /// One per operation when applied.
    pub results: Vec<OpOutcome>,
}

/// What one operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    /// Stored at `version`.
    Set {
        /// The entry's new version.
        version: u64,
    },
    /// Removed (or found nothing).
    Delete {
        /// Whether a live key was removed.
        deleted: bool,
        /// The deletion's version, 0 when nothing was removed.
        version: u64,
    },
    /// Incremented.
    Incr {
        /// The new number.
        value: f64,
        /// The entry's new version.
        version: u64,
    },
    /// Patched.
    Merge {
        /// The merged value, canonical encoded.
        value: Bytes,
        /// The entry's new version.
        version: u64,
    },
    /// Cleared.
    Clear {
        /// Live keys removed.
        removed: u64,
        /// The clear's version, 0 when the project held nothing.
        version: u64,
    },
}

/// A page request of [`Backend::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: String,
    /// Only keys after this one.
    pub start_after: String,
    /// Most entries (at least 1).
    pub limit: usize,
    /// Leave values out.
    pub keys_only: bool,
}

/// One page of [`Backend::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Live entries in byte order of key (values empty when keys only).
    pub entries: Vec<(Arc<str>, Entry)>,
    /// More matching keys follow the last one.
    pub more: bool,
    /// The project's version when the page was read.
    pub version: u64,
}

/// Which keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    /// Every key of the project.
    All,
    /// Exactly this key.
    Key(Box<str>),
    /// Every key starting with this.
    Prefix(Box<str>),
}

impl WatchTarget {
    /// Whether a change to `key` concerns this target (a clear concerns
    /// every target).
    ///
    /// ```
    /// use kv_engine::WatchTarget;
    /// assert!(WatchTarget::Prefix("a:".into()).matches("a:1"));
    /// assert!(!WatchTarget::Key("a".into()).matches("ab"));
    /// ```
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Key(k) => **k == *key,
            Self::Prefix(p) => key.starts_with(&**p),
        }
    }
}

/// Tunables of the engine shared by both stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a request id's outcome is remembered (ms).
    pub idempotency_window_ms: u64,
    /// Most request ids remembered per project; past it the oldest go early.
    pub idempotency_max_ids: usize,
    /// Most change events a project keeps for watches to resume from.
    pub watch_history_events: usize,
    /// Most bytes (keys plus values) of those events.
    pub watch_history_bytes: usize,
    /// Most bytes of change events all projects keep together.
    pub watch_history_total_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idempotency_window_ms: 10 * 60 * 1000,
            idempotency_max_ids: 100_000,
            watch_history_events: 10_000,
            watch_history_bytes: 16 << 20,
            watch_history_total_bytes: 256 << 20,
        }
    }
}

/// A write, as the resulting state it leaves behind.
///
/// Keys are `Arc<str>`: the same allocation then serves the map, the ordered
/// index, the expiry index and change events, from decode (or evaluation)
/// to memory, with no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// `key` now holds `value`, expiring at `expires_at` (unix ms), or never
    /// when `None`.
    Set {
        /// The key.
        key: Arc<str>,
        /// Canonical encoded `google.protobuf.Value`.
        value: Box<[u8]>,
        /// Absolute deadline in unix milliseconds.
        expires_at: Option<u64>,
    },
    /// `key` no longer exists (deleted by a call).
    Delete {
        /// The key.
        key: Arc<str>,
    },
    /// `key` no longer exists: its deadline passed.
    Expire {
        /// The key.
        key: Arc<str>,
    },
    /// The project has no keys.
    Clear,
}

/// A [`Mutation`] with the project version it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The project version of this change (0 in records of the first log
    /// format, which had none: replay numbers them).
    pub version: u64,
    /// The change.
    pub mutation: Mutation,
}

impl Versioned {
    /// A change without a version (records of the first log format): the
    /// store gives it the project's next one when applied.
    ///
    /// ```
    /// use kv_engine::{Mutation, Versioned};
    /// assert_eq!(Versioned::unnumbered(Mutation::Clear).version, 0);
    /// ```
    pub fn unnumbered(mutation: Mutation) -> Self {
        Self {
            version: 0,
            mutation,
        }
    }
}

/// What applying a [`Mutation`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// How many live (unexpired) keys the mutation removed: 0 or 1 for a
    /// delete, any number for a clear, always 0 for a set.
    pub removed: u64,
}

/// Per-project limits on what a project may hold. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most keys the project may hold.
    pub max_keys: Option<u64>,
    /// Most bytes (keys plus encoded values) the project may hold.
    pub max_bytes: Option<u64>,
}
