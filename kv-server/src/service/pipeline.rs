//! `Pipeline`: many single-key calls over one long-lived stream.
//!
//! Unary gRPC pays an HTTP/2 stream (headers both ways, flow-control
//! updates) per call; on loopback that, not the store, is most of a call's
//! cost. The SDK instead sends its concurrent calls as frames on one stream
//! and gets the replies back by id. This module runs those frames.
//!
//! Order: every write is handed to the engine in the order sent, frame
//! after frame, so writes of a key apply in the order sent. Frames are read
//! while earlier writes are still in flight, so the writes of many frames
//! share one group commit (one fsync). A read waits only for the writes of
//! its own key sent before it; reads of other keys are answered at once,
//! without waiting for anyone's fsync. A SetMany or DeleteMany is in flight
//! for each of its keys; a GetMany waits for the writes of any of its keys.
//!
//! Projects: each call runs on the project it names, else its frame's,
//! else the stream's (see [`Caller::project`]), so one stream serves any
//! number of projects. The stream itself obeys [`StreamGuard`]: checked
//! before every frame and whenever a token or project changes, it ends
//! with the guard's status (a revoked token, a deleted project).

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt, stream::FuturesOrdered};

use kv_proto::wire::{self, Call, PipelineRequest};
use tonic::{Status, Streaming, metadata::MetadataMap};

use super::{
    guard::StreamGuard,
    outbox::{Outbox, ReplySender},
    shared::{KvService, Scope, until_true},
};
use kv_engine::Backend;

use crate::{
    auth::{Access, Caller},
    rate::TokenRate,
};

use wire::{call::Request as Req, reply::Response as Res};

/// Response frames queued for the connection before the stream stops
/// reading calls: bounds a slow reader's memory.
pub(super) const PIPELINE_QUEUE: usize = 16;
/// Bytes of reply frames queued for the connection: a client that stops
/// reading its replies (of large values, say) pins at most this much.
pub(super) const PIPELINE_QUEUE_BYTES: u32 = 4 << 20;

type Pending = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// A write handed to the engine, until its reply.
type Write = Pin<Box<dyn Future<Output = Result<Res, Status>> + Send>>;

/// A finished write: its call id, its keys (to release them for reads),
/// its result.
type Answered = (u64, Keys, Result<Res, Status>);

/// The keys a write in flight holds back reads of, as [`key_hash`]es:
/// nothing is allocated per key, and the received frame the keys are
/// slices of is not kept alive while the write is in flight.
enum Keys {
    /// A single-key call's.
    One(u64),
    /// A SetMany's or DeleteMany's (duplicates held once per mention).
    Many(Vec<u64>),
}

