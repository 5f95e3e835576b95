//! Server configuration: command-line flags, each also read from a `KV_`
//! environment variable, resolved into one validated [`Config`].
//!
//! Precedence: flag, then environment variable, then the config file
//! ([`crate::config_file`]), then the documented default.
//! The defaults live once, in the `DEFAULT_*` constants, and both
//! [`Config::default`] and the flag definitions use them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    auth::{AdminToken, AdminTokenTooShort},
    storage::{Storage, StorageArgs, StorageError},
};
use kv_engine::{
    Quota, Settings,
    wal::{FsyncPolicy, LogOptions},
};

/// Default listen address: loopback only, so a fresh install is not exposed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./kv-data";
/// Default largest key, in bytes.
pub const DEFAULT_MAX_KEY_BYTES: usize = 4096;
/// Default largest value, in bytes of encoded `google.protobuf.Value`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Default longest TTL: 10 years (3650 days) in milliseconds.
pub const DEFAULT_MAX_TTL_MS: u64 = 3650 * 24 * 60 * 60 * 1000;
/// Default most operations (or keys) in one Batch, GetMany, SetMany or
/// DeleteMany, and most checks in one Batch.
pub const DEFAULT_MAX_BATCH_OPS: usize = 1000;
/// Largest page a List returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Page size of a List that does not say.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub use kv_proto::contract::MAX_REQUEST_ID_BYTES;
/// Default idempotency window (the engine's).
pub const DEFAULT_IDEMPOTENCY_WINDOW_MS: u64 = Settings::DEFAULT.idempotency_window_ms;
/// Default most request ids remembered per project (the engine's).
pub const DEFAULT_IDEMPOTENCY_MAX_IDS: usize = Settings::DEFAULT.idempotency_max_ids;
/// Default most change events kept per project (the engine's).
pub const DEFAULT_WATCH_HISTORY_EVENTS: usize = Settings::DEFAULT.watch_history_events;
/// Default most bytes of change events kept per project (the engine's).
pub const DEFAULT_WATCH_HISTORY_BYTES: usize = Settings::DEFAULT.watch_history_bytes;
/// Default most bytes of change events kept by all projects together (the
/// engine's).
pub const DEFAULT_WATCH_HISTORY_TOTAL_BYTES: usize = Settings::DEFAULT.watch_history_total_bytes;
/// Default period of the active expiry task, in milliseconds.
pub const DEFAULT_EXPIRY_INTERVAL_MS: u64 = 100;
/// Default time in-flight requests get to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Default fsync policy, as the flag spells it (a test checks it is the
/// engine's default).
pub const DEFAULT_FSYNC: &str = "always";
/// Default log size before a snapshot is considered (the engine's, 64 MiB).
pub const DEFAULT_SNAPSHOT_MIN_LOG_BYTES: u64 = LogOptions::DEFAULT.snapshot_min_log_bytes;
/// Default segment size (the engine's, 64 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = LogOptions::DEFAULT.segment_bytes;
/// Default most bytes of writes queued for the log writer (the engine's,
/// 64 MiB).
pub const DEFAULT_MAX_QUEUED_WRITE_BYTES: usize = LogOptions::DEFAULT.max_queued_bytes;
/// Default most connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default most concurrent requests (HTTP/2 streams) per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default longest time any request may run, whatever its deadline.
pub const DEFAULT_MAX_REQUEST_TIME_MS: u64 = 60_000;
/// Default interval of HTTP/2 keepalive pings to each client.
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 30_000;
/// Default time a keepalive ping may go unanswered before the connection is
/// closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
/// Default time a connection may stay completely silent (live clients
/// answer keepalive pings) before it is closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Largest value limit the server accepts: the engine's bound.
pub use kv_engine::MAX_VALUE_LIMIT;

