//! Responses: engine results into wire messages.

use kv_engine::{
    Deadline, Entry, OpOutcome, TxnOutcome,
    watch::{Event, EventKind},
};
use kv_proto::wire::{self, GetResponse, WatchEvent};
use tonic::Status;

/// An entry's bytes in a response besides its key and value (version,
/// deadline, tags and lengths), rounded up.
pub(super) const ENTRY_OVERHEAD: usize = 32;

pub(super) fn get_response(entry: Option<Entry>, incarnation: u64) -> GetResponse {
    match entry {
        Some(entry) => GetResponse {
            found: true,
            value: entry.value,
            version: entry.version,
            expires_at_ms: entry.expires_at.map(Deadline::ms),
            incarnation,
        },
        None => GetResponse {
            incarnation,
            ..GetResponse::default()
        },
    }
}

pub(super) fn first(outcome: &TxnOutcome) -> Result<&OpOutcome, Status> {
    outcome
        .results
        .first()
        .ok_or_else(|| Status::internal("a write returned no result"))
}

pub(super) fn op_result(result: &OpOutcome) -> wire::OpResult {
    use wire::op_result::Result as R;
    let (version, result) = match result {
        OpOutcome::Set { version } => (*version, None),
        OpOutcome::Delete { deleted, version } => (*version, Some(R::Deleted(*deleted))),
        OpOutcome::Incr { value, version } => (*version, Some(R::Number(*value))),
        OpOutcome::Merge { value, version } => (*version, Some(R::Value(value.clone()))),
        OpOutcome::Clear { version, .. } => (*version, None),
    };
    wire::OpResult { version, result }
}

pub(super) fn watch_event(event: &Event, incarnation: u64) -> WatchEvent {
    let kind = match event.kind {
        EventKind::Set => wire::EventKind::Set,
        EventKind::Deleted => wire::EventKind::Deleted,
        EventKind::Expired => wire::EventKind::Expired,
        EventKind::Cleared => wire::EventKind::Cleared,
    };
    WatchEvent {
        kind: kind as i32,
        key: event.key.to_string(),
        value: event.value.clone().unwrap_or_default(),
        version: event.version,
        expires_at_ms: event.expires_at.map(Deadline::ms),
        incarnation,
    }
}
