//! `kv-bench expiry`: how long after its deadline a key's expiry is seen.
//!
//! The target measured is "expiry reclaim p99 ≤ 1 s after the deadline with
//! 1M keys carrying TTLs". A key's expiry is observable as the EXPIRED event
//! of a watch, so the run:
//!
//! 1. opens a watch of the whole project, from now, before writing anything;
//! 2. writes `--keys` keys with SetMany, `--batch` keys per call and
//!    `--concurrency` calls in flight. Deadlines are spread uniformly over
//!    `[start + ttl, start + ttl + spread]` (one per call, drawn with
//!    `--seed`), where start is when writing began; each call's TTL is its
//!    deadline minus the time it is sent. Anchoring the deadlines to the
//!    start, rather than giving every call the same TTL, makes
//!    `--spread-ms 0` really "everything due at one instant", however long
//!    the writing takes;
//! 3. consumes the watch on its own task, concurrently with the writing
//!    (the server cuts off a watcher that falls further behind than its
//!    history), skipping SET events, and for each EXPIRED event of one of
//!    its keys records lag = (client unix ms on receipt) − (the key's
//!    recorded deadline);
//! 4. ends when every key has expired, or `--timeout` after the latest
//!    deadline; keys not seen by then are `missing`.
//!
//! Keys are named `x<start unix ms>-<n>`, so a run never mistakes an
//! earlier run's keys (or anyone else's) for its own.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use kv_client::{Code, EventKind, SetManyOptions, Watch, WatchOptions};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::{
    cli::ExpiryArgs,
    workload::{Payload, TaskRng},
};

/// Longest lag the histograms hold exactly (larger ones are recorded as
/// this): an hour, in milliseconds.
const MAX_LAG_MS: u64 = 3_600_000;

/// Most of this run's keys written but not yet seen as SET events by the
/// watch. The server cuts off a watcher that falls more than its history
/// (10000 events by default) behind; holding the writers back at half of
/// that keeps the watch alive on a machine where decoding events is slower
/// than writing them. It only paces the writing: deadlines are recorded
/// when each call is sent, so pacing does not bias the lag.
const WATCH_SLACK: u64 = 5000;

