//! `Pipeline`: many single-key calls over one long-lived stream.
//!
//! Unary gRPC pays an HTTP/2 stream (headers both ways, flow-control
//! updates) per call; on loopback that, not the store, is most of a call's
//! cost. The SDK instead sends its concurrent calls as frames on one stream
//! and gets the replies back by id. This module runs those frames.
//!
//! Order: frames run one after another, and within a frame every write is
//! submitted to the engine in the order sent, so calls on the same key keep
//! the order they were sent in. A read waits for earlier writes of the same
//! frame to its key; reads of other keys are answered at once, ahead of
//! the frame's writes, so a mixed frame's reads do not wait for an fsync.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    task::Poll,
    time::{Duration, Instant},
};

use kv_proto::wire::{self, Call, CallError, PipelineRequest, PipelineResponse, Reply};
use tonic::{Status, Streaming, metadata::MetadataMap};

use super::{KvService, until_true};
use crate::{auth::Access, engine::Backend, project::ProjectName};

use wire::{call::Request as Req, reply::Response as Res};

/// Response frames queued for the connection before the stream stops
/// reading calls: bounds a slow reader's memory.
pub(super) const PIPELINE_QUEUE: usize = 16;

/// Replies are sent in frames of at most this many bytes (about), so a
/// frame of large values never nears the message limit.
const REPLY_FRAME_BYTES: usize = 1 << 20;

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Res, Status>> + Send + 'a>>;

/// A write handed to the engine, with when its answer is due.
struct Waiting<'a> {
    id: u64,
    due: Instant,
    /// What the caller is told if `due` passes first.
    late: Status,
    future: Pending<'a>,
}

/// The sender of a stream's reply frames.
pub(super) type ReplySender = tokio::sync::mpsc::Sender<Result<PipelineResponse, Status>>;

fn reply(id: u64, result: Result<Res, Status>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(status) => Res::Error(CallError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
    };
    Reply {
        id,
        response: Some(response),
    }
}

fn reply_bytes(reply: &Reply) -> usize {
    let body = match &reply.response {
        Some(Res::Get(r)) => r.value.len(),
        Some(Res::Merge(r)) => r.value.len(),
        Some(Res::Error(e)) => e.message.len(),
        _ => 0,
    };
    body + 24
}

/// Replies gathered for the client, sent in bounded frames.
struct Outbox<'a> {
    tx: &'a ReplySender,
    replies: Vec<Reply>,
    bytes: usize,
}

impl Outbox<'_> {
    /// Queues `reply`; false once the client is gone.
    async fn push(&mut self, reply: Reply) -> bool {
        self.bytes += reply_bytes(&reply);
        self.replies.push(reply);
        if self.bytes >= REPLY_FRAME_BYTES {
            return self.flush().await;
        }
        true
    }

    /// Sends what is queued; false once the client is gone.
    async fn flush(&mut self) -> bool {
        if self.replies.is_empty() {
            return true;
        }
        self.bytes = 0;
        let replies = std::mem::take(&mut self.replies);
        self.tx.send(Ok(PipelineResponse { replies })).await.is_ok()
    }
}

