//! The memory limit (`--max-memory`): how much the process has allocated,
//! and the rule that writes adding data are refused past the limit while
//! reads, deletes and clears keep working.
//!
//! # Measuring
//!
//! The `kv-server` binary installs a [`CountingAllocator`] around its
//! allocator: every allocation and free adds to one atomic counter, so the
//! live heap is known exactly and cheaply before every write. The binary
//! then calls [`install_allocator_meter`]. Usage is the larger of that
//! count and the anonymous resident memory (`RssAnon` of
//! `/proc/self/status`, read at most every [`RSS_SAMPLE_INTERVAL`]): the
//! allocator keeps pages after frees, and threads have stacks, which the
//! heap count does not see but the kernel (and its OOM killer) does. A
//! server run in-process (tests, embedding) whose program has not installed
//! the counting allocator uses the resident reading alone.
//!
//! # Default
//!
//! Without the flag the limit is [`DEFAULT_FRACTION_PERCENT`] % of the
//! smaller of the cgroup's limit (v2 `memory.max`, v1
//! `memory.limit_in_bytes`) and the machine's `MemTotal`: the rest is
//! headroom for what the heap count does not see (allocator slack, thread
//! stacks, the binary, socket buffers) and for the page cache of the log.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tonic::Status;

/// Share of the machine's (or cgroup's) memory the default limit takes.
pub const DEFAULT_FRACTION_PERCENT: u64 = 75;
/// Limit used when neither the cgroup nor `/proc/meminfo` says how much
/// memory there is.
pub const FALLBACK_LIMIT: u64 = 1 << 30;
/// Smallest limit accepted: below it the server's own baseline (runtime,
/// buffers, catalog) leaves no room for data.
pub const MIN_LIMIT: u64 = 16 << 20;
/// How stale the resident-set reading of an in-process server may be.
pub const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// What a write is taken to add besides its keys and values: the entry,
/// its index nodes, its change event and its log record headers.
pub const WRITE_OVERHEAD: usize = 160;

// ---------------------------------------------------------------- sizes

/// Parses a size: plain bytes (`67108864`) or a number with a binary or
/// decimal suffix (`64MiB`, `2GiB`, `512KiB`, `1.5GiB`, `100MB`, `64M`;
/// single letters are binary).
///
/// ```
/// use kv_server::memory::parse_size;
/// assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
/// assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
/// assert_eq!(parse_size("1000").unwrap(), 1000);
/// assert!(parse_size("lots").is_err());
/// ```
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a size: give bytes or a number with a suffix such as 512KiB, 64MiB, 2GiB (or KB, MB, GB for powers of 1000)"
        )
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    if number.is_empty() {
        return Err(bad());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).ok_or_else(bad);
    }
    let fraction: f64 = number.parse().map_err(|_| bad())?;
    let bytes = fraction * multiplier as f64;
    if bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64 {
        Ok(bytes as u64)
    } else {
        Err(bad())
    }
}

/// `bytes` for people: `63.9 MiB`.
///
/// ```
/// assert_eq!(kv_server::memory::human(64 << 20), "64.0 MiB");
/// assert_eq!(kv_server::memory::human(512), "512 B");
/// ```
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

// -------------------------------------------------------------- default

/// Where the default limit came from, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The cgroup's memory limit.
    Cgroup,
    /// The machine's `MemTotal`.
    MemTotal,
    /// Neither was readable: [`FALLBACK_LIMIT`].
    Fallback,
}

