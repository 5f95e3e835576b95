//! Logs: the `--log-format` and `--log-level` flags, the subscriber they
//! set up, and [`RequestLogLayer`], one line per gRPC request.
//!
//! A request line carries the method, the project (the `x-kv-project`
//! header, or the project the caller's token was admitted to), the gRPC
//! code, the latency and the request id of a write. It is logged at DEBUG
//! when the response ends (for a stream such as Watch or Pipeline: when
//! the stream ends, with its whole duration; a Pipeline's calls are not
//! logged one by one), or at WARN when the server took longer than
//! `--slow-request-ms` to answer. Secrets (tokens, the admin token, the
//! Redis password, the authorization header) and keys and values are never
//! logged: the line is built from the path, one header and the status.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use tonic::codegen::http;
use tracing_subscriber::EnvFilter;

/// Default threshold of the slow-request warning, in milliseconds.
pub const DEFAULT_SLOW_REQUEST_MS: u64 = 1000;

/// Default `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The crates whose level a plain `--log-level` sets; dependencies (HTTP/2,
/// the Redis client) stay at INFO or quieter, so DEBUG does not dump
/// frames.
const OWN_CRATES: [&str; 4] = ["kv_server", "kv_engine", "kv_redis", "kv_alloc"];

/// The `--log-format` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`
    /// and the event's fields).
    Json,
}

/// Flags of logging.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log line format: text, or json (one object per line).
    #[arg(long, env = "KV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level of the server (off, error, warn, info, debug, trace), or a full
    /// filter such as `info,kv_engine=debug`. RUST_LOG, when set, wins.
    #[arg(long, env = "KV_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL, value_parser = parse_level)]
    pub log_level: String,

    /// Warn about requests the server took longer than this to answer, in
    /// milliseconds (0: never).
    #[arg(long, env = "KV_SLOW_REQUEST_MS", default_value_t = DEFAULT_SLOW_REQUEST_MS)]
    pub slow_request_ms: u64,
}

impl LogArgs {
    /// The slow-request threshold; `None` when off.
    pub fn slow_request(&self) -> Option<Duration> {
        (self.slow_request_ms > 0).then(|| Duration::from_millis(self.slow_request_ms))
    }
}

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

fn parse_level(level: &str) -> Result<String, String> {
    filter_for(level).map(|_| level.to_string())
}

/// The filter of `--log-level`: a bare level applies to the server's own
/// crates (dependencies stay at INFO at most); anything else is an
/// `EnvFilter` directive list taken as it is.
fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let level = level.trim();
    let directives = match LEVELS.iter().position(|l| l.eq_ignore_ascii_case(level)) {
        Some(rank) => {
            let base = LEVELS[rank.min(2)];
            let own: Vec<String> = OWN_CRATES
                .iter()
                .map(|krate| format!("{krate}={}", LEVELS[rank]))
                .collect();
            format!("{base},{}", own.join(","))
        }
        // A lone word is a target to EnvFilter: as a level it is a typo.
        None if level.eq_ignore_ascii_case("off") => "off".to_string(),
        None if !level.contains(['=', ',']) => {
            return Err(format!(
                "{level:?} is not a level (off, error, warn, info, debug, trace) or filter"
            ));
        }
        None => level.to_string(),
    };
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| format!("not a level (error, warn, info, debug, trace) or filter: {e}"))
}

/// Installs the global subscriber: `args`' format and level, on stderr.
/// `RUST_LOG`, when set and not empty, replaces `--log-level`.
///
/// # Errors
///
/// When `RUST_LOG` is not a valid filter, naming it.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if !rust_log.trim().is_empty() => EnvFilter::builder()
            .parse(&rust_log)
            .map_err(|e| format!("RUST_LOG is not a valid log filter: {e}"))?,
        _ => filter_for(&args.log_level).map_err(|e| format!("--log-level: {e}"))?,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    // A second install (tests in one process) keeps the first.
    let _ = installed;
    Ok(())
}

/// What the service layer learns about a request that the request line
/// reports: the project the caller was admitted to and a write's request
/// id. Filled by [`note_project`] and [`note_request_id`].
#[derive(Default)]
struct Notes {
    /// Whether the project is still unknown (no `x-kv-project` header).
    wants_project: bool,
    project: OnceLock<String>,
    request_id: OnceLock<String>,
}

