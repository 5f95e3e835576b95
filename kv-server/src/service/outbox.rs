//! A `Pipeline` stream's replies, written into the frame being built as
//! each is ready and sent in bounded frames.
//!
//! A reply is encoded once, into the frame's buffer ([`FrameWriter`]); a
//! Get's value goes there straight from the store ([`Backend::get_with`]),
//! with no `Reply` or value copy made for it. The frame is then handed to
//! tonic, whose codec copies the encoded bytes into the HTTP/2 buffer as
//! they are.

use kv_engine::{Backend, Deadline};
use kv_proto::{
    frame::{FoundValue, FrameWriter, ReplyFrame},
    wire::{CallError, GetRequest, Reply, reply::Response as Res},
};
use tonic::Status;

use super::shared::{KvService, Scope, project_deleted};
use crate::status::engine_status;

/// Replies are sent in frames of at most this many bytes (about), so a
/// frame of large values never nears the message limit.
pub(super) const REPLY_FRAME_BYTES: usize = 1 << 20;

/// Bytes a frame's buffer starts with: many small replies share one
/// allocation, which frames taken from it share until they are sent.
const FRAME_BUFFER_BYTES: usize = 16 << 10;

/// The sender of a stream's reply frames.
pub(super) type ReplySender = super::queue::Sender<Result<ReplyFrame, Status>>;

/// The reply to call `id`: its response, or its error as the unary call's
/// status.
pub(super) fn reply(id: u64, result: Result<Res, Status>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(status) => Res::Error(CallError {
            code: status.code() as i32,
            message: status.message().to_string(),
            retry_after_ms: crate::rate::retry_after_ms(status.metadata()),
        }),
    };
    Reply {
        id,
        response: Some(response),
    }
}

/// Replies written for the client, sent in bounded frames.
pub(super) struct Outbox {
    pub(super) tx: ReplySender,
    frame: FrameWriter,
}

impl Outbox {
    pub(super) fn new(tx: ReplySender) -> Self {
        Self {
            tx,
            frame: FrameWriter::with_capacity(FRAME_BUFFER_BYTES),
        }
    }

    /// Queues the reply to call `id`; false once the client is gone.
    pub(super) async fn push(&mut self, id: u64, result: Result<Res, Status>) -> bool {
        let start = self.frame.len();
        self.frame.push_reply(&reply(id, result));
        self.written(start).await
    }

    /// Sends frames as the bound says once a reply was written at `start`;
    /// false once the client is gone.
    async fn written(&mut self, start: usize) -> bool {
        // A large reply (a GetMany's can be as large as a message may be)
        // goes in a frame of its own, so no frame outgrows the message
        // limit by what was written before it.
        if self.frame.len() - start >= REPLY_FRAME_BYTES && start > 0 {
            let before = self.frame.take_first(start);
            if !self.send(before).await {
                return false;
            }
        }
        if self.frame.len() >= REPLY_FRAME_BYTES {
            return self.flush().await;
        }
        true
    }

    /// Sends what is written; false once the client is gone.
    pub(super) async fn flush(&mut self) -> bool {
        if self.frame.is_empty() {
            return true;
        }
        let frame = self.frame.take_frame();
        self.send(frame).await
    }

    async fn send(&mut self, frame: ReplyFrame) -> bool {
        let bytes = frame.as_bytes().len();
        self.tx.send(Ok(frame), bytes).await.is_ok()
    }
}

impl<B: Backend> KvService<B> {
    /// Answers Get call `id` into `out`'s frame: the unary Get's reply,
    /// with the value copied once, from the store into the frame. Nothing
    /// is written on an error, which the caller answers.
    pub(super) async fn get_into(
        &self,
        scope: &Scope,
        r: &GetRequest,
        id: u64,
        out: &mut Outbox,
    ) -> Result<bool, Status> {
        let key = self.key(&r.key)?;
        self.admit_rate(scope, 0)?;
        let incarnation = scope.incarnation;
        let start = out.frame.len();
        let frame = &mut out.frame;
        // Read and checked against the admitted incarnation in one step:
        // a successor's entry is never answered.
        self.backend
            .get_with(&scope.project, incarnation, key, |entry| {
                let found = entry.map(|e| FoundValue {
                    value: e.value,
                    version: e.version,
                    expires_at_ms: e.expires_at.map(Deadline::ms),
                });
                frame.push_get(id, incarnation, found);
            })
            .await
            .map_err(engine_status)?
            .ok_or_else(|| project_deleted(&scope.project))?;
        Ok(out.written(start).await)
    }
}