/// TLS files: the server's certificate chain and key, and optionally the CA
/// whose client certificates it requires (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// Size and time limits applied to every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, in bytes (keys are 1..=this).
    pub max_key_bytes: usize,
    /// Largest value, in bytes of encoded `google.protobuf.Value`.
    pub max_value_bytes: usize,
    /// Longest TTL, in milliseconds.
    pub max_ttl_ms: u64,
    /// Most operations, checks or keys in one multi-key call.
    pub max_batch_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_ttl_ms: DEFAULT_MAX_TTL_MS,
            max_batch_ops: DEFAULT_MAX_BATCH_OPS,
        }
    }
}

impl Limits {
    /// Largest gRPC message the server decodes or encodes: a key, a value
    /// and a little framing. Never unbounded.
    ///
    /// ```
    /// let limits = kv_server::config::Limits::default();
    /// assert!(limits.max_message_bytes() > limits.max_value_bytes);
    /// ```
    pub fn max_message_bytes(&self) -> usize {
        // Field tags, length prefixes, ttl and versions: well under 64 bytes
        // per key. A multi-key call may carry two full values (a batch's
        // set and merge) and every key at its largest.
        const FRAMING: usize = 64;
        // A Pipeline frame carries up to 1 MiB of calls (the SDK sends
        // larger calls unary): it must fit however small the other limits.
        const PIPELINE_FRAME: usize = 4 << 20;
        (2 * self.max_value_bytes + self.max_batch_ops * (self.max_key_bytes + FRAMING))
            .max(PIPELINE_FRAME)
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the log, snapshots and lock file.
    pub data_dir: PathBuf,
    /// The log's fsync policy, repair switch and sizes.
    pub log: LogOptions,
    /// Request limits.
    pub limits: Limits,
    /// How often the active expiry task reclaims expired keys.
    pub expiry_interval: Duration,
    /// How long in-flight requests (and open streams such as health
    /// watches) may run after a shutdown signal before their connections are
    /// closed.
    pub shutdown_grace: Duration,
    /// Serve without authentication on a non-loopback address.
    pub insecure_open: bool,
    /// Most connections open at once; more are accepted and closed.
    pub max_connections: usize,
    /// Most concurrent requests per connection.
    pub max_concurrent_streams: u32,
    /// Threads of the async runtime that serves requests; 0 is one per
    /// core. The log writer and snapshots have their own threads.
    pub worker_threads: usize,
    /// Longest time a request may run, whatever deadline the client set.
    pub max_request_time: Duration,
    /// Interval of HTTP/2 keepalive pings.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// How long a connection may send nothing at all.
    pub idle_timeout: Duration,
    /// Serve TLS (and require client certificates) when set.
    pub tls: Option<TlsFiles>,
    /// Require authentication, with this admin token; `None` is open mode.
    pub admin_token: Option<AdminToken>,
    /// Idempotency window and watch history.
    pub engine: Settings,
    /// The embedded engine, or a Redis Cluster.
    pub storage: Storage,
    /// Memory limit in bytes (`--max-memory`): writes adding data past it
    /// are refused; see [`crate::memory`].
    pub max_memory: u64,
    /// Requests answered slower than this are logged at WARN
    /// (`--slow-request-ms`); `None` is never.
    pub slow_request: Option<Duration>,
    /// Prometheus metrics (`--metrics-listen`, `--metrics-top-projects`).
    pub metrics: crate::metrics::options::MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log: LogOptions::DEFAULT,
            limits: Limits::default(),
            expiry_interval: Duration::from_millis(DEFAULT_EXPIRY_INTERVAL_MS),
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
            insecure_open: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            worker_threads: 0,
            max_request_time: Duration::from_millis(DEFAULT_MAX_REQUEST_TIME_MS),
            keepalive_interval: Duration::from_millis(DEFAULT_KEEPALIVE_INTERVAL_MS),
            keepalive_timeout: Duration::from_millis(DEFAULT_KEEPALIVE_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            engine: Settings::DEFAULT,
            tls: None,
            admin_token: None,
            storage: Storage::Embedded,
            max_memory: crate::memory::default_limit().0,
            slow_request: Some(Duration::from_millis(
                crate::logging::DEFAULT_SLOW_REQUEST_MS,
            )),
            metrics: Default::default(),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Open mode (no authentication) on an address other machines can reach.
    #[error(
        "refusing to serve without authentication on {addr}, which is not a loopback address: configure an admin token (--admin-token-file or KV_ADMIN_TOKEN), listen on 127.0.0.1, or pass --insecure-open to serve every project to anyone who can connect"
    )]
    OpenModeExposed {
        /// The listen address.
        addr: SocketAddr,
    },
    /// TLS flags that do not go together.
    #[error("{0}")]
    Tls(&'static str),
    /// Storage flags that do not go together.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The admin token is too weak.
    #[error("admin token: {0}")]
    AdminToken(#[from] AdminTokenTooShort),
    /// The admin token was given twice.
    #[error("admin token: give --admin-token-file or KV_ADMIN_TOKEN, not both")]
    AdminTokenTwice,
    /// The admin token file could not be read.
    #[error("admin token: cannot read {path}: {source}", path = .path.display())]
    AdminTokenFile {
        /// The file named by `--admin-token-file`.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The idle timeout would cut clients that answer keepalive pings.
    #[error(
        "--idle-timeout-ms ({idle} ms) must exceed --keepalive-interval-ms plus --keepalive-timeout-ms ({keepalive} ms), or live idle clients are cut"
    )]
    IdleBelowKeepalive {
        /// The idle timeout.
        idle: u64,
        /// Keepalive interval plus timeout.
        keepalive: u64,
    },
    /// A limit is outside its allowed range.
    #[error("{name} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// The flag.
        name: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

impl Config {
    /// Checks that every limit is usable.
    ///
    /// ```
    /// let config = kv_server::config::Config::default();
    /// assert!(config.validate().is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |name, value: u64, min, max| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                })
            }
        };
        check(
            "--max-key-bytes",
            self.limits.max_key_bytes as u64,
            1,
            1 << 20,
        )?;
        // The smallest encoded value (a boolean) is 2 bytes.
        check(
            "--max-value-bytes",
            self.limits.max_value_bytes as u64,
            2,
            MAX_VALUE_LIMIT as u64,
        )?;
        check("--max-ttl-ms", self.limits.max_ttl_ms, 1, u64::MAX / 4)?;
        check(
            "--max-batch-ops",
            self.limits.max_batch_ops as u64,
            1,
            100_000,
        )?;
        check(
            "--idempotency-window-ms",
            self.engine.idempotency_window_ms,
            1,
            7 * 86_400_000,
        )?;
        check(
            "--idempotency-max-ids",
            self.engine.idempotency_max_ids as u64,
            1,
            100_000_000,
        )?;
        check(
            "--watch-history-events",
            self.engine.watch_history_events as u64,
            1,
            100_000_000,
        )?;
        check(
            "--watch-history-bytes",
            self.engine.watch_history_bytes as u64,
            1024,
            1 << 40,
        )?;
        check(
            "--watch-history-total-bytes",
            self.engine.watch_history_total_bytes as u64,
            1024,
            1 << 40,
        )?;
        check(
            "--expiry-interval-ms",
            self.expiry_interval.as_millis() as u64,
            1,
            60_000,
        )?;
        check(
            "--max-memory",
            self.max_memory,
            crate::memory::MIN_LIMIT,
            u64::MAX,
        )?;
        check("--segment-bytes", self.log.segment_bytes, 4096, 1 << 40)?;
        check(
            "--max-queued-write-bytes",
            self.log.max_queued_bytes as u64,
            1 << 20,
            1 << 40,
        )?;
        if let FsyncPolicy::Interval(every) = self.log.fsync {
            check("--fsync interval", every.as_millis() as u64, 1, 60_000)?;
        }
        check("--max-connections", self.max_connections as u64, 1, 1 << 20)?;
        check(
            "--max-concurrent-streams",
            u64::from(self.max_concurrent_streams),
            1,
            1 << 16,
        )?;
        let ms = |d: Duration| d.as_millis() as u64;
        check(
            "--max-request-time-ms",
            ms(self.max_request_time),
            1,
            86_400_000,
        )?;
        check(
            "--keepalive-interval-ms",
            ms(self.keepalive_interval),
            100,
            86_400_000,
        )?;
        check(
            "--keepalive-timeout-ms",
            ms(self.keepalive_timeout),
            100,
            86_400_000,
        )?;
        let keepalive = ms(self.keepalive_interval) + ms(self.keepalive_timeout);
        if ms(self.idle_timeout) <= keepalive {
            return Err(ConfigError::IdleBelowKeepalive {
                idle: ms(self.idle_timeout),
                keepalive,
            });
        }
        if self.admin_token.is_none() && !self.listen.ip().is_loopback() && !self.insecure_open {
            return Err(ConfigError::OpenModeExposed { addr: self.listen });
        }
        check(
            "--shutdown-grace-ms",
            self.shutdown_grace.as_millis() as u64,
            0,
            3_600_000,
        )?;
        Ok(())
    }
}

