//! How the write-ahead log behaves: fsync policy, segment and snapshot
//! sizes, repair, quotas, the write queue's byte bound.

use std::{fmt, str::FromStr, time::Duration};

use crate::Quota;

/// When the log is flushed to stable storage. In every mode a record is
/// written to the file (handed to the OS) before its write is acknowledged,
/// so a crash of the process alone (`kill -9`) never loses an acknowledged
/// write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before acknowledging (default). Acknowledged writes
    /// survive an OS crash or power loss. Concurrent writes share one
    /// `fdatasync` (group commit).
    Always,
    /// `fdatasync` at most this often, and within this long of a write. An
    /// OS crash may lose the writes of the last interval.
    Interval(Duration),
    /// Never `fdatasync` (the OS flushes when it likes). An OS crash may lose
    /// any writes not yet flushed by the OS.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    /// Parses `always`, `never` or `interval:<ms>`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kv_engine::wal::FsyncPolicy;
    /// assert_eq!("interval:50".parse(), Ok(FsyncPolicy::Interval(Duration::from_millis(50))));
    /// assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
    /// assert!("sometimes".parse::<FsyncPolicy>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| {
                        format!("{s:?} is not a fsync policy: use always, never or interval:<ms> with ms >= 1")
                    })?;
                Ok(Self::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// How the log behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// At start, truncate the log at the first corrupt record (and drop what
    /// follows) instead of refusing to start.
    pub repair: bool,
    /// No snapshot before the log holds this many bytes.
    pub snapshot_min_log_bytes: u64,
    /// A segment this large is closed and a new one started.
    pub segment_bytes: u64,
    /// What each project may hold. Checked by the writer, one write at a
    /// time in log order, so concurrent writers can never overshoot it.
    pub quota: Quota,
    /// Most bytes of client writes queued for the writer (keys, values and
    /// patches, plus a small overhead each), besides the count bound
    /// [`crate::MAX_QUEUED_WRITES`]; one project may fill at most half.
    /// Past it, writes are refused with [`crate::EngineError::QueueFull`].
    pub max_queued_bytes: usize,
}

impl LogOptions {
    /// The defaults, defined here once: the server's flags and
    /// configuration take theirs from this.
    ///
    /// ```
    /// use kv_engine::wal::{FsyncPolicy, LogOptions};
    /// assert_eq!(LogOptions::default(), LogOptions::DEFAULT);
    /// assert_eq!(LogOptions::DEFAULT.fsync, FsyncPolicy::Always);
    /// ```
    pub const DEFAULT: Self = Self {
        fsync: FsyncPolicy::Always,
        repair: false,
        snapshot_min_log_bytes: 64 << 20,
        segment_bytes: 64 << 20,
        quota: Quota::UNLIMITED,
        max_queued_bytes: 64 << 20,
    };
}

impl Default for LogOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}