/// How often the watch task publishes how many SET events it has seen (the
/// writers wait on it). Must stay well below `WATCH_SLACK - batch`.
const PUBLISH_EVERY: u64 = 64;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Lag percentiles, in milliseconds.
#[derive(Serialize, Debug, Clone, Default)]
pub(crate) struct Lag {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Lag {
    fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        Self {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

/// One run, as `--json` writes it: the measurements, then the flags, then
/// extras.
#[derive(Serialize, Debug)]
pub(crate) struct ExpiryResult {
    pub(crate) keys: u64,
    /// From the first SetMany sent to the last one answered.
    pub(crate) written_in_s: f64,
    /// Keys whose EXPIRED event arrived.
    pub(crate) expired: u64,
    /// Keys whose EXPIRED event had not arrived `--timeout` after the
    /// latest deadline.
    pub(crate) missing: u64,
    /// Receipt of the EXPIRED event minus the deadline recorded by the
    /// client: its clock just before sending the call, plus the TTL. The
    /// server adds the TTL to its own clock when the call arrives, later,
    /// so this over-estimates the true lag by at most the time a call takes
    /// to reach the server.
    pub(crate) lag_ms: Lag,
    pub(crate) label: String,
    pub(crate) ttl_ms: u64,
    pub(crate) spread_ms: u64,
    pub(crate) value_bytes: usize,
    pub(crate) batch: usize,
    pub(crate) concurrency: u32,
    pub(crate) timeout_s: f64,
    pub(crate) project: String,
    pub(crate) seed: u64,
    /// EXPIRED events received before the recorded deadline (recorded as a
    /// lag of 0). The server cannot expire a key before that deadline, so
    /// anything but 0 means the clocks disagree.
    pub(crate) early: u64,
    /// Receipt minus the deadline the server itself reported in the key's
    /// SET event: the lag without the client's over-estimate.
    pub(crate) server_lag_ms: Lag,
}

impl ExpiryResult {
    /// A header line and one row, aligned (minimum widths keep rows of
    /// separate runs aligned in a script's output).
    pub(crate) fn table(&self) -> String {
        let columns = [
            ("keys", self.keys.to_string(), 8),
            ("ttl_ms", self.ttl_ms.to_string(), 6),
            ("spread_ms", self.spread_ms.to_string(), 9),
            ("written_s", format!("{:.2}", self.written_in_s), 9),
            ("expired", self.expired.to_string(), 8),
            ("missing", self.missing.to_string(), 7),
            ("p50ms", self.lag_ms.p50.to_string(), 6),
            ("p90ms", self.lag_ms.p90.to_string(), 6),
            ("p99ms", self.lag_ms.p99.to_string(), 6),
            ("p999ms", self.lag_ms.p999.to_string(), 6),
            ("maxms", self.lag_ms.max.to_string(), 6),
        ];
        let mut header = String::new();
        let mut row = String::new();
        for (i, (name, value, min)) in columns.iter().enumerate() {
            let width = name.len().max(value.len()).max(*min);
            let sep = if i == 0 { "" } else { "  " };
            header.push_str(&format!("{sep}{name:>width$}"));
            row.push_str(&format!("{sep}{value:>width$}"));
        }
        format!("{header}\n{row}\n")
    }
}

/// What the writers and the watch task share.
struct Shared {
    prefix: String,
    /// Per key: its deadline as the client recorded it (unix ms); 0 until
    /// its call is sent.
    deadlines: Vec<AtomicU64>,
    /// Keys whose SetMany was answered (for the progress line).
    written: AtomicU64,
    /// Keys whose EXPIRED event arrived (for the progress line).
    expired: AtomicU64,
}

impl Shared {
    /// The key number of one of this run's keys.
    fn key_number(&self, key: &str) -> Option<usize> {
        key.strip_prefix(&self.prefix)?
            .parse::<usize>()
            .ok()
            .filter(|&n| n < self.deadlines.len())
    }
}

/// What the watch task saw.
struct Seen {
    lag: Histogram<u64>,
    server_lag: Histogram<u64>,
    expired: u64,
    early: u64,
}

/// Runs `kv-bench expiry`.
pub(crate) async fn run(args: &ExpiryArgs) -> Result<(), String> {
    let url = args.url();
    let mut builder = kv_client::Client::builder(url.clone());
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    let client = builder
        .connect()
        .await
        .map_err(|e| format!("cannot connect to kv at {url}: {e}"))?;
    let project = client.project(&args.project);
    // Before writing: every change after this point is delivered.
    let watch = project
        .watch(WatchOptions::all())
        .await
        .map_err(|e| format!("cannot watch project {:?}: {e}", args.project))?;

    let start_ms = unix_ms();
    let started = Instant::now();
    let keys = args.keys;
    let shared = Arc::new(Shared {
        prefix: format!("x{start_ms}-"),
        deadlines: (0..keys).map(|_| AtomicU64::new(0)).collect(),
        written: AtomicU64::new(0),
        expired: AtomicU64::new(0),
    });

    let (sets_tx, sets_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut watcher = tokio::spawn(consume(watch, shared.clone(), sets_tx, stop_rx));

    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress(shared.clone(), keys, started, done.clone()));

    // One deadline offset per call.
    let batch = args.batch as u64;
    let calls = keys.div_ceil(batch);
    let mut rng = TaskRng::with_seed(args.seed);
    let offsets: Arc<Vec<u64>> = Arc::new((0..calls).map(|_| rng.u64(..=args.spread_ms)).collect());
    let first_deadline = start_ms + args.ttl_ms;
    let last_deadline = first_deadline + offsets.iter().copied().max().unwrap_or(0);

    let value = Payload::new(args.value_bytes, args.ttl_ms).json;
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..args.concurrency {
        let (project, shared, next, offsets, value) = (
            project.clone(),
            shared.clone(),
            next.clone(),
            offsets.clone(),
            value.clone(),
        );
        let mut sets_rx = sets_rx.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    return Ok(());
                }
                let (from, to) = (call * batch, ((call + 1) * batch).min(keys));
                sets_rx
                    .wait_for(|&seen| to.saturating_sub(seen) <= WATCH_SLACK)
                    .await
                    .map_err(|_| "the watch ended while writing".to_string())?;
                let deadline = first_deadline + offsets[call as usize];
                // The clock is read just before the call is sent, and the
                // deadline recorded is that time plus the TTL sent. The
                // server adds the TTL to its own clock when the call
                // arrives, later, so its deadline is at or after the one
                // recorded: the measured lag over-estimates the real one
                // by at most this call's latency, never under-estimates it.
                let now = unix_ms();
                if deadline <= now {
                    return Err(format!(
                        "writing fell behind the deadlines: keys {from}..{to} were due {} ms after the start but could only be sent {} ms after it; raise --ttl-ms",
                        deadline - start_ms,
                        now - start_ms
                    ));
                }
                for n in from..to {
                    shared.deadlines[n as usize].store(deadline, Ordering::Release);
                }
                let entries = (from..to).map(|n| (format!("{}{n}", shared.prefix), &value));
                let options = SetManyOptions::new().ttl(Duration::from_millis(deadline - now));
                project
                    .set_many_with(entries, options)
                    .await
                    .map_err(|e| format!("SetMany of keys {from}..{to} failed: {e}"))?;
                shared.written.fetch_add(to - from, Ordering::Relaxed);
            }
        }));
    }
    drop(sets_rx);

    let mut write_failure = None;
    for writer in writers {
        let outcome = match writer.await {
            Ok(Ok(())) => continue,
            Ok(Err(message)) => message,
            Err(e) => format!("a writer task failed: {e}"),
        };
        write_failure.get_or_insert(outcome);
    }
    let written_in_s = started.elapsed().as_secs_f64();

    let outcome = if let Some(message) = write_failure {
        let _ = stop_tx.send(());
        match watcher.await {
            // A writer that saw the watch end says less than the watch.
            Ok((_, Some(watch_failure))) => Err(watch_failure),
            _ => Err(message),
        }
    } else {
        let wait = Duration::from_millis(last_deadline.saturating_sub(unix_ms())) + args.timeout;
        let joined = match tokio::time::timeout(wait, &mut watcher).await {
            Ok(joined) => joined,
            Err(_) => {
                let _ = stop_tx.send(());
                watcher.await
            }
        };
        match joined {
            Ok((_, Some(failure))) => Err(failure),
            Ok((seen, None)) => Ok(seen),
            Err(e) => Err(format!("the watch task failed: {e}")),
        }
    };
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let seen = outcome?;

    let result = ExpiryResult {
        keys,
        written_in_s,
        expired: seen.expired,
        missing: keys - seen.expired,
        lag_ms: Lag::of(&seen.lag),
        label: args.label.clone(),
        ttl_ms: args.ttl_ms,
        spread_ms: args.spread_ms,
        value_bytes: args.value_bytes,
        batch: args.batch,
        concurrency: args.concurrency,
        timeout_s: args.timeout.as_secs_f64(),
        project: args.project.clone(),
        seed: args.seed,
        early: seen.early,
        server_lag_ms: Lag::of(&seen.server_lag),
    };
    print!("{}", result.table());
    if result.missing > 0 {
        eprintln!(
            "warning: {} of {keys} keys had no EXPIRED event {:.1} s after the latest deadline",
            result.missing,
            args.timeout.as_secs_f64()
        );
    }
    if result.early > 0 {
        eprintln!(
            "warning: {} EXPIRED events arrived before their recorded deadline (clocks disagree?)",
            result.early
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&result)
            .map_err(|e| format!("cannot encode the result: {e}"))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Reads the watch until every key has expired, `stop` fires, or the watch
/// ends; returns what it saw and, when the watch ended early, why.
async fn consume(
    mut watch: Watch,
    shared: Arc<Shared>,
    sets_tx: watch::Sender<u64>,
    mut stop: oneshot::Receiver<()>,
) -> (Seen, Option<String>) {
    let keys = shared.deadlines.len();
    let new_hist = || Histogram::new_with_max(MAX_LAG_MS, 3).expect("valid histogram bounds");
    let mut seen = Seen {
        lag: new_hist(),
        server_lag: new_hist(),
        expired: 0,
        early: 0,
    };
    // Per key: the deadline the server reported in its SET event (0: no SET
    // seen yet), and whether it has expired.
    let mut server_deadlines = vec![0u64; keys];
    let mut expired = vec![false; keys];
    let mut sets = 0u64;
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stop => return (seen, None),
            event = watch.next_event() => event,
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                let message = watch_failure(&e, &seen, keys);
                return (seen, Some(message));
            }
            None => {
                let message = format!(
                    "the server ended the watch after {} of {keys} EXPIRED events",
                    seen.expired
                );
                return (seen, Some(message));
            }
        };
        let Some(n) = shared.key_number(&event.key) else {
            continue;
        };
        match event.kind {
            EventKind::Set => {
                if server_deadlines[n] == 0 {
                    sets += 1;
                    if sets.is_multiple_of(PUBLISH_EVERY) || sets == keys as u64 {
                        sets_tx.send_replace(sets);
                    }
                }
                // A key always carries a TTL here; 1 keeps "seen" distinct
                // from 0 if a server ever left it out.
                server_deadlines[n] = event.expires_at_ms.unwrap_or(1);
            }
            EventKind::Expired if !expired[n] => {
                let now = unix_ms();
                expired[n] = true;
                let deadline = shared.deadlines[n].load(Ordering::Acquire);
                if now < deadline {
                    seen.early += 1;
                }
                seen.lag.saturating_record(now.saturating_sub(deadline));
                if server_deadlines[n] > 1 {
                    seen.server_lag
                        .saturating_record(now.saturating_sub(server_deadlines[n]));
                }
                seen.expired += 1;
                shared.expired.store(seen.expired, Ordering::Relaxed);
                if seen.expired == keys as u64 {
                    return (seen, None);
                }
            }
            _ => {}
        }
    }
}

/// Why the watch failed, with what to do about it.
fn watch_failure(e: &kv_client::Error, seen: &Seen, keys: usize) -> String {
    if e.code() == Code::ResourceExhausted {
        format!(
            "the server cut off the watch after {} of {keys} EXPIRED events: it fell further behind than the project's retained history ({e}). Start kv-server with a larger --watch-history-events (default 10000; --watch-history-bytes also bounds it), or write fewer keys per instant (--spread-ms)",
            seen.expired
        )
    } else {
        format!(
            "the watch failed after {} of {keys} EXPIRED events: {e}",
            seen.expired
        )
    }
}

/// Prints a progress line on stderr once a second, rewritten in place.
async fn progress(shared: Arc<Shared>, keys: u64, started: Instant, done: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let written = shared.written.load(Ordering::Relaxed);
        let expired = shared.expired.load(Ordering::Relaxed);
        let phase = if written < keys { "writing" } else { "waiting" };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{phase:>7} {:>6.1} s  written {written}/{keys}  expired {expired}/{keys}  ",
            started.elapsed().as_secs_f64()
        );
        let _ = err.flush();
    }
    eprint!("\r{:80}\r", "");
}
