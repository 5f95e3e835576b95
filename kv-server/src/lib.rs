//! `kv-server`: a project-scoped key-value service with TTL, spoken over
//! gRPC (`kv.v1.KvService`).
//!
//! # Layout
//!
//! - [`config`]: flags and `KV_*` environment variables into one [`config::Config`].
//! - [`service`]: the gRPC handlers: validate, resolve the project, call the
//!   engine, convert back; errors map to gRPC codes in one place each.
//! - the storage engine is its own crate, [`kv_engine`]: the
//!   [`kv_engine::Backend`] trait, the in-memory state with TTLs and active
//!   expiry, the durable embedded default (write-ahead log, group commit,
//!   snapshots, crash recovery), project names and stored values.
//! - [`config_file`]: the `--config` TOML file beneath flags and environment.
//! - [`logging`]: log format and level, and one line per request.
//! - [`limits`]: connection count, idle and request-time limits.
//! - [`rate`]: per-project operations and bytes written per second.
//! - [`memory`]: the memory limit (`--max-memory`) and how usage is measured.
//! - [`inflight`]: request bytes being received, bounded by a share of that limit.
//! - [`metrics`]: Prometheus metrics at `/metrics` (`--metrics-listen`).
//! - [`server`]: health, reflection and the kv service on a bound listener
//!   until a shutdown future resolves.
//!
//! Data flows one way: request, service (validation, limits), engine, reply.
//!
//! # Example
//!
//! Run the server in-process on a free port and stop it:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let store = std::sync::Arc::new(kv_engine::memory::MemoryStore::new());
//! let server = tokio::spawn(kv_server::server::run_memory(
//!     kv_server::config::Config::default(),
//!     store,
//!     listener,
//!     async { let _ = stopped.await; },
//! ));
//! assert_ne!(addr.port(), 0);
//! stop.send(()).unwrap();
//! server.await.unwrap().unwrap();
//! # });
//! ```

pub mod admin;
pub mod auth;
pub mod backup;
pub mod config;
pub mod config_file;
pub mod inflight;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metadata;
pub mod metrics;
pub mod rate;
pub mod server;
pub mod service;
pub mod status;
pub mod storage;