/// The default limit from the contents of cgroup v2 `memory.max`, cgroup
/// v1 `memory.limit_in_bytes` and `/proc/meminfo` (each `None` when
/// absent): [`DEFAULT_FRACTION_PERCENT`] % of the smallest memory they
/// report. `max` (v2) and v1's near-2^63 "unlimited" mean no cgroup limit.
///
/// ```
/// use kv_server::memory::{LimitSource, default_limit_from};
/// let meminfo = "MemTotal:        8388608 kB\nMemFree: 1 kB\n";
/// assert_eq!(
///     default_limit_from(Some("1073741824\n"), None, Some(meminfo)),
///     (768 << 20, LimitSource::Cgroup)
/// );
/// assert_eq!(
///     default_limit_from(Some("max\n"), None, Some(meminfo)),
///     (6 << 30, LimitSource::MemTotal)
/// );
/// ```
pub fn default_limit_from(
    cgroup_v2_max: Option<&str>,
    cgroup_v1_limit: Option<&str>,
    meminfo: Option<&str>,
) -> (u64, LimitSource) {
    // cgroup v1 reports "unlimited" as the largest page-aligned i64.
    const V1_UNLIMITED: u64 = 1 << 62;
    let cgroup = [cgroup_v2_max, cgroup_v1_limit]
        .into_iter()
        .flatten()
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .filter(|&bytes| bytes > 0 && bytes < V1_UNLIMITED)
        .min();
    let total = meminfo.and_then(|text| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    });
    let (bytes, source) = match (cgroup, total) {
        (Some(c), Some(t)) if t < c => (t, LimitSource::MemTotal),
        (Some(c), _) => (c, LimitSource::Cgroup),
        (None, Some(t)) => (t, LimitSource::MemTotal),
        (None, None) => return (FALLBACK_LIMIT, LimitSource::Fallback),
    };
    let limit = percent(bytes, DEFAULT_FRACTION_PERCENT);
    (limit.max(MIN_LIMIT), source)
}

fn percent(bytes: u64, percent: u64) -> u64 {
    (u128::from(bytes) * u128::from(percent) / 100) as u64
}

/// The default limit of this machine (read once): see
/// [`default_limit_from`].
pub fn default_limit() -> (u64, LimitSource) {
    static DEFAULT: OnceLock<(u64, LimitSource)> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        default_limit_from(
            read("/sys/fs/cgroup/memory.max").as_deref(),
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes").as_deref(),
            read("/proc/meminfo").as_deref(),
        )
    })
}

// ------------------------------------------------------------ allocator

/// The counting allocator the binary installs: [`kv_alloc::Counting`]
/// around its allocator; its count of live bytes is what the limit is
/// checked against. (The workspace forbids `unsafe` code; a global
/// allocator needs it, so it lives in that one small crate.)
///
/// ```no_run
/// #[global_allocator]
/// static ALLOCATOR: kv_server::memory::CountingAllocator<std::alloc::System> =
///     kv_server::memory::counting(std::alloc::System);
///
/// fn main() {
///     // The system allocator cannot be asked to give back its free pages;
///     // with mimalloc pass `Some(kv_alloc::return_free_memory)`.
///     kv_server::memory::install_allocator_meter(&ALLOCATOR, None);
/// }
/// ```
pub type CountingAllocator<A> = kv_alloc::Counting<A>;

/// Wraps `inner` so its live bytes are counted (one uncontended atomic
/// add per allocation and per free, on a counter of the thread's own),
/// never refusing an allocation itself: the limit is applied to requests,
/// not to the allocator.
pub const fn counting<A>(inner: A) -> CountingAllocator<A> {
    kv_alloc::Counting::new(inner)
}

// ---------------------------------------------------------------- meter

/// How much memory the process uses now, in bytes.
pub trait Meter: Send + Sync {
    /// Bytes in use now (or very recently).
    fn in_use(&self) -> u64;
    /// What is measured, for the start-up log line.
    fn describe(&self) -> &'static str;
    /// At the limit: if the resident memory is well above the live heap
    /// (the allocator keeps pages that frees emptied), asks the allocator
    /// to give them back and reads the resident memory afresh. True if it
    /// did, so the caller measures again. At most every
    /// [`RELIEVE_INTERVAL`]: it walks a heap.
    fn relieve(&self) -> bool {
        false
    }
}

/// Least time between two [`Meter::relieve`] calls that ask the
/// allocator for its free pages.
pub const RELIEVE_INTERVAL: Duration = Duration::from_millis(100);

/// How far the resident memory may be above the live heap before a write
/// refused at the limit asks the allocator for its free pages: thread
/// stacks and the allocator's own metadata are resident too.
const RELIEVE_SLACK: u64 = 8 << 20;

/// The live heap counted by the allocator, or the anonymous resident
/// memory if that is more (pages the allocator keeps after frees, thread
/// stacks, its own metadata): the count reacts at once to every
/// allocation, the resident reading bounds what the heap count misses.
struct Counted<A: 'static> {
    allocator: &'static CountingAllocator<A>,
    rss: &'static Rss,
    /// Gives the allocator's free pages back to the system, if it can.
    release: Option<fn()>,
    /// Milliseconds since `rss.started` of the last release, plus one.
    released_at: AtomicU64,
}