impl Keys {
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (one, many) = match self {
            Keys::One(key) => (Some(*key), &[][..]),
            Keys::Many(keys) => (None, &keys[..]),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

/// A key's 64-bit hash, the same on every stream and run. Two keys of one
/// hash only make a read wait for a write it need not wait for (the order
/// stays right); with a few thousand writes in flight at most, that takes
/// a chance of about 10^-12.
fn key_hash(key: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

/// Frames already received that are started before replies are sent:
/// bounds how long finished replies wait behind new work.
const MAX_READY_FRAMES: usize = 64;

/// Most writes of one stream handed to the engine and not yet answered;
/// past it the stream stops reading frames until some finish.
const MAX_IN_FLIGHT: usize = 8192;

/// A stream's writes in flight, in the order they were handed to the
/// engine, and how many of them each key has (a write of many keys counts
/// for each).
#[derive(Default)]
struct InFlight {
    writes: FuturesOrdered<Pending>,
    keys: HashMap<u64, usize>,
}

impl InFlight {
    /// Counts a write of `keys` handed to the engine; its future goes to
    /// `writes` next.
    fn hold(&mut self, keys: &Keys) {
        for key in keys.iter() {
            *self.keys.entry(key).or_insert(0) += 1;
        }
    }

    fn release(&mut self, keys: &Keys) {
        for key in keys.iter() {
            if let Some(count) = self.keys.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// Queues the replies of the writes finished by now, without waiting.
    async fn take_ready(&mut self, out: &mut Outbox) -> bool {
        while let Some(Some((id, keys, result))) = self.writes.next().now_or_never() {
            self.release(&keys);
            if !out.push(id, result).await {
                return false;
            }
        }
        true
    }

    /// Waits until no write of any of `keys` is in flight (the writes
    /// before them finish first: they finish in order anyway).
    async fn wait_for<K: AsRef<[u8]>>(&mut self, keys: &[K], out: &mut Outbox) -> bool {
        while !self.keys.is_empty()
            && keys
                .iter()
                .any(|k| self.keys.contains_key(&key_hash(k.as_ref())))
        {
            let Some((id, done, result)) = self.writes.next().await else {
                break;
            };
            self.release(&done);
            if !out.push(id, result).await {
                return false;
            }
        }
        true
    }
}

/// The projects of one frame's calls, resolved once per name and access.
struct Scopes<'a> {
    caller: Caller,
    guard: &'a StreamGuard,
    metadata: &'a MetadataMap,
    /// The project the stream is tied to.
    bound: Option<&'a Scope>,
    /// The frame's project, for calls that name none.
    frame_project: String,
    known: Vec<(String, Access, Result<Scope, Status>)>,
}

impl Scopes<'_> {
    /// The scope of a call naming `call_project` (empty: none).
    fn scope<B: Backend>(
        &mut self,
        service: &KvService<B>,
        call_project: &str,
        access: Access,
    ) -> Result<Scope, Status> {
        let named = if call_project.is_empty() {
            self.frame_project.as_str()
        } else {
            call_project
        };
        if let Some((_, _, known)) = self
            .known
            .iter()
            .find(|(name, a, _)| name == named && *a == access)
        {
            return known.clone();
        }
        let resolved = self
            .caller
            .project(self.metadata, (!named.is_empty()).then_some(named), access)
            .map_err(Status::from)
            .map(|project| match self.bound {
                // The stream's own project keeps the incarnation it opened
                // on: if it is gone, its calls fail rather than reach a
                // successor.
                Some(bound) if bound.project == project => bound.clone(),
                _ => service.scope_of(project, TokenRate::of(&self.caller)),
            });
        self.known
            .push((named.to_string(), access, resolved.clone()));
        resolved
    }
}

impl<B: Backend> KvService<B> {
    /// Reads frames off `calls` and answers them on `tx` until the client
    /// ends the stream, goes away, or the server stops.
    ///
    /// Frames are read while earlier writes are still in flight, so the
    /// writes of many frames share one group commit; replies go out as
    /// results come in.
    pub(super) async fn serve_pipeline(
        self,
        metadata: MetadataMap,
        mut guard: StreamGuard,
        mut calls: Streaming<PipelineRequest>,
        tx: ReplySender,
    ) {
        let this = Arc::new(self);
        let mut stopping = this.stopping.clone();
        let mut in_flight = InFlight::default();
        let mut out = Outbox::new(tx.clone());
        let mut reading = true;
        let mut shutting_down = false;
        loop {
            // Frames that have already arrived are started before the
            // replies go out, so replies to many small frames share one.
            let mut ready = 0;
            while reading && ready < MAX_READY_FRAMES && in_flight.writes.len() < MAX_IN_FLIGHT {
                let Some(frame) = calls.message().now_or_never() else {
                    break;
                };
                ready += 1;
                if !this
                    .on_frame(
                        frame,
                        (&metadata, &guard),
                        &mut reading,
                        &mut in_flight,
                        &mut out,
                    )
                    .await
                {
                    return;
                }
            }
            if !in_flight.take_ready(&mut out).await || !out.flush().await {
                return;
            }
            if in_flight.writes.is_empty() {
                if shutting_down {
                    // Everything started was answered; frames not read yet
                    // were not run.
                    let _ = tx
                        .send(
                            Err(Status::unavailable(
                                "the server is shutting down; calls not yet answered were not run",
                            )),
                            0,
                        )
                        .await;
                    return;
                }
                if !reading {
                    // The client closed its side and every call was answered.
                    return;
                }
            }
            tokio::select! {
                biased;
                () = tx.closed() => return,
                () = guard.changed() => {
                    if let Err(status) = guard.check(&*this.backend) {
                        let _ = out.flush().await;
                        tx.finish(Err(status));
                        return;
                    }
                }
                () = until_true(&mut stopping), if !shutting_down => {
                    // Like a unary request in flight at shutdown, a started
                    // write is finished and answered.
                    shutting_down = true;
                    reading = false;
                }
                Some((id, keys, result)) = in_flight.writes.next(), if !in_flight.writes.is_empty() => {
                    in_flight.release(&keys);
                    if !out.push(id, result).await {
                        return;
                    }
                }
                frame = calls.message(), if reading && in_flight.writes.len() < MAX_IN_FLIGHT => {
                    if !this.on_frame(frame, (&metadata, &guard), &mut reading, &mut in_flight, &mut out).await {
                        return;
                    }
                }
            }
        }
    }

    /// Starts a frame the client sent, or notes that it is done sending
    /// (`reading` turns false); false when the stream is over.
    async fn on_frame(
        self: &Arc<Self>,
        frame: Result<Option<PipelineRequest>, Status>,
        (metadata, guard): (&MetadataMap, &StreamGuard),
        reading: &mut bool,
        in_flight: &mut InFlight,
        out: &mut Outbox,
    ) -> bool {
        match frame {
            Ok(Some(frame)) => {
                crate::metrics::metrics().pipeline_frame(frame.calls.len());
                // Credentials and the stream's project are checked again
                // for every frame, so a revoked token or a deleted project
                // stops open streams too: the stream ends, and nothing of
                // this frame runs.
                let caller = match guard.check(&*self.backend) {
                    Ok(caller) => caller,
                    Err(status) => {
                        let _ = out.flush().await;
                        out.tx.finish(Err(status));
                        return false;
                    }
                };
                let scopes = Scopes {
                    caller,
                    guard,
                    metadata,
                    bound: guard.bound(),
                    frame_project: frame.project,
                    known: Vec::new(),
                };
                self.start_frame(scopes, frame.calls, Instant::now(), in_flight, out)
                    .await
            }
            // The client is done sending; what is in flight is still answered.
            Ok(None) => {
                *reading = false;
                true
            }
            // The client is gone or sent garbage; tonic has the reason.
            Err(status) => {
                out.tx.finish(Err(status));
                false
            }
        }
    }

    /// Whether the stream's credentials and project still hold (see
    /// [`StreamGuard::recheck`]); if not, the stream ends with the reason
    /// and false is returned.
    async fn still_admitted(backend: &B, guard: &StreamGuard, out: &mut Outbox) -> bool {
        match guard.recheck(backend) {
            Ok(()) => true,
            Err(status) => {
                let _ = out.flush().await;
                out.tx.finish(Err(status));
                false
            }
        }
    }

    /// Answers a frame's reads and hands its writes to the engine, in the
    /// order sent; false once the client is gone.
    async fn start_frame(
        self: &Arc<Self>,
        mut scopes: Scopes<'_>,
        calls: Vec<Call>,
        received: Instant,
        in_flight: &mut InFlight,
        out: &mut Outbox,
    ) -> bool {
        for call in calls {
            // A frame's calls may wait (a read for in-flight writes of its
            // key): a revocation or deletion meanwhile ends the stream
            // before any later call runs.
            if !Self::still_admitted(&self.backend, scopes.guard, out).await {
                return false;
            }
            let id = call.id;
            if call.timeout_ms > 0 && received.elapsed() >= Duration::from_millis(call.timeout_ms) {
                let late = Status::deadline_exceeded(format!(
                    "the call's {} ms ran out before it started; it was not run",
                    call.timeout_ms
                ));
                if !out.push(id, Err(late)).await {
                    return false;
                }
                continue;
            }
            let Some(request) = call.request else {
                let empty = Status::invalid_argument(format!(
                    "call {id} has no request; give one of get, set, has, delete, incr, merge, get_many, set_many, delete_many"
                ));
                if !out.push(id, Err(empty)).await {
                    return false;
                }
                continue;
            };
            let result = match request {
                Req::Get(r) => {
                    if !in_flight.wait_for(std::slice::from_ref(&r.key), out).await
                        || !Self::still_admitted(&self.backend, scopes.guard, out).await
                    {
                        return false;
                    }
                    // Written into the frame as it is read; only an error
                    // is left to answer below.
                    let written = match scopes.scope(self, &call.project, Access::Read) {
                        Ok(scope) => self.get_into(&scope, &r, id, out).await,
                        Err(e) => Err(e),
                    };
                    match written {
                        Ok(true) => continue,
                        Ok(false) => return false,
                        Err(e) => Err(e),
                    }
                }
                Req::Has(r) => {
                    if !in_flight.wait_for(std::slice::from_ref(&r.key), out).await
                        || !Self::still_admitted(&self.backend, scopes.guard, out).await
                    {
                        return false;
                    }
                    match scopes.scope(self, &call.project, Access::Read) {
                        Ok(scope) => self.has_in(&scope, &r).await.map(Res::Has),
                        Err(e) => Err(e),
                    }
                }
                Req::GetMany(r) => {
                    // One moment for all its keys, after this stream's
                    // earlier writes of any of them.
                    if !in_flight.wait_for(&r.keys, out).await
                        || !Self::still_admitted(&self.backend, scopes.guard, out).await
                    {
                        return false;
                    }
                    match scopes.scope(self, &call.project, Access::Read) {
                        Ok(scope) => self.get_many_in(&scope, &r).await.map(Res::GetMany),
                        Err(e) => Err(e),
                    }
                }
                write_request => {
                    let scope = match scopes.scope(self, &call.project, Access::Write) {
                        Ok(scope) => scope,
                        Err(e) => {
                            if !out.push(id, Err(e)).await {
                                return false;
                            }
                            continue;
                        }
                    };
                    let due = self.due(call.timeout_ms, received);
                    match self.start_write(&scope, id, due, write_request, in_flight) {
                        Some(result) => result,
                        None => continue,
                    }
                }
            };
            if !out.push(id, result).await {
                return false;
            }
        }
        true
    }

    /// When a call's answer is due, and what it gets if that passes: its
    /// own deadline or the server's cap, whichever is sooner.
    fn due(&self, timeout_ms: u64, received: Instant) -> (Instant, Status) {
        let own = Duration::from_millis(timeout_ms);
        if timeout_ms == 0 || own >= self.max_call_time {
            let cap = self.max_call_time.as_millis();
            (
                received + self.max_call_time,
                Status::deadline_exceeded(format!(
                    "call exceeded the server's limit of {cap} ms per request (--max-request-time-ms); the write may still apply"
                )),
            )
        } else {
            (
                received + own,
                Status::deadline_exceeded(format!(
                    "the call's {timeout_ms} ms ran out; the write may still apply"
                )),
            )
        }
    }

    /// Hands a write to the engine now ([`KvService::start`] submits
    /// before it returns, so writes reach the engine in the order this is
    /// called). Its result when it is already known (refused by
    /// validation); `None` when it is in flight, answered later.
    fn start_write(
        &self,
        scope: &Scope,
        id: u64,
        (due, late): (Instant, Status),
        request: Req,
        in_flight: &mut InFlight,
    ) -> Option<Result<Res, Status>> {
        fn boxed<R: 'static, F>(
            started: Result<F, Status>,
            wrap: fn(R) -> Res,
        ) -> Result<Write, Status>
        where
            F: Future<Output = Result<R, Status>> + Send + 'static,
        {
            started.map(|write| -> Write { Box::pin(async move { write.await.map(wrap) }) })
        }
        let (keys, started) = match request {
            Req::Set(mut r) => (
                Keys::One(key_hash(&r.key)),
                boxed(self.start(scope, &mut r), Res::Set),
            ),
            Req::Delete(mut r) => (
                Keys::One(key_hash(&r.key)),
                boxed(self.start(scope, &mut r), Res::Delete),
            ),
            Req::Incr(mut r) => (
                Keys::One(key_hash(&r.key)),
                boxed(self.start(scope, &mut r), Res::Incr),
            ),
            Req::Merge(mut r) => (
                Keys::One(key_hash(&r.key)),
                boxed(self.start(scope, &mut r), Res::Merge),
            ),
            Req::SetMany(mut r) => {
                let started = boxed(self.start(scope, &mut r), Res::SetMany);
                // Validation does not consume the request: the keys are
                // taken only once it is in flight.
                let keys = r.entries.iter().map(|e| key_hash(&e.key)).collect();
                (Keys::Many(keys), started)
            }
            Req::DeleteMany(mut r) => {
                let started = boxed(self.start(scope, &mut r), Res::DeleteMany);
                (
                    Keys::Many(r.keys.iter().map(|k| key_hash(k)).collect()),
                    started,
                )
            }
            Req::Get(_) | Req::Has(_) | Req::GetMany(_) => {
                return Some(Err(Status::internal("a read was taken for a write")));
            }
        };
        let write = match started {
            Ok(write) => write,
            Err(refused) => return Some(Err(refused)),
        };
        let due = tokio::time::Instant::from_std(due);
        in_flight.hold(&keys);
        in_flight.writes.push_back(Box::pin(async move {
            let result = match tokio::time::timeout_at(due, write).await {
                Ok(result) => result,
                Err(_) => Err(late),
            };
            (id, keys, result)
        }));
        None
    }
}
