//! Command-line flags, and the checks that need more than one flag.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default font for `chart`: Debian's `fonts-dejavu-core`.
pub(crate) const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Most keys one GetMany/SetMany may carry by default on kv-server.
const MAX_BATCH: usize = 1000;

/// The hash tag that puts every key of one redis-cluster batch call in one
/// slot: `{b<task>}`, written before the key's usual name.
pub(crate) fn batch_tag(task: u32) -> String {
    format!("{{b{task}}}")
}

#[derive(Parser, Debug)]
#[command(
    name = "kv-bench",
    version,
    about = "Load generator: kv (SDK or unary gRPC), Redis, Redis Cluster, etcd and a bare tonic reference server, one harness"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Measures one target under one workload and prints the result.
    Run(Box<RunArgs>),
    /// Serves the kv.v1 API's Get/Set/Has/Delete/GetMany/SetMany from a
    /// plain map: the floor kv-server's unary path is compared with.
    ReferenceServer(ReferenceArgs),
    /// Plots ops/s against concurrency from result JSON files into a PNG.
    Chart(ChartArgs),
    /// Writes keys with TTLs while watching the project, and measures how
    /// long after each key's deadline its EXPIRED event arrives.
    Expiry(ExpiryArgs),
    /// A quiet project's latency at a fixed rate: alone, beside a flooding
    /// project, and beside the flooder under a rate limit.
    NoisyNeighbour(crate::neighbours::NeighbourArgs),
}

/// What `run` drives.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    /// The kv-client SDK (`Project::get/set/has/delete/get_many/set_many`).
    Sdk,
    /// The generated tonic client, plain unary calls: kv-server or the
    /// reference server.
    Unary,
    /// Redis through the `redis` crate.
    Redis,
    /// A Redis Cluster driven directly through the `redis` crate's cluster
    /// client: plain GET, SET (with PX for TTL writes), EXISTS and DEL, each
    /// routed to the master that owns its key's slot, over one shared
    /// cluster connection (one multiplexed connection per node). get-many and
    /// set-many are pipelines of GETs/SETs, and a pipeline's keys must share
    /// a slot: every key of a batch call carries its task's hash tag
    /// `{b<task>}` before the usual name (so each task's batches go to one
    /// master, and batch keys are longer than `--key-bytes` by the tag).
    RedisCluster,
    /// etcd's v3 gRPC KV service.
    Etcd,
}

impl TargetKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sdk => "sdk",
            Self::Unary => "unary",
            Self::Redis => "redis",
            Self::RedisCluster => "redis-cluster",
            Self::Etcd => "etcd",
        }
    }

    fn is_kv(self) -> bool {
        matches!(self, Self::Sdk | Self::Unary)
    }
}

/// The operations a run issues.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    Get,
    Set,
    Has,
    Delete,
    /// Single-key operations in the ratios of `--mix`.
    Mixed,
    /// `--batch` keys per call (Redis: a pipeline of GETs; Redis Cluster:
    /// one too, its keys under the task's hash tag `{b<task>}`).
    GetMany,
    /// `--batch` keys per call (Redis: a pipeline of SETs; Redis Cluster:
    /// one too, its keys under the task's hash tag `{b<task>}`).
    SetMany,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Set => "set",
            Self::Has => "has",
            Self::Delete => "delete",
            Self::Mixed => "mixed",
            Self::GetMany => "get-many",
            Self::SetMany => "set-many",
        }
    }

    pub(crate) fn is_batch(self) -> bool {
        matches!(self, Self::GetMany | Self::SetMany)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RedisMode {
    /// One multiplexed connection shared by every task (it pipelines
    /// whatever the tasks have in flight).
    Multiplexed,
    /// `--connections` connections, tasks spread over them.
    Connections,
}

impl RedisMode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Multiplexed => "multiplexed",
            Self::Connections => "connections",
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyDist {
    /// Every key of the key space equally likely.
    Uniform,
}

/// Ratios of single-key operations for `--workload mixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mix {
    pub(crate) get: u32,
    pub(crate) set: u32,
    pub(crate) has: u32,
    pub(crate) delete: u32,
}

