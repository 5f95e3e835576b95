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
//! Ends: when the server ends the stream for good (`UNAUTHENTICATED` for
//! a revoked token, `NOT_FOUND` once a project token's project is
//! deleted), the calls it carried fail with that code, since they may or
//! may not have run, and the next call opens a new stream; with
//! credentials still bad, that call fails with the server's status.
//!
//! Replay: a break at the transport, or an end with `UNAVAILABLE`, is worth
//! a retry, and retrying each call on its own would lose their order (two
//! calls on a key, retried after their own random backoffs, could apply in
//! either order). So one client-wide stream carries every call, each with
//! a sequence number, and when it breaks the calls it carried that are
//! still unanswered, and those queued behind them, go back to a backlog in
//! that order. Calls made meanwhile join the backlog behind them, and the
//! next stream (perhaps to another endpoint) sends the backlog first. A
//! write is replayed with its request id, so one the server had applied is
//! answered from its idempotency record and not applied twice; a read is
//! simply sent again. A write without an id that may have reached the
//! server is not replayed: it fails with the break's error. A call whose
//! deadline passes while it waits is dropped from the replay and fails
//! with `DEADLINE_EXCEEDED` ([`Error::Timeout`]), saying how many attempts
//! it had and whether one may have been applied. Each stream a call was
//! sent on, and each failed attempt to open one while it waited, is one of
//! its attempts ([`crate::RetryPolicy`]); past the policy's count it fails
//! with the last error. Before reopening, the SDK backs off as the policy
//! says for the most-tried waiting call.
//!
//! Many keys: GetMany, SetMany and DeleteMany ride the stream too, when
//! its headers carry `x-kv-many-calls` (a server without it would answer
//! them as calls without a request); on a stream without it they go unary,
//! each as its own call, like every call of a server without the stream.
//!
//! Order: frames go out in queue order and the server runs a stream's
//! calls on a key in the order sent, so calls a task makes one after the
//! other, even without awaiting, apply in that order, through breaks too.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use kv_proto::v1::{Call, PipelineRequest, call::Request as Req, reply::Response as Res};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{
    Error, RetryPolicy,
    endpoints::{Conn, Endpoints},
    retry::{Failure, Safety},
};

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
use kv_proto::contract::{CALL_PROJECTS_HEADER, MANY_CALLS_HEADER};

/// What a caller gets back.
pub(crate) enum Answer {
    Done(Result<Res, Failure>),
    /// The endpoint cannot take calls on a shared stream: make the unary
    /// call.
    Unary(Req),
    /// The deadline passed while the call waited for a replay.
    Expired,
}

/// How far a call got, shared by its caller and the pipeline so the
/// caller can tell, even at its deadline, how many attempts it had.
#[derive(Default)]
struct Progress {
    attempts: AtomicU32,
    /// Written to some stream: it may have run.
    sent: AtomicBool,
}

struct Queued {
    /// Client-wide submission order; also the call's id on the stream.
    seq: u64,
    /// Shared with the handle that made the call: no allocation per call.
    project: Arc<str>,
    request: Req,
    safety: Safety,
    deadline: Instant,
    progress: Arc<Progress>,
    reply: oneshot::Sender<Answer>,
}

/// Calls sent and not yet answered, by id.
#[derive(Default)]
struct Waiting {
    /// Set (under the lock) once the stream has ended: nothing more will be
    /// answered, so nothing more may wait.
    closed: Option<Arc<Ended>>,
    calls: HashMap<u64, Queued>,
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

    /// The final failure of a call the stream carried (`sent`) or never
    /// sent: the pipeline has already retried what it could.
    fn failure(&self, sent: bool) -> Failure {
        let message = if sent {
            format!(
                "the stream to the server ended before this call was answered (it may or may not have run): {}",
                self.status.message()
            )
        } else {
            format!(
                "{}; the call was not sent, so it did not run",
                self.status.message()
            )
        };
        Failure {
            error: Error::Status(Status::new(self.status.code(), message)),
            retryable: false,
            maybe_sent: sent,
            failover: false,
            retry_after: None,
            attempts: 1,
            deadline: false,
        }
    }
}

/// One open stream, to one endpoint.
struct Link {
    queue: mpsc::UnboundedSender<Queued>,
    waiting: Arc<Mutex<Waiting>>,
    /// The server takes GetMany, SetMany and DeleteMany on it.
    many: bool,
}

impl Link {
    fn is_open(&self) -> bool {
        !self.queue.is_closed() && lock(&self.waiting).closed.is_none()
    }

