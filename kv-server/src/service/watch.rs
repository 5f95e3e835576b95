//! `Watch`: a project's changes streamed to a watcher, under the stream
//! guard's rule (nothing delivered once the token is revoked or the
//! project deleted).

use std::sync::Arc;

use kv_engine::{
    Backend, WatchError, WatchTarget,
    watch::{Event, Lagged},
};
use kv_proto::{
    contract::{INCARNATION_HEADER, RESUME_FROM_HEADER, WATCH_START_HEADER},
    wire::{self, WatchRequest},
};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{
    error::RequestError,
    guard, queue, respond,
    shared::{KvService, WatchStream, project_deleted, until_true},
};
use crate::{auth::Access, status::watch_status};

/// Events sent to a watcher per wake-up; bounds the work between checks
/// for a hang-up.
const WATCH_BATCH: usize = 256;
/// Events queued for one watcher's connection before the history itself
/// has to hold them.
const WATCH_QUEUE: usize = 64;
/// Bytes of events queued for one watcher's connection: a watcher that
/// stops reading pins at most this much (or one event) of values the
/// history has since dropped.
const WATCH_QUEUE_BYTES: u32 = 256 << 10;
/// An event's bytes besides its key and value.
const EVENT_OVERHEAD: usize = 48;

impl<B: Backend> KvService<B> {
    /// Validates a Watch, subscribes, and starts the task that delivers
    /// its events.
    pub(super) async fn open_watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        if let Some(memory) = &self.memory {
            memory.admit_stream()?;
        }
        let r = request.get_ref();
        let target = match &r.target {
            None => WatchTarget::All,
            Some(wire::watch_request::Target::Key(key)) => {
                WatchTarget::Key(self.key(key).map_err(|e| e.at("key"))?.into())
            }
            Some(wire::watch_request::Target::Prefix(prefix)) if prefix.is_empty() => {
                WatchTarget::All
            }
            Some(wire::watch_request::Target::Prefix(prefix)) => {
                if prefix.len() > self.limits.max_key_bytes {
                    return Err(RequestError::KeyTooLong {
                        len: prefix.len(),
                        max: self.limits.max_key_bytes,
                    }
                    .at("prefix")
                    .into());
                }
                WatchTarget::Prefix(prefix.as_str().into())
            }
        };
        self.admit_rate(&scope, 0)?;
        // Subscribed before the response starts: once a client holds the
        // stream, every later change reaches it.
        let mut subscription = self
            .backend
            .watch(&scope.project, target, r.from_version)
            .await
            .map_err(watch_status)?;
        let incarnation = subscription.incarnation();
        if incarnation != scope.incarnation {
            // Deleted (and recreated) between the credential check and the
            // subscription: the caller was admitted to the old project.
            return Err(project_deleted(&scope.project));
        }
        if let Some(asked) = r.incarnation
            && asked != incarnation
        {
            return Err(watch_status(WatchError::OtherIncarnation {
                asked,
                incarnation,
            }));
        }
        let start = subscription.cursor();
        let (tx, rx) = queue::channel(
            WATCH_QUEUE,
            WATCH_QUEUE_BYTES,
            Arc::clone(&self.watch_bytes),
        );
        let mut stopping = self.stopping.clone();
        let memory = self.memory.clone();
        let backend = Arc::clone(&self.backend);
        let project = scope.project.clone();
        let mut guard = guard::StreamGuard::new(
            Arc::clone(&self.auth),
            request.into_parts().0,
            Some(scope),
            Access::Read,
        );
        tokio::spawn(async move {
            let _open = crate::metrics::WatcherOpen::new();
            /// What woke the watch task.
            enum Woke {
                Batch(Result<Vec<Arc<Event>>, Lagged>),
                Recheck,
                Pressure,
            }
            loop {
                let woke = tokio::select! {
                    batch = subscription.next_batch(WATCH_BATCH) => Woke::Batch(batch),
                    () = tx.closed() => return,
                    () = guard.changed() => Woke::Recheck,
                    () = pressured(memory.as_ref()) => Woke::Pressure,
                    () = until_true(&mut stopping) => {
                        let resume = subscription.cursor();
                        let status = Status::unavailable(format!(
                            "the server is shutting down; watch again with from_version {resume}"
                        ));
                        tx.finish(Err(resumable(status, resume)));
                        return;
                    }
                };
                let events = match woke {
                    Woke::Recheck => Vec::new(),
                    Woke::Pressure => {
                        // Events still queued: this watcher is behind, and
                        // holds copies the server needs back.
                        if let Some(memory) = &memory
                            && tx.queued_bytes() > 0
                            && memory.over_limit()
                        {
                            cut(&tx, memory, subscription.cursor());
                            return;
                        }
                        continue;
                    }
                    Woke::Batch(Ok(events)) => events,
                    Woke::Batch(Err(lagged @ Lagged::Behind { .. })) => {
                        crate::metrics::metrics().watcher_cut();
                        tx.finish(Err(Status::resource_exhausted(lagged.to_string())));
                        return;
                    }
                    Woke::Batch(Err(Lagged::Deleted)) => {
                        tx.finish(Err(project_deleted(&project)));
                        return;
                    }
                };
                // Before anything is delivered: a change made after a
                // revocation or deletion is applied after the catalog
                // change, so a batch holding one fails this check.
                if let Err(status) = guard.check(&*backend) {
                    tx.finish(Err(status));
                    return;
                }
                for event in events {
                    let bytes = EVENT_OVERHEAD
                        + event.key.len()
                        + event.value.as_ref().map_or(0, |v| v.len());
                    let item = Ok(respond::watch_event(&event, incarnation));
                    match tx.send_or_lag(item, bytes, memory.as_ref()).await {
                        Ok(()) => {}
                        Err(queue::Refused::Closed(_)) => return,
                        Err(queue::Refused::Lagging(_)) => {
                            // Not keeping up while the server needs the
                            // memory its queue holds: cut, resumable from
                            // the first event it has not been given.
                            let cause = lag_cause(memory.as_ref());
                            crate::metrics::metrics().watcher_cut();
                            tx.cut(|first| {
                                let resume = first_version(first)
                                    .unwrap_or(event.version)
                                    .saturating_sub(1);
                                Err(resumable(cause(resume), resume))
                            });
                            return;
                        }
                    }
                }
            }
        });
        let mut response = Response::new(Box::pin(rx) as WatchStream);
        let headers = response.metadata_mut();
        headers.insert(WATCH_START_HEADER, MetadataValue::from(start));
        headers.insert(INCARNATION_HEADER, MetadataValue::from(incarnation));
        Ok(response)
    }
}