impl<B: Backend> KvService<B> {
    /// Reads frames off `calls` and answers them on `tx` until the client
    /// ends the stream, goes away, or the server stops.
    pub(super) async fn serve_pipeline(
        self,
        metadata: MetadataMap,
        mut calls: Streaming<PipelineRequest>,
        tx: ReplySender,
    ) {
        let mut stopping = self.stopping.clone();
        loop {
            let frame = tokio::select! {
                frame = calls.message() => frame,
                () = tx.closed() => return,
                () = until_true(&mut stopping) => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the server is shutting down; calls not yet answered were not run",
                        )))
                        .await;
                    return;
                }
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                // The client closed its side: every call was answered.
                Ok(None) => return,
                // The client is gone or sent garbage; tonic has the reason.
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if !self
                .run_frame(&metadata, frame.calls, Instant::now(), &tx)
                .await
            {
                return;
            }
        }
    }

    /// Runs one frame's calls; false once the client is gone.
    async fn run_frame(
        &self,
        metadata: &MetadataMap,
        calls: Vec<Call>,
        received: Instant,
        tx: &ReplySender,
    ) -> bool {
        // Credentials are checked per frame, not once per stream, so a
        // revoked token stops working on open streams too.
        let read = self
            .auth
            .project_for(metadata, Access::Read)
            .map_err(Status::from);
        let mut write: Option<Result<ProjectName, Status>> = None;
        let mut out = Outbox {
            tx,
            replies: Vec::with_capacity(calls.len()),
            bytes: 0,
        };
        let mut pending: Vec<Waiting<'_>> = Vec::new();
        let mut pending_keys: HashSet<&str> = HashSet::new();
        for call in &calls {
            let id = call.id;
            // The server's cap, or the call's own deadline if sooner.
            let capped = call.timeout_ms == 0
                || Duration::from_millis(call.timeout_ms) >= self.max_call_time;
            let (due, late) = if capped {
                (
                    received + self.max_call_time,
                    Status::deadline_exceeded(format!(
                        "call exceeded the server's limit of {} ms per request (--max-request-time-ms); a write may still apply",
                        self.max_call_time.as_millis()
                    )),
                )
            } else {
                (
                    received + Duration::from_millis(call.timeout_ms),
                    Status::deadline_exceeded(format!(
                        "the call's {} ms ran out; a write may still apply",
                        call.timeout_ms
                    )),
                )
            };
            if call.timeout_ms > 0 && received.elapsed() >= Duration::from_millis(call.timeout_ms) {
                let late = Status::deadline_exceeded(format!(
                    "the call's {} ms ran out before it started; it was not run",
                    call.timeout_ms
                ));
                if !out.push(reply(id, Err(late))).await {
                    return false;
                }
                continue;
            }
            let (key, writes) = match &call.request {
                Some(Req::Get(r)) => (r.key.as_str(), false),
                Some(Req::Has(r)) => (r.key.as_str(), false),
                Some(Req::Set(r)) => (r.key.as_str(), true),
                Some(Req::Delete(r)) => (r.key.as_str(), true),
                Some(Req::Incr(r)) => (r.key.as_str(), true),
                Some(Req::Merge(r)) => (r.key.as_str(), true),
                None => {
                    let empty = Status::invalid_argument(format!(
                        "call {id} has no request; give one of get, set, has, delete, incr, merge"
                    ));
                    if !out.push(reply(id, Err(empty))).await {
                        return false;
                    }
                    continue;
                }
            };
            if !writes {
                if pending_keys.contains(key) {
                    // Read your writes: this read was sent after a write of
                    // its key that has not finished.
                    if !self.finish(&mut pending, &mut out).await {
                        return false;
                    }
                    pending_keys.clear();
                }
                let result = match &read {
                    Err(e) => Err(e.clone()),
                    Ok(project) => match &call.request {
                        Some(Req::Get(r)) => self.get_in(project, r).await.map(Res::Get),
                        Some(Req::Has(r)) => self.has_in(project, r).await.map(Res::Has),
                        _ => unreachable!("reads are get and has"),
                    },
                };
                if !out.push(reply(id, result)).await {
                    return false;
                }
                continue;
            }
            let project = write.get_or_insert_with(|| {
                self.auth
                    .project_for(metadata, Access::Write)
                    .map_err(Status::from)
            });
            let project = match project {
                Ok(project) => project.clone(),
                Err(e) => {
                    if !out.push(reply(id, Err(e.clone()))).await {
                        return false;
                    }
                    continue;
                }
            };
            let mut future: Pending<'_> = match &call.request {
                Some(Req::Set(r)) => {
                    Box::pin(async move { self.set_in(&project, r).await.map(Res::Set) })
                }
                Some(Req::Delete(r)) => {
                    Box::pin(async move { self.delete_in(&project, r).await.map(Res::Delete) })
                }
                Some(Req::Incr(r)) => {
                    Box::pin(async move { self.incr_in(&project, r).await.map(Res::Incr) })
                }
                Some(Req::Merge(r)) => {
                    Box::pin(async move { self.merge_in(&project, r).await.map(Res::Merge) })
                }
                _ => unreachable!("writes are set, delete, incr and merge"),
            };
            // Polled once now, in order: that hands the write to the engine
            // (validation and submission are synchronous), so writes of one
            // key reach the writer in the order they were sent, and a
            // write the engine finishes at once is answered at once.
            match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
                Poll::Ready(result) => {
                    if !out.push(reply(id, result)).await {
                        return false;
                    }
                }
                Poll::Pending => {
                    pending.push(Waiting {
                        id,
                        due,
                        late,
                        future,
                    });
                    pending_keys.insert(key);
                }
            }
        }
        self.finish(&mut pending, &mut out).await && out.flush().await
    }

    /// Sends the replies ready so far (reads need not wait for an fsync),
    /// then waits for the pending writes and queues their replies.
    async fn finish(&self, pending: &mut Vec<Waiting<'_>>, out: &mut Outbox<'_>) -> bool {
        if pending.is_empty() {
            return true;
        }
        if !out.flush().await {
            return false;
        }
        for waiting in pending.drain(..) {
            let due = tokio::time::Instant::from_std(waiting.due);
            let result = match tokio::time::timeout_at(due, waiting.future).await {
                Ok(result) => result,
                Err(_) => Err(waiting.late),
            };
            if !out.push(reply(waiting.id, result)).await {
                return false;
            }
        }
        true
    }
}