/// Command-line flags of `kv-server`. Every flag can also be set through the
/// environment variable shown in `--help`.
#[derive(Parser, Clone)]
#[command(
    name = "kv-server",
    version,
    about = "Project-scoped key-value service with TTL over gRPC"
)]
pub struct Cli {
    /// Address to listen on (use port 0 for any free port).
    #[arg(long, env = "KV_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of the log, snapshots and lock file (created if missing).
    #[arg(long, env = "KV_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// When to fsync the log: always (before each reply; survives power
    /// loss), `interval:<ms>` (at most that many ms of writes lost on an OS crash) or
    /// never (the OS decides). A process crash loses nothing in any mode.
    #[arg(long, env = "KV_FSYNC", default_value = DEFAULT_FSYNC)]
    pub fsync: FsyncPolicy,

    /// Truncate the log at the first corrupt record instead of refusing to
    /// start (drops that record and everything after it, and says how much).
    #[arg(long, env = "KV_REPAIR")]
    pub repair: bool,

    /// Log bytes before a snapshot is taken (one also needs the log to be
    /// twice the live data).
    #[arg(long, env = "KV_SNAPSHOT_MIN_LOG_BYTES", default_value_t = DEFAULT_SNAPSHOT_MIN_LOG_BYTES)]
    pub snapshot_min_log_bytes: u64,

