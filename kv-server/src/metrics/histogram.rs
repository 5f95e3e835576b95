//! A histogram of fixed buckets kept in atomics: observing is a short scan
//! of the bounds and three relaxed adds, with no lock, so it can sit on the
//! request path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Request latency bucket bounds, in nanoseconds (100 µs to 10 s).
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
/// use kv_server::metrics::AtomicHistogram;
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
