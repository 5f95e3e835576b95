//! `kv-client`: the typed async Rust SDK for the kv service.
//!
//! Values go in and out as any serde type (or raw [`serde_json::Value`]);
//! keys live in a project, chosen once with [`Client::project`].
//!
//! # Layout
//!
//! - [`Client`]: one connection (HTTP/2, multiplexed), cheap to clone;
//!   built with [`Client::connect`] or [`Client::builder`]; one client
//!   serves any number of projects.
//! - [`Project`]: a cheap handle for one project's keys:
//!   - reads: [`get`](Project::get), [`get_entry`](Project::get_entry) (with
//!     [`Entry`]'s version, deadline and incarnation), [`has`](Project::has),
//!     [`get_many`](Project::get_many) (many keys as of one moment);
//!   - writes: [`set`](Project::set), [`set_with_ttl`](Project::set_with_ttl),
//!     [`delete`](Project::delete), [`clear`](Project::clear);
//!   - conditional writes: [`set_with`](Project::set_with) and
//!     [`SetOptions`] (TTL or keep it, if absent, if at a version),
//!     [`set_if_absent`](Project::set_if_absent),
//!     [`compare_and_swap`](Project::compare_and_swap), giving a
//!     [`SetOutcome`]; [`delete_if_version`](Project::delete_if_version) and
//!     [`delete_with`](Project::delete_with) ([`DeleteOptions`],
//!     [`DeleteOutcome`]); [`clear_with`](Project::clear_with);
//!   - atomic updates: [`incr`](Project::incr) /
//!     [`incr_with`](Project::incr_with) ([`IncrOptions`]) on JSON numbers,
//!     [`merge`](Project::merge) / [`merge_with`](Project::merge_with)
//!     ([`MergeOptions`]) with RFC 7386 merge patches, both giving a
//!     [`Versioned`] value;
//!   - many keys at once, all or nothing: [`set_many`](Project::set_many) /
//!     [`set_many_with`](Project::set_many_with) ([`SetManyOptions`]),
//!     [`delete_many`](Project::delete_many) /
//!     [`delete_many_with`](Project::delete_many_with), and
//!     [`batch`](Project::batch): a [`Batch`] of checks and writes whose
//!     [`commit`](Batch::commit) gives a [`BatchOutcome`] of [`OpResult`]s;
//!   - listing: [`list`](Project::list) ([`ListOptions`]) gives one [`Page`]
//!     of [`ListEntry`]s; [`list_all`](Project::list_all) /
//!     [`list_all_with`](Project::list_all_with) walk every page;
//!   - change feeds: [`watch`](Project::watch) ([`WatchOptions`]: a key, a
//!     prefix or everything, from a version of an incarnation) gives a
//!     [`Watch`], a stream of [`Event`]s ([`EventKind`]).
//! - [`Error`]: the one error type; [`Error::code`] gives its gRPC code.
//! - [`RetryPolicy`]: how calls are retried (see below).
//!
//! # Versions
//!
//! Every change in a project (set, delete, expiry, clear) gets the project's
//! next version, counting up from 1. An entry's version is the version of
//! the change that last wrote it: read it with [`Project::get_entry`], write
//! only if it is unchanged with [`Project::compare_and_swap`] or
//! [`Batch::check_version`], and resume a [`Watch`] after it. A condition
//! that does not hold is not an error: the outcome says `applied: false`
//! (or `deleted: false`) with the key's current version.
//!
//! # Incarnations
//!
//! Deleting a project and creating it again under the same name makes a
//! new project that shares nothing with the old one, and its versions
//! start over above every version the old one used. Its incarnation tells
//! the two apart: 0 for the first project of a name, another number for
//! each one created after a deletion. It comes with every version the SDK
//! hands out for resuming: [`Entry::incarnation`], [`Page::incarnation`],
//! [`Event::incarnation`] (and [`ProjectInfo::incarnation`] from the admin
//! API). Give it back with [`WatchOptions::incarnation`]: a watch resuming
//! in a project recreated since fails with `FAILED_PRECONDITION` instead of
//! following the new one as if it were the old.
//!
//! # Auto-batching
//!
//! Single-key calls ([`get`](Project::get), [`set`](Project::set),
//! [`has`](Project::has), [`delete`](Project::delete),
//! [`incr`](Project::incr), [`merge`](Project::merge) and their variants)
//! made concurrently on one [`Client`] share frames of one long-lived
//! `Pipeline` stream, like Redis pipelining without changing your code. A
//! call made while nothing else is pending is sent at once; each keeps its
//! own result, error and timeout; calls on a key apply in the order made
//! (after a break too: the calls the stream carried are replayed in their
//! order, ahead of any call made after them).
//!
//! One client, with all its clones and [`Project`] handles, uses one such
//! stream for every project: a gateway serving thousands of tenants through
//! one client holds one stream and no state per project, however many
//! projects it touches. Each frame names its calls' project, and a call
//! names its own only when it differs from the frame's. This needs a
//! server that says, in the stream's response headers
//! (`x-kv-call-projects`), that it honours those names; with an older
//! server (or one without the stream at all) every call is its own unary
//! call with its own `x-kv-project`, slower but never run in the wrong
//! project. When the stream breaks at the transport (or the server ends it
//! with `UNAVAILABLE`), the calls it carried that are still unanswered are
//! replayed first on the next stream (perhaps to another endpoint), writes
//! with their request ids so none applies twice; a write without an id
//! that may have run fails instead, and a call whose deadline passes while
//! it waits fails with [`Error::Timeout`]. Each stream a call was sent on
//! counts as one of its [`RetryPolicy`] attempts; when the server ends it with
//! another status (a revoked token ends it with `UNAUTHENTICATED`), they
//! fail with that code, and the next call opens a new one.
//! [`ClientBuilder::auto_batching`] turns it off.
//!
//! # Retries and request ids
//!
//! A write that failed mid-way may or may not have been applied, so every
//! mutating call carries a request id (1 to [`MAX_REQUEST_ID_BYTES`]
//! bytes): the one its options give, or else a fresh random one
//! ([`new_request_id`]) unless [`ClientBuilder::auto_request_ids`] is off.
//! Retrying with the same id within the server's idempotency window (10
//! minutes by default, kept across restarts) returns the first call's
//! outcome instead of applying the write again, so even
//! [`Project::incr`] is safe to retry. Reusing an id for a different
//! request is `FAILED_PRECONDITION`.
//!
//! The SDK retries by itself, with exponential backoff and full jitter
//! ([`RetryPolicy`], set with [`ClientBuilder::retry`]), when an attempt
//! fails at the transport (connection refused, reset, cut), the server
//! says `UNAVAILABLE` or refuses the HTTP/2 stream, or the auto-batching
//! stream breaks under the call. Reads are always retried; a write when it
//! has a request id, or when the attempt surely never reached the server.
//! All attempts share the call's deadline ([`ClientBuilder::timeout`]);
//! when it passes, the call fails with [`Error::Timeout`]
//! (`DEADLINE_EXCEEDED`), whose message says how many attempts were made
//! and whether one may have been applied, and which gives the request id
//! to retry with. With [`ClientBuilder::honour_retry_after`], a rate
//! limit's `RESOURCE_EXHAUSTED` carrying a `retry-after-ms` hint
//! ([`RETRY_AFTER_HEADER`]) is retried after that delay if the deadline
//! allows. Other errors are returned at once.
//!
//! [`Client::builder`] takes one URL or several ([`IntoEndpoints`]): calls
//! use one endpoint at a time and move to the next when it fails at the
//! transport or says `UNAVAILABLE`; the failed one is reconnected in the
//! background and becomes a standby for the next failover (calls do not
//! move back to it by themselves; see [`Client::endpoint_states`]). A
//! broken auto-batching stream replays the calls it carried, in order,
//! ahead of newer ones (see "Auto-batching").
//!
//! An open [`Watch`] whose stream breaks (the connection drops, the server
//! restarts or shuts down, its endpoint goes down, the server cuts a slow
//! watcher at its memory limit) reopens itself with the same policy,
//! backoff and failover, after the last event it delivered and in the
//! incarnation it saw: the caller sees no error, no gap and no repeat, and
//! [`Watch::resumes`] counts the reopenings. It still ends with an error
//! when the resume point has left the server's history (`OUT_OF_RANGE`),
//! the project was recreated (`FAILED_PRECONDITION`) or deleted, the token
//! was revoked, the history left a slow watcher behind, or the policy's
//! attempts in a row all failed; see [`Watch`] and
//! [`WatchOptions::resume`] to turn it off.
//!
//! ```no_run
//! use std::time::Duration;
//! use kv_client::{Client, Error, IncrOptions, RetryPolicy};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::builder(["http://10.0.0.1:50051", "http://10.0.0.2:50051"])
//!     .timeout(Duration::from_secs(30))
//!     .retry(RetryPolicy::default().max_attempts(50))
//!     .honour_retry_after(true)
//!     .connect()
//!     .await?;
//! let kv = client.project("shop");
//! match kv.incr("orders", 1.0).await {
//!     Ok(n) => println!("order #{n}"),
//!     Err(Error::Timeout { may_have_applied: true, request_id: Some(id), .. }) => {
//!         // Later, the same id: applied at most once in all.
//!         kv.incr_with("orders", 1.0, IncrOptions::new().request_id(id)).await?;
//!     }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Numbers
//!
//! JSON numbers travel as doubles, as in JavaScript. An integer beyond ±2^53
//! cannot be carried exactly, so the SDK refuses it with
//! [`Error::InvalidArgument`] instead of rounding it; store such numbers as
//! strings. Integral doubles come back as integers, so they deserialize into
//! integer fields. (`-0.0` comes back as `0`.)
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct User { name: String, visits: u32 }
//!
//! # async fn demo() -> Result<(), kv_client::Error> {
//! let client = kv_client::Client::connect("http://127.0.0.1:50051").await?;
//! let kv = client.project("shop");
//! let user = User { name: "Ada".into(), visits: 3 };
//! kv.set("user:1", &user).await?;
//! kv.set_with_ttl("session:x", &"token", Duration::from_secs(3600)).await?;
//! let back: Option<User> = kv.get("user:1").await?;
//! assert_eq!(back, Some(user));
//! assert!(kv.has("user:1").await?);
//! assert!(kv.delete("user:1").await?);
//! let removed: u64 = kv.clear().await?;
//! # let _ = removed; Ok(())
//! # }
//! ```
//!
//! Versions, atomic updates and change feeds:
//!
//! ```no_run
//! use kv_client::{IncrOptions, SetOptions, WatchOptions};
//! use serde_json::json;
//!
//! # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
//! let mut changes = kv.watch(WatchOptions::prefix("stock:")).await?;
//! let created = kv.set_with("stock:42", &10, SetOptions::new().if_absent()).await?;
//! let swapped = kv.compare_and_swap("stock:42", created.version, &9).await?;
//! assert!(swapped.applied);
//! let retry_safe = IncrOptions::new().request_id(kv_client::new_request_id());
//! let left = kv.incr_with("stock:42", -1.0, retry_safe).await?;
//! assert_eq!(left.value, 8.0);
//! let _: serde_json::Value = kv.merge("stock:meta", &json!({"updated": true})).await?;
//! while let Some(event) = changes.next_event().await {
//!     let event = event?;
//!     println!("{:?} {} at version {}", event.kind, event.key, event.version);
//! }
//! # Ok(())
//! # }
//! ```