    /// Size at which a log segment is closed and the next one started.
    #[arg(long, env = "KV_SEGMENT_BYTES", default_value_t = DEFAULT_SEGMENT_BYTES)]
    pub segment_bytes: u64,

    /// Most bytes of writes waiting for the log writer (one project may
    /// fill half); past it writes are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "KV_MAX_QUEUED_WRITE_BYTES", default_value_t = DEFAULT_MAX_QUEUED_WRITE_BYTES)]
    pub max_queued_write_bytes: usize,

    /// Largest key, in bytes.
    #[arg(long, env = "KV_MAX_KEY_BYTES", default_value_t = DEFAULT_MAX_KEY_BYTES)]
    pub max_key_bytes: usize,

    /// Largest value, in bytes of encoded google.protobuf.Value.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,

    /// Longest TTL, in milliseconds (default: 10 years).
    #[arg(long, env = "KV_MAX_TTL_MS", default_value_t = DEFAULT_MAX_TTL_MS)]
    pub max_ttl_ms: u64,

    /// How often expired keys are reclaimed, in milliseconds.
    #[arg(long, env = "KV_EXPIRY_INTERVAL_MS", default_value_t = DEFAULT_EXPIRY_INTERVAL_MS)]
    pub expiry_interval_ms: u64,

    /// Milliseconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "KV_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    /// Allow open mode (no authentication) on a non-loopback address.
    #[arg(long, env = "KV_INSECURE_OPEN")]
    pub insecure_open: bool,

    /// Most connections open at once; more are accepted and closed.
    #[arg(long, env = "KV_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most concurrent requests (HTTP/2 streams) per connection.
    #[arg(long, env = "KV_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// Threads serving requests; 0 is one per core. With a load generator
    /// on the same machine, fewer threads than cores leaves it room.
    #[arg(long, env = "KV_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Longest a request may run, in milliseconds, whatever its deadline.
    #[arg(long, env = "KV_MAX_REQUEST_TIME_MS", default_value_t = DEFAULT_MAX_REQUEST_TIME_MS)]
    pub max_request_time_ms: u64,

