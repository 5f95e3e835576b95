//! Auto-batching: concurrent single-key calls of one client share one
//! long-lived `Pipeline` stream, whatever their projects.
//!
//! A unary gRPC call costs an HTTP/2 stream each (headers both ways, flow
//! control), which on a fast network is most of its time. Here callers
//! queue their call; one task takes everything queued at that moment and
//! sends it as one frame, so a lone caller's call leaves at once (no timer,
//! no added latency) and, while a frame is being written, the calls that
//! arrive meanwhile gather into the next one. Replies come back by id on
//! another task and wake each caller with its own result or error.
//!
//! Projects: a stream per project would run a client serving many tenants
//! into the server's limit of streams per connection, and keep open one
//! stream (and its state) for every tenant ever served. So one stream
//! carries every project, and nothing is kept per project. It opens without
//! `x-kv-project`; each frame names the project of its first call, and a
//! call names its own only when that differs, so a client busy with one
//! project pays nothing per call for this. A server that does not answer
//! the stream's headers with `x-kv-call-projects` would run every call in
//! the stream's project, so then the stream is given up and calls go unary,
//! each with its own `x-kv-project`.
//!
//! Ends: when the stream breaks, or the server ends it (`UNAUTHENTICATED`
//! for a revoked token, `NOT_FOUND` once a project token's project is
//! deleted), the calls it carried fail with that code, since they may or
//! may not have run, and the next call opens a new stream; with
//! credentials still bad, that call fails with the server's status. A
//! break at the transport, or an end with `UNAVAILABLE`, is worth a retry:
//! the caller's retry loop sends such calls again (on a new stream,
//! perhaps to another endpoint), and knows which of them never left the
//! SDK (those are safe to send again even without a request id).
//!
//! Order: frames go out in queue order and the server runs a stream's
//! calls on a key in the order sent, so calls a task makes one after the
//! other, even without awaiting, apply in that order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kv_proto::v1::{
    Call, PipelineRequest, call::Request as Req, kv_service_client::KvServiceClient,
    reply::Response as Res,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status, metadata::MetadataMap, transport::Channel};

use crate::{Error, retry::Failure};

/// Most calls in one frame: bounds the server's work per frame.
const MAX_FRAME_CALLS: usize = 1024;
/// A frame stops growing past this many bytes, far below any server's
/// message limit (at least 4 MiB).
const MAX_FRAME_BYTES: usize = 1 << 20;
/// Calls larger than this go as unary calls: batching gains them nothing,
/// and one oversized call must fail alone, not end the shared stream.
pub(crate) const MAX_CALL_BYTES: usize = MAX_FRAME_BYTES;
/// A call's bytes in a frame besides its request: id, deadline, tags and
/// lengths, rounded up.
const CALL_OVERHEAD: usize = 16;
/// Longest wait, once sending fails, for the stream's ending status.
const ENDING_WAIT: Duration = Duration::from_secs(1);
/// Frames handed to the transport but not yet written. Small on purpose:
/// while they wait, new calls gather into a bigger next frame.
const FRAMES_IN_FLIGHT: usize = 2;
// A server without `CALL_PROJECTS_HEADER` would run every call in the
// stream's own project.
use kv_proto::contract::CALL_PROJECTS_HEADER;

type Outcome = Result<Res, Failure>;

struct Queued {
    /// Shared with the handle that made the call: no allocation per call.
    project: Arc<str>,
    request: Req,
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

/// Calls sent and not yet answered, by id.
#[derive(Default)]
struct Waiting {
    /// Set (under the lock) once the stream has ended: nothing more will be
    /// answered, so nothing more may wait.
    closed: Option<Ended>,
    calls: HashMap<u64, oneshot::Sender<Outcome>>,
}

/// How a stream ended.
struct Ended {
    status: Status,
    /// A transport failure or `UNAVAILABLE`: its calls are worth a retry.
    retryable: bool,
}

impl Ended {
    fn of(status: Status) -> Self {
        // tonic keeps the transport error as the source of the statuses it
        // makes itself; one the server sent has none.
        let retryable =
            std::error::Error::source(&status).is_some() || status.code() == Code::Unavailable;
        Ended { status, retryable }
    }

