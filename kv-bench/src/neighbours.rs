//! `kv-bench noisy-neighbour`: how much a flooding project raises the
//! latency of a quiet one, without and with a rate limit on the flooder.
//!
//! A quiet project calls at a modest fixed rate (open loop: each call is
//! due on a fixed schedule and measured from when it was due, so a stall is
//! charged to every call behind it; gets and sets 80/20 over its own keys)
//! while its latency is recorded (hdrhistogram, µs). Three phases, one after
//! the other in one run, each `--phase-ms` long after `--warmup-ms`:
//!
//! 1. `alone`: the quiet project only;
//! 2. `flood`: plus a flooder project writing as fast as it can from
//!    `--flood-concurrency` tasks over `--flood-clients` clients, its quota
//!    set to `ops_per_second: 0` (unlimited) through AdminService;
//! 3. `limited`: the same flood with the flooder's quota set to
//!    `ops_per_second: --flood-limit`. Refused calls are counted, not
//!    retried early: a refused task waits the server's `retry-after-ms`.
//!
//! Prints one row per phase (quiet p50/p99/max, quiet errors, flooder
//! admitted and refused per second) and the quiet p99 of phases 2 and 3
//! over phase 1. The server must let this client use AdminService (open
//! mode, or `--token` with the admin token) and its quiet project must not
//! be limited below `--quiet-rate`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use hdrhistogram::Histogram;
use kv_client::{Client, Code, Quota};
use serde::Serialize;

/// Flags of `noisy-neighbour`.
#[derive(Args, Debug)]
pub(crate) struct NeighbourArgs {
    /// kv-server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) url: String,

    /// Bearer token for every call (the admin token when the server
    /// requires one: the run sets the flooder's quota).
    #[arg(long, env = "KV_BENCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// The quiet project.
    #[arg(long, default_value = "quiet")]
    pub(crate) quiet_project: String,

    /// The flooding project (registered if it is not).
    #[arg(long, default_value = "flood")]
    pub(crate) flood_project: String,

    /// The quiet project's calls per second (open loop).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) quiet_rate: u32,

    /// Flooding tasks (closed loop, as fast as they can).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) flood_concurrency: u32,

    /// Clients (connections) the flooding tasks are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) flood_clients: u32,

    /// The flooder's `ops_per_second` in the `limited` phase.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) flood_limit: u64,

    /// Value size: characters of the JSON string written.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_bytes: usize,

    /// Keys of each project.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keys: u64,

    /// How long each phase measures, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) phase_ms: u64,

    /// How long each phase runs before measuring, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) warmup_ms: u64,

    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
}

/// One phase's figures.
#[derive(Serialize, Debug)]
struct Phase {
    phase: &'static str,
    quiet_calls: u64,
    quiet_errors: u64,
    quiet_p50_us: u64,
    quiet_p99_us: u64,
    quiet_max_us: u64,
    flood_admitted_per_sec: f64,
    flood_refused_per_sec: f64,
}

#[derive(Serialize, Debug)]
struct Outcome {
    quiet_rate: u32,
    flood_concurrency: u32,
    flood_clients: u32,
    flood_limit: u64,
    value_bytes: usize,
    phase_s: f64,
    phases: Vec<Phase>,
    p99_flood_over_alone: f64,
    p99_limited_over_alone: f64,
}

async fn client(args: &NeighbourArgs) -> Result<Client, String> {
    let mut builder = Client::builder(args.url.clone()).timeout(Duration::from_secs(10));
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    builder
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.url))
}

/// Counters of the flooding tasks.
#[derive(Default)]
struct FloodCounts {
    admitted: AtomicU64,
    refused: AtomicU64,
}