    /// Whether the stream can carry `request`: a call of many keys only
    /// when the server said so.
    fn takes(&self, request: &Req) -> bool {
        self.many
            || !matches!(
                request,
                Req::GetMany(_) | Req::SetMany(_) | Req::DeleteMany(_)
            )
    }
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// The stream new calls go to, unless calls wait in the backlog.
    link: Option<Arc<Link>>,
    /// Calls waiting for the next stream, in submission order.
    backlog: BTreeMap<u64, Queued>,
    /// A task is opening the next stream for the backlog.
    reopening: bool,
    /// Ended streams whose tasks have not yet handed back their calls: the
    /// backlog is not sent before they have.
    draining: usize,
    /// Endpoints without a usable `Pipeline` method (older servers).
    unsupported: Vec<bool>,
}

struct Shared {
    endpoints: Arc<Endpoints>,
    metadata: MetadataMap,
    retry: RetryPolicy,
    state: Mutex<State>,
    drained: Notify,
}

/// The auto-batching stream of one client (all its clones and project
/// handles), opened on first use and again after it breaks.
pub(crate) struct Pipeline {
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves the state usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pipeline {
    pub(crate) fn new(
        endpoints: Arc<Endpoints>,
        metadata: MetadataMap,
        retry: RetryPolicy,
    ) -> Self {
        let state = State {
            unsupported: vec![false; endpoints.len()],
            ..State::default()
        };
        Self {
            shared: Arc::new(Shared {
                endpoints,
                metadata,
                retry,
                state: Mutex::new(state),
                drained: Notify::new(),
            }),
        }
    }

    /// Runs `request` on `project` over the stream, with `left` to go
    /// before the call's deadline. Gives the request back when the
    /// endpoint cannot take it on a shared stream: the caller then makes
    /// the unary call. A failure says how many attempts the call had.
    pub(crate) async fn call(
        &self,
        project: &Arc<str>,
        request: Req,
        safety: Safety,
        left: Duration,
    ) -> Result<Result<Res, Failure>, Req> {
        let deadline = Instant::now() + left;
        let progress = Arc::new(Progress::default());
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            seq: 0,
            project: project.clone(),
            request,
            safety,
            deadline,
            progress: progress.clone(),
            reply,
        };
        submit(&self.shared, queued)?;
        let answer = tokio::time::timeout_at(deadline.into(), answer).await;
        let attempts = progress.attempts.load(Ordering::Acquire).max(1);
        let sent = progress.sent.load(Ordering::Acquire);
        let mut failure = match answer {
            Ok(Ok(Answer::Done(Ok(response)))) => return Ok(Ok(response)),
            Ok(Ok(Answer::Unary(request))) => return Err(request),
            Ok(Ok(Answer::Done(Err(failure)))) => failure,
            Ok(Ok(Answer::Expired)) | Err(_) => Failure {
                error: Error::Protocol("the call's deadline passed".into()),
                retryable: false,
                maybe_sent: sent,
                failover: false,
                retry_after: None,
                attempts,
                deadline: true,
            },
            // Only when the pipeline itself is gone.
            Ok(Err(_)) => Failure::fatal(Error::Status(Status::unavailable(
                "the client's stream was closed before this call was answered",
            ))),
        };
        failure.attempts = attempts;
        // An earlier stream may have run it, whatever this answer says.
        failure.maybe_sent |= sent;
        Ok(Err(failure))
    }
}

/// Queues `q` behind every call made before it: on the open stream, or in
/// the backlog while one is being reopened.
fn submit(shared: &Arc<Shared>, mut q: Queued) -> Result<(), Req> {
    let mut state = lock(&shared.state);
    q.seq = state.next_seq;
    state.next_seq += 1;
    if state.backlog.is_empty()
        && let Some(link) = &state.link
    {
        if !link.takes(&q.request) {
            return Err(q.request);
        }
        if link.is_open() {
            match link.queue.send(q) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => q = back,
            }
        }
        state.link = None;
    }
    if state.link.is_none() && state.backlog.is_empty() && !state.reopening {
        let (index, _) = shared.endpoints.pick();
        if state.unsupported[index] {
            return Err(q.request);
        }
    }
    state.backlog.insert(q.seq, q);
    start_reopen(shared, &mut state);
    Ok(())
}

fn start_reopen(shared: &Arc<Shared>, state: &mut State) {
    if !state.reopening && !state.backlog.is_empty() {
        state.reopening = true;
        tokio::spawn(reopen(shared.clone()));
    }
}

/// Hands a call that a stream did not answer back to the backlog, or
/// fails it: its deadline passed, the stream's end is not worth a retry,
/// it is a write without a request id that may have run, or it has had
/// all its attempts.
fn requeue(shared: &Shared, state: &mut State, q: Queued, ended: &Ended, sent: bool) {
    if q.reply.is_closed() {
        // Its caller has gone (deadline).
        return;
    }
    if Instant::now() >= q.deadline {
        let _ = q.reply.send(Answer::Expired);
        return;
    }
    let attempts = q.progress.attempts.load(Ordering::Acquire);
    let unsafe_write = sent && q.safety == Safety::Unsafe;
    if !ended.retryable || unsafe_write || attempts >= shared.retry.attempts() {
        let _ = q.reply.send(Answer::Done(Err(ended.failure(sent))));
        return;
    }
    state.backlog.insert(q.seq, q);
}

