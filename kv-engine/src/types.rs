//! The values that cross the [`crate::Backend`] trait: transactions and
//! their outcomes, entries, list pages, watch targets, mutations as logged,
//! quotas and tunables.

use std::sync::Arc;

use bytes::Bytes;

use crate::Deadline;

/// A live entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Canonical encoded `google.protobuf.Value`.
    pub value: Bytes,
    /// The version of the change that last wrote it.
    pub version: u64,
    /// Its deadline in unix ms, if it has a TTL.
    pub expires_at: Option<Deadline>,
}

/// A live entry lent to a reader while the store holds it (see
/// [`crate::Backend::get_with`]): its value is the stored bytes, not a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView<'a> {
    /// Canonical encoded `google.protobuf.Value`.
    pub value: &'a [u8],
    /// The version of the change that last wrote it.
    pub version: u64,
    /// Its deadline in unix ms, if it has a TTL.
    pub expires_at: Option<Deadline>,
}

impl Entry {
    /// This entry lent as an [`EntryView`].
    pub fn view(&self) -> EntryView<'_> {
        EntryView {
            value: &self.value,
            version: self.version,
            expires_at: self.expires_at,
        }
    }
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
    /// The id as sent (shared: the writer's overlay and the table of
    /// remembered ids keep it without copying it).
    pub id: Arc<str>,
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
    /// refuses the write with [`crate::EngineError::ProjectGone`], so a write
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

/// A page request of [`crate::Backend::list`].
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

/// One page of [`crate::Backend::list`].
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

impl Settings {
    /// The defaults, defined here once: the server's flags and
    /// configuration take theirs from this.
    ///
    /// ```
    /// use kv_engine::Settings;
    /// assert_eq!(Settings::default(), Settings::DEFAULT);
    /// assert_eq!(Settings::DEFAULT.idempotency_window_ms, 600_000);
    /// ```
    pub const DEFAULT: Self = Self {
        idempotency_window_ms: 10 * 60 * 1000,
        idempotency_max_ids: 100_000,
        watch_history_events: 10_000,
        watch_history_bytes: 16 << 20,
        watch_history_total_bytes: 256 << 20,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A write, as the resulting state it leaves behind.
///
/// Keys are `Arc<str>`: the same allocation serves the log record and the
/// change event, from decode (or evaluation) on, with no copy. The memory
/// store keeps key, value and metadata together in one block of its own
/// (see `memory::block`).
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
        expires_at: Option<Deadline>,
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

/// Per-project limits on what a project may hold and how fast it may call.
/// `None` is unlimited (or, for a project's own quota, the server default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most keys the project may hold.
    pub max_keys: Option<u64>,
    /// Most bytes (keys plus encoded values) the project may hold.
    pub max_bytes: Option<u64>,
    /// Most calls per one-second window. `Some(0)` is unlimited: a
    /// project's own 0 lifts the server default for it. Enforced by the
    /// service in front of the engine, not by the engine.
    pub ops_per_second: Option<u64>,
    /// Most bytes written (keys plus encoded values of writes) per
    /// one-second window; `Some(0)` as for `ops_per_second`.
    pub write_bytes_per_second: Option<u64>,
}

impl Quota {
    /// No limit at all.
    ///
    /// ```
    /// assert_eq!(kv_engine::Quota::UNLIMITED, kv_engine::Quota::default());
    /// ```
    pub const UNLIMITED: Self = Self {
        max_keys: None,
        max_bytes: None,
        ops_per_second: None,
        write_bytes_per_second: None,
    };

    /// This quota's fields where set, else `default`'s.
    ///
    /// ```
    /// use kv_engine::Quota;
    /// let own = Quota { max_keys: Some(5), ..Quota::default() };
    /// let default = Quota { max_keys: Some(9), ops_per_second: Some(100), ..Quota::default() };
    /// let both = own.or(default);
    /// assert_eq!((both.max_keys, both.ops_per_second), (Some(5), Some(100)));
    /// ```
    #[must_use]
    pub fn or(self, default: Self) -> Self {
        Self {
            max_keys: self.max_keys.or(default.max_keys),
            max_bytes: self.max_bytes.or(default.max_bytes),
            ops_per_second: self.ops_per_second.or(default.ops_per_second),
            write_bytes_per_second: self
                .write_bytes_per_second
                .or(default.write_bytes_per_second),
        }
    }
}