impl Mix {
    fn total(self) -> u64 {
        u64::from(self.get) + u64::from(self.set) + u64::from(self.has) + u64::from(self.delete)
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("get", self.get),
            ("set", self.set),
            ("has", self.has),
            ("delete", self.delete),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The system to drive.
    #[arg(long, value_enum)]
    pub(crate) target: TargetKind,

    /// The operations to issue.
    #[arg(long, value_enum, default_value = "get")]
    pub(crate) workload: Workload,

    /// Ratios for `--workload mixed`, like `get=80,set=20` (of get, set, has,
    /// delete). Default get=80,set=20.
    #[arg(long, value_parser = parse_mix)]
    pub(crate) mix: Option<Mix>,

    /// Size of the key space; keys are drawn from it.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) keys: u64,

    /// Length of every key: `k` and the key's number, zero-padded
    /// (redis-cluster get-many/set-many: after the `{b<task>}` hash tag).
    #[arg(long, default_value_t = 16)]
    pub(crate) key_bytes: usize,

    /// Value size. kv: a JSON string whose encoded google.protobuf.Value is
    /// this many bytes; Redis, Redis Cluster and etcd: this many raw bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_bytes: usize,

    /// Share of writes (0 to 1) that carry a TTL of `--ttl-ms`.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub(crate) ttl_share: f64,

    /// The TTL of writes that carry one, in milliseconds.
    #[arg(long, default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ttl_ms: u64,

    /// Keys per call of get-many and set-many (Redis: pipeline depth; Redis
    /// Cluster: the pipeline's keys all carry the hash tag `{b<task>}`, so
    /// they share a slot).
    #[arg(long, default_value_t = 16)]
    pub(crate) batch: usize,

    /// Concurrent tasks issuing operations.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,

    /// Connections to the server; tasks are spread over them. With several
    /// kv `--url`s: this many per URL. redis-cluster: 1 (one shared cluster
    /// connection).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) connections: u32,

    /// Worker threads of the client's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: u32,

    /// How long to measure, like `10s` or `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,

    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,

    /// Write every key of the key space once before the warm-up, so gets hit
    /// (redis-cluster get-many/set-many: once under each task's hash tag,
    /// `--keys` times `--concurrency` writes).
    #[arg(long)]
    pub(crate) preload: bool,

    /// Open loop: issue this many operations per second in total, on a fixed
    /// schedule, and measure each from its scheduled start (no coordinated
    /// omission). Without it, each task issues its next operation when the
    /// previous one returns (closed loop).
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,

    /// With `--rate`: start each operation at its scheduled time to the
    /// microsecond, by yielding through the last millisecond before it
    /// instead of trusting the runtime's timer (whose 1 ms ticks start
    /// operations up to 1 ms late, in bursts, and count that as latency).
    /// Keeps the client's thread busy: give kv-bench a core of its own
    /// (`taskset`).
    #[arg(long, requires = "rate")]
    pub(crate) precise_start: bool,

    /// kv project the keys live in (kv targets).
    #[arg(long, default_value = "bench")]
    pub(crate) project: String,

    /// Spread the key space over this many kv projects, `<project>-<i>`,
    /// each holding an equal run of consecutive keys (kv targets,
    /// single-key workloads; the preload still writes in batches, one per
    /// project). 1: every key in `--project` itself.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) projects: u64,

    /// Bearer token sent with every call (kv targets).
    #[arg(long, env = "KV_BENCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// Server address: `host:port` or a URL. Defaults: kv
    /// `http://127.0.0.1:50051`, Redis `redis://127.0.0.1:6379`, Redis
    /// Cluster `redis://127.0.0.1:7000`, etcd `http://127.0.0.1:2379`.
    /// Several, comma-separated: kv targets spread the tasks round-robin over
    /// one client per URL (`--connections` per URL); redis-cluster takes
    /// them as seed nodes.
    #[arg(long, visible_alias = "addr")]
    pub(crate) url: Option<String>,

    /// Redis: one shared multiplexed connection, or `--connections` of them.
    #[arg(long, value_enum, default_value = "multiplexed")]
    pub(crate) redis_mode: RedisMode,

    /// etcd: member-local reads instead of etcd's default linearizable ones.
    #[arg(long)]
    pub(crate) etcd_serializable: bool,

    /// How keys are drawn from the key space.
    #[arg(long, value_enum, default_value = "uniform")]
    pub(crate) key_dist: KeyDist,

    /// Seed of the key choice (task i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,

    /// Also write the result as a JSON object to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Free text stored in the result (the series name in `chart`).
    #[arg(long, default_value = "")]
    pub(crate) label: String,

    /// Also list the measured operations slower than this many ms (the
    /// slowest 100, with the UTC time each started), to line a latency
    /// spike up with a server's log: a snapshot, an fsync, an expiry sweep.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) slow_ms: Option<u64>,
}

impl RunArgs {
    /// The default `--mix` when none is given.
    pub(crate) fn mix(&self) -> Mix {
        self.mix.unwrap_or(Mix {
            get: 80,
            set: 20,
            has: 0,
            delete: 0,
        })
    }

