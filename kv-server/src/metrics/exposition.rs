//! `/metrics`: the Prometheus text format of [`super::metrics`], of what
//! the storage and the process report at scrape time, and the HTTP/1
//! listener that serves it.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes};
use kv_engine::stats::{LogStats, Snapshot};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use super::{AuthFailure, METHODS, RATE_SUBJECTS, RateLimit, metrics};

/// What the storage reports at scrape time; absent figures are left out.
#[derive(Debug, Default, Clone)]
pub struct StorageFigures {
    /// Keys and bytes per project (embedded storage only).
    pub projects: Option<Vec<(String, u64, u64)>>,
    /// Entries and data bytes held in memory.
    pub entries: Option<(u64, u64)>,
    /// Writes and bytes waiting for the log writer.
    pub write_queue: Option<(u64, u64)>,
    /// Seconds start-up recovery took.
    pub recovery_seconds: Option<f64>,
    /// The log writer's and snapshots' figures.
    pub log: Option<Arc<LogStats>>,
    /// Keys taken by the expiry task, and the lag of its latest batch (ms).
    pub expiry: Option<(u64, u64)>,
}

/// Where scrape-time figures come from.
pub struct Sources {
    /// The storage's figures, read at each scrape.
    pub storage: Box<dyn Fn() -> StorageFigures + Send + Sync>,
    /// `(in use, limit)` of the memory limit, in bytes.
    pub memory: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    /// How many projects get their own per-project series.
    pub top_projects: usize,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("top_projects", &self.top_projects)
            .finish_non_exhaustive()
    }
}

/// The label of the series that sums the projects past the top N.
pub const OTHER_PROJECTS: &str = "_other";

