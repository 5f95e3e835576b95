//! Request bytes in flight, tied to the memory limit.
//!
//! A request message is buffered whole before it is decoded, so without a
//! bound the bytes being received are the message limit times every open
//! stream of every connection, far past `--max-memory`. [`InflightLayer`]
//! reads the gRPC length prefix of every request message as it arrives and
//! reserves the message's declared size against one budget for the whole
//! server before its bytes are received:
//!
//! - the budget is a quarter of the memory limit, and never less than one
//!   largest message (so the largest request the limits allow can always
//!   be sent once nothing else is in flight);
//! - a message that would take the bytes in flight past the budget is
//!   refused at once with RESOURCE_EXHAUSTED naming the budget, before its
//!   payload is read;
//! - a further sixteenth of the limit is kept for messages that free
//!   memory or only read (every method but `Set`, `SetMany`, `Incr`,
//!   `Merge`, `Batch` and `Pipeline`) and for messages of at most
//!   [`SMALL_MESSAGE`] bytes of any method, so reads, deletes and small
//!   calls still get through while large writes fill the budget;
//! - a large `Set`, `SetMany` or `Merge` (which always add data) is refused
//!   before it is received when twice its size (the bytes received and the
//!   values decoded from them), plus the bytes other requests have
//!   reserved, would take the process past the memory
//!   limit.
//!
//! The reservation is released as the message is handed to the decoder
//! (the decoded message is then counted by the memory meter like any other
//! allocation) or when the request ends. Bytes HTTP/2 has received but the
//! server has not yet read are bounded separately, by the flow-control
//! window [`CONNECTION_WINDOW`] of each connection.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tonic::{
    Status,
    body::Body,
    codegen::{Bytes, http},
};

use crate::memory::{MemoryBudget, human};

/// Messages up to this size may use the reserve whatever their method.
pub const SMALL_MESSAGE: u64 = 64 << 10;
/// The in-flight budget's share of the memory limit.
pub const BUDGET_DIVISOR: u64 = 4;
/// The reserve's share of the memory limit.
pub const RESERVE_DIVISOR: u64 = 16;
/// The gRPC length prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

/// Methods whose messages add data; the others read or free memory.
const ADDING: [&str; 6] = ["Set", "SetMany", "Incr", "Merge", "Batch", "Pipeline"];
/// Methods that always add data: refused before receipt at the limit.
const ALWAYS_ADDING: [&str; 3] = ["Set", "SetMany", "Merge"];

/// The HTTP/2 flow-control window of each connection (and of each stream
/// within it): HTTP/2 buffers at most this much of a connection's request
/// data that the server has not read yet, so all connections together at
/// most `--max-connections` times this. Windows derived from the memory
/// limit (64 KiB for a 64 MiB server of 10000 connections) held memory
/// after large writes stalled on them, so the window is fixed at 1 MiB.
pub const CONNECTION_WINDOW: u32 = 1 << 20;

/// The server's budget of request bytes in flight.
#[derive(Debug)]
pub struct InflightBudget {
    held: AtomicU64,
    budget: u64,
    reserve: u64,
    memory: MemoryBudget,
}

impl InflightBudget {
    /// The budget for `memory`'s limit, never below one message of
    /// `max_message` bytes.
    ///
    /// ```
    /// use kv_server::{inflight::InflightBudget, memory::MemoryBudget};
    /// let budget = InflightBudget::new(MemoryBudget::new(256 << 20), 4 << 20);
    /// assert_eq!(budget.budget(), 64 << 20);
    /// assert_eq!(budget.held(), 0);
    /// ```
    pub fn new(memory: MemoryBudget, max_message: usize) -> Self {
        let limit = memory.limit();
        Self {
            held: AtomicU64::new(0),
            budget: (limit / BUDGET_DIVISOR).max(max_message as u64 + PREFIX as u64),
            reserve: limit / RESERVE_DIVISOR,
            memory,
        }
    }

    /// The budget, in bytes (the reserve comes on top).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes reserved by messages being received now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves a message of `bytes` for a call of `method` (its name), or
    /// says why not.
    fn reserve(&self, bytes: u64, method: &str) -> Result<(), Status> {
        let adding = ADDING.contains(&method);
        if ALWAYS_ADDING.contains(&method) && bytes > SMALL_MESSAGE {
            // Held twice while decoded (the bytes received and the values
            // decoded from them), beside what other requests will receive.
            self.memory.admit((2 * bytes + self.held()) as usize)?;
        }
        let ceiling = if adding && bytes > SMALL_MESSAGE {
            self.budget
        } else {
            self.budget + self.reserve
        };
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes <= ceiling {
            return Ok(());
        }
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.memory.under_pressure();
        Err(Status::resource_exhausted(format!(
            "the server is receiving {} of requests and its limit for requests in flight is {} (a quarter of --max-memory {}, at least one largest message); this request of {} was refused; retry later",
            human(before),
            human(self.budget),
            human(self.memory.limit()),
            human(bytes),
        )))
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// Installs [`InflightBudget`] on every request; see the module docs.
#[derive(Clone)]
pub struct InflightLayer {
    budget: Arc<InflightBudget>,
}

impl InflightLayer {
    /// A layer reserving against `budget`.
    pub fn new(budget: Arc<InflightBudget>) -> Self {
        Self { budget }
    }
}

impl<S> tower_layer::Layer<S> for InflightLayer {
    type Service = Inflight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Inflight {
            inner,
            budget: Arc::clone(&self.budget),
        }
    }
}

/// The service [`InflightLayer`] makes.
#[derive(Clone)]
pub struct Inflight<S> {
    inner: S,
    budget: Arc<InflightBudget>,
}

impl<S> tower_service::Service<http::Request<Body>> for Inflight<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let budget = Arc::clone(&self.budget);
        let request = request.map(|body| {
            Body::new(Counted {
                inner: body,
                budget,
                method,
                prefix: [0; PREFIX],
                prefix_len: 0,
                remaining: 0,
                reserved: 0,
                done: 0,
                failed: false,
            })
        });
        self.inner.call(request)
    }
}