    /// Keys one operation touches.
    pub(crate) fn keys_per_op(&self) -> usize {
        if self.workload.is_batch() {
            self.batch
        } else {
            1
        }
    }

    /// Connections actually opened (Redis multiplexed and Redis Cluster:
    /// one; kv: `--connections` per URL).
    pub(crate) fn effective_connections(&self) -> u32 {
        match self.target {
            TargetKind::Redis if self.redis_mode == RedisMode::Multiplexed => 1,
            TargetKind::RedisCluster => 1,
            TargetKind::Sdk | TargetKind::Unary => self
                .connections
                .saturating_mul(u32::try_from(self.url_list().len()).unwrap_or(u32::MAX)),
            TargetKind::Redis | TargetKind::Etcd => self.connections,
        }
    }

    /// `--url` split at commas (one entry when it has none).
    fn url_list(&self) -> Vec<&str> {
        match &self.url {
            None => vec![""],
            Some(urls) => urls.split(',').map(str::trim).collect(),
        }
    }

    /// The server URLs for the target (one unless `--url` lists several),
    /// each with its scheme.
    pub(crate) fn urls(&self) -> Vec<String> {
        let (scheme, default) = match self.target {
            TargetKind::Sdk | TargetKind::Unary => ("http", "127.0.0.1:50051"),
            TargetKind::Redis => ("redis", "127.0.0.1:6379"),
            TargetKind::RedisCluster => ("redis", "127.0.0.1:7000"),
            TargetKind::Etcd => ("http", "127.0.0.1:2379"),
        };
        if self.url.is_none() {
            return vec![format!("{scheme}://{default}")];
        }
        self.url_list()
            .into_iter()
            .map(|url| {
                if url.contains("://") {
                    url.to_string()
                } else {
                    format!("{scheme}://{url}")
                }
            })
            .collect()
    }

    /// Batch keys carry a per-task hash tag (`{b<task>}`): redis-cluster
    /// get-many and set-many, whose pipelines must stay in one slot. The
    /// number of tasks, so of tags, when they do.
    pub(crate) fn batch_tags(&self) -> Option<u32> {
        (self.target == TargetKind::RedisCluster && self.workload.is_batch())
            .then_some(self.concurrency)
    }

