//! What can go wrong in the engine, each error naming the problem and
//! the limit.

use crate::{jsonops, project::ProjectName};

/// Why a watch could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// Changes after `from` are no longer all retained.
    #[error(
        "from_version {from} is older than the retained history, which starts after version {oldest}; read the current state and watch from its version"
    )]
    TooOld {
        /// The requested version.
        from: u64,
        /// The newest version no longer retained.
        oldest: u64,
    },
    /// `from` is ahead of the project.
    #[error("from_version {from} is ahead of the project's current version {current}")]
    Ahead {
        /// The requested version.
        from: u64,
        /// The project's version.
        current: u64,
    },
    /// `from` is a version of an earlier incarnation of the project.
    #[error(
        "from_version {from} belongs to an earlier incarnation of this project: it was deleted and recreated, and its versions now start after {incarnation}; read the current state and watch from its version"
    )]
    Recreated {
        /// The requested version.
        from: u64,
        /// The current incarnation.
        incarnation: u64,
    },
    /// The watch names an incarnation the project no longer is.
    #[error(
        "incarnation {asked} of this project no longer exists: it was deleted and recreated (now incarnation {incarnation}); read the current state and watch again"
    )]
    OtherIncarnation {
        /// The incarnation the request named.
        asked: u64,
        /// The current incarnation.
        incarnation: u64,
    },
    /// The store holding the history could not be reached.
    #[error("cannot start the watch: {context}; retry")]
    Unavailable {
        /// What failed.
        context: String,
    },
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
    /// A remote store could not be reached or refused the call; nothing
    /// was applied.
    #[error("storage unreachable: {context}: {source}; nothing was applied, retry")]
    Unreachable {
        /// What the engine was doing.
        context: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A write was sent to a remote store but its answer was lost: it may
    /// or may not have been applied.
    #[error(
        "{context}: the outcome of this write is unknown (it may or may not have been applied); a retry with the same request id is safe"
    )]
    OutcomeUnknown {
        /// What happened.
        context: String,
    },
    /// Writes of other front-ends to the same project kept changing it
    /// while this one was evaluated; nothing was applied.
    #[error(
        "project {project} changed under this write {attempts} times in a row (other front-ends are writing to it); nothing was applied, retry"
    )]
    Contended {
        /// The project.
        project: crate::project::ProjectName,
        /// How many evaluations were tried.
        attempts: u32,
    },
    /// The write would take its project over a quota. Nothing was written.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    /// An increment met a value that is not a number.
    #[error("key {key:?} holds a {kind}, not a number; incr needs a JSON number")]
    NotANumber {
        /// The key.
        key: Box<str>,
        /// What it holds.
        kind: &'static str,
    },
    /// An increment's result would not be exact.
    #[error("key {key:?}: {source}")]
    NumberOutOfRange {
        /// The key.
        key: Box<str>,
        /// Details with the limit.
        source: jsonops::NumberError,
    },
    /// A merge would produce a value over the size limit.
    #[error(
        "key {key:?}: the merged value would be {len} bytes encoded; the limit is {limit} bytes"
    )]
    MergedTooLarge {
        /// The key.
        key: Box<str>,
        /// Encoded size of the result.
        len: usize,
        /// The value limit.
        limit: usize,
    },
    /// A request id came back with a different request.
    #[error(
        "request_id {id:?} was already used for a different request within the idempotency window; use a new id for a new request"
    )]
    RequestIdReused {
        /// The id.
        id: Box<str>,
    },
    /// The engine answered itself inconsistently (a bug, never bad input).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A stored value or patch that validation should have refused could
    /// not be merged (a bug, never bad input).
    #[error("key {key:?}: the merge failed: {source}")]
    Unmergeable {
        /// The key.
        key: Box<str>,
        /// What could not be decoded.
        #[source]
        source: jsonops::MergeError,
    },
    /// A TTL would put the deadline past what the clock can represent.
    #[error("ttl of {ttl_ms} ms overflows the clock")]
    DeadlineOverflow {
        /// The refused TTL.
        ttl_ms: u64,
    },
    /// The write queue is full: nothing was applied; retry with backoff.
    #[error(
        "the server is overloaded: {capacity} writes are already waiting to be logged; nothing was applied, retry with backoff"
    )]
    Overloaded {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The write queue's byte bound, or the calling project's share of the
    /// queue, is used up: nothing was applied; retry with backoff.
    #[error("{0}")]
    QueueFull(QueueFull),
    /// A fsync of the write-ahead log failed. The writes of that group were
    /// not applied and no write is accepted until the log has been
    /// re-verified (the writer tries again every second, and a restart
    /// verifies it too); reads go on.
    #[error(
        "{reason}; nothing was applied; writes are stopped until the log is re-verified; reads go on"
    )]
    WritesStopped {
        /// What failed, e.g. `the write-ahead log could not be synced
        /// (fdatasync failed: Input/output error)`.
        reason: std::sync::Arc<str>,
    },
    /// The incarnation of the project the call was admitted for is gone:
    /// the project was deleted (and maybe recreated) meanwhile.
    #[error("project {project} was deleted while this call was in flight; nothing was applied")]
    ProjectGone {
        /// The project.
        project: ProjectName,
    },
    /// CreateProject of a registered project.
    #[error("project {project} already exists")]
    ProjectExists {
        /// The project.
        project: ProjectName,
    },
    /// A revoke of a token that does not exist.
    #[error("no token has id {id:?}")]
    TokenNotFound {
        /// The id.
        id: String,
    },
    /// An admin change of a project that is not registered.
    #[error("project {project} is not registered (CreateProject first)")]
    ProjectNotFound {
        /// The project.
        project: ProjectName,
    },
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

/// Which bound of the write queue refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// All projects' queued writes together reached the byte bound.
    #[error(
        "the server is overloaded: {queued} bytes of writes are already waiting to be logged, the limit is {limit} bytes (--max-queued-write-bytes); nothing was applied, retry with backoff"
    )]
    Bytes {
        /// Bytes queued.
        queued: usize,
        /// The bound.
        limit: usize,
    },
    /// The project already has its share (half) of the queue's writes.
    #[error(
        "project {project} already has {queued} writes waiting to be logged; its share is at most {limit} (half the write queue); nothing was applied, retry with backoff"
    )]
    ProjectWrites {
        /// The project.
        project: ProjectName,
        /// Its writes queued.
        queued: usize,
        /// Its share.
        limit: usize,
    },
    /// The project already has its share (half) of the queue's bytes.
    #[error(
        "project {project} already has {queued} bytes of writes waiting to be logged; its share is at most {limit} bytes (half of --max-queued-write-bytes); nothing was applied, retry with backoff"
    )]
    ProjectBytes {
        /// The project.
        project: ProjectName,
        /// Its bytes queued.
        queued: usize,
        /// Its share.
        limit: usize,
    },
}
