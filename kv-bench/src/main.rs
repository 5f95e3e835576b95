//! `kv-bench`: one load generator, the same harness for every system, so
//! kv, Redis, Redis Cluster, etcd and a bare tonic server are measured the
//! same way.
//!
//! # Subcommands
//!
//! - `run --target sdk|unary|redis|redis-cluster|etcd`: drives one target for
//!   `--warmup` (default 2s), then measures for `--duration` (default 10s),
//!   and prints one table row on stdout (`--json PATH` also writes the
//!   result as JSON). `sdk` is the kv-client SDK; `unary` the generated
//!   tonic client with plain unary calls (against kv-server, or against the
//!   reference server for the bare-tonic floor); `redis` the `redis` crate
//!   (`--redis-mode multiplexed`: one shared connection that pipelines what
//!   is in flight; `connections`: `--connections` of them); `redis-cluster`
//!   a Redis Cluster driven directly by the `redis` crate's cluster client
//!   (GET, SET with PX for TTL writes, EXISTS, DEL, each routed to its
//!   slot's master over one shared cluster connection; get-many/set-many
//!   are pipelines whose keys all carry the task's hash tag `{b<task>}`, as
//!   a pipeline must stay in one slot; `--url` lists seed nodes, default
//!   `redis://127.0.0.1:7000`): the baseline for kv's cluster backend;
//!   `etcd` etcd's v3 KV service (single-key operations only). The kv
//!   targets take several comma-separated `--url`s (front-ends): the tasks
//!   are spread round-robin over `--connections` clients per URL.
//! - `reference-server --addr 127.0.0.1:PORT --workers N`: Get, Set, Has,
//!   Delete, GetMany and SetMany of `kv.v1` served by plain tonic from a
//!   `DashMap`, nothing else (every other method is UNIMPLEMENTED).
//! - `chart --input a.json,b.json --out chart.png`: ops/s against
//!   concurrency, one line per `label`, median of repeated runs.
//! - `expiry --keys N --ttl-ms T --spread-ms S`: watches the project,
//!   writes N keys whose deadlines are spread over `[T, T + S]` ms after the
//!   start, and measures how long after its deadline each key's EXPIRED
//!   event arrives (p50/p90/p99/p999/max ms; see `expiry.rs`). Prints
//!   `keys, ttl_ms, spread_ms, written_s, expired, missing` and the lag
//!   percentiles; `--json` writes `keys, written_in_s, expired, missing,
//!   lag_ms {p50, p90, p99, p999, max}`, the flags (`label, ttl_ms,
//!   spread_ms, value_bytes, batch, concurrency, timeout_s, project,
//!   seed`), then `early` and `server_lag_ms`. Exit 1 when the watch is
//!   cut off or a write fails.
//! - `noisy-neighbour --quiet-rate R --flood-limit L`: a quiet project's
//!   latency at R calls/s alone, beside a project flooding at full speed,
//!   and beside the flooder limited to L ops/s by its quota (see
//!   `neighbours.rs`); prints the quiet p50/p99/max per phase and the p99
//!   ratios.
//!
//! # The harness
//!
//! `--concurrency` tasks on a tokio runtime of `--threads` workers, spread
//! over `--connections` connections. Closed loop by default (each task
//! issues its next operation when the last returns); `--rate OPS` is open
//! loop: operations are due on a fixed schedule and each is measured from
//! when it was due, so a stall is charged to every operation behind it.
//! Keys are `k` plus a zero-padded number, `--key-bytes` long, drawn
//! uniformly from `--keys` (Redis Cluster batches: after the `{b<task>}`
//! tag); values are `--value-bytes` (kv: the encoded
//! `google.protobuf.Value` of a JSON string; Redis/etcd: raw bytes);
//! `--ttl-share` of writes carry `--ttl-ms`. `--preload` writes the whole
//! key space first (in batches; Redis Cluster: single SETs in flight, or,
//! for get-many/set-many, the key space under every task's tag), so gets
//! hit. Each task keeps its own
//! histogram (µs), merged at the end; errors are counted by kind.
//!
//! # Output
//!
//! The table: target, workload, concurrency, connections, client threads,
//! duration, ops, ops/s, keys/s, errors, misses, p50/p90/p99/p999/max µs.
//! The JSON object: `target, workload, label, concurrency, connections,
//! client_threads, duration_s, ops, ops_per_sec, keys_per_sec, errors,
//! latency_us {p50, p90, p99, p999, max, mean}, value_bytes, key_bytes,
//! keys, ttl_share, batch, rate`, then `misses, errors_by_kind,
//! first_error, redis_mode, mix, warmup_s, preload_s, seed`. Exit status:
//! 0 after a run (even one with errors: they are in the result), 1 when it
//! cannot run (unreachable server), 2 for bad flags.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;

mod chart;
mod cli;
mod expiry;
mod neighbours;
mod reference;
mod report;
mod runner;
mod target;
mod workload;

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod etcd;

use cli::{Cli, Command, RunArgs, TargetKind};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => {
            if let Err(e) = args.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            finish(runtime(args.threads).and_then(|rt| rt.block_on(run(&args))))
        }
        Command::ReferenceServer(args) => finish(
            runtime(args.workers)
                .and_then(|rt| rt.block_on(reference::serve(args.addr, args.workers))),
        ),
        Command::Chart(args) => finish(chart::chart(&args)),
        Command::Expiry(args) => {
            if let Err(e) = args.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            finish(runtime(args.threads).and_then(|rt| rt.block_on(expiry::run(&args))))
        }
        Command::NoisyNeighbour(args) => {
            finish(runtime(2).and_then(|rt| rt.block_on(neighbours::run(&args))))
        }
    }
}

fn finish(outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: u32) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers as usize)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
}

async fn run(args: &RunArgs) -> Result<(), String> {
    let shared = Arc::new(target::Shared::new(args)?);
    let conns = target::connect(args).await?;
    let preload_s = if args.preload {
        // etcd has no batch write here: many single puts in flight instead.
        // Spread over projects, the preload's calls are small (one
        // project's keys each): more of them in flight.
        let parallel = if args.target == TargetKind::Etcd || args.projects > 1 {
            128
        } else {
            8
        };
        let took = runner::preload(&conns, shared.clone(), parallel).await?;
        // Redis Cluster batches: the key space once under each task's tag.
        let written = args.keys * u64::from(args.batch_tags().unwrap_or(1));
        eprintln!(
            "preloaded {written} keys in {:.2} s ({:.0} keys/s)",
            took.as_secs_f64(),
            written as f64 / took.as_secs_f64().max(1e-9)
        );
        Some(took.as_secs_f64())
    } else {
        None
    };
    eprintln!(
        "{} {}: {} task(s) on {} connection(s), {} client thread(s), {} warm-up + {} measured{}",
        args.target.name(),
        args.workload.name(),
        args.concurrency,
        args.effective_connections(),
        args.threads,
        seconds(args.warmup),
        seconds(args.duration),
        match args.rate {
            Some(rate) => format!(", open loop at {rate} ops/s"),
            None => String::new(),
        }
    );
    let measured = runner::run(args, &conns, shared).await;
    let result = report::RunResult::new(args, measured, preload_s);
    print!("{}", result.table());
    if let Some(message) = &result.first_error {
        eprintln!("first error: {message}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&result)
            .map_err(|e| format!("cannot encode the result: {e}"))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
