//! When an entry expires.

use std::num::NonZeroU64;

/// An entry's deadline: absolute unix milliseconds (they survive a
/// restart, which `Instant` does not). Never zero, so "no deadline" is
/// `Option<Deadline>::None` everywhere, at no cost in size, and no code
/// has to remember that 0 means never. The log keeps 0 for none.
///
/// ```
/// use kv_engine::Deadline;
/// let d = Deadline::at(1_500).unwrap();
/// assert!(!d.passed(1_499) && d.passed(1_500));
/// assert_eq!(Deadline::at(0), None);
/// assert_eq!(Deadline::ms_or_zero(None), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(NonZeroU64);

impl Deadline {
    /// The deadline at `ms` unix milliseconds; `None` for 0, which stands
    /// for "no deadline" in the log.
    pub const fn at(ms: u64) -> Option<Self> {
        match NonZeroU64::new(ms) {
            Some(ms) => Some(Self(ms)),
            None => None,
        }
    }

    /// Unix milliseconds.
    pub const fn ms(self) -> u64 {
        self.0.get()
    }

    /// Whether it has come by `now` (unix ms): from its instant on, the
    /// entry is gone.
    pub const fn passed(self, now: u64) -> bool {
        self.ms() <= now
    }

    /// `deadline` as the log and the wire write it: 0 for none.
    pub fn ms_or_zero(deadline: Option<Self>) -> u64 {
        deadline.map_or(0, Self::ms)
    }
}
