//! The tests' random choices, from a seed a failing run prints so it can
//! be replayed. The generator is `fastrand`'s; what this adds is the seed
//! from `KV_TEST_SEED` and the few draws the tests use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Test randomness, reproducible from its seed.
///
/// ```
/// let mut a = kv_tests::Rng::seeded(7);
/// let mut b = kv_tests::Rng::seeded(7);
/// assert_eq!(a.below(100), b.below(100));
/// ```
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator started from `seed` (any value; 0 too).
    pub fn seeded(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    /// A generator seeded from `KV_TEST_SEED` when set, else from the
    /// clock; prints the seed under `label` so a failure can be replayed.
    pub fn from_env(label: &str) -> Self {
        let seed = std::env::var("KV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock after 1970")
                    .subsec_nanos()
                    .into()
            });
        println!("{label}: KV_TEST_SEED={seed}");
        Self::seeded(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }

    /// An index in `0..n` (`n` > 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }

    /// Shuffles `items` in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        self.0.shuffle(items);
    }
}
