//! The harness: tasks issuing operations, per-task histograms, the
//! measurement window, progress, and preloading.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::Histogram;

use crate::{
    cli::RunArgs,
    target::{Conn, OpError, Shared},
    workload::{Op, OpGen},
};

/// Longest latency the histograms hold exactly (larger ones are recorded as
/// this): an hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How long tasks may run past the end of the window (an operation that
/// started just before it) before they are abandoned.
const FINISH_GRACE: Duration = Duration::from_secs(15);

/// Slow operations a run keeps (the slowest).
const SLOW_KEPT: usize = 100;

/// One operation slower than `--slow-ms`.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct SlowOp {
    /// When it started, in ms since the Unix epoch.
    pub(crate) started_unix_ms: u64,
    pub(crate) latency_us: u64,
    pub(crate) op: &'static str,
}

/// Keys per call when preloading (kv-server's default limit per SetMany).
const PRELOAD_CHUNK: u64 = 1000;

/// What the tasks measured, merged.
pub(crate) struct Measured {
    /// Latency of each successful operation of the window, in µs.
    pub(crate) hist: Histogram<u64>,
    /// Successful operations that started in the window.
    pub(crate) ops: u64,
    /// Keys those operations touched.
    pub(crate) keys: u64,
    /// Keys gets (and has) looked for and did not find.
    pub(crate) misses: u64,
    /// Failed operations of the window, by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// The first failure of the whole run (warm-up included), when it was.
    pub(crate) first_error: Option<(Instant, String)>,
    /// Tasks still inside an operation `FINISH_GRACE` after the window.
    pub(crate) unfinished: u64,
    /// Operations of the window slower than `--slow-ms` (the slowest
    /// `SLOW_KEPT`), and how many there were in all.
    pub(crate) slow: Vec<SlowOp>,
    pub(crate) slow_count: u64,
    slow_after: Option<Duration>,
}

impl Measured {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ops: 0,
            keys: 0,
            misses: 0,
            errors: BTreeMap::new(),
            first_error: None,
            unfinished: 0,
            slow: Vec::new(),
            slow_count: 0,
            slow_after: None,
        }
    }

    fn with_slow_after(mut self, ms: Option<u64>) -> Self {
        self.slow_after = ms.map(Duration::from_millis);
        self
    }

    fn note_slow(&mut self, op: &Op, latency: Duration) {
        self.slow_count += 1;
        let started = SystemTime::now() - latency;
        let started_unix_ms = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.slow.push(SlowOp {
            started_unix_ms,
            latency_us: latency.as_micros() as u64,
            op: op.name(),
        });
        self.keep_slowest();
    }

    /// Keeps the slowest `SLOW_KEPT`; sorting only when the list is twice
    /// that keeps the cost per slow operation constant.
    fn keep_slowest(&mut self) {
        if self.slow.len() >= 2 * SLOW_KEPT {
            self.slow
                .sort_unstable_by_key(|op| std::cmp::Reverse(op.latency_us));
            self.slow.truncate(SLOW_KEPT);
        }
    }

    /// The kept slow operations, slowest first.
    pub(crate) fn slowest(&self) -> Vec<SlowOp> {
        let mut slow = self.slow.clone();
        slow.sort_unstable_by_key(|op| std::cmp::Reverse(op.latency_us));
        slow.truncate(SLOW_KEPT);
        slow
    }

    fn observe(
        &mut self,
        measuring: bool,
        op: &Op,
        result: Result<u64, OpError>,
        latency: Duration,
        counter: &Counter,
    ) {
        match result {
            Ok(misses) => {
                counter.ops.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    self.ops += 1;
                    self.keys += op.keys();
                    self.misses += misses;
                    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    self.hist.saturating_record(us.max(1));
                    if self.slow_after.is_some_and(|after| latency > after) {
                        self.note_slow(op, latency);
                    }
                }
            }
            Err(e) => {
                counter.errors.fetch_add(1, Ordering::Relaxed);
                if self.first_error.is_none() {
                    self.first_error = Some((Instant::now(), e.message));
                }
                if measuring {
                    *self.errors.entry(e.kind).or_default() += 1;
                }
            }
        }
    }

    fn merge(&mut self, other: Measured) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds add");
        self.ops += other.ops;
        self.keys += other.keys;
        self.misses += other.misses;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.slow_count += other.slow_count;
        self.slow.extend(other.slow);
        self.keep_slowest();
        self.first_error = match (self.first_error.take(), other.first_error) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.unfinished
    }
}