/// Resolves when `memory` reports something refused for memory; never
/// without a limit.
async fn pressured(memory: Option<&crate::memory::MemoryBudget>) {
    match memory {
        Some(memory) => memory.pressured().await,
        None => std::future::pending().await,
    }
}

type Item = Result<wire::WatchEvent, Status>;

fn first_version(first: Option<&Item>) -> Option<u64> {
    match first {
        Some(Ok(event)) => Some(event.version),
        _ => None,
    }
}

/// Cuts a watcher that is behind at the memory limit: the events queued
/// for it are dropped now, and it is told to resume from just before the
/// first of them (or from `cursor`, the next it would have been sent).
fn cut(tx: &queue::Sender<Item>, memory: &crate::memory::MemoryBudget, cursor: u64) {
    crate::metrics::metrics().watcher_cut();
    tx.cut(|first| {
        let resume = first_version(first).map_or(cursor, |v| v.saturating_sub(1));
        Err(resumable(memory.watcher_cut(resume), resume))
    });
}

/// Why a watcher that lags is cut: the memory limit, or the budget of
/// events queued for all watchers.
fn lag_cause(
    memory: Option<&crate::memory::MemoryBudget>,
) -> Box<dyn FnOnce(u64) -> Status + Send> {
    match memory {
        Some(memory) if memory.over_limit() => {
            let memory = memory.clone();
            Box::new(move |resume| memory.watcher_cut(resume))
        }
        _ => Box::new(move |resume| {
            Status::resource_exhausted(format!(
                "this watch is not keeping up with its changes and the events queued for all watchers have reached their limit (an eighth of --max-memory); watch again with from_version {resume}"
            ))
        }),
    }
}

/// `status` marked as the end of a watch that may be opened again after
/// `resume` without a gap: every change up to it was queued before it.
fn resumable(mut status: Status, resume: u64) -> Status {
    status
        .metadata_mut()
        .insert(RESUME_FROM_HEADER, MetadataValue::from(resume));
    status
}
