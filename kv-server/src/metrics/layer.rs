//! The tower layer that counts every gRPC call: by method and final status
//! code, its latency, and the calls open now.
//!
//! A unary call's status is in the response headers when it failed before
//! replying (trailers-only) and in the trailers otherwise; a stream's is in
//! its trailers. So a call is counted when its response body ends: at the
//! trailers, at the end of a body without them (UNKNOWN), or when the body
//! is dropped before ending (CANCELLED: the client went away).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use tonic::codegen::http;

use super::{enabled, method_index, metrics};

/// gRPC CANCELLED: the response was dropped before it ended.
const CANCELLED: usize = 1;
/// gRPC UNKNOWN: the response ended without a status.
const UNKNOWN: usize = 2;

/// Counts requests, codes, latency and open calls into [`super::metrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered { inner }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Metered<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = enabled().then(|| {
            let method = method_index(request.uri().path());
            metrics().stream_open(method, 1);
            Call {
                method,
                started: Instant::now(),
                done: false,
            }
        });
        MeteredFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

/// One call being counted: counted once, when it ends or is dropped.
#[derive(Debug)]
struct Call {
    method: usize,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let m = metrics();
        m.request_done(self.method, code, nanos);
        m.stream_open(self.method, -1);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

fn code_of(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse().ok()
}

pin_project_lite::pin_project! {
    /// The response future of [`Metered`].
    #[derive(Debug)]
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if let Some(call) = &mut call {
                    call.finish(UNKNOWN);
                }
                return Poll::Ready(Err(e));
            }
        };
        // Trailers-only: the status is already known.
        if let (Some(code), Some(call)) = (code_of(response.headers()), &mut call) {
            call.finish(code);
        }
        Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, call })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when it ends.
    #[derive(Debug)]
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(code_of(trailers).unwrap_or(UNKNOWN));
                    }
                }
                Some(Err(_)) => call.finish(UNKNOWN),
                None => call.finish(UNKNOWN),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