/// Runs the three phases and prints the result.
pub(crate) async fn run(args: &NeighbourArgs) -> Result<(), String> {
    let admin = client(args).await?;
    match admin
        .admin()
        .create_project(&args.flood_project, Quota::default())
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Code::AlreadyExists => {}
        Err(e) => return Err(format!("cannot register {}: {e}", args.flood_project)),
    }
    let quiet = client(args).await?.project(&args.quiet_project);
    let mut flooders = Vec::new();
    for _ in 0..args.flood_clients {
        flooders.push(client(args).await?.project(&args.flood_project));
    }
    let value = "x".repeat(args.value_bytes);
    let mut phases = Vec::new();
    for (name, flood, limit) in [
        ("alone", false, 0),
        ("flood", true, 0),
        ("limited", true, args.flood_limit),
    ] {
        let quota = Quota {
            ops_per_second: Some(limit),
            ..Quota::default()
        };
        admin
            .admin()
            .set_quota(&args.flood_project, quota)
            .await
            .map_err(|e| format!("cannot set the quota of {}: {e}", args.flood_project))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(FloodCounts::default());
        let mut tasks = Vec::new();
        if flood {
            for t in 0..args.flood_concurrency {
                let kv = flooders[t as usize % flooders.len()].clone();
                let (stop, counts, value, keys) =
                    (stop.clone(), counts.clone(), value.clone(), args.keys);
                tasks.push(tokio::spawn(async move {
                    let mut n = u64::from(t);
                    while !stop.load(Ordering::Relaxed) {
                        n = (n + 7919) % keys;
                        match kv.set(&format!("k{n}"), &value).await {
                            Ok(()) => counts.admitted.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                if let Some(wait) = e.retry_after() {
                                    tokio::time::sleep(wait).await;
                                }
                                counts.refused.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(args.warmup_ms)).await;
        let (admitted0, refused0) = (
            counts.admitted.load(Ordering::Relaxed),
            counts.refused.load(Ordering::Relaxed),
        );
        let (hist, calls, errors) = quiet_phase(&quiet, args, &value).await?;
        let secs = args.phase_ms as f64 / 1000.0;
        let admitted = counts.admitted.load(Ordering::Relaxed) - admitted0;
        let refused = counts.refused.load(Ordering::Relaxed) - refused0;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        let phase = Phase {
            phase: name,
            quiet_calls: calls,
            quiet_errors: errors,
            quiet_p50_us: hist.value_at_quantile(0.5),
            quiet_p99_us: hist.value_at_quantile(0.99),
            quiet_max_us: hist.max(),
            flood_admitted_per_sec: admitted as f64 / secs,
            flood_refused_per_sec: refused as f64 / secs,
        };
        eprintln!("{name}: done");
        phases.push(phase);
    }
    let ratio = |i: usize| phases[i].quiet_p99_us as f64 / phases[0].quiet_p99_us.max(1) as f64;
    let outcome = Outcome {
        quiet_rate: args.quiet_rate,
        flood_concurrency: args.flood_concurrency,
        flood_clients: args.flood_clients,
        flood_limit: args.flood_limit,
        value_bytes: args.value_bytes,
        phase_s: args.phase_ms as f64 / 1000.0,
        p99_flood_over_alone: ratio(1),
        p99_limited_over_alone: ratio(2),
        phases,
    };
    print!("{}", table(&outcome));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&outcome)
            .map_err(|e| format!("cannot encode the result: {e}"))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The quiet project's calls for one phase: its latency histogram (µs),
/// calls made and calls failed.
async fn quiet_phase(
    kv: &kv_client::Project,
    args: &NeighbourArgs,
    value: &str,
) -> Result<(Histogram<u64>, u64, u64), String> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let interval = Duration::from_secs(1) / args.quiet_rate;
    let total = args.phase_ms * u64::from(args.quiet_rate) / 1000;
    let start = Instant::now();
    // One call in flight at a time; a late call is charged from when it
    // was due, so a stall shows in every call behind it.
    let mut errors = 0;
    for i in 0..total {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let key = format!("q{}", i % args.keys);
        let result = if i % 5 == 0 {
            kv.set(&key, &value).await
        } else {
            kv.get::<String>(&key).await.map(|_| ())
        };
        if result.is_err() {
            errors += 1;
        }
        let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.saturating_record(us.max(1));
    }
    Ok((hist, total, errors))
}

fn table(outcome: &Outcome) -> String {
    let mut out = format!(
        "{:<8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>14} {:>14}\n",
        "phase", "calls", "errors", "p50_us", "p99_us", "max_us", "flood_ok/s", "flood_refused/s"
    );
    for p in &outcome.phases {
        out += &format!(
            "{:<8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>14.0} {:>14.0}\n",
            p.phase,
            p.quiet_calls,
            p.quiet_errors,
            p.quiet_p50_us,
            p.quiet_p99_us,
            p.quiet_max_us,
            p.flood_admitted_per_sec,
            p.flood_refused_per_sec
        );
    }
    out += &format!(
        "quiet p99: flood/alone {:.2}x, limited/alone {:.2}x\n",
        outcome.p99_flood_over_alone, outcome.p99_limited_over_alone
    );
    out
}
