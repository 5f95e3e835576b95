//! A project as `kv_snapshot` read it: the state the engine's evaluator
//! runs a group of writes against.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use kv_engine::{
    EngineError,
    memory::{Usage, requests::Remembered},
    project::ProjectName,
    txn::{KeyMeta, State},
    wal::codec,
};
use redis::Value;

use crate::codec::{Stored, array, bytes, entries, int, malformed};

/// What a group of writes touches, as of one moment of the project.
pub(crate) struct Snapshot {
    /// The server clock when it was read (unix ms).
    pub(crate) now: u64,
    pub(crate) incarnation: u64,
    pub(crate) version: u64,
    pub(crate) usage: Usage,
    pub(crate) live: u64,
    /// Keys past their deadline not yet expired.
    pub(crate) due: u64,
    records: HashMap<Box<str>, Remembered>,
    entries: HashMap<Box<str>, Stored>,
}

/// A remembered outcome as stored: the incarnation it belongs to, the
/// request's fingerprint, then the outcome in the log's encoding.
pub(crate) fn record(
    incarnation: u64,
    fingerprint: u64,
    outcome: &kv_engine::TxnOutcome,
) -> Vec<u8> {
    let mut out = incarnation.to_le_bytes().to_vec();
    out.extend_from_slice(&fingerprint.to_le_bytes());
    codec::encode_outcome(&mut out, outcome);
    out
}

/// The incarnation a record belongs to.
fn record_incarnation(raw: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(raw.get(..8)?.try_into().ok()?))
}

pub(crate) fn parse_record(raw: &[u8], now: u64) -> Result<Remembered, EngineError> {
    if raw.len() < 16 {
        return Err(malformed("a remembered outcome shorter than its header"));
    }
    let fingerprint = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    let outcome = codec::decode_outcome(&raw[16..])
        .map_err(|_| malformed("a remembered outcome that does not decode"))?;
    Ok(Remembered {
        fingerprint,
        // The record's time to live is the window: while it exists, it
        // counts as remembered now.
        at: now,
        outcome: Arc::new(outcome),
    })
}

impl Snapshot {
    /// Reads the answer of `kv_snapshot` for `ids` and `keys`.
    pub(crate) fn parse(
        reply: Value,
        ids: &[Box<str>],
        keys: &[Box<str>],
    ) -> Result<Self, EngineError> {
        let mut parts = array(reply)?.into_iter();
        let mut next = || {
            parts
                .next()
                .ok_or_else(|| malformed("a short kv_snapshot reply"))
        };
        let now = int(&next()?)?;
        let incarnation = int(&next()?)?;
        let version = int(&next()?)?;
        let usage = Usage {
            keys: int(&next()?)?,
            bytes: int(&next()?)?,
        };
        let live = int(&next()?)?;
        let due = int(&next()?)?;
        let mut records = HashMap::new();
        for (id, raw) in ids.iter().zip(array(next()?)?) {
            // A record of a deleted incarnation is another project's.
            if let Some(raw) = bytes(raw)?.filter(|r| record_incarnation(r) == Some(incarnation)) {
                records.insert(id.clone(), parse_record(&raw, now)?);
            }
        }
        let mut found = HashMap::new();
        for (key, stored) in keys.iter().zip(entries(next()?)?) {
            if let Some(stored) = stored {
                found.insert(key.clone(), stored);
            }
        }
        Ok(Self {
            now,
            incarnation,
            version,
            usage,
            live,
            due,
            records,
            entries: found,
        })
    }

    /// The earliest deadline of a live entry read: the evaluation relied
    /// on its being live, so past it the result must not be applied.
    pub(crate) fn horizon(&self) -> u64 {
        self.entries
            .values()
            .filter_map(|e| e.expires_at)
            .map(kv_engine::Deadline::ms)
            .filter(|&d| d > self.now)
            .min()
            .unwrap_or(0)
    }
}

// One project's snapshot: the project arguments are the one it was read
// for.
impl State for Snapshot {
    fn version(&self, _: &ProjectName) -> u64 {
        self.version
    }

    fn usage(&self, _: &ProjectName) -> Usage {
        self.usage
    }

    fn incarnation(&self, _: &ProjectName) -> u64 {
        self.incarnation
    }

    fn has_namespace(&self, _: &ProjectName) -> bool {
        true
    }

    fn remembered(&self, _: &ProjectName, id: &str, _: u64) -> Option<Remembered> {
        self.records.get(id).cloned()
    }

    fn meta(&self, _: &ProjectName, key: &str) -> Option<KeyMeta> {
        self.entries.get(key).map(|e| e.meta(key))
    }

    fn value(&self, _: &ProjectName, key: &str) -> Option<Bytes> {
        self.entries.get(key).map(|e| e.value.clone())
    }

    fn live_count(&self, _: &ProjectName, _: u64) -> u64 {
        self.live
    }
}
