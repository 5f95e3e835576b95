//! The result of a run: the JSON object `--json` writes (and `chart` reads)
//! and the table on stdout.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    cli::{RunArgs, TargetKind, Workload},
    runner::Measured,
};

/// Latency percentiles of the successful operations of the window, in µs.
#[derive(Serialize, Debug, Clone, Default)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

/// One run, as `--json` writes it. Fields after `rate` are extras a reader
/// may ignore; `chart` reads only `label`, `target`, `workload`,
/// `concurrency` and `ops_per_sec`.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct RunResult {
    pub(crate) target: String,
    pub(crate) workload: String,
    pub(crate) label: String,
    pub(crate) concurrency: u32,
    pub(crate) connections: u32,
    pub(crate) client_threads: u32,
    /// The measured window (warm-up excluded).
    pub(crate) duration_s: f64,
    /// Successful operations that started in the window.
    pub(crate) ops: u64,
    pub(crate) ops_per_sec: f64,
    /// Keys per second: `ops_per_sec` times the keys per operation.
    pub(crate) keys_per_sec: f64,
    /// Failed operations in the window (of any kind).
    pub(crate) errors: u64,
    pub(crate) latency_us: Latency,
    pub(crate) value_bytes: usize,
    pub(crate) key_bytes: usize,
    /// Size of the key space.
    pub(crate) keys: u64,
    /// kv projects the key space was spread over (`--projects`).
    pub(crate) projects: u64,
    pub(crate) ttl_share: f64,
    /// Keys per operation: `--batch` for get-many/set-many, else 1.
    pub(crate) batch: usize,
    /// The open-loop rate asked for (ops/s), or null for a closed loop.
    pub(crate) rate: Option<f64>,
    /// Keys that gets (and has) looked for and did not find.
    pub(crate) misses: u64,
    pub(crate) errors_by_kind: BTreeMap<String, u64>,
    /// The first error message of the run, warm-up included.
    pub(crate) first_error: Option<String>,
    pub(crate) redis_mode: Option<String>,
    /// The ratios of a mixed workload.
    pub(crate) mix: Option<String>,
    pub(crate) warmup_s: f64,
    /// How long `--preload` took, when given.
    pub(crate) preload_s: Option<f64>,
    pub(crate) seed: u64,
}

impl RunResult {
    pub(crate) fn new(args: &RunArgs, measured: Measured, preload_s: Option<f64>) -> Self {
        let duration_s = args.duration.as_secs_f64();
        let hist = &measured.hist;
        let latency = if measured.ops == 0 {
            Latency::default()
        } else {
            Latency {
                p50: hist.value_at_quantile(0.50),
                p90: hist.value_at_quantile(0.90),
                p99: hist.value_at_quantile(0.99),
                p999: hist.value_at_quantile(0.999),
                max: hist.max(),
                mean: hist.mean(),
            }
        };
        let mut errors_by_kind = measured.errors.clone();
        if measured.unfinished > 0 {
            errors_by_kind.insert("unfinished".into(), measured.unfinished);
        }
        Self {
            target: args.target.name().into(),
            workload: args.workload.name().into(),
            label: args.label.clone(),
            concurrency: args.concurrency,
            connections: args.effective_connections(),
            client_threads: args.threads,
            duration_s,
            ops: measured.ops,
            ops_per_sec: measured.ops as f64 / duration_s,
            keys_per_sec: measured.keys as f64 / duration_s,
            errors: measured.error_count(),
            latency_us: latency,
            value_bytes: args.value_bytes,
            key_bytes: args.key_bytes,
            keys: args.keys,
            projects: args.projects,
            ttl_share: args.ttl_share,
            batch: args.keys_per_op(),
            rate: args.rate,
            misses: measured.misses,
            errors_by_kind,
            first_error: measured.first_error.map(|(_, message)| message),
            redis_mode: (args.target == TargetKind::Redis).then(|| args.redis_mode.name().into()),
            mix: (args.workload == Workload::Mixed).then(|| args.mix().to_string()),
            warmup_s: args.warmup.as_secs_f64(),
            preload_s,
            seed: args.seed,
        }
    }

    /// A header line and one row, aligned.
    pub(crate) fn table(&self) -> String {
        let target = match &self.redis_mode {
            Some(mode) => format!("{} ({mode})", self.target),
            None => self.target.clone(),
        };
        // Minimum widths keep rows of separate runs (a script's output)
        // aligned for the usual magnitudes.
        let rows = [
            ("target", target, 19),
            ("workload", self.workload.clone(), 8),
            ("conc", self.concurrency.to_string(), 4),
            ("conns", self.connections.to_string(), 5),
            ("threads", self.client_threads.to_string(), 7),
            ("duration", format!("{:.1}s", self.duration_s), 8),
            ("ops", self.ops.to_string(), 8),
            ("ops/s", format!("{:.0}", self.ops_per_sec), 7),
            ("keys/s", format!("{:.0}", self.keys_per_sec), 7),
            ("errors", self.errors.to_string(), 6),
            ("misses", self.misses.to_string(), 6),
            ("p50µs", self.latency_us.p50.to_string(), 6),
            ("p90µs", self.latency_us.p90.to_string(), 6),
            ("p99µs", self.latency_us.p99.to_string(), 6),
            ("p999µs", self.latency_us.p999.to_string(), 7),
            ("maxµs", self.latency_us.max.to_string(), 7),
        ];
        let mut header = String::new();
        let mut row = String::new();
        for (i, (name, value, min)) in rows.iter().enumerate() {
            let width = name.chars().count().max(value.chars().count()).max(*min);
            let sep = if i == 0 { "" } else { "  " };
            // Text columns left-aligned, numbers right-aligned.
            if i < 2 {
                header.push_str(&format!("{sep}{name:<width$}"));
                row.push_str(&format!("{sep}{value:<width$}"));
            } else {
                header.push_str(&format!("{sep}{name:>width$}"));
                row.push_str(&format!("{sep}{value:>width$}"));
            }
        }
        format!("{}\n{}\n", header.trim_end(), row.trim_end())
    }
}
