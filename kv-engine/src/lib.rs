//! `kv-engine`: the storage engine of kv, knowing nothing of gRPC or of
//! the server's configuration (the compiler keeps it so: this crate does
//! not depend on either).
//!
//! The service validates requests and resolves the project, then calls a
//! [`Backend`] with plain Rust values. [`memory::MemoryStore`] holds the
//! state; [`wal::DurableStore`], the embedded default, makes it durable.
//! The second backend, `kv-redis`, keeps the state in a Redis Cluster and
//! runs this crate's evaluator ([`txn::Overlay`]) against a snapshot of
//! what a write touches ([`txn::State`]); its crate docs trace its own
//! life of a write and of an expiry.
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
//! - `backend.rs`: the [`Backend`] trait (the only way in); `types.rs`:
//!   transactions ([`Txn`], [`Op`], [`Check`]), outcomes and the values
//!   crossing the trait; `error.rs`, `clock.rs`.
//! - [`memory`]: the state. `memory/mod.rs` the store and its lookups;
//!   the parts of the state, each in its own file: `namespace.rs` (one
//!   project), `order.rs` (the ordered key index), `requests.rs`
//!   (remembered request ids), `expiry.rs` (the deadline index and
//!   [`memory::ExpiryTask`]); and the store's methods by concern:
//!   `apply.rs` (the one apply path, `apply_commit`), `read.rs` (reads and
//!   List pages), `idempotency.rs`, `load.rs` (recovery loading and the
//!   index build), `alone.rs` (the store used without a log).
//! - `txn.rs`: evaluating a transaction (checks, read-modify-write, quotas,
//!   request ids, versions) into the mutations to log and apply.
//! - [`watch`]: change history and watchers; [`catalog`]: projects,
//!   quotas, tokens; [`jsonops`]: increments and merge patches.
//! - [`wal`]: the write-ahead log. `wal/mod.rs` the [`wal::DurableStore`],
//!   `options.rs` its settings, `dir.rs` file names and segments,
//!   [`wal::codec`] the record format, `queue.rs` the bounded, fair queue
//!   into the writer, `writer.rs` the writer thread (group commit,
//!   snapshot triggers, stopping writes when a fsync fails), `admin.rs`
//!   admin changes' conditions, `verify.rs` re-verifying the log after a
//!   failed fsync, `snapshot.rs` snapshots, `recovery.rs` start-up.
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
//! 3. `wal/mod.rs` (`DurableStore::submit`) queues it in the project's
//!    lane of `wal/queue.rs` before returning: this is where the order of
//!    the project's writes is fixed. The queue is bounded by
//!    [`MAX_QUEUED_WRITES`] and by [`wal::LogOptions::max_queued_bytes`]
//!    (64 MiB), one project at most half of each; past a bound the write
//!    is refused at once ([`EngineError::Overloaded`],
//!    [`EngineError::QueueFull`]), so load never grows memory.
//! 4. `wal/writer.rs` (`Writer::run`) takes the next group commit: the
//!    project lanes served round-robin with a byte deficit (64 KiB a turn,
//!    a larger write goes whole and the lane's next turns pay for it), up
//!    to 8 MiB, so one project's large batches delay another's single write
//!    by about one batch. `Writer::commit` evaluates each transaction in
//!    that order with `txn.rs` (`Overlay::evaluate`: checks, quota,
//!    version, request id) and encodes the resulting state with
//!    [`wal::codec`] into one buffer.
//! 5. `wal/writer.rs` (`Writer::append`) writes the buffer with one
//!    `write` and, under [`wal::FsyncPolicy::Always`], one `fdatasync`: the
//!    write is now durable. A failed append refuses every write of the
//!    batch and none is applied. A failed `fdatasync` is never retried (the
//!    kernel may have dropped the pages it could not write): the writer
//!    cuts the batch from the file, and refuses every write with
//!    [`EngineError::WritesStopped`] (reads go on) until it has
//!    re-verified the log (`wal/verify.rs`: the segment re-read up to its
//!    last synced write, the rest cut durably, a new segment synced, and a
//!    snapshot when acknowledged writes were not yet synced).
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
//! 5. At recovery (`wal/recovery.rs`, through the same `apply_commit`), a
//!    logged set whose deadline passed while the server was down is
//!    loaded as it was (snapshots keep such entries too): reads treat it
//!    as absent from the first moment, and step 3 runs right after
//!    start-up, so its removal is logged with a version of its own and
//!    watchers, including those resuming across the restart, get its
//!    EXPIRED event (a logged expiry replays as the EXPIRED event it was).
//!
//! # The watch history across a restart
//!
//! A snapshot (`wal/snapshot.rs`) writes each project's history window
//! (record kinds 13 and 14 of [`wal::codec`]); recovery restores it, then
//! replays the segments after the snapshot through the live apply path, so
//! every logged change is published into the same bounded history
//! ([`watch`]). A snapshot's entries publish nothing: they are states, and
//! the snapshot's own history says what changed.

mod backend;
pub mod catalog;
mod clock;
mod deadline;
mod error;
pub mod jsonops;
pub mod memory;
pub mod project;
pub mod stats;
pub mod txn;
mod types;
pub mod value;
pub mod wal;
pub mod watch;

pub use backend::{Backend, MAX_QUEUED_WRITES};
pub use clock::{Clock, ManualClock, SystemClock};
pub use deadline::Deadline;
pub use error::{EngineError, QueueFull, QuotaExceeded, WatchError};
pub use types::{
    Applied, Check, Entry, EntryView, ListPage, ListQuery, Mutation, Op, OpOutcome, Quota,
    RequestId, Settings, Ttl, Txn, TxnOutcome, Versioned, WatchTarget,
};
pub use value::MAX_VALUE_LIMIT;