impl<A: Send + Sync> Meter for Counted<A> {
    fn in_use(&self) -> u64 {
        (self.allocator.allocated() as u64).max(self.rss.in_use())
    }

    fn describe(&self) -> &'static str {
        "the larger of the live heap (counted by the allocator) and the anonymous resident memory"
    }

    fn relieve(&self) -> bool {
        let Some(release) = self.release else {
            return false;
        };
        if self.rss.in_use() <= (self.allocator.allocated() as u64).saturating_add(RELIEVE_SLACK) {
            return false;
        }
        let now = self.rss.started.elapsed().as_millis() as u64 + 1;
        let last = self.released_at.load(Ordering::Relaxed);
        if last != 0 && now - last < RELIEVE_INTERVAL.as_millis() as u64 {
            return false;
        }
        if self
            .released_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        release();
        self.rss.refresh();
        true
    }
}

static INSTALLED: OnceLock<&'static dyn Meter> = OnceLock::new();

/// Makes `allocator`, the program's global allocator, the meter of every
/// server this process starts from now on. Without it servers measure the
/// anonymous resident memory alone, read at most every
/// [`RSS_SAMPLE_INTERVAL`].
///
/// `release`, if given, makes the allocator return the pages it keeps
/// free (`kv_alloc::return_free_memory` for mimalloc): a write refused at
/// the limit while the resident memory is well above the live heap calls
/// it and measures again, so a store emptied by deletes takes writes again
/// at once rather than when the allocator purges by itself.
pub fn install_allocator_meter<A: Send + Sync>(
    allocator: &'static CountingAllocator<A>,
    release: Option<fn()>,
) {
    let counted: &'static Counted<A> = Box::leak(Box::new(Counted {
        allocator,
        rss: rss(),
        release,
        released_at: AtomicU64::new(0),
    }));
    let _ = INSTALLED.set(counted);
}

/// The resident set size from `/proc/self/status`, read at most every
/// [`RSS_SAMPLE_INTERVAL`].
struct Rss {
    started: Instant,
    /// Milliseconds since `started` of the last reading, plus one (0: never).
    read_at: AtomicU64,
    bytes: AtomicU64,
}

impl Rss {
    /// Reads the resident memory now, however recent the last reading.
    fn refresh(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.read_at.store(now, Ordering::Relaxed);
        self.read();
    }

    fn read(&self) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(bytes) = rss_anon(&status).or_else(|| vm_rss(&status)) {
            self.bytes.store(bytes, Ordering::Relaxed);
        }
    }
}

impl Meter for Rss {
    fn in_use(&self) -> u64 {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.read_at.load(Ordering::Relaxed);
        let stale = last == 0 || now - last >= RSS_SAMPLE_INTERVAL.as_millis() as u64;
        if stale
            && self
                .read_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.read();
        }
        self.bytes.load(Ordering::Relaxed)
    }

    fn describe(&self) -> &'static str {
        "the anonymous resident memory (no counting allocator installed)"
    }
}

/// `RssAnon` of a `/proc/<pid>/status` text, in bytes: the resident memory
/// besides the mapped binary and files, which the limit is about.
///
/// ```
/// let status = "VmRSS:\t   30720 kB\nRssAnon:\t   10240 kB\n";
/// assert_eq!(kv_server::memory::rss_anon(status), Some(10 << 20));
/// ```
pub fn rss_anon(status: &str) -> Option<u64> {
    status_kib(status, "RssAnon:")
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
///
/// ```
/// let status = "Name:\tkv-server\nVmRSS:\t   20480 kB\n";
/// assert_eq!(kv_server::memory::vm_rss(status), Some(20 << 20));
/// ```
pub fn vm_rss(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let kib: u64 = line
            .strip_prefix(field)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    })
}

fn rss() -> &'static Rss {
    static RSS: OnceLock<Rss> = OnceLock::new();
    RSS.get_or_init(|| Rss {
        started: Instant::now(),
        read_at: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    })
}

fn meter() -> &'static dyn Meter {
    match INSTALLED.get() {
        Some(meter) => *meter,
        None => rss(),
    }
}

/// The share of the limit the watch history of all projects may hold
/// together, at most: a history larger than that would hold values of
/// deleted keys long enough to keep writes refused after the deletes.
pub const HISTORY_SHARE_PERCENT: u64 = 25;