    /// Checks what clap cannot check flag by flag.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        let digits = (self.keys - 1).to_string().len();
        if self.key_bytes < 1 + digits {
            return Err(format!(
                "--key-bytes {} is too short for --keys {}: keys are `k` plus {digits} digits, so at least {} bytes",
                self.key_bytes,
                self.keys,
                1 + digits
            ));
        }
        if self.key_bytes > 4096 {
            return Err(format!(
                "--key-bytes {} is over kv's limit of 4096",
                self.key_bytes
            ));
        }
        if self.target.is_kv() && self.value_bytes < 2 {
            return Err(format!(
                "--value-bytes {} is too small: the smallest kv value (an empty JSON string) encodes to 2 bytes",
                self.value_bytes
            ));
        }
        if self.workload.is_batch() && !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(format!(
                "--batch {} is out of range: 1 to {MAX_BATCH} keys per call",
                self.batch
            ));
        }
        if self.mix.is_some() && self.workload != Workload::Mixed {
            return Err("--mix applies to --workload mixed only".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if self.connections > self.concurrency {
            return Err(format!(
                "--connections {} is more than --concurrency {}: some connections would carry nothing",
                self.connections, self.concurrency
            ));
        }
        let urls = self.url_list();
        if urls.iter().any(|url| url.is_empty()) && self.url.is_some() {
            return Err(format!(
                "--url {:?} has an empty entry: give host:port or URLs, separated by single commas",
                self.url.as_deref().unwrap_or_default()
            ));
        }
        if urls.len() > 1 {
            if !matches!(
                self.target,
                TargetKind::Sdk | TargetKind::Unary | TargetKind::RedisCluster
            ) {
                return Err(format!(
                    "--url lists {} URLs: several apply to the kv targets (sdk, unary) and redis-cluster only",
                    urls.len()
                ));
            }
            if self.effective_connections() > self.concurrency {
                return Err(format!(
                    "--connections {} on each of {} URLs is more than --concurrency {}: some connections would carry nothing",
                    self.connections,
                    urls.len(),
                    self.concurrency
                ));
            }
        }
        if self.target == TargetKind::RedisCluster && self.connections > 1 {
            return Err(
                "--target redis-cluster shares one cluster connection (one multiplexed connection per node); --connections must be 1"
                    .into(),
            );
        }
        if self.target == TargetKind::Redis
            && self.redis_mode == RedisMode::Multiplexed
            && self.connections > 1
        {
            return Err(
                "--redis-mode multiplexed shares one connection; use --redis-mode connections for --connections > 1"
                    .into(),
            );
        }
        if self.projects > 1 {
            if !self.target.is_kv() {
                return Err("--projects applies to the kv targets (sdk, unary) only".into());
            }
            if self.workload.is_batch() {
                return Err(format!(
                    "--projects spreads single-key operations; --workload {} takes keys of one project per call, use get, set, has, delete or mixed",
                    self.workload.name()
                ));
            }
            if self.projects > self.keys {
                return Err(format!(
                    "--projects {} is more than --keys {}: some projects would hold no key",
                    self.projects, self.keys
                ));
            }
        }
        if !self.target.is_kv() && self.token.is_some() {
            return Err("--token applies to the kv targets (sdk, unary) only".into());
        }
        if self.etcd_serializable && self.target != TargetKind::Etcd {
            return Err("--etcd-serializable applies to --target etcd only".into());
        }
        if self.target == TargetKind::Etcd {
            if self.workload.is_batch() {
                return Err(format!(
                    "--workload {} is not supported for etcd (it would need a Txn); use get, set, has, delete or mixed",
                    self.workload.name()
                ));
            }
            if self.ttl_share > 0.0 {
                return Err(
                    "--ttl-share is not supported for etcd: expiry there needs leases".into(),
                );
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub(crate) struct ExpiryArgs {
    /// kv-server address: `host:port` or a URL.
    #[arg(long, visible_alias = "addr", default_value = "http://127.0.0.1:50051")]
    pub(crate) url: String,

    /// kv project the keys are written to (and watched in).
    #[arg(long, default_value = "bench")]
    pub(crate) project: String,

    /// Bearer token sent with every call.
    #[arg(long, env = "KV_BENCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// Keys to write, each with a TTL.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) keys: u64,

    /// The earliest deadline, in milliseconds after the start of writing.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ttl_ms: u64,

    /// Deadlines are spread uniformly over this many milliseconds after
    /// `--ttl-ms` (one deadline per batch); 0: every key is due at once.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) spread_ms: u64,

    /// Size of every value: a JSON string whose encoded
    /// google.protobuf.Value is this many bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_bytes: usize,

    /// Keys per SetMany call (all of a call share one deadline).
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,

    /// SetMany calls in flight while writing.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,

    /// Worker threads of the client's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: u32,

    /// How long to wait, past the latest deadline, for the last EXPIRED
    /// event; keys not seen by then are reported as missing.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,

    /// Seed of the deadlines' spread.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,

    /// Also write the result as a JSON object to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Free text stored in the result.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
}

impl ExpiryArgs {
    /// The server URL, with a scheme.
    pub(crate) fn url(&self) -> String {
        if self.url.contains("://") {
            self.url.clone()
        } else {
            format!("http://{}", self.url)
        }
    }

    /// Checks what clap cannot check flag by flag.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.value_bytes < 2 {
            return Err(format!(
                "--value-bytes {} is too small: the smallest kv value (an empty JSON string) encodes to 2 bytes",
                self.value_bytes
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(format!(
                "--batch {} is out of range: 1 to {MAX_BATCH} keys per call",
                self.batch
            ));
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        if self.ttl_ms.checked_add(self.spread_ms).is_none() {
            return Err("--ttl-ms plus --spread-ms is too large".into());
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub(crate) struct ReferenceArgs {
    /// Address to listen on (port 0: any free port; the chosen address is
    /// logged as `listening on ADDR` on stderr).
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub(crate) addr: SocketAddr,

    /// Worker threads of the server's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) workers: u32,
}

#[derive(Args, Debug)]
pub(crate) struct ChartArgs {
    /// Result files, comma-separated: each holds one result object (as
    /// written by `run --json`) or an array of them.
    #[arg(long, required = true, value_delimiter = ',')]
    pub(crate) input: Vec<PathBuf>,

    /// The PNG to write.
    #[arg(long)]
    pub(crate) out: PathBuf,

    /// Title above the chart.
    #[arg(long, default_value = "Throughput vs concurrency")]
    pub(crate) title: String,

    /// TrueType font for the text (Debian package fonts-dejavu-core).
    #[arg(long, default_value = DEFAULT_FONT)]
    pub(crate) font: PathBuf,

    /// Width and height in pixels, like `1200x700`.
    #[arg(long, default_value = "1200x700", value_parser = parse_size)]
    pub(crate) size: (u32, u32),
}

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`, `250us`; a bare number is
/// seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 2m"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use us, ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(number * seconds_per_unit)
        .map_err(|e| format!("{text:?} is not a valid duration: {e}"))
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&share) {
        return Err(format!("{share} is not a share between 0 and 1"));
    }
    Ok(share)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of operations per second"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{text:?}: the rate must be more than 0"));
    }
    Ok(rate)
}

/// Parses `get=80,set=20` (any of get, set, has, delete).
pub(crate) fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        get: 0,
        set: 0,
        has: 0,
        delete: 0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not NAME=WEIGHT, like get=80"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
        let slot = match name.trim() {
            "get" => &mut mix.get,
            "set" => &mut mix.set,
            "has" => &mut mix.has,
            "delete" => &mut mix.delete,
            other => {
                return Err(format!(
                    "unknown operation {other:?} in the mix; use get, set, has or delete"
                ));
            }
        };
        *slot = weight;
    }
    if mix.total() == 0 {
        return Err(format!(
            "the mix {text:?} has no operation with a weight above 0"
        ));
    }
    Ok(mix)
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT"))?;
    let parse = |s: &str| -> Result<u32, String> {
        match s.parse::<u32>() {
            Ok(n) if (200..=8000).contains(&n) => Ok(n),
            _ => Err(format!("{text:?}: sides are 200 to 8000 pixels")),
        }
    };
    Ok((parse(w)?, parse(h)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix = parse_mix("get=80,set=20").unwrap();
        assert_eq!((mix.get, mix.set, mix.has, mix.delete), (80, 20, 0, 0));
        assert_eq!(mix.to_string(), "get=80,set=20");
        assert!(parse_mix("get=0").is_err());
        assert!(
            parse_mix("put=1")
                .unwrap_err()
                .contains("unknown operation")
        );
        assert!(parse_mix("get").is_err());
    }

    #[test]
    fn bare_addresses_get_the_target_scheme() {
        let args = |target: &str, url: &[&str]| {
            let mut argv = vec!["kv-bench", "run", "--target", target];
            argv.extend_from_slice(url);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(args) => args,
                _ => unreachable!(),
            }
        };
        assert_eq!(args("redis", &[]).urls(), ["redis://127.0.0.1:6379"]);
        assert_eq!(
            args("redis-cluster", &[]).urls(),
            ["redis://127.0.0.1:7000"]
        );
        assert_eq!(
            args("sdk", &["--addr", "127.0.0.1:7"]).urls(),
            ["http://127.0.0.1:7"]
        );
        assert_eq!(
            args("etcd", &["--url", "http://h:1"]).urls(),
            ["http://h:1"]
        );
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["kv-bench", "run"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Run(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn projects_spread_single_key_kv_workloads_only() {
        let ok = run_args(&["--target", "sdk", "--keys", "100", "--projects", "10"]);
        assert_eq!(ok.validate(), Ok(()));
        let batch = run_args(&[
            "--target",
            "sdk",
            "--workload",
            "get-many",
            "--projects",
            "2",
        ]);
        assert!(batch.validate().unwrap_err().contains("single-key"));
        let redis = run_args(&["--target", "redis", "--projects", "2"]);
        assert!(redis.validate().unwrap_err().contains("kv targets"));
        let sparse = run_args(&["--target", "unary", "--keys", "3", "--projects", "4"]);
        assert!(sparse.validate().unwrap_err().contains("no key"));
        let spread = crate::target::Spread::new(&ok);
        assert_eq!(spread.names[0], "bench-0");
        assert_eq!(spread.names[9], "bench-9");
        // Ten consecutive keys per project, every key in one.
        let held: Vec<usize> = (0..100).map(|k| spread.of(k)).collect();
        assert!(held.windows(2).all(|w| w[0] <= w[1]));
        assert!((0..10).all(|p| held.iter().filter(|&&h| h == p).count() == 10));
        let one = crate::target::Spread::new(&run_args(&["--target", "sdk"]));
        assert_eq!(
            (one.names.as_slice(), one.of(999_999)),
            (&["bench".to_string()][..], 0)
        );
    }

    #[test]
    fn several_urls_are_split_and_counted() {
        let args = run_args(&[
            "--target",
            "unary",
            "--url",
            "127.0.0.1:1, http://h:2",
            "--connections",
            "2",
            "--concurrency",
            "4",
        ]);
        assert_eq!(args.urls(), ["http://127.0.0.1:1", "http://h:2"]);
        assert_eq!(args.effective_connections(), 4);
        assert_eq!(args.validate(), Ok(()));

        let args = run_args(&["--target", "redis-cluster", "--url", "h:1,h:2,h:3"]);
        assert_eq!(args.urls(), ["redis://h:1", "redis://h:2", "redis://h:3"]);
        assert_eq!(args.effective_connections(), 1);
        assert_eq!(args.batch_tags(), None);
        assert_eq!(args.validate(), Ok(()));
        let args = run_args(&["--target", "redis-cluster", "--workload", "get-many"]);
        assert_eq!(args.batch_tags(), Some(50));
        assert_eq!(batch_tag(7), "{b7}");

        let refused = |argv: &[&str], says: &str| {
            let err = run_args(argv).validate().unwrap_err();
            assert!(err.contains(says), "{argv:?}: {err}");
        };
        refused(&["--target", "redis", "--url", "h:1,h:2"], "several apply");
        refused(&["--target", "etcd", "--url", "h:1,h:2"], "several apply");
        refused(&["--target", "sdk", "--url", "h:1,"], "empty entry");
        refused(
            &[
                "--target",
                "sdk",
                "--url",
                "h:1,h:2,h:3",
                "--concurrency",
                "2",
            ],
            "on each of 3 URLs",
        );
        refused(
            &[
                "--target",
                "redis-cluster",
                "--connections",
                "2",
                "--concurrency",
                "4",
            ],
            "--connections must be 1",
        );
    }
}
