//! Figures for monitoring, kept in plain atomics so that counting costs a
//! few relaxed adds and no lock: a histogram of fixed buckets, and what the
//! log writer and snapshots report ([`LogStats`]). The server reads them
//! when it is scraped; this crate knows nothing of any metrics format.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latency bucket bounds, in nanoseconds (100 µs to 10 s).
pub const LATENCY_NANOS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Counts of observations at or below each bound, their sum and count.
///
/// ```
/// use kv_engine::stats::AtomicHistogram;
/// let h = AtomicHistogram::new(&[1, 10]);
/// h.observe(1);
/// h.observe(5);
/// h.observe(50);
/// let snap = h.snapshot();
/// assert_eq!(snap.count, 3);
/// assert_eq!(snap.sum, 56);
/// // Cumulative, with +Inf last.
/// assert_eq!(snap.cumulative, vec![(1, 1), (10, 2), (u64::MAX, 3)]);
/// ```
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    /// One per bound, then one for over the last bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `(upper bound, observations at or below it)`; the last bound is
    /// `u64::MAX` for +Inf.
    pub cumulative: Vec<(u64, u64)>,
    /// Sum of the observed values.
    pub sum: u64,
    /// Number of observations.
    pub count: u64,
}

impl AtomicHistogram {
    /// An empty histogram over ascending `bounds`.
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The cumulative counts now. Concurrent observations may land in the
    /// buckets and not yet the sum (or the reverse); the count is taken
    /// from the buckets, so it always equals the +Inf bucket.
    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push((self.bounds.get(i).copied().unwrap_or(u64::MAX), running));
        }
        Snapshot {
            cumulative,
            sum: self.sum.load(Ordering::Relaxed),
            count: running,
        }
    }
}

/// Bounds for the writes gathered into one group commit.
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// What a durable store's log writer and snapshots have done since it
/// opened.
///
/// ```
/// let stats = kv_engine::stats::LogStats::default();
/// assert_eq!(stats.appends.snapshot().count, 0);
/// assert_eq!(stats.last_snapshot_unix_ms(), None);
/// ```
#[derive(Debug)]
pub struct LogStats {
    /// Nanoseconds each group commit's write to the segment took.
    pub appends: AtomicHistogram,
    /// Nanoseconds each fsync of the log took.
    pub fsyncs: AtomicHistogram,
    /// Writes gathered into each group commit.
    pub batch_writes: AtomicHistogram,
    /// Bytes appended to the log.
    pub appended_bytes: AtomicU64,
    /// Bytes of the segments a recovery would replay now.
    pub log_bytes: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Snapshots that failed (the log was kept).
    pub snapshot_failures: AtomicU64,
    /// Size of the newest snapshot written, in bytes.
    pub last_snapshot_bytes: AtomicU64,
    /// When the newest snapshot was finished, Unix ms (0: none yet).
    pub last_snapshot_at_ms: AtomicU64,
    /// How long writing the newest snapshot took, in nanoseconds.
    pub last_snapshot_nanos: AtomicU64,
}

impl Default for LogStats {
    fn default() -> Self {
        Self {
            appends: AtomicHistogram::new(LATENCY_NANOS),
            fsyncs: AtomicHistogram::new(LATENCY_NANOS),
            batch_writes: AtomicHistogram::new(BATCH_BOUNDS),
            appended_bytes: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            snapshot_failures: AtomicU64::new(0),
            last_snapshot_bytes: AtomicU64::new(0),
            last_snapshot_at_ms: AtomicU64::new(0),
            last_snapshot_nanos: AtomicU64::new(0),
        }
    }
}

impl LogStats {
    /// When the newest snapshot was finished, Unix ms, if any was.
    pub fn last_snapshot_unix_ms(&self) -> Option<u64> {
        Some(self.last_snapshot_at_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Records a snapshot written in `nanos` of `bytes` bytes.
    pub(crate) fn snapshot_written(&self, bytes: u64, nanos: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.last_snapshot_bytes.store(bytes, Ordering::Relaxed);
        self.last_snapshot_nanos.store(nanos, Ordering::Relaxed);
        self.last_snapshot_at_ms.store(now, Ordering::Relaxed);
    }
}

/// Nanoseconds since `started`, saturating.
pub(crate) fn nanos_since(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
