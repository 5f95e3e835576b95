//! The Redis Cluster backend of kv: the engine's [`kv_engine::Backend`]
//! over a Redis Cluster that any number of stateless kv-server front-ends
//! share.
//!
//! # Layout
//!
//! Each project lives in one hash slot (every key of project `P` carries
//! the hash tag `{P}`), so one Redis Function runs each of its reads and
//! writes atomically on the master of that slot. The keys, and what each
//! function does, are described at the top of `src/library.lua`, the
//! function library this crate installs on every master. A project is
//! therefore bounded by one shard.
//!
//! # Life of a write
//!
//! 1. [`RedisBackend::submit`] (`backend.rs`) queues the transaction on its
//!    project's queue (`writer.rs`) before it returns, so writes of one
//!    front-end apply in submission order; the queues together are bounded.
//! 2. The project's worker takes the queued writes as a group, reads what
//!    they touch with `kv_snapshot` (`state.rs` holds the answer as the
//!    engine's [`kv_engine::txn::State`]), and evaluates them with the
//!    engine's own evaluator: the same checks, JSON operations, quotas and
//!    request ids as the embedded engine.
//! 3. `kv_apply` writes the resulting changes, numbered, with one change
//!    event each, if the project's version is still the one read; else the
//!    group is evaluated again. Every write carries a write id the function
//!    remembers, so a resend of the call by the client after a broken
//!    connection answers what the first run did instead of applying twice.
//!
//! # Life of an expiry
//!
//! Readers compare deadlines with the Redis server's clock, as read by the
//! same function call, so an expired key is never answered. Writes that set
//! a deadline record the project's earliest deadline in one of
//! [`keys::BUCKETS`] due-project sorted sets; every front-end's expiry task
//! (`expiry.rs`) takes the projects whose deadline has come and runs
//! `kv_expire` on each, which removes the due keys and publishes one
//! EXPIRED event per key atomically, so two front-ends never expire a key
//! twice. The work is proportional to what expires, not to the number of
//! projects.

mod admin;
mod backend;
mod catalog;
mod codec;
mod expiry;
mod inner;
pub mod keys;
mod library;
mod options;
mod queues;
mod replication;
mod state;
mod watch;
mod writer;

pub use backend::RedisBackend;
pub use library::LIBRARY_VERSION;
pub use options::{ConnectError, RedisOptions};