/// Opens the next stream and sends the backlog on it first, in order;
/// ends when the backlog is on a stream, handed back for unary calls, or
/// failed.
async fn reopen(shared: Arc<Shared>) {
    loop {
        // Calls of an ended stream not yet handed back come before the
        // backlog's later ones.
        loop {
            let drained = shared.drained.notified();
            if lock(&shared.state).draining == 0 {
                break;
            }
            drained.await;
        }
        let tried = {
            let mut state = lock(&shared.state);
            if state.backlog.is_empty() {
                state.reopening = false;
                return;
            }
            state
                .backlog
                .values()
                .map(|q| q.progress.attempts.load(Ordering::Acquire))
                .max()
                .unwrap_or(0)
        };
        if tried > 0 {
            tokio::time::sleep(shared.retry.backoff(tried)).await;
        }
        let (index, conn) = shared.endpoints.pick();
        let opened = if lock(&shared.state).unsupported[index] {
            Ok(None)
        } else {
            open(&shared, &conn, index).await
        };
        let mut state = lock(&shared.state);
        match opened {
            Ok(Some(link)) => {
                let backlog = std::mem::take(&mut state.backlog);
                for (_, q) in backlog {
                    if !link.takes(&q.request) {
                        let _ = q.reply.send(Answer::Unary(q.request));
                        continue;
                    }
                    if let Err(mpsc::error::SendError(q)) = link.queue.send(q) {
                        state.backlog.insert(q.seq, q);
                    }
                }
                state.link = Some(link);
                state.reopening = false;
                // Broken already: go round again.
                start_reopen(&shared, &mut state);
                return;
            }
            Ok(None) => {
                state.unsupported[index] = true;
                for (_, q) in std::mem::take(&mut state.backlog) {
                    let _ = q.reply.send(Answer::Unary(q.request));
                }
                state.reopening = false;
                return;
            }
            Err(status) if status.code() == Code::Unimplemented => {
                state.unsupported[index] = true;
                for (_, q) in std::mem::take(&mut state.backlog) {
                    let _ = q.reply.send(Answer::Unary(q.request));
                }
                state.reopening = false;
                return;
            }
            Err(status) => {
                let probe = Failure::from_status(status.clone());
                if probe.failover {
                    shared.endpoints.failed(index);
                }
                let now = Instant::now();
                let backlog = std::mem::take(&mut state.backlog);
                for (seq, q) in backlog {
                    let attempts = q.progress.attempts.fetch_add(1, Ordering::AcqRel) + 1;
                    if q.reply.is_closed() {
                        continue;
                    }
                    if now >= q.deadline {
                        let _ = q.reply.send(Answer::Expired);
                    } else if !probe.retryable || attempts >= shared.retry.attempts() {
                        // No call went out on a stream that did not open.
                        let mut failure = Failure::from_status(status.clone());
                        failure.maybe_sent = false;
                        failure.retryable = false;
                        failure.failover = false;
                        let _ = q.reply.send(Answer::Done(Err(failure)));
                    } else {
                        state.backlog.insert(seq, q);
                    }
                }
            }
        }
    }
}