tokio::task_local! {
    static NOTES: Arc<Notes>;
}

/// Records the project of the request being served, for its log line.
/// Does nothing outside a logged request (a Pipeline's calls).
pub(crate) fn note_project(project: &str) {
    let _ = NOTES.try_with(|notes| {
        if notes.wants_project {
            let _ = notes.project.set(project.to_string());
        }
    });
}

/// Records the request id of the write being served, for its log line.
/// Does nothing outside a logged request (a Pipeline's calls).
pub(crate) fn note_request_id(id: &str) {
    if !id.is_empty() {
        let _ = NOTES.try_with(|notes| notes.request_id.set(id.to_string()));
    }
}

/// Logs one line per request; see the module docs.
#[derive(Clone, Debug)]
pub struct RequestLogLayer {
    slow: Option<Duration>,
}

impl RequestLogLayer {
    /// A layer warning about requests slower than `slow` (`None`: never).
    pub fn new(slow: Option<Duration>) -> Self {
        Self { slow }
    }
}

impl<S> tower_layer::Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            slow: self.slow,
        }
    }
}

/// The service [`RequestLogLayer`] makes.
#[derive(Clone, Debug)]
pub struct RequestLog<S> {
    inner: S,
    slow: Option<Duration>,
}

/// A request being served, until its response ends.
struct Record {
    method: http::uri::PathAndQuery,
    header_project: Option<http::HeaderValue>,
    notes: Arc<Notes>,
    started: Instant,
    /// How long the server took to answer (the response head).
    answered: Duration,
    slow: Option<Duration>,
    code: Option<i32>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RequestLog<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<LogBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let active = self.slow.is_some()
            || tracing::enabled!(target: "kv_server::request", tracing::Level::DEBUG);
        if !active {
            let response = self.inner.call(request);
            return Box::pin(async move {
                Ok(response.await?.map(|inner| LogBody {
                    inner,
                    record: None,
                }))
            });
        }
        let started = Instant::now();
        let method = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let header_project = request.headers().get("x-kv-project").cloned();
        let notes = Arc::new(Notes {
            wants_project: header_project.is_none(),
            ..Notes::default()
        });
        let slow = self.slow;
        let response = NOTES.scope(Arc::clone(&notes), self.inner.call(request));
        Box::pin(async move {
            let response = response.await?;
            // An error answered at once (trailers-only) has its status in
            // the head; otherwise it comes in the trailers.
            let code = grpc_status(response.headers());
            let record = Record {
                method,
                header_project,
                notes,
                started,
                answered: started.elapsed(),
                slow,
                code,
            };
            Ok(response.map(|inner| LogBody {
                inner,
                record: Some(Box::new(record)),
            }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that logs its request's line when it ends (or is
/// dropped: the client went away).
pub struct LogBody<B> {
    inner: B,
    record: Option<Box<Record>>,
}

impl<B> LogBody<B> {
    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            record.log();
        }
    }
}

impl<B> Drop for LogBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for LogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(record) = &mut self.record {
                        record.code = grpc_status(trailers).or(record.code);
                    }
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Record {
    fn log(&self) {
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let method = self.method.path();
        let project = self
            .header_project
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.notes.project.get().map(String::as_str))
            .unwrap_or("");
        let request_id = self.notes.request_id.get().map_or("", String::as_str);
        // No status at all: the client cancelled before the end.
        let code = self.code.map_or("CANCELLED", code_name);
        if self.slow.is_some_and(|slow| self.answered >= slow) {
            let answer_ms = self.answered.as_secs_f64() * 1000.0;
            tracing::warn!(
                target: "kv_server::request",
                method,
                project,
                code,
                latency_ms,
                answer_ms,
                request_id,
                "slow request"
            );
        } else {
            tracing::debug!(
                target: "kv_server::request",
                method,
                project,
                code,
                latency_ms,
                request_id,
                "request"
            );
        }
    }
}

/// The canonical name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| kv_proto::contract::CODE_NAMES.get(i).copied())
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_spares_dependencies() {
        assert!(filter_for("debug").is_ok());
        assert!(filter_for("info,kv_engine=trace").is_ok());
        assert!(filter_for("kv_server=loud").is_err());
        assert!(filter_for("loud").is_err());
        assert!(filter_for("off").is_ok());
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