/// `settings` with the watch history (all projects together, and so each
/// project) held to [`HISTORY_SHARE_PERCENT`] % of `limit`.
///
/// ```
/// let capped = kv_server::memory::cap_history(kv_engine::Settings::DEFAULT, 64 << 20);
/// assert_eq!(capped.watch_history_total_bytes, 16 << 20);
/// assert!(capped.watch_history_bytes <= 16 << 20);
/// ```
pub fn cap_history(mut settings: kv_engine::Settings, limit: u64) -> kv_engine::Settings {
    let share = usize::try_from(percent(limit, HISTORY_SHARE_PERCENT)).unwrap_or(usize::MAX);
    settings.watch_history_total_bytes = settings.watch_history_total_bytes.min(share);
    settings.watch_history_bytes = settings
        .watch_history_bytes
        .min(settings.watch_history_total_bytes);
    settings
}

// --------------------------------------------------------------- budget

/// The memory limit and the meter it is checked against.
#[derive(Clone)]
pub struct MemoryBudget {
    limit: u64,
    meter: &'static dyn Meter,
    pressure: Arc<Pressure>,
}

/// Wakes whoever holds memory on others' behalf (watchers not keeping up)
/// when something was refused for memory, at most every
/// [`PRESSURE_INTERVAL`].
struct Pressure {
    notify: Notify,
    started: Instant,
    /// Milliseconds since `started` of the last wake-up, plus one.
    last: AtomicU64,
}