/// Per-task counters the progress line reads. Each task writes only its
/// own, on its own cache line, so the hot path never contends.
#[repr(align(64))]
#[derive(Default)]
struct Counter {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// When the phases start and end.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Runs the workload: warm-up, then the measured window.
pub(crate) async fn run(args: &RunArgs, conns: &[Conn], shared: Arc<Shared>) -> Measured {
    let start = Instant::now();
    let window = Window {
        start,
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let counters: Arc<Vec<Counter>> =
        Arc::new((0..args.concurrency).map(|_| Counter::default()).collect());
    let mut tasks = Vec::new();
    let slow_ms = args.slow_ms;
    for task in 0..args.concurrency {
        let conn = conns[task as usize % conns.len()]
            .clone()
            .for_task(task, &shared);
        let shared = shared.clone();
        let generator = OpGen::new(args, u64::from(task));
        let counters = counters.clone();
        let schedule = args.rate.map(|rate| Schedule {
            rate,
            task: u64::from(task),
            tasks: u64::from(args.concurrency),
            precise: args.precise_start,
        });
        tasks.push(tokio::spawn(async move {
            let counter = &counters[task as usize];
            match schedule {
                None => closed_loop(conn, &shared, generator, window, counter, slow_ms).await,
                Some(schedule) => {
                    open_loop(conn, &shared, generator, window, counter, schedule, slow_ms).await
                }
            }
        }));
    }

    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress(counters, window, done.clone()));

    let mut measured = Measured::new();
    let give_up = window.end + FINISH_GRACE;
    for mut task in tasks {
        match tokio::time::timeout_at(give_up.into(), &mut task).await {
            Ok(Ok(part)) => measured.merge(part),
            Ok(Err(e)) => {
                measured.unfinished += 1;
                measured
                    .first_error
                    .get_or_insert((Instant::now(), format!("a task failed: {e}")));
            }
            Err(_) => {
                task.abort();
                measured.unfinished += 1;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    measured
}

/// Each task issues its next operation when the previous one returns.
async fn closed_loop(
    mut conn: Conn,
    shared: &Shared,
    mut generator: OpGen,
    window: Window,
    counter: &Counter,
    slow_ms: Option<u64>,
) -> Measured {
    let mut measured = Measured::new().with_slow_after(slow_ms);
    loop {
        let start = Instant::now();
        if start >= window.end {
            break;
        }
        let op = generator.next_op();
        let result = conn.exec(&op, shared).await;
        let latency = start.elapsed();
        measured.observe(start >= window.measure_from, &op, result, latency, counter);
    }
    measured
}

/// The open-loop schedule: operation j of the run is due at j / rate after
/// the start, and task i issues operations i, i + tasks, i + 2 tasks...
#[derive(Clone, Copy)]
struct Schedule {
    rate: f64,
    task: u64,
    tasks: u64,
    /// Yield through the last millisecond before each due time rather
    /// than sleep to it (`--precise-start`).
    precise: bool,
}

/// How far ahead of a due time a precise start stops sleeping: the timer
/// wakes a task up to a tick (1 ms) late.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Waits until `due`: on the runtime's timer, or with `precise`, on the
/// timer to within `TIMER_SLACK` and then by yielding to the other tasks
/// until the clock passes `due`.
async fn wait_until(due: Instant, precise: bool) {
    if !precise {
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        return;
    }
    if let Some(early) = due.checked_sub(TIMER_SLACK)
        && early > Instant::now()
    {
        tokio::time::sleep_until(early.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// Each task issues its operations when they are due, whether or not the
/// server kept up, and measures each from when it was due: a stalled server
/// shows up in the latency of every operation that waited behind it, not
/// just one (no coordinated omission). Timers have millisecond granularity,
/// so an operation may start up to ~1 ms after it was due, and that
/// lateness is part of its measured latency, unless `--precise-start`.
async fn open_loop(
    mut conn: Conn,
    shared: &Shared,
    mut generator: OpGen,
    window: Window,
    counter: &Counter,
    schedule: Schedule,
    slow_ms: Option<u64>,
) -> Measured {
    let mut measured = Measured::new().with_slow_after(slow_ms);
    for k in 0u64.. {
        let j = k * schedule.tasks + schedule.task;
        let due = window.start + Duration::from_secs_f64(j as f64 / schedule.rate);
        if due >= window.end {
            break;
        }
        wait_until(due, schedule.precise).await;
        let op = generator.next_op();
        let result = conn.exec(&op, shared).await;
        let latency = due.elapsed();
        measured.observe(due >= window.measure_from, &op, result, latency, counter);
    }
    measured
}

/// Prints a progress line on stderr once a second, rewritten in place.
async fn progress(counters: Arc<Vec<Counter>>, window: Window, done: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval_at(
        (window.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last_ops = 0;
    let mut last_at = window.start;
    loop {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        let ops: u64 = counters.iter().map(|c| c.ops.load(Ordering::Relaxed)).sum();
        let errors: u64 = counters
            .iter()
            .map(|c| c.errors.load(Ordering::Relaxed))
            .sum();
        let rate = (ops - last_ops) as f64 / (now - last_at).as_secs_f64();
        let phase = if now < window.measure_from {
            "warm-up"
        } else if now < window.end {
            "measuring"
        } else {
            "finishing"
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{phase:>9} {:>6.1} s {:>11.0} ops/s  errors {errors:<8}",
            (now - window.start).as_secs_f64(),
            rate
        );
        let _ = err.flush();
        last_ops = ops;
        last_at = now;
    }
    eprint!("\r{:70}\r", "");
}

/// Writes every key of the key space once, `parallel` calls at a time, with
/// the biggest calls each target has; returns how long it took.
pub(crate) async fn preload(
    conns: &[Conn],
    shared: Arc<Shared>,
    parallel: usize,
) -> Result<Duration, String> {
    let start = Instant::now();
    let keys = shared.keys.keys;
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..parallel {
        let mut conn = conns[worker % conns.len()].clone();
        let (shared, next, written) = (shared.clone(), next.clone(), written.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(PRELOAD_CHUNK, Ordering::Relaxed);
                if from >= keys {
                    return Ok(());
                }
                let to = (from + PRELOAD_CHUNK).min(keys);
                conn.write_range(from, to, &shared).await?;
                written.fetch_add(to - from, Ordering::Relaxed);
            }
        }));
    }
    let report = {
        let written = written.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                (start + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            );
            loop {
                tick.tick().await;
                eprint!(
                    "\rpreloading: {} of {keys} keys",
                    written.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut failure = None;
    for worker in workers {
        let outcome = match worker.await {
            Ok(Ok(())) => continue,
            Ok(Err(OpError { message, .. })) => message,
            Err(e) => format!("a preload task failed: {e}"),
        };
        failure.get_or_insert(outcome);
    }
    report.abort();
    let _ = report.await;
    eprint!("\r{:60}\r", "");
    match failure {
        Some(message) => Err(format!("preload failed: {message}")),
        None => Ok(start.elapsed()),
    }
}
