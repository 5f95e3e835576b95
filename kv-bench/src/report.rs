//! The result of a run: the JSON object `--json` writes (and `chart` reads)
//! and the table on stdout.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    cli::{RunArgs, TargetKind, Workload},
    runner::{Measured, SlowOp},
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
    /// With `--slow-ms`: the threshold, how many operations passed it and
    /// the slowest of them.
    pub(crate) slow: Option<Slow>,
}

/// Operations slower than `--slow-ms`.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct Slow {
    pub(crate) threshold_ms: u64,
    pub(crate) count: u64,
    /// The slowest, slowest first.
    pub(crate) slowest: Vec<SlowOp>,
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
        let slow = args.slow_ms.map(|threshold_ms| Slow {
            threshold_ms,
            count: measured.slow_count,
            slowest: measured.slowest(),
        });
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
            slow,
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
        let mut table = format!("{}\n{}\n", header.trim_end(), row.trim_end());
        if let Some(slow) = &self.slow {
            table.push_str(&format!(
                "{} operations slower than {} ms",
                slow.count, slow.threshold_ms
            ));
            if !slow.slowest.is_empty() {
                table.push_str("; the slowest (started, UTC):");
            }
            table.push('\n');
            for op in slow.slowest.iter().take(20) {
                table.push_str(&format!(
                    "  {}  {:<8} {:>9} µs\n",
                    utc_time_of_day(op.started_unix_ms),
                    op.op,
                    op.latency_us
                ));
            }
        }
        table
    }
}

/// `hh:mm:ss.mmm` of a Unix time in ms, as server logs print it.
fn utc_time_of_day(unix_ms: u64) -> String {
    let ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::utc_time_of_day;

    #[test]
    fn time_of_day_is_utc_with_milliseconds() {
        // 2026-12-03T01:13:18.483Z
        assert_eq!(utc_time_of_day(1_796_260_398_483), "01:13:18.483");
        assert_eq!(utc_time_of_day(0), "00:00:00.000");
        assert_eq!(utc_time_of_day(86_400_000 + 3_723_004), "01:02:03.004");
        assert_eq!(utc_time_of_day(86_399_999), "23:59:59.999");
    }
}
