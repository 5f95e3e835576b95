//! Resource limits at the connection and request level, so a slow, silent
//! or greedy client cannot pin the server's resources.
//!
//! - [`guard_connections`]: at most `max_connections` open at once (one over
//!   is accepted and closed at once, which a gRPC client reports as
//!   UNAVAILABLE), and a connection that sends nothing for the idle timeout
//!   is closed. Live clients answer the server's HTTP/2 keepalive pings,
//!   which counts as traffic, so only silent peers are cut.
//! - [`RequestLimitsLayer`]: a cap on how long any request may run
//!   (DEADLINE_EXCEEDED naming the cap), and tonic's over-size message
//!   error (OUT_OF_RANGE) rewritten as RESOURCE_EXHAUSTED naming the limits.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Status,
    codegen::http,
    transport::server::{Connected, TcpConnectInfo},
};

use crate::config::Limits;

/// A connection counted against the limit, closed when idle too long.
pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    _open: crate::metrics::ConnectionOpen,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

/// Wraps accepted connections: refuses those over `max_connections` and
/// closes any that stays silent for `idle_timeout`.
pub fn guard_connections<S>(
    incoming: S,
    max_connections: usize,
    idle_timeout: Duration,
) -> impl Stream<Item = io::Result<GuardedStream>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    incoming.filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => Some(Ok(GuardedStream {
                inner: stream,
                _permit: permit,
                _open: crate::metrics::ConnectionOpen::new(),
                idle_timeout,
                idle: Box::pin(tokio::time::sleep(idle_timeout)),
            })),
            Err(_) => {
                crate::metrics::metrics().connection_refused();
                tracing::warn!(
                    peer = ?stream.peer_addr().ok(),
                    "refusing a connection: {max_connections} connections are open (--max-connections)"
                );
                None
            }
        }
    })
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let deadline = Instant::now() + self.idle_timeout;
                    self.idle.as_mut().reset(deadline);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                ready!(self.idle.as_mut().poll(cx));
                tracing::debug!(peer = ?self.inner.peer_addr().ok(), "closing a silent connection");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no traffic within the idle timeout",
                )))
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Caps request run time and words over-size errors; see the module docs.
#[derive(Clone)]
pub struct RequestLimitsLayer {
    limits: Limits,
    max_request_time: Duration,
}

impl RequestLimitsLayer {
    /// A layer for `limits`, stopping any request after `max_request_time`.
    pub fn new(limits: Limits, max_request_time: Duration) -> Self {
        Self {
            limits,
            max_request_time,
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequestLimitsLayer`] makes.
#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
    layer: RequestLimitsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RequestLimits<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let layer = self.layer.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            // A client deadline shorter than the cap is tonic's to enforce;
            // this only stops requests that would outlive the cap.
            let Ok(response) = tokio::time::timeout(layer.max_request_time, response).await else {
                let cap = layer.max_request_time.as_millis();
                return Ok(Status::deadline_exceeded(format!(
                    "request exceeded the server's limit of {cap} ms per request (--max-request-time-ms)"
                ))
                .into_http());
            };
            let mut response = response?;
            rewrite_oversize(response.headers_mut(), &layer.limits);
            Ok(response)
        })
    }
}

fn rewrite_oversize(headers: &mut http::HeaderMap, limits: &Limits) {
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if !(out_of_range && too_large) {
        return;
    }
    let status = Status::resource_exhausted(format!(
        "request message is larger than the limit of {} bytes (values up to {} bytes encoded, keys up to {} bytes)",
        limits.max_message_bytes(),
        limits.max_value_bytes,
        limits.max_key_bytes,
    ));
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    // Only fails for a message that cannot be a header value; ours is ASCII.
    let _ = status.add_header(headers);
}
