//! Prometheus metrics (`--metrics-listen`): what the server counts, kept as
//! plain atomics in one process-wide [`Metrics`], and read at scrape time.
//!
//! The request path only adds to atomics it finds by index: the method of a
//! call is resolved once per request against a fixed table (no allocation,
//! no lock), and each (method, code) pair has its own counter. Figures the
//! engine already keeps (log, snapshots, expiry, per-project usage) are not
//! copied here: [`exposition`] reads them when Prometheus scrapes.
//!
//! - [`layer`]: the tower layer that counts requests, codes, latency and
//!   open streams.
//! - [`exposition`]: the text format, the process collector, the
//!   per-project top-N guard and the `/metrics` HTTP listener.

pub mod exposition;
pub mod layer;
pub mod options;
pub mod process;

use std::sync::{
    LazyLock,
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
};

use dashmap::DashMap;

use kv_engine::stats::{AtomicHistogram, LATENCY_NANOS};

/// gRPC status codes 0..=16.
pub const CODES: usize = kv_proto::contract::CODE_NAMES.len();

/// The methods counted by name, as `(service, method)`; any other path
/// counts under `("other", "other")`.
pub const METHODS: &[(&str, &str)] = &[
    ("kv.v1.KvService", "Get"),
    ("kv.v1.KvService", "Set"),
    ("kv.v1.KvService", "Has"),
    ("kv.v1.KvService", "Delete"),
    ("kv.v1.KvService", "Clear"),
    ("kv.v1.KvService", "Incr"),
    ("kv.v1.KvService", "Merge"),
    ("kv.v1.KvService", "Batch"),
    ("kv.v1.KvService", "GetMany"),
    ("kv.v1.KvService", "SetMany"),
    ("kv.v1.KvService", "DeleteMany"),
    ("kv.v1.KvService", "List"),
    ("kv.v1.KvService", "Watch"),
    ("kv.v1.KvService", "Pipeline"),
    ("kv.v1.AdminService", "CreateProject"),
    ("kv.v1.AdminService", "DeleteProject"),
    ("kv.v1.AdminService", "GetProject"),
    ("kv.v1.AdminService", "ListProjects"),
    ("kv.v1.AdminService", "SetQuota"),
    ("kv.v1.AdminService", "CreateToken"),
    ("kv.v1.AdminService", "RevokeToken"),
    ("kv.v1.AdminService", "ListTokens"),
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    ("other", "other"),
];

/// Index of the catch-all method.
const OTHER: usize = METHODS.len() - 1;

/// The index in [`METHODS`] of a request path `/service/method`.
///
/// ```
/// use kv_server::metrics::{METHODS, method_index};
/// assert_eq!(METHODS[method_index("/kv.v1.KvService/Set")], ("kv.v1.KvService", "Set"));
/// assert_eq!(METHODS[method_index("/nope/Nope")], ("other", "other"));
/// ```
pub fn method_index(path: &str) -> usize {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return OTHER;
    };
    METHODS[..OTHER]
        .iter()
        .position(|&(s, m)| s == service && m == method)
        .unwrap_or(OTHER)
}

/// Why a call's credentials were refused (`reason` label of
/// `kv_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata.
    Missing = 0,
    /// Not `Bearer <token>` of a known shape.
    Malformed,
    /// Unknown or revoked token.
    Unknown,
    /// A token of another project.
    WrongProject,
    /// A read-only token tried to write.
    ReadOnly,
    /// A project token called the admin API.
    NotAdmin,
}

impl AuthFailure {
    /// Every reason, in label order.
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Unknown,
        AuthFailure::WrongProject,
        AuthFailure::ReadOnly,
        AuthFailure::NotAdmin,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown_token",
            AuthFailure::WrongProject => "wrong_project",
            AuthFailure::ReadOnly => "read_only",
            AuthFailure::NotAdmin => "not_admin",
        }
    }
}

/// Which rate limit refused a call (`limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Operations per second.
    Ops = 0,
    /// Bytes written per second.
    Bytes,
    /// A single write larger than the bytes per second limit.
    TooLarge,
}

impl RateLimit {
    /// Every limit, in label order.
    pub const ALL: [RateLimit; 3] = [RateLimit::Ops, RateLimit::Bytes, RateLimit::TooLarge];

    /// The `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            RateLimit::Ops => "ops_per_second",
            RateLimit::Bytes => "write_bytes_per_second",
            RateLimit::TooLarge => "write_larger_than_limit",
        }
    }
}

/// Whose rate limit refused a call (`subject` label).
pub const RATE_SUBJECTS: [&str; 2] = ["project", "token"];