/// Least time between two wake-ups of the watchers at the limit: refusals
/// can come by the thousand a second.
pub const PRESSURE_INTERVAL: Duration = Duration::from_millis(10);

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("meter", &self.meter.describe())
            .finish()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes, measured by the installed allocator meter
    /// or else the resident set size.
    ///
    /// ```
    /// let budget = kv_server::memory::MemoryBudget::new(u64::MAX);
    /// assert!(budget.admit(1 << 20).is_ok());
    /// ```
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            meter: meter(),
            pressure: Arc::new(Pressure {
                notify: Notify::new(),
                started: Instant::now(),
                last: AtomicU64::new(0),
            }),
        }
    }

    /// Tells the watchers that are not keeping up that something was
    /// refused for memory, so they give up what they hold (see
    /// [`MemoryBudget::pressured`]).
    pub fn under_pressure(&self) {
        let p = &*self.pressure;
        let now = p.started.elapsed().as_millis() as u64 + 1;
        let last = p.last.load(Ordering::Relaxed);
        if (last == 0 || now - last >= PRESSURE_INTERVAL.as_millis() as u64)
            && p.last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            p.notify.notify_waiters();
        }
    }

    /// Resolves at the next [`MemoryBudget::under_pressure`].
    pub async fn pressured(&self) {
        self.pressure.notify.notified().await;
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes in use now, as the meter sees them.
    pub fn in_use(&self) -> u64 {
        self.meter.in_use()
    }

    /// What the meter measures.
    pub fn describe(&self) -> &'static str {
        self.meter.describe()
    }

    /// Admits a write that adds about `adding` bytes, unless that would
    /// take the process past the limit. Writes that add nothing (deletes,
    /// clears) are always admitted, so memory can always be freed.
    ///
    /// # Errors
    ///
    /// RESOURCE_EXHAUSTED naming the usage and the limit.
    pub fn admit(&self, adding: usize) -> Result<(), Status> {
        if adding == 0 {
            return Ok(());
        }
        let mut in_use = self.meter.in_use();
        if in_use.saturating_add(adding as u64) <= self.limit {
            return Ok(());
        }
        if self.meter.relieve() {
            in_use = self.meter.in_use();
            if in_use.saturating_add(adding as u64) <= self.limit {
                return Ok(());
            }
        }
        self.under_pressure();
        crate::metrics::metrics().memory_refused();
        Err(self.exhausted(in_use, "this write"))
    }

    /// Admits a new long-lived stream (a Watch) unless the process is
    /// already at the limit: each holds a task, a queue and possibly the
    /// state of a project nobody wrote to.
    ///
    /// # Errors
    ///
    /// RESOURCE_EXHAUSTED naming the usage and the limit.
    pub fn admit_stream(&self) -> Result<(), Status> {
        let in_use = self.meter.in_use();
        if in_use < self.limit {
            return Ok(());
        }
        self.under_pressure();
        crate::metrics::metrics().memory_refused();
        Err(self.exhausted(in_use, "a new watch"))
    }

    /// Whether the process is at or past the limit now.
    pub fn over_limit(&self) -> bool {
        self.meter.in_use() >= self.limit
    }

    /// The status that ends a watcher which is not keeping up while the
    /// server is at its limit: every event queued for it is a copy the
    /// server holds on its behalf.
    pub fn watcher_cut(&self, resume: u64) -> Status {
        Status::resource_exhausted(format!(
            "the server is at its memory limit: {} in use of {} (--max-memory), and this watch is not keeping up with its changes; watch again with from_version {resume}",
            human(self.meter.in_use()),
            human(self.limit),
        ))
    }

    fn exhausted(&self, in_use: u64, what: &str) -> Status {
        Status::resource_exhausted(format!(
            "the server is at its memory limit: {} in use of {} (--max-memory); {what} was refused; reads, deletes and clears still work",
            human(in_use),
            human(self.limit),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_suffixes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("67108864").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64mib").unwrap(), 64 << 20);
        assert_eq!(parse_size("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("10B").unwrap(), 10);
        for bad in [
            "",
            "MiB",
            "64XB",
            "-1",
            "1e9",
            "64 MiB extra",
            "99999999999TiB",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("64MiB"), "{bad}: {err}");
        }
    }

    #[test]
    fn human_sizes_round_to_a_tenth() {
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human((64 << 20) - (100 << 10)), "63.9 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    const MEMINFO: &str = "MemTotal:       16318412 kB\nMemFree:         1000000 kB\n";
    const TOTAL: u64 = 16318412 * 1024;

    #[test]
    fn default_takes_the_smaller_of_cgroup_and_machine() {
        let (limit, source) = default_limit_from(Some("2147483648\n"), None, Some(MEMINFO));
        assert_eq!(
            (limit, source),
            (2147483648 * 75 / 100, LimitSource::Cgroup)
        );
        // A cgroup larger than the machine does not count.
        let (limit, source) = default_limit_from(Some("68719476736\n"), None, Some(MEMINFO));
        assert_eq!((limit, source), (TOTAL * 75 / 100, LimitSource::MemTotal));
        let (limit, source) = default_limit_from(Some("max\n"), None, Some(MEMINFO));
        assert_eq!((limit, source), (TOTAL * 75 / 100, LimitSource::MemTotal));
    }

    #[test]
    fn default_reads_cgroup_v1_and_its_unlimited() {
        let (limit, source) = default_limit_from(None, Some("536870912\n"), Some(MEMINFO));
        assert_eq!((limit, source), (536870912 * 75 / 100, LimitSource::Cgroup));
        let unlimited = "9223372036854771712\n";
        let (limit, source) = default_limit_from(None, Some(unlimited), Some(MEMINFO));
        assert_eq!((limit, source), (TOTAL * 75 / 100, LimitSource::MemTotal));
        // Both versions present: the smaller wins.
        let (limit, _) = default_limit_from(Some("1073741824"), Some("536870912"), None);
        assert_eq!(limit, 536870912 * 75 / 100);
    }

    #[test]
    fn default_without_information_is_the_fallback_and_never_below_the_minimum() {
        assert_eq!(
            default_limit_from(None, None, None),
            (FALLBACK_LIMIT, LimitSource::Fallback)
        );
        assert_eq!(
            default_limit_from(Some("garbage"), None, Some("nothing here")),
            (FALLBACK_LIMIT, LimitSource::Fallback)
        );
        let (limit, _) = default_limit_from(Some("1048576"), None, None);
        assert_eq!(limit, MIN_LIMIT);
    }

    #[test]
    fn a_budget_refuses_past_its_limit_but_never_a_write_adding_nothing() {
        let budget = MemoryBudget::new(1);
        assert!(budget.admit(0).is_ok());
        let refused = budget.admit(100).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("in use of 1 B (--max-memory)"),
            "{}",
            refused.message()
        );
        assert!(budget.admit_stream().is_err());
        assert!(MemoryBudget::new(u64::MAX).admit(1 << 30).is_ok());
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        assert_eq!(vm_rss("VmRSS:\t  1024 kB\n"), Some(1 << 20));
        assert_eq!(vm_rss("VmPeak:\t  1024 kB\n"), None);
        // This test process has no counting allocator: the RSS fallback.
        assert!(MemoryBudget::new(1).in_use() > 0);
    }
}
