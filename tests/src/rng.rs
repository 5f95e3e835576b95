//! A small seedable generator (xorshift64*) for the tests' random
//! choices: a failing run is reproduced from the seed it printed.

use std::time::{SystemTime, UNIX_EPOCH};

/// Test randomness, reproducible from its seed.
///
/// ```
/// let mut a = kv_tests::Rng::seeded(7);
/// let mut b = kv_tests::Rng::seeded(7);
/// assert_eq!(a.below(100), b.below(100));
/// ```
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value; 0 too).
    pub fn seeded(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
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
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index in `0..n` (`n` > 0).
    pub fn index(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}