/// Buckets of calls per Pipeline frame.
pub const CALLS_PER_FRAME_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// The server's own counters; one per process ([`metrics`]).
#[derive(Debug)]
pub struct Metrics {
    requests: Box<[[AtomicU64; CODES]]>,
    latency: Box<[AtomicHistogram]>,
    streams_open: Box<[AtomicI64]>,
    connections_open: AtomicI64,
    connections_refused: AtomicU64,
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    rate_refusals: [[AtomicU64; RateLimit::ALL.len()]; RATE_SUBJECTS.len()],
    quota_refusals: AtomicU64,
    memory_refusals: AtomicU64,
    watchers_open: AtomicI64,
    watchers_cut: AtomicU64,
    calls_per_frame: AtomicHistogram,
    project_ops: DashMap<Box<str>, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: METHODS.iter().map(|_| Default::default()).collect(),
            latency: METHODS
                .iter()
                .map(|_| AtomicHistogram::new(LATENCY_NANOS))
                .collect(),
            streams_open: METHODS.iter().map(|_| AtomicI64::new(0)).collect(),
            connections_open: AtomicI64::new(0),
            connections_refused: AtomicU64::new(0),
            auth_failures: Default::default(),
            rate_refusals: Default::default(),
            quota_refusals: AtomicU64::new(0),
            memory_refusals: AtomicU64::new(0),
            watchers_open: AtomicI64::new(0),
            watchers_cut: AtomicU64::new(0),
            calls_per_frame: AtomicHistogram::new(CALLS_PER_FRAME_BUCKETS),
            project_ops: DashMap::new(),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Set once a server of this process serves `/metrics`: only then are
/// requests timed and counted per method and per project, so a server
/// without `--metrics-listen` pays one relaxed load per request.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The process's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Turns on the per-request counting (see [`enabled`]).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether per-request counting is on: requests by method and code, their
/// latency, open calls and per-project operations. Rare events (refusals,
/// auth failures, connections, watchers, Pipeline frames) are always
/// counted.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

impl Metrics {
    /// Counts one finished call of method `method` (a [`METHODS`] index)
    /// with gRPC code `code` that took `nanos`.
    pub fn request_done(&self, method: usize, code: usize, nanos: u64) {
        self.requests[method][code.min(CODES - 1)].fetch_add(1, Ordering::Relaxed);
        self.latency[method].observe(nanos);
    }

    /// Calls of `method` that ended with `code`.
    pub fn requests(&self, method: usize, code: usize) -> u64 {
        self.requests[method][code].load(Ordering::Relaxed)
    }

    /// One more (or, with -1, one fewer) open stream of `method`.
    pub fn stream_open(&self, method: usize, delta: i64) {
        self.streams_open[method].fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts a refused credential.
    pub fn auth_failed(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rate-limit refusal; `token` when a token's limit refused.
    pub fn rate_refused(&self, token: bool, limit: RateLimit) {
        self.rate_refusals[usize::from(token)][limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a storage-quota refusal.
    pub fn quota_refused(&self) {
        self.quota_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal at the memory limit.
    pub fn memory_refused(&self) {
        self.memory_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused at `--max-connections`.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a watcher the server ended because it fell behind.
    pub fn watcher_cut(&self) {
        self.watchers_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Pipeline frame of `calls` calls.
    pub fn pipeline_frame(&self, calls: usize) {
        self.calls_per_frame.observe(calls as u64);
    }

    /// Counts one admitted data operation of `project`.
    pub fn project_op(&self, project: &str) {
        if !enabled() {
            return;
        }
        if let Some(ops) = self.project_ops.get(project) {
            ops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.project_ops
            .entry(project.into())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the operation count of a deleted project, so that the map
    /// holds live projects only.
    pub fn forget_project(&self, project: &str) {
        self.project_ops.remove(project);
    }
}

/// Counts an open connection in `kv_connections_open` for its life.
#[derive(Debug)]
pub struct ConnectionOpen(());

impl ConnectionOpen {
    /// Counts one more open connection until dropped.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        metrics().connections_open.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for ConnectionOpen {
    fn drop(&mut self) {
        metrics().connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open Watch in `kv_watchers_open` for its life.
#[derive(Debug)]
pub struct WatcherOpen(());

impl WatcherOpen {
    /// Counts one more open watcher until dropped.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        metrics().watchers_open.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for WatcherOpen {
    fn drop(&mut self) {
        metrics().watchers_open.fetch_sub(1, Ordering::Relaxed);
    }
}
