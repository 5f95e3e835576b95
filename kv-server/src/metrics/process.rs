//! Process metrics in the names Prometheus' own clients use, read from
//! `/proc/self` at scrape time (left out where `/proc` is absent).

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// Clock ticks per second of `/proc/self/stat` times; 100 on every Linux
/// platform Rust supports.
const TICKS_PER_SECOND: f64 = 100.0;
/// Page size `rss` in `/proc/self/stat` counts in; the smallest one Linux
/// uses, and `VmRSS` (bytes) is preferred when present.
const PAGE_SIZE: u64 = 4096;

/// What `/proc/self` says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: u64,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of open file descriptors.
    pub max_fds: Option<u64>,
    /// Threads.
    pub threads: u64,
}

/// Parses `/proc/self/stat` and the boot time (`btime` of `/proc/stat`).
///
/// ```
/// use kv_server::metrics::process::parse_stat;
/// let stat = "42 (kv server) S 1 42 42 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 300 18446744073709551615";
/// let p = parse_stat(stat, 1_700_000_000).unwrap();
/// assert_eq!(p.cpu_seconds, 3.0);
/// assert_eq!(p.threads, 7);
/// assert_eq!(p.start_time_seconds, 1_700_000_010.0);
/// assert_eq!(p.virtual_bytes, 123456789);
/// assert_eq!(p.resident_bytes, 300 * 4096);
/// ```
pub fn parse_stat(stat: &str, boot_time: u64) -> Option<ProcessFigures> {
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) (1-based) is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14)? + field(15)?;
    Some(ProcessFigures {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        threads: field(20)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * PAGE_SIZE,
        open_fds: 0,
        max_fds: None,
    })
}

fn read() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_time = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    let mut figures = parse_stat(&stat, boot_time)?;
    if let Some(rss) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| crate::memory::vm_rss(&s))
    {
        figures.resident_bytes = rss;
    }
    figures.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    figures.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        });
    Some(figures)
}

fn gauge<V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

/// Encodes the `process_*` metrics.
pub(super) fn encode(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Some(p) = read() else {
        return Ok(());
    };
    {
        let m = e.encode_descriptor(
            "process_cpu_seconds",
            "user and system CPU time spent, in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(m)?;
    }
    gauge(
        e,
        "process_resident_memory_bytes",
        "resident memory size in bytes",
        p.resident_bytes as i64,
    )?;
    gauge(
        e,
        "process_virtual_memory_bytes",
        "virtual memory size in bytes",
        p.virtual_bytes as i64,
    )?;
    gauge(
        e,
        "process_start_time_seconds",
        "start time of the process since the Unix epoch, in seconds",
        p.start_time_seconds,
    )?;
    gauge(
        e,
        "process_open_fds",
        "open file descriptors",
        p.open_fds as i64,
    )?;
    if let Some(max) = p.max_fds {
        gauge(
            e,
            "process_max_fds",
            "the limit of open file descriptors",
            max as i64,
        )?;
    }
    gauge(e, "process_threads", "OS threads", p.threads as i64)
}