mod admin;
mod batch;
mod client;
mod endpoints;
mod error;
mod json;
mod list;
mod many;
#[cfg(test)]
mod mock_tests;
mod options;
mod pipeline;
mod project;
mod resume;
mod retry;
mod watch;

pub use admin::{Admin, BackupSummary, NewToken, ProjectInfo, Quota, TokenInfo, TokenLimits};
pub use batch::{Batch, BatchOutcome, OpResult};
pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, Tls,
};
pub use endpoints::{EndpointState, IntoEndpoints};
pub use error::Error;
pub use json::{MAX_DEPTH, MAX_SAFE_INTEGER};
pub use list::{ListEntry, ListOptions, Page};
pub use options::{
    ClearOptions, DeleteManyOptions, DeleteOptions, IncrOptions, MAX_REQUEST_ID_BYTES,
    MergeOptions, SetManyOptions, SetOptions, new_request_id,
};
pub use project::{ClearOutcome, DeleteOutcome, Entry, Project, SetOutcome, Versioned};
pub use retry::{RETRY_AFTER_HEADER, RetryPolicy};
pub use tonic::Code;
pub use watch::{Event, EventKind, Watch, WatchOptions};

pub use kv_proto::contract::{
    INCARNATION_HEADER, PROJECT_HEADER, RESUME_FROM_HEADER, WATCH_START_HEADER,
};
#[cfg(test)]
mod tests {
    #[test]
    fn readme_shows_the_quickstart_example_verbatim() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../examples/quickstart.rs");
        assert!(
            readme.contains(example),
            "README.md must embed kv-client/examples/quickstart.rs exactly"
        );
    }
}