    /// The failure of a call the stream carried (`sent`) or never sent.
    fn failure(&self, message: String, sent: bool) -> Failure {
        Failure {
            error: Error::Status(Status::new(self.status.code(), message)),
            retryable: self.retryable,
            maybe_sent: sent,
            failover: self.retryable,
            retry_after: None,
        }
    }
}

/// One open stream.
struct Link {
    queue: mpsc::UnboundedSender<Queued>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Link {
    fn is_open(&self) -> bool {
        !self.queue.is_closed() && lock(&self.waiting).closed.is_none()
    }
}

enum State {
    /// No stream yet, or the last one ended: the next call opens one.
    Idle,
    Open(Arc<Link>),
    /// The server has no `Pipeline` method, or one that cannot take calls
    /// of several projects (an older server): unary calls.
    Unsupported,
}

/// The auto-batching stream of one client (all its clones and project
/// handles), opened on first use and again after it breaks.
pub(crate) struct Pipeline {
    grpc: KvServiceClient<Channel>,
    metadata: MetadataMap,
    state: tokio::sync::Mutex<State>,
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    // A panic elsewhere while holding it leaves the map usable.
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// The failure of a call that was never sent because the stream ended:
/// the code the server ended the stream with (a revoked token's calls are
/// UNAUTHENTICATED, not merely unavailable), and that it did not run.
fn unsent(waiting: &Mutex<Waiting>) -> Failure {
    match &lock(waiting).closed {
        Some(ended) => ended.failure(
            format!(
                "{}; the call was not sent, so it did not run",
                ended.status.message()
            ),
            false,
        ),
        None => Ended::of(Status::unavailable("the stream to the server ended")).failure(
            "the stream to the server ended; the call was not sent, so it did not run".into(),
            false,
        ),
    }
}

impl Pipeline {
    pub(crate) fn new(grpc: KvServiceClient<Channel>, metadata: MetadataMap) -> Self {
        Self {
            grpc,
            metadata,
            state: tokio::sync::Mutex::new(State::Idle),
        }
    }

    /// Runs `request` on `project` over the stream, with `left` to go
    /// before the call's deadline (the caller stops waiting then). Gives
    /// the request back when the server cannot take it on a shared stream:
    /// the caller then makes the unary call.
    pub(crate) async fn call(
        &self,
        project: &Arc<str>,
        request: Req,
        left: Duration,
    ) -> Result<Result<Res, Failure>, Req> {
        let deadline = Instant::now() + left;
        let link = match self.link().await {
            Ok(Some(link)) => link,
            Ok(None) => return Err(request),
            Err(status) => {
                // No call went out on a stream that did not open.
                let mut failure = Failure::from_status(status);
                failure.maybe_sent = false;
                return Ok(Err(failure));
            }
        };
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            project: project.clone(),
            request,
            deadline,
            reply,
        };
        if let Err(mpsc::error::SendError(queued)) = link.queue.send(queued) {
            // The stream ended between the check and the send.
            let _ = queued.reply.send(Err(unsent(&link.waiting)));
        }
        Ok(match answer.await {
            Ok(outcome) => outcome,
            Err(_) => Err(unsent(&link.waiting)),
        })
    }

    /// The open stream, opening one if needed; `None` when unsupported.
    async fn link(&self) -> Result<Option<Arc<Link>>, Status> {
        let mut state = self.state.lock().await;
        match &*state {
            State::Open(link) if link.is_open() => return Ok(Some(link.clone())),
            State::Unsupported => return Ok(None),
            State::Open(_) | State::Idle => {}
        }
        match self.open().await {
            Ok(Some(link)) => {
                *state = State::Open(link.clone());
                Ok(Some(link))
            }
            Ok(None) => {
                *state = State::Unsupported;
                Ok(None)
            }
            Err(status) if status.code() == Code::Unimplemented => {
                *state = State::Unsupported;
                Ok(None)
            }
            Err(status) => {
                *state = State::Idle;
                Err(status)
            }
        }
    }