/// Opens a stream on endpoint `index`; `None` when the server would not
/// honour the projects of its calls.
async fn open(
    shared: &Arc<Shared>,
    conn: &Conn,
    index: usize,
) -> Result<Option<Arc<Link>>, Status> {
    let (frames, outgoing) = mpsc::channel::<PipelineRequest>(FRAMES_IN_FLIGHT);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    *request.metadata_mut() = shared.metadata.clone();
    // Resolves with the server's response headers: an unknown method or
    // bad credentials fail here, before any call is queued.
    let response = conn.kv().pipeline(request).await?;
    if response.metadata().get(CALL_PROJECTS_HEADER).is_none() {
        // Dropping both ends closes the stream before any call is sent.
        return Ok(None);
    }
    let many = response.metadata().get(MANY_CALLS_HEADER).is_some();
    let mut replies = response.into_inner();
    let (queue, queued) = mpsc::unbounded_channel();
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let (ended, on_end) = oneshot::channel::<()>();
    lock(&shared.state).draining += 1;
    let weak = Arc::downgrade(shared);
    tokio::spawn(send_frames(
        queued,
        frames,
        waiting.clone(),
        on_end,
        weak.clone(),
    ));
    let answers = waiting.clone();
    tokio::spawn(async move {
        let status = loop {
            match replies.message().await {
                Ok(Some(frame)) => {
                    let mut waiting = lock(&answers);
                    for reply in frame.replies {
                        let Some(call) = waiting.calls.remove(&reply.id) else {
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
                        let _ = call.reply.send(Answer::Done(outcome));
                    }
                }
                Ok(None) => break Status::unavailable("the server ended the stream"),
                Err(status) => break status,
            }
        };
        let end = Arc::new(Ended::of(status));
        if end.retryable
            && let Some(shared) = weak.upgrade()
        {
            shared.endpoints.failed(index);
        }
        // Under the state lock, so that no call is submitted between the
        // stream's close and the return of its calls.
        let shared = weak.upgrade();
        let mut state = shared.as_ref().map(|s| lock(&s.state));
        let orphans = {
            let mut waiting = lock(&answers);
            waiting.closed = Some(end.clone());
            std::mem::take(&mut waiting.calls)
        };
        let mut orphans: Vec<_> = orphans.into_values().collect();
        orphans.sort_unstable_by_key(|q| q.seq);
        match (&shared, &mut state) {
            (Some(shared), Some(state)) => {
                for q in orphans {
                    // Sent, maybe run: the caller cannot know, as with a
                    // unary call cut off mid-way.
                    requeue(shared, state, q, &end, true);
                }
                start_reopen(shared, state);
            }
            _ => {
                for q in orphans {
                    let _ = q.reply.send(Answer::Done(Err(end.failure(true))));
                }
            }
        }
        drop(state);
        let _ = ended.send(());
    });
    Ok(Some(Arc::new(Link {
        queue,
        waiting,
        many,
    })))
}

/// Takes the queued calls, everything available at once, into frames;
/// once the stream is over, hands back the calls it never sent.
async fn send_frames(
    mut queued: mpsc::UnboundedReceiver<Queued>,
    frames: mpsc::Sender<PipelineRequest>,
    waiting: Arc<Mutex<Waiting>>,
    mut ended: oneshot::Receiver<()>,
    shared: Weak<Shared>,
) {
    let mut carry: Option<Queued> = None;
    let mut unsent: Vec<Queued> = Vec::new();
    let mut ended_seen = false;
    loop {
        let first = match carry.take() {
            Some(first) => first,
            None => tokio::select! {
                first = queued.recv() => match first {
                    Some(first) => first,
                    // Every handle is gone: closing our side ends the stream.
                    None => break,
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
        let mut taken = Vec::new();
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
                // Its caller is timing out.
                let _ = q.reply.send(Answer::Expired);
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
            calls.push(Call {
                id: q.seq,
                // Rounded up: a call with 0.4 ms left must not read as "no
                // deadline" (0).
                timeout_ms: left.as_millis() as u64 + 1,
                // Kept for a replay should the stream break.
                request: Some(q.request.clone()),
                project: if own_project {
                    q.project.to_string()
                } else {
                    String::new()
                },
            });
            taken.push(q);
            if calls.len() >= MAX_FRAME_CALLS {
                break;
            }
        }
        {
            // Registered before the frame is sent, under one lock, unless
            // the stream has already ended (then nothing would answer).
            let mut w = lock(&waiting);
            if w.closed.is_some() {
                unsent.extend(taken);
                break;
            }
            for q in taken {
                q.progress.attempts.fetch_add(1, Ordering::AcqRel);
                q.progress.sent.store(true, Ordering::Release);
                w.calls.insert(q.seq, q);
            }
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
    // The stream is over: whatever is still queued was never sent. It goes
    // back with the code the server ended the stream with, so wait (a
    // moment at most) for the replies side to have read it.
    if !ended_seen {
        let _ = tokio::time::timeout(ENDING_WAIT, ended).await;
    }
    queued.close();
    unsent.extend(carry);
    while let Ok(q) = queued.try_recv() {
        unsent.push(q);
    }
    let end = lock(&waiting).closed.clone().unwrap_or_else(|| {
        Arc::new(Ended::of(Status::unavailable(
            "the stream to the server ended",
        )))
    });
    let Some(shared) = shared.upgrade() else {
        for q in unsent {
            let _ = q.reply.send(Answer::Done(Err(end.failure(false))));
        }
        return;
    };
    let mut state = lock(&shared.state);
    for q in unsent {
        requeue(&shared, &mut state, q, &end, false);
    }
    state.draining -= 1;
    start_reopen(&shared, &mut state);
    drop(state);
    shared.drained.notify_waiters();
}

/// A reply of the wrong kind for its call.
pub(crate) fn mismatch(request: &'static str) -> Error {
    Error::Protocol(format!(
        "the server answered a {request} call with another kind of reply"
    ))
}