type Res = Result<(), std::fmt::Error>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Res {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

fn gauge<V>(e: &mut DescriptorEncoder, name: &str, help: &str, value: V) -> Res
where
    ConstGauge<V>: EncodeMetric,
{
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

/// Buckets scaled by `scale` (nanoseconds to seconds, say), each with its
/// own count: the encoder adds them up.
fn histogram_buckets(snap: &Snapshot, scale: f64) -> Vec<(f64, u64)> {
    let mut below = 0;
    snap.cumulative
        .iter()
        .map(|&(bound, cumulative)| {
            let n = cumulative - below;
            below = cumulative;
            let le = if bound == u64::MAX {
                f64::INFINITY
            } else {
                bound as f64 * scale
            };
            (le, n)
        })
        .collect()
}

/// The top `n` of `values` by value each under its own label, the rest
/// summed under [`OTHER_PROJECTS`] (present whenever any were left out).
///
/// ```
/// use kv_server::metrics::exposition::top_n;
/// let v = vec![("a".to_string(), 5), ("b".to_string(), 9), ("c".to_string(), 1)];
/// assert_eq!(top_n(v, 1), vec![("b".to_string(), 9), ("_other".to_string(), 6)]);
/// ```
pub fn top_n(mut values: Vec<(String, u64)>, n: usize) -> Vec<(String, u64)> {
    values.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if values.len() <= n {
        return values;
    }
    let other: u64 = values[n..].iter().map(|(_, v)| v).sum();
    values.truncate(n);
    values.push((OTHER_PROJECTS.to_string(), other));
    values
}

#[derive(Debug)]
struct Exposition(Sources);

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Res {
        let m = metrics();
        {
            let mut f = e.encode_descriptor(
                "kv_requests",
                "gRPC calls finished, by method and status code",
                None,
                MetricType::Counter,
            )?;
            for (i, &(service, method)) in METHODS.iter().enumerate() {
                for (code, name) in kv_proto::contract::CODE_NAMES.iter().enumerate() {
                    let n = m.requests(i, code);
                    if n > 0 {
                        let labels = [("service", service), ("method", method), ("code", name)];
                        ConstCounter::new(n).encode(f.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut f = e.encode_descriptor(
                "kv_request_duration_seconds",
                "gRPC call latency, from request to the end of the response, by method",
                None,
                MetricType::Histogram,
            )?;
            for (i, &(service, method)) in METHODS.iter().enumerate() {
                let snap = m.latency[i].snapshot();
                if snap.count == 0 {
                    continue;
                }
                let labels = [("service", service), ("method", method)];
                f.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    snap.sum as f64 / 1e9,
                    snap.count,
                    &histogram_buckets(&snap, 1e-9),
                    None,
                )?;
            }
        }
        {
            let mut f = e.encode_descriptor(
                "kv_calls_open",
                "gRPC calls (HTTP/2 streams) open now, by method",
                None,
                MetricType::Gauge,
            )?;
            for (i, &(service, method)) in METHODS.iter().enumerate() {
                let labels = [("service", service), ("method", method)];
                let open = m.streams_open[i].load(Ordering::Relaxed);
                ConstGauge::new(open).encode(f.encode_family(&labels)?)?;
            }
        }
        {
            let snap = m.calls_per_frame.snapshot();
            let mut f = e.encode_descriptor(
                "kv_pipeline_calls_per_frame",
                "calls in each Pipeline frame received (its count is the frames received)",
                None,
                MetricType::Histogram,
            )?;
            f.encode_histogram::<NoLabelSet>(
                snap.sum as f64,
                snap.count,
                &histogram_buckets(&snap, 1.0),
                None,
            )?;
        }
        gauge(
            &mut e,
            "kv_connections_open",
            "client connections open now",
            m.connections_open.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "kv_connections_refused",
            "connections refused because --max-connections were open",
            m.connections_refused.load(Ordering::Relaxed),
        )?;
        {
            let mut f = e.encode_descriptor(
                "kv_auth_failures",
                "calls refused for their credentials, by reason",
                None,
                MetricType::Counter,
            )?;
            for reason in AuthFailure::ALL {
                let n = m.auth_failures[reason as usize].load(Ordering::Relaxed);
                ConstCounter::new(n).encode(f.encode_family(&[("reason", reason.label())])?)?;
            }
        }
        {
            let mut f = e.encode_descriptor(
                "kv_rate_limit_refusals",
                "calls refused by a rate limit, by whose limit and which",
                None,
                MetricType::Counter,
            )?;
            for (s, subject) in RATE_SUBJECTS.iter().enumerate() {
                for limit in RateLimit::ALL {
                    let n = m.rate_refusals[s][limit as usize].load(Ordering::Relaxed);
                    let labels = [("subject", *subject), ("limit", limit.label())];
                    ConstCounter::new(n).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        counter(
            &mut e,
            "kv_quota_refusals",
            "writes refused by a project's storage quota (keys or bytes)",
            m.quota_refusals.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "kv_memory_refusals",
            "writes and watches refused at the memory limit (--max-memory)",
            m.memory_refusals.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "kv_watchers_open",
            "Watch streams open now",
            m.watchers_open.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "kv_watchers_cut",
            "Watch streams ended by the server because they fell behind",
            m.watchers_cut.load(Ordering::Relaxed),
        )?;
        let (in_use, limit) = (self.0.memory)();
        gauge(
            &mut e,
            "kv_memory_in_use_bytes",
            "memory in use, as the memory limit measures it",
            in_use as i64,
        )?;
        gauge(
            &mut e,
            "kv_memory_limit_bytes",
            "the memory limit (--max-memory)",
            limit as i64,
        )?;
        let mut figures = (self.0.storage)();
        Self::encode_storage(&mut e, &figures)?;
        self.encode_projects(&mut e, figures.projects.take())?;
        super::process::encode(&mut e)
    }
}

impl Exposition {
    fn encode_storage(e: &mut DescriptorEncoder, figures: &StorageFigures) -> Res {
        if let Some((entries, bytes)) = figures.entries {
            gauge(
                e,
                "kv_entries",
                "entries held (expired but not yet reclaimed included)",
                entries as i64,
            )?;
            gauge(
                e,
                "kv_data_bytes",
                "bytes of keys and values held",
                bytes as i64,
            )?;
        }
        if let Some((writes, bytes)) = figures.write_queue {
            gauge(
                e,
                "kv_log_queue_writes",
                "writes waiting for the log writer",
                writes as i64,
            )?;
            gauge(
                e,
                "kv_log_queue_bytes",
                "bytes of the writes waiting for the log writer",
                bytes as i64,
            )?;
        }
        if let Some((expired, lag_ms)) = figures.expiry {
            counter(
                e,
                "kv_expired_keys",
                "expired keys taken for reclaiming by the expiry task",
                expired,
            )?;
            gauge(
                e,
                "kv_expiry_lag_seconds",
                "how long past its deadline the most overdue key of the expiry task's latest batch was reclaimed",
                lag_ms as f64 / 1e3,
            )?;
        }
        if let Some(log) = &figures.log {
            encode_log(e, log)?;
        }
        if let Some(seconds) = figures.recovery_seconds {
            gauge(
                e,
                "kv_recovery_seconds",
                "how long start-up recovery (snapshot load and log replay) took",
                seconds,
            )?;
        }
        Ok(())
    }

    fn encode_projects(
        &self,
        e: &mut DescriptorEncoder,
        projects: Option<Vec<(String, u64, u64)>>,
    ) -> Res {
        let n = self.0.top_projects;
        let ops: Vec<(String, u64)> = metrics()
            .project_ops
            .iter()
            .map(|r| (r.key().to_string(), r.value().load(Ordering::Relaxed)))
            .collect();
        {
            let mut f = e.encode_descriptor(
                "kv_project_ops",
                "data operations admitted per project (top --metrics-top-projects, the rest as project=\"_other\")",
                None,
                MetricType::Counter,
            )?;
            for (project, v) in top_n(ops, n) {
                ConstCounter::new(v).encode(f.encode_family(&[("project", project.as_str())])?)?;
            }
        }
        let Some(projects) = projects else {
            return Ok(());
        };
        let mut keys = Vec::with_capacity(projects.len());
        let mut bytes = Vec::with_capacity(projects.len());
        for (project, k, b) in projects {
            keys.push((project.clone(), k));
            bytes.push((project, b));
        }
        for (name, help, values) in [
            (
                "kv_project_keys",
                "keys held per project (top --metrics-top-projects, the rest as project=\"_other\")",
                keys,
            ),
            (
                "kv_project_bytes",
                "bytes of keys and values held per project (top --metrics-top-projects, the rest as project=\"_other\")",
                bytes,
            ),
        ] {
            let mut f = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (project, v) in top_n(values, n) {
                ConstGauge::new(v as i64)
                    .encode(f.encode_family(&[("project", project.as_str())])?)?;
            }
        }
        Ok(())
    }
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snap: &Snapshot,
    scale: f64,
) -> Res {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(
        snap.sum as f64 * scale,
        snap.count,
        &histogram_buckets(snap, scale),
        None,
    )
}

fn encode_log(e: &mut DescriptorEncoder, log: &LogStats) -> Res {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    histogram(
        e,
        "kv_log_append_duration_seconds",
        "time each group commit's write to the log took",
        &log.appends.snapshot(),
        1e-9,
    )?;
    histogram(
        e,
        "kv_log_fsync_duration_seconds",
        "time each fsync of the log took",
        &log.fsyncs.snapshot(),
        1e-9,
    )?;
    histogram(
        e,
        "kv_log_batch_writes",
        "writes gathered into each group commit",
        &log.batch_writes.snapshot(),
        1.0,
    )?;
    counter(
        e,
        "kv_log_appended_bytes",
        "bytes appended to the log",
        load(&log.appended_bytes),
    )?;
    gauge(
        e,
        "kv_log_bytes",
        "bytes of log a recovery would replay now (since the newest snapshot)",
        load(&log.log_bytes) as i64,
    )?;
    counter(e, "kv_snapshots", "snapshots written", load(&log.snapshots))?;
    counter(
        e,
        "kv_snapshot_failures",
        "snapshots that failed (the log was kept)",
        load(&log.snapshot_failures),
    )?;
    if let Some(ms) = log.last_snapshot_unix_ms() {
        gauge(
            e,
            "kv_snapshot_last_timestamp_seconds",
            "when the newest snapshot was finished, Unix time",
            ms as f64 / 1e3,
        )?;
        gauge(
            e,
            "kv_snapshot_last_bytes",
            "size of the newest snapshot",
            load(&log.last_snapshot_bytes) as i64,
        )?;
        gauge(
            e,
            "kv_snapshot_last_duration_seconds",
            "how long writing the newest snapshot took",
            load(&log.last_snapshot_nanos) as f64 / 1e9,
        )?;
    }
    Ok(())
}

/// The text exposition of everything, as served at `/metrics`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; a collector's own error would
    // only truncate the output.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!("encoding metrics failed: {e}");
    }
    // The encoder writes infinity as `inf`; both formats spell it `+Inf`.
    out.replace("le=\"inf\"", "le=\"+Inf\"")
}

/// The registry of the server's metrics over `sources`.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(sources)));
    registry
}

/// Serves `/metrics` (and `/` with a pointer to it) over HTTP/1 on
/// `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let registry = Arc::clone(&registry);
                    async move { Ok::<_, Infallible>(respond(&request, &registry)) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection ended: {e}");
            }
        });
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text: a
/// counter's `# HELP` and `# TYPE` name its samples (`x_total`), there is
/// there is no `# UNIT` or `# EOF`.
///
/// ```
/// use kv_server::metrics::exposition::to_prometheus_text;
/// let open = "# HELP a_b things\n# TYPE a_b counter\na_b_total 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\n# EOF\n";
/// assert_eq!(
///     to_prometheus_text(open),
///     "# HELP a_b_total things\n# TYPE a_b_total counter\na_b_total 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\n",
/// );
/// ```
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn respond<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    // Prometheus asks for OpenMetrics; anything else (curl, promtool, older
    // scrapers) gets the classic text format.
    let openmetrics = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") if openmetrics => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            to_prometheus_text(&render(registry)),
        ),
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds `addr` for `/metrics` and serves it in the background.
///
/// # Errors
///
/// When `addr` cannot be bound.
pub async fn start(
    addr: SocketAddr,
    sources: Sources,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics on http://{bound}/metrics");
    let registry = Arc::new(registry(sources));
    super::enable();
    Ok((bound, tokio::spawn(serve(listener, registry))))
}