    /// Opens a stream; `None` when the server would not honour the
    /// projects of its calls.
    async fn open(&self) -> Result<Option<Arc<Link>>, Status> {
        let (frames, outgoing) = mpsc::channel::<PipelineRequest>(FRAMES_IN_FLIGHT);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        *request.metadata_mut() = self.metadata.clone();
        // Resolves with the server's response headers: an unknown method or
        // bad credentials fail here, before any call is queued.
        let response = self.grpc.clone().pipeline(request).await?;
        if response.metadata().get(CALL_PROJECTS_HEADER).is_none() {
            // Dropping both ends closes the stream before any call is sent.
            return Ok(None);
        }
        let mut replies = response.into_inner();
        let (queue, queued) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let (ended, on_end) = oneshot::channel::<()>();
        tokio::spawn(send_frames(queued, frames, waiting.clone(), on_end));
        let answers = waiting.clone();
        tokio::spawn(async move {
            let status = loop {
                match replies.message().await {
                    Ok(Some(frame)) => {
                        let mut waiting = lock(&answers);
                        for reply in frame.replies {
                            let Some(caller) = waiting.calls.remove(&reply.id) else {
                                continue;
                            };
                            let outcome = match reply.response {
                                Some(Res::Error(e)) => {
                                    Err(Failure::from_status(crate::error::call_status(e)))
                                }
                                Some(response) => Ok(response),
                                None => Err(Failure::fatal(Error::Protocol(
                                    "a pipeline reply without a result".into(),
                                ))),
                            };
                            // The caller may have timed out and gone.
                            let _ = caller.send(outcome);
                        }
                    }
                    Ok(None) => break Status::unavailable("the server ended the stream"),
                    Err(status) => break status,
                }
            };
            let end = Ended::of(status);
            let message = format!(
                "the stream to the server ended before this call was answered (it may or may not have run): {}",
                end.status.message()
            );
            let orphans = {
                let mut waiting = lock(&answers);
                waiting.closed = Some(Ended {
                    status: end.status.clone(),
                    retryable: end.retryable,
                });
                std::mem::take(&mut waiting.calls)
            };
            for (_, caller) in orphans {
                // Sent, maybe run: the caller cannot know, as with a unary
                // call cut off mid-way.
                let _ = caller.send(Err(end.failure(message.clone(), true)));
            }
            let _ = ended.send(());
        });
        Ok(Some(Arc::new(Link { queue, waiting })))
    }
}

/// Takes the queued calls, everything available at once, into frames.
async fn send_frames(
    mut queued: mpsc::UnboundedReceiver<Queued>,
    frames: mpsc::Sender<PipelineRequest>,
    waiting: Arc<Mutex<Waiting>>,
    mut ended: oneshot::Receiver<()>,
) {
    let mut next_id: u64 = 0;
    let mut carry: Option<Queued> = None;
    let mut ended_seen = false;
    loop {
        let first = match carry.take() {
            Some(first) => first,
            None => tokio::select! {
                first = queued.recv() => match first {
                    Some(first) => first,
                    // Every handle is gone: closing our side ends the stream.
                    None => return,
                },
                _ = &mut ended => {
                    ended_seen = true;
                    break;
                }
            },
        };
        // One turn of the scheduler before taking the rest: the callers
        // woken by the last reply frame queue their next calls in it, so
        // they share this frame instead of each sending its own. A lone
        // caller pays that one turn (no timer, nothing else is queued).
        tokio::task::yield_now().await;
        let mut calls = Vec::new();
        let mut replies = Vec::new();
        let mut bytes = 0;
        // The first call's project, which the frame names once.
        let mut project: Option<Arc<str>> = None;
        let mut next = Some(first);
        while let Some(q) = next.take().or_else(|| queued.try_recv().ok()) {
            let Some(left) = q
                .deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                // Its caller has already timed out.
                continue;
            };
            let frame_project = project.get_or_insert_with(|| q.project.clone());
            let own_project =
                !Arc::ptr_eq(frame_project, &q.project) && **frame_project != *q.project;
            let mut size = q.request.encoded_len() + CALL_OVERHEAD;
            if own_project {
                // The field's tag and length byte.
                size += q.project.len() + 2;
            }
            if !calls.is_empty() && bytes + size > MAX_FRAME_BYTES {
                carry = Some(q);
                break;
            }
            bytes += size;
            next_id += 1;
            replies.push((next_id, q.reply));
            calls.push(Call {
                id: next_id,
                // Rounded up: a call with 0.4 ms left must not read as "no
                // deadline" (0).
                timeout_ms: left.as_millis() as u64 + 1,
                request: Some(q.request),
                project: if own_project {
                    q.project.to_string()
                } else {
                    String::new()
                },
            });
            if calls.len() >= MAX_FRAME_CALLS {
                break;
            }
        }
        {
            // Registered before the frame is sent, under one lock, unless
            // the stream has already ended (then nothing would answer).
            let mut w = lock(&waiting);
            if let Some(ended) = &w.closed {
                for (_, reply) in replies {
                    let _ = reply.send(Err(ended.failure(
                        format!(
                            "{}; the call was not sent, so it did not run",
                            ended.status.message()
                        ),
                        false,
                    )));
                }
                continue;
            }
            w.calls.extend(replies);
        }
        if calls.is_empty() {
            continue;
        }
        let frame = PipelineRequest {
            calls,
            project: project.as_deref().unwrap_or_default().to_owned(),
        };
        if frames.send(frame).await.is_err() {
            break;
        }
    }
    // The stream is over: whatever is still queued was never sent. Its
    // callers get the code the server ended the stream with, so wait (a
    // moment at most) for the replies side to have read it.
    if !ended_seen {
        let _ = tokio::time::timeout(ENDING_WAIT, ended).await;
    }
    queued.close();
    if let Some(q) = carry {
        let _ = q.reply.send(Err(unsent(&waiting)));
    }
    while let Ok(q) = queued.try_recv() {
        let _ = q.reply.send(Err(unsent(&waiting)));
    }
}

/// A reply of the wrong kind for its call.
pub(crate) fn mismatch(request: &'static str) -> Error {
    Error::Protocol(format!(
        "the server answered a {request} call with another kind of reply"
    ))
}
