//! Snapshot records of the change histories (kinds 13 and 14): each
//! project's ring, so a watcher resumes across a restart from any version
//! still in it although the segments that logged those changes are gone.

use std::sync::Arc;

use super::{Cursor, DecodeError, Record, frame, put_bytes, put_project};
use crate::{
    Deadline,
    project::ProjectName,
    watch::{Event, EventKind},
};

pub(super) const HISTORY: u8 = 13;
pub(super) const HISTORY_EVENT: u8 = 14;

const EVENT_SET: u8 = 1;
const EVENT_DELETED: u8 = 2;
const EVENT_EXPIRED: u8 = 3;
const EVENT_CLEARED: u8 = 4;

/// Appends the start of `project`'s ring: incarnation `incarnation`, which
/// holds every version after `floor` (its events follow).
pub(crate) fn encode_history(
    out: &mut Vec<u8>,
    project: &ProjectName,
    incarnation: u64,
    floor: u64,
) {
    frame(out, |payload| {
        payload.push(HISTORY);
        put_project(payload, project);
        payload.extend_from_slice(&incarnation.to_le_bytes());
        payload.extend_from_slice(&floor.to_le_bytes());
    });
}

/// Appends one event of `project`'s ring.
pub(crate) fn encode_history_event(
    out: &mut Vec<u8>,
    project: &ProjectName,
    incarnation: u64,
    event: &Event,
) {
    frame(out, |payload| {
        payload.push(HISTORY_EVENT);
        put_project(payload, project);
        payload.extend_from_slice(&incarnation.to_le_bytes());
        payload.extend_from_slice(&event.version.to_le_bytes());
        payload.push(match event.kind {
            EventKind::Set => EVENT_SET,
            EventKind::Deleted => EVENT_DELETED,
            EventKind::Expired => EVENT_EXPIRED,
            EventKind::Cleared => EVENT_CLEARED,
        });
        put_bytes(payload, event.key.as_bytes());
        payload.extend_from_slice(&Deadline::ms_or_zero(event.expires_at).to_le_bytes());
        match &event.value {
            None => payload.push(0),
            Some(value) => {
                payload.push(1);
                put_bytes(payload, value);
            }
        }
    });
}

pub(super) fn decode_history(r: &mut Cursor<'_, '_>) -> Result<Record, DecodeError> {
    Ok(Record::History {
        project: r.project()?,
        incarnation: r.u64()?,
        floor: r.u64()?,
    })
}

pub(super) fn decode_history_event(r: &mut Cursor<'_, '_>) -> Result<Record, DecodeError> {
    let project = r.project()?;
    let incarnation = r.u64()?;
    let version = r.u64()?;
    let kind = match r.u8()? {
        EVENT_SET => EventKind::Set,
        EVENT_DELETED => EventKind::Deleted,
        EVENT_EXPIRED => EventKind::Expired,
        EVENT_CLEARED => EventKind::Cleared,
        other => return Err(DecodeError::EventKind(other)),
    };
    // A clear's key is empty; every other event names its key.
    let key: Arc<str> = if kind == EventKind::Cleared {
        let raw = r.bytes()?;
        std::str::from_utf8(raw)
            .map_err(|_| DecodeError::NotUtf8("key"))?
            .into()
    } else {
        r.key()?
    };
    let expires_at = Deadline::at(r.u64()?);
    let value = match r.u8()? {
        0 => None,
        1 => Some(bytes::Bytes::copy_from_slice(r.bytes()?)),
        other => return Err(DecodeError::ValueFlag(other)),
    };
    if version == 0 {
        return Err(DecodeError::EventVersion);
    }
    Ok(Record::HistoryEvent {
        project,
        incarnation,
        event: Event {
            version,
            kind,
            key,
            value,
            expires_at,
        },
    })
}