    /// Interval of HTTP/2 keepalive pings to each client, in milliseconds.
    #[arg(long, env = "KV_KEEPALIVE_INTERVAL_MS", default_value_t = DEFAULT_KEEPALIVE_INTERVAL_MS)]
    pub keepalive_interval_ms: u64,

    /// How long a keepalive ping may go unanswered, in milliseconds.
    #[arg(long, env = "KV_KEEPALIVE_TIMEOUT_MS", default_value_t = DEFAULT_KEEPALIVE_TIMEOUT_MS)]
    pub keepalive_timeout_ms: u64,

    /// How long a connection may send nothing at all, in milliseconds.
    #[arg(long, env = "KV_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS)]
    pub idle_timeout_ms: u64,

    /// Most operations, checks or keys in one Batch, GetMany, SetMany or
    /// DeleteMany.
    #[arg(long, env = "KV_MAX_BATCH_OPS", default_value_t = DEFAULT_MAX_BATCH_OPS)]
    pub max_batch_ops: usize,

    /// How long a request id's outcome is remembered for retries, in ms.
    #[arg(long, env = "KV_IDEMPOTENCY_WINDOW_MS", default_value_t = DEFAULT_IDEMPOTENCY_WINDOW_MS)]
    pub idempotency_window_ms: u64,

    /// Most request ids remembered per project (past it, the oldest are
    /// forgotten before their window ends).
    #[arg(long, env = "KV_IDEMPOTENCY_MAX_IDS", default_value_t = DEFAULT_IDEMPOTENCY_MAX_IDS)]
    pub idempotency_max_ids: usize,

    /// Most recent changes each project keeps, for watches to resume from
    /// and slow watchers to catch up on.
    #[arg(long, env = "KV_WATCH_HISTORY_EVENTS", default_value_t = DEFAULT_WATCH_HISTORY_EVENTS)]
    pub watch_history_events: usize,

    /// Most bytes (keys and values) of those changes per project.
    #[arg(long, env = "KV_WATCH_HISTORY_BYTES", default_value_t = DEFAULT_WATCH_HISTORY_BYTES)]
    pub watch_history_bytes: usize,

    /// Most bytes of changes all projects keep together (past it, the
    /// project publishing drops its oldest).
    #[arg(long, env = "KV_WATCH_HISTORY_TOTAL_BYTES", default_value_t = DEFAULT_WATCH_HISTORY_TOTAL_BYTES)]
    pub watch_history_total_bytes: usize,

    /// Most keys each project may hold (0: unlimited).
    #[arg(long, env = "KV_DEFAULT_MAX_KEYS", default_value_t = 0)]
    pub default_max_keys: u64,

    /// Most bytes (keys plus encoded values) each project may hold (0:
    /// unlimited).
    #[arg(long, env = "KV_DEFAULT_MAX_BYTES", default_value_t = 0)]
    pub default_max_bytes: u64,

    /// Most calls each project may make per one-second window (0:
    /// unlimited); a project's quota may set its own.
    #[arg(long, env = "KV_DEFAULT_OPS_PER_SECOND", default_value_t = 0)]
    pub default_ops_per_second: u64,

    /// Most bytes (keys plus encoded values) each project may write per
    /// one-second window (0: unlimited); a project's quota may set its own.
    #[arg(long, env = "KV_DEFAULT_WRITE_BYTES_PER_SECOND", default_value_t = 0)]
    pub default_write_bytes_per_second: u64,

    /// Require authentication: the admin token is the content of this file
    /// (surrounding whitespace ignored).
    #[arg(long, env = "KV_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The admin token itself (prefer --admin-token-file: environments leak).
    #[arg(long = "admin-token", env = "KV_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "KV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, env = "KV_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Memory limit: writes that would take the process past it are
    /// refused (RESOURCE_EXHAUSTED); reads, deletes and clears still work.
    /// Bytes or a size such as 512MiB or 2GiB; default 75% of the smaller
    /// of the cgroup limit and the machine's memory.
    #[arg(long, env = "KV_MAX_MEMORY", value_parser = crate::memory::parse_size)]
    pub max_memory: Option<u64>,