/// A request body whose messages are reserved against the budget as their
/// length prefixes arrive.
struct Counted {
    inner: Body,
    budget: Arc<InflightBudget>,
    method: String,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: u64,
    /// Reserved for the current message.
    reserved: u64,
    /// Reserved for messages already handed on whole: released at the
    /// next poll, once the decoder has taken them.
    done: u64,
    failed: bool,
}

impl Counted {
    /// Walks `data` through the message framing, reserving each message
    /// as its prefix completes.
    fn account(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                data = &data[take as usize..];
                if self.remaining == 0 {
                    self.done += std::mem::take(&mut self.reserved);
                }
                continue;
            }
            let take = (PREFIX - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len < PREFIX {
                continue;
            }
            self.prefix_len = 0;
            let len = u32::from_be_bytes([
                self.prefix[1],
                self.prefix[2],
                self.prefix[3],
                self.prefix[4],
            ]);
            let bytes = u64::from(len) + PREFIX as u64;
            self.budget.reserve(bytes, &self.method)?;
            if len == 0 {
                self.done += bytes;
            } else {
                self.reserved = bytes;
                self.remaining = u64::from(len);
            }
        }
        Ok(())
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        this.budget.release(std::mem::take(&mut this.done));
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = this.account(data)
        {
            this.failed = true;
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.budget.release(self.done + self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    fn counted(budget: &Arc<InflightBudget>, method: &str, chunks: Vec<Vec<u8>>) -> Counted {
        let stream = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c)))),
        );
        Counted {
            inner: Body::new(http_body_util_stream(stream)),
            budget: Arc::clone(budget),
            method: method.into(),
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
            reserved: 0,
            done: 0,
            failed: false,
        }
    }

    /// A body of the given frames.
    fn http_body_util_stream<S>(stream: S) -> impl http_body::Body<Data = Bytes, Error = Status>
    where
        S: tokio_stream::Stream<Item = Result<http_body::Frame<Bytes>, Status>> + Send + Unpin,
    {
        struct Frames<S>(S);
        impl<S> http_body::Body for Frames<S>
        where
            S: tokio_stream::Stream<Item = Result<http_body::Frame<Bytes>, Status>> + Unpin,
        {
            type Data = Bytes;
            type Error = Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
                Pin::new(&mut self.0).poll_next(cx)
            }
        }
        Frames(stream)
    }

    async fn next(body: &mut Counted) -> Option<Result<http_body::Frame<Bytes>, Status>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    fn budget(limit: u64) -> Arc<InflightBudget> {
        Arc::new(InflightBudget::new(MemoryBudget::new(u64::MAX), 1 << 20).with_limit(limit))
    }

    impl InflightBudget {
        fn with_limit(mut self, limit: u64) -> Self {
            self.budget = limit / BUDGET_DIVISOR;
            self.reserve = limit / RESERVE_DIVISOR;
            self
        }
    }

    #[tokio::test]
    async fn messages_are_reserved_from_their_prefix_and_released_once_taken() {
        let budget = budget(64 << 20);
        let whole = message(1 << 20);
        // Split mid-prefix and mid-payload.
        let chunks = vec![
            whole[..3].to_vec(),
            whole[3..1000].to_vec(),
            whole[1000..].to_vec(),
        ];
        let mut body = counted(&budget, "Set", chunks);
        assert!(next(&mut body).await.unwrap().is_ok());
        assert_eq!(budget.held(), 0, "not even the prefix is whole");
        assert!(next(&mut body).await.unwrap().is_ok());
        assert_eq!(budget.held(), (1 << 20) + 5);
        assert!(next(&mut body).await.unwrap().is_ok());
        assert_eq!(budget.held(), (1 << 20) + 5, "taken at the next poll");
        assert!(next(&mut body).await.is_none());
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_message_past_the_budget_is_refused_and_small_or_freeing_ones_use_the_reserve() {
        // Budget 16 MiB, reserve 4 MiB.
        let budget = budget(64 << 20);
        let mut first = counted(&budget, "Set", vec![message(12 << 20)[..5].to_vec()]);
        assert!(next(&mut first).await.unwrap().is_ok());
        let mut second = counted(&budget, "SetMany", vec![message(8 << 20)[..5].to_vec()]);
        let refused = next(&mut second).await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("its limit for requests in flight is 16.0 MiB")
                && refused
                    .message()
                    .contains("this request of 8.0 MiB was refused"),
            "{}",
            refused.message()
        );
        assert!(next(&mut second).await.is_none());
        // A 5 MiB delete fits in budget plus reserve; a 5 MiB set does not.
        let mut delete = counted(&budget, "DeleteMany", vec![message(5 << 20)[..5].to_vec()]);
        assert!(next(&mut delete).await.unwrap().is_ok());
        let mut small = counted(&budget, "Set", vec![message(1000)]);
        assert!(next(&mut small).await.unwrap().is_ok());
        drop((first, second, delete, small));
        assert_eq!(budget.held(), 0, "every reservation released on drop");
    }
}