    /// The storage engine and its flags.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Log format, level and the slow-request warning.
    #[command(flatten)]
    pub log: crate::logging::LogArgs,

    /// The configuration file.
    #[command(flatten)]
    pub file: crate::config_file::FileArgs,

    /// Prometheus metrics and their flags.
    #[command(flatten)]
    pub metrics: crate::metrics::options::MetricsArgs,
}

impl Cli {
    /// Resolves the flags into a validated [`Config`].
    ///
    /// ```
    /// use clap::Parser;
    /// let config = kv_server::config::Cli::parse_from(["kv-server", "--max-key-bytes", "100"])
    ///     .into_config()
    ///     .unwrap();
    /// assert_eq!(config.limits.max_key_bytes, 100);
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a value is out of range.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let admin_token = match (&self.admin_token_file, &self.admin_token) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::AdminTokenTwice);
            }
            (Some(path), None) => {
                let secret = std::fs::read_to_string(path).map_err(|source| {
                    ConfigError::AdminTokenFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(AdminToken::new(&secret)?)
            }
            (None, Some(secret)) => Some(AdminToken::new(secret)?),
            (None, None) => None,
        };
        let config = Config {
            slow_request: self.log.slow_request(),
            storage: self.storage.storage()?,
            metrics: self.metrics.config(),
            max_memory: self
                .max_memory
                .unwrap_or_else(|| crate::memory::default_limit().0),
            admin_token,
            listen: self.listen,
            data_dir: self.data_dir,
            log: LogOptions {
                fsync: self.fsync,
                repair: self.repair,
                snapshot_min_log_bytes: self.snapshot_min_log_bytes,
                segment_bytes: self.segment_bytes,
                max_queued_bytes: self.max_queued_write_bytes,
                quota: Quota {
                    max_keys: (self.default_max_keys > 0).then_some(self.default_max_keys),
                    max_bytes: (self.default_max_bytes > 0).then_some(self.default_max_bytes),
                    ops_per_second: (self.default_ops_per_second > 0)
                        .then_some(self.default_ops_per_second),
                    write_bytes_per_second: (self.default_write_bytes_per_second > 0)
                        .then_some(self.default_write_bytes_per_second),
                },
            },
            limits: Limits {
                max_key_bytes: self.max_key_bytes,
                max_value_bytes: self.max_value_bytes,
                max_ttl_ms: self.max_ttl_ms,
                max_batch_ops: self.max_batch_ops,
            },
            engine: Settings {
                idempotency_window_ms: self.idempotency_window_ms,
                idempotency_max_ids: self.idempotency_max_ids,
                watch_history_events: self.watch_history_events,
                watch_history_bytes: self.watch_history_bytes,
                watch_history_total_bytes: self.watch_history_total_bytes,
            },
            expiry_interval: Duration::from_millis(self.expiry_interval_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            insecure_open: self.insecure_open,
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            worker_threads: self.worker_threads,
            max_request_time: Duration::from_millis(self.max_request_time_ms),
            keepalive_interval: Duration::from_millis(self.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            tls: match (self.tls_cert, self.tls_key, self.tls_client_ca) {
                (None, None, None) => None,
                (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                }),
                (None, None, Some(_)) => {
                    return Err(ConfigError::Tls(
                        "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first",
                    ));
                }
                _ => {
                    return Err(ConfigError::Tls(
                        "--tls-cert and --tls-key go together: give both or neither",
                    ));
                }
            },
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_equal_config_default() {
        let from_flags = Cli::try_parse_from(["kv-server"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(from_flags, Config::default());
    }

    #[test]
    fn out_of_range_limits_are_refused_by_name() {
        let err = Cli::try_parse_from(["kv-server", "--max-value-bytes", "1"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("--max-value-bytes is 1"), "{err}");
        let err = Cli::try_parse_from(["kv-server", "--max-ttl-ms", "0"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("--max-ttl-ms"), "{err}");
    }
}
