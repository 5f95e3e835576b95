//! The on-disk format shared by log segments and snapshots.
//!
//! A file is an 8-byte header (6 magic bytes, `u16` format version, little
//! endian) followed by frames:
//!
//! ```text
//! len: u32 | len_check: u32 = crc32c(len) ^ MASK | crc: u32 = crc32c(payload) | payload
//! ```
//!
//! `len_check` protects the length on its own, so a flipped bit in a length
//! is recognised as corruption instead of being taken for a record cut short
//! by a crash. Payloads are the resulting state, never an operation:
//!
//! ```text
//! 1 Set    project_len: u8, project, key_len: u32, key, expires_at: u64 (0 = never), value_len: u32, value
//! 2 Delete project_len: u8, project, key_len: u32, key
//! 3 Clear  project_len: u8, project
//! 4 End    count: u64          (last frame of a snapshot)
//! 5 PutProject     project, has: u8 (bit 0 max_keys, bit 1 max_bytes, bit 2
//!                  ops_per_second, bit 3 write_bytes_per_second), max_keys: u64,
//!                  max_bytes: u64, [ops_per_second: u64, write_bytes_per_second: u64]
//!                  (the bracketed pair only when bit 2 or 3 is set)
//! 6 DeleteProject  project
//! 7 PutToken       id_len: u32, id, project, read_only: u8, secret_sha256: [u8; 32], created_at_ms: u64,
//!                  [has: u8 (bit 0 ops_per_second, bit 1 write_bytes_per_second),
//!                  ops_per_second: u64, write_bytes_per_second: u64] (only for a
//!                  token with rate limits; see `codec/token.rs`)
//! 8 RevokeToken    id_len: u32, id
//! 9 Txn      project, at_ms: u64, count: u32, count x change, has_request: u8, [request]
//!            change  = version: u64, tag: u8, then by tag:
//!                      1 set: key_len: u32, key, expires_at: u64, value_len: u32, value
//!                      2 delete: key_len: u32, key    3 clear    4 expire: key_len: u32, key
//!            request = id_len: u32, id, fingerprint: u64, outcome
//!            outcome = applied: u8, failed_check: u32 (u32::MAX = none),
//!                      current_version: u64, count: u32, count x result:
//!                      tag: u8, 1 set: version | 2 delete: deleted: u8, version
//!                      | 3 incr: f64 bits: u64, version | 4 merge: version, value_len: u32, value
//!                      | 5 clear: removed: u64, version
//! 10 Version project, version: u64   (a project's version counter, in snapshots)
//! 11 Incarnation project, base: u64  (a new, empty project under the name,
//!                                     numbered after `base`)
//! 12 Retired project, last: u64      (a deleted name and the newest version
//!                                     it used, in snapshots)
//! 13 History project, incarnation: u64, floor: u64
//!            (snapshots: the project's change history holds every version
//!             after `floor`; its events follow, oldest first)
//! 14 HistoryEvent project, incarnation: u64, version: u64, kind: u8
//!            (1 set, 2 deleted, 3 expired, 4 cleared), key_len: u32, key
//!            (empty for a clear), expires_at: u64, has_value: u8,
//!            [value_len: u32, value]
//! ```
//!
//! Format version 2 added versions (kinds 9 and 10; writes are logged as
//! one Txn record each, so a transaction is all or nothing on disk too).
//! Version 3 added incarnations (kinds 11 and 12). Version 4 added change
//! histories to snapshots (kinds 13 and 14): a snapshot of version 3 or
//! older loads with empty histories, starting at each project's version.
//! Files of version 1 (kinds 1-8, no versions) are still read: replay
//! numbers their changes.
//! Rate limits in PutProject (has bits 2 and 3) came within version 3: a
//! record without them is byte for byte the earlier encoding, so logs and
//! snapshots written before decode unchanged.
//!
//! Written by hand rather than with a serialisation crate: the format is the
//! product's durability contract, and its torn-tail versus corruption rules
//! below need exact control of every byte.

use super::frame::frame;
pub(crate) use super::frame::{FILE_HEADER_LEN, LOG_MAGIC, SNAPSHOT_MAGIC, file_header};
pub use super::frame::{FrameDamage, FrameError, FrameReader};
use crate::{
    Deadline, Mutation, OpOutcome, Quota, TxnOutcome, Versioned,
    catalog::CatalogChange,
    project::{MAX_PROJECT_NAME_LEN, ProjectName},
};
pub(crate) use history::{encode_history, encode_history_event};

const SET: u8 = 1;
const DELETE: u8 = 2;
const CLEAR: u8 = 3;
const END: u8 = 4;
const PUT_PROJECT: u8 = 5;
const DELETE_PROJECT: u8 = 6;
const PUT_TOKEN: u8 = 7;
const REVOKE_TOKEN: u8 = 8;
const TXN: u8 = 9;
const VERSION: u8 = 10;
const INCARNATION: u8 = 11;
const RETIRED: u8 = 12;

/// PutProject's `has` bits of the rate limits.
const RATE_BITS: u8 = 4 | 8;

const CHANGE_SET: u8 = 1;
const CHANGE_DELETE: u8 = 2;
const CHANGE_CLEAR: u8 = 3;
const CHANGE_EXPIRE: u8 = 4;

const RESULT_SET: u8 = 1;
const RESULT_DELETE: u8 = 2;
const RESULT_INCR: u8 = 3;
const RESULT_MERGE: u8 = 4;
const RESULT_CLEAR: u8 = 5;

/// One decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A mutation of one project.
    Mutation {
        /// The project.
        project: ProjectName,
        /// The resulting state.
        mutation: Mutation,
    },
    /// A change to the catalog of projects and tokens.
    Catalog(CatalogChange),
    /// The changes of one transaction, and the outcome remembered for its
    /// request id.
    Txn {
        /// The project.
        project: ProjectName,
        /// When it was applied (unix ms).
        at: u64,
        /// Resulting-state changes with their versions.
        mutations: Vec<Versioned>,
        /// Request id, request fingerprint, outcome.
        request: Option<(Box<str>, u64, TxnOutcome)>,
    },
    /// A project's version counter.
    Version {
        /// The project.
        project: ProjectName,
        /// Its newest version.
        version: u64,
    },
    /// A new, empty project under a name, numbered after `base`: whatever
    /// the name held before is gone.
    Incarnation {
        /// The project.
        project: ProjectName,
        /// Its versions start after this.
        base: u64,
    },
    /// A deleted project name and the newest version it used.
    Retired {
        /// The project.
        project: ProjectName,
        /// Its newest version.
        last: u64,
    },
    /// Where a project's change history starts (snapshots): it holds
    /// every version after `floor`; [`Record::HistoryEvent`]s follow.
    History {
        /// The project.
        project: ProjectName,
        /// The incarnation the history belongs to.
        incarnation: u64,
        /// The newest version it no longer holds.
        floor: u64,
    },
    /// One change of a project's history (snapshots), oldest first.
    HistoryEvent {
        /// The project.
        project: ProjectName,
        /// The incarnation the change belongs to.
        incarnation: u64,
        /// The change as watchers receive it.
        event: crate::watch::Event,
    },
    /// The end of a snapshot, with how many entries it holds.
    End {
        /// Entries in the snapshot.
        count: u64,
    },
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field is longer than what is left of the record.
    #[error("field of {len} bytes runs past the record ({left} left)")]
    PastEnd {
        /// The field's length.
        len: usize,
        /// Bytes left in the record.
        left: usize,
    },
    /// Bytes follow the last field.
    #[error("{0} unexpected bytes after the record")]
    Trailing(usize),
    /// A record kind this build does not know.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// A change tag this build does not know.
    #[error("unknown change tag {0}")]
    ChangeTag(u8),
    /// A result tag this build does not know.
    #[error("unknown result tag {0}")]
    ResultTag(u8),
    /// The request flag is neither 0 nor 1.
    #[error("bad request flag {0}")]
    RequestFlag(u8),
    /// A project name longer than any name.
    #[error("project name of {0} bytes")]
    ProjectTooLong(usize),
    /// A project name that is not a valid name.
    #[error(transparent)]
    Project(#[from] crate::project::ProjectNameError),
    /// A text field (key, project, id) that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// An empty key.
    #[error("empty key")]
    EmptyKey,
    /// A history event kind this build does not know.
    #[error("unknown event kind {0}")]
    EventKind(u8),
    /// A history event's value flag is neither 0 nor 1.
    #[error("bad value flag {0}")]
    ValueFlag(u8),
    /// A history event of version 0, which no change has.
    #[error("history event of version 0")]
    EventVersion,
    /// A token's limit flags name no limit, or one this build does not know.
    #[error("bad token limit flags {0:#04x}")]
    TokenLimitFlags(u8),
}

/// Appends one framed record for `mutation` of `project` to `out`, in the
/// first format's record kinds (no version).
#[cfg(test)]
pub(crate) fn encode_mutation(out: &mut Vec<u8>, project: &ProjectName, mutation: &Mutation) {
    frame(out, |payload| match mutation {
        Mutation::Set {
            key,
            value,
            expires_at,
        } => {
            payload.push(SET);
            put_project(payload, project);
            put_bytes(payload, key.as_bytes());
            payload.extend_from_slice(&Deadline::ms_or_zero(*expires_at).to_le_bytes());
            put_bytes(payload, value);
        }
        Mutation::Delete { key } => {
            payload.push(DELETE);
            put_project(payload, project);
            put_bytes(payload, key.as_bytes());
        }
        Mutation::Clear => {
            payload.push(CLEAR);
            put_project(payload, project);
        }
        Mutation::Expire { key } => {
            payload.push(DELETE);
            put_project(payload, project);
            put_bytes(payload, key.as_bytes());
        }
    });
}

/// Appends one framed Txn record.
pub(crate) fn encode_txn(
    out: &mut Vec<u8>,
    project: &ProjectName,
    at: u64,
    mutations: &[Versioned],
    request: Option<(&str, u64, &TxnOutcome)>,
) {
    frame(out, |payload| {
        payload.push(TXN);
        put_project(payload, project);
        payload.extend_from_slice(&at.to_le_bytes());
        let count = u32::try_from(mutations.len()).expect("transactions are bounded");
        payload.extend_from_slice(&count.to_le_bytes());
        for m in mutations {
            put_change(payload, m.version, &m.mutation);
        }
        match request {
            None => payload.push(0),
            Some((id, fingerprint, outcome)) => {
                payload.push(1);
                put_bytes(payload, id.as_bytes());
                payload.extend_from_slice(&fingerprint.to_le_bytes());
                put_outcome(payload, outcome);
            }
        }
    });
}

/// Appends a snapshot entry: a Txn record of one set, from borrowed parts.
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    project: &ProjectName,
    key: &str,
    value: &[u8],
    expires_at: Option<Deadline>,
    version: u64,
) {
    frame(out, |payload| {
        payload.push(TXN);
        put_project(payload, project);
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&version.to_le_bytes());
        payload.push(CHANGE_SET);
        put_bytes(payload, key.as_bytes());
        payload.extend_from_slice(&Deadline::ms_or_zero(expires_at).to_le_bytes());
        put_bytes(payload, value);
        payload.push(0);
    });
}

/// Appends a project's version counter (snapshots).
pub(crate) fn encode_version(out: &mut Vec<u8>, project: &ProjectName, version: u64) {
    frame(out, |payload| {
        payload.push(VERSION);
        put_project(payload, project);
        payload.extend_from_slice(&version.to_le_bytes());
    });
}

/// Appends the start of a new incarnation of `project`.
pub(crate) fn encode_incarnation(out: &mut Vec<u8>, project: &ProjectName, base: u64) {
    frame(out, |payload| {
        payload.push(INCARNATION);
        put_project(payload, project);
        payload.extend_from_slice(&base.to_le_bytes());
    });
}

/// Appends a deleted name's newest version (snapshots).
pub(crate) fn encode_retired(out: &mut Vec<u8>, project: &ProjectName, last: u64) {
    frame(out, |payload| {
        payload.push(RETIRED);
        put_project(payload, project);
        payload.extend_from_slice(&last.to_le_bytes());
    });
}

fn put_change(out: &mut Vec<u8>, version: u64, mutation: &Mutation) {
    out.extend_from_slice(&version.to_le_bytes());
    match mutation {
        Mutation::Set {
            key,
            value,
            expires_at,
        } => {
            out.push(CHANGE_SET);
            put_bytes(out, key.as_bytes());
            out.extend_from_slice(&Deadline::ms_or_zero(*expires_at).to_le_bytes());
            put_bytes(out, value);
        }
        Mutation::Delete { key } => {
            out.push(CHANGE_DELETE);
            put_bytes(out, key.as_bytes());
        }
        Mutation::Clear => out.push(CHANGE_CLEAR),
        Mutation::Expire { key } => {
            out.push(CHANGE_EXPIRE);
            put_bytes(out, key.as_bytes());
        }
    }
}

/// Appends `outcome` in the log's encoding: how a remote backend
/// remembers the outcome of a request id.
///
/// ```
/// use kv_engine::{OpOutcome, TxnOutcome, wal::codec};
/// let outcome = TxnOutcome { applied: true, results: vec![OpOutcome::Set { version: 3 }], ..Default::default() };
/// let mut bytes = Vec::new();
/// codec::encode_outcome(&mut bytes, &outcome);
/// assert_eq!(codec::decode_outcome(&bytes).unwrap(), outcome);
/// ```
pub fn encode_outcome(out: &mut Vec<u8>, outcome: &TxnOutcome) {
    put_outcome(out, outcome);
}

/// Reads back what [`encode_outcome`] wrote.
///
/// # Errors
///
/// [`DecodeError`] naming what is wrong.
pub fn decode_outcome(bytes: &[u8]) -> Result<TxnOutcome, DecodeError> {
    let mut no_project = None;
    let mut cursor = Cursor(bytes, &mut no_project);
    let outcome = cursor.outcome()?;
    if !cursor.0.is_empty() {
        return Err(DecodeError::Trailing(cursor.0.len()));
    }
    Ok(outcome)
}

fn put_outcome(out: &mut Vec<u8>, outcome: &TxnOutcome) {
    out.push(u8::from(outcome.applied));
    out.extend_from_slice(&outcome.failed_check.unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&outcome.current_version.to_le_bytes());
    let count = u32::try_from(outcome.results.len()).expect("transactions are bounded");
    out.extend_from_slice(&count.to_le_bytes());
    for result in &outcome.results {
        match result {
            OpOutcome::Set { version } => {
                out.push(RESULT_SET);
                out.extend_from_slice(&version.to_le_bytes());
            }
            OpOutcome::Delete { deleted, version } => {
                out.push(RESULT_DELETE);
                out.push(u8::from(*deleted));
                out.extend_from_slice(&version.to_le_bytes());
            }
            OpOutcome::Incr { value, version } => {
                out.push(RESULT_INCR);
                out.extend_from_slice(&value.to_bits().to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
            }
            OpOutcome::Merge { value, version } => {
                out.push(RESULT_MERGE);
                out.extend_from_slice(&version.to_le_bytes());
                put_bytes(out, value);
            }
            OpOutcome::Clear { removed, version } => {
                out.push(RESULT_CLEAR);
                out.extend_from_slice(&removed.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
            }
        }
    }
}

/// Appends one framed record for a catalog change.
pub(crate) fn encode_catalog(out: &mut Vec<u8>, change: &CatalogChange) {
    frame(out, |payload| match change {
        CatalogChange::PutProject { project, quota } => {
            payload.push(PUT_PROJECT);
            put_project(payload, project);
            let has = u8::from(quota.max_keys.is_some())
                | (u8::from(quota.max_bytes.is_some()) << 1)
                | (u8::from(quota.ops_per_second.is_some()) << 2)
                | (u8::from(quota.write_bytes_per_second.is_some()) << 3);
            payload.push(has);
            payload.extend_from_slice(&quota.max_keys.unwrap_or(0).to_le_bytes());
            payload.extend_from_slice(&quota.max_bytes.unwrap_or(0).to_le_bytes());
            if has & RATE_BITS != 0 {
                payload.extend_from_slice(&quota.ops_per_second.unwrap_or(0).to_le_bytes());
                let bytes = quota.write_bytes_per_second.unwrap_or(0);
                payload.extend_from_slice(&bytes.to_le_bytes());
            }
        }
        CatalogChange::DeleteProject { project } => {
            payload.push(DELETE_PROJECT);
            put_project(payload, project);
        }
        CatalogChange::PutToken(token) => token::encode(payload, token),
        CatalogChange::RevokeToken { id } => {
            payload.push(REVOKE_TOKEN);
            put_bytes(payload, id.as_bytes());
        }
    });
}

/// Appends the framed End record of a snapshot.
pub(crate) fn encode_end(out: &mut Vec<u8>, count: u64) {
    frame(out, |payload| {
        payload.push(END);
        payload.extend_from_slice(&count.to_le_bytes());
    });
}

fn put_project(out: &mut Vec<u8>, project: &ProjectName) {
    // Project names are at most 64 ASCII bytes.
    out.push(project.as_str().len() as u8);
    out.extend_from_slice(project.as_str().as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("keys and values are bounded");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes one payload. Every length is checked against what is left, so
/// arbitrary bytes can neither panic nor allocate more than the payload.
///
/// # Errors
///
/// [`DecodeError`] naming what is wrong.
pub fn decode_payload(payload: &[u8]) -> Result<Record, DecodeError> {
    decode_payload_cached(payload, &mut None)
}

/// [`decode_payload`] reusing `last_project` when the record names the same
/// project (the common case in a replay), instead of allocating its name
/// again.
///
/// # Errors
///
/// As [`decode_payload`].
pub fn decode_payload_cached(
    payload: &[u8],
    last_project: &mut Option<ProjectName>,
) -> Result<Record, DecodeError> {
    let mut r = Cursor(payload, last_project);
    let kind = r.u8()?;
    let record = match kind {
        SET => {
            let project = r.project()?;
            let key = r.key()?;
            let expires_at = r.u64()?;
            let value = r.bytes()?.into();
            Record::Mutation {
                project,
                mutation: Mutation::Set {
                    key,
                    value,
                    expires_at: Deadline::at(expires_at),
                },
            }
        }
        DELETE => Record::Mutation {
            project: r.project()?,
            mutation: Mutation::Delete { key: r.key()? },
        },
        CLEAR => Record::Mutation {
            project: r.project()?,
            mutation: Mutation::Clear,
        },
        END => Record::End { count: r.u64()? },
        PUT_PROJECT => {
            let project = r.project()?;
            let has = r.u8()?;
            let (max_keys, max_bytes) = (r.u64()?, r.u64()?);
            // Records from before rate limits end here (has <= 3).
            let (ops, write_bytes) = if has & RATE_BITS != 0 {
                (r.u64()?, r.u64()?)
            } else {
                (0, 0)
            };
            Record::Catalog(CatalogChange::PutProject {
                project,
                quota: Quota {
                    max_keys: (has & 1 != 0).then_some(max_keys),
                    max_bytes: (has & 2 != 0).then_some(max_bytes),
                    ops_per_second: (has & 4 != 0).then_some(ops),
                    write_bytes_per_second: (has & 8 != 0).then_some(write_bytes),
                },
            })
        }
        DELETE_PROJECT => Record::Catalog(CatalogChange::DeleteProject {
            project: r.project()?,
        }),
        PUT_TOKEN => Record::Catalog(CatalogChange::PutToken(token::decode(&mut r)?)),
        REVOKE_TOKEN => Record::Catalog(CatalogChange::RevokeToken { id: r.text()? }),
        TXN => {
            let project = r.project()?;
            let at = r.u64()?;
            let count = r.u32()? as usize;
            // Each change takes at least 9 bytes: a bogus count cannot make
            // the vector allocate beyond the payload.
            let mut mutations = Vec::with_capacity(count.min(r.0.len() / 9));
            for _ in 0..count {
                let version = r.u64()?;
                let mutation = match r.u8()? {
                    CHANGE_SET => {
                        let key = r.key()?;
                        let expires_at = r.u64()?;
                        let value = r.bytes()?.into();
                        Mutation::Set {
                            key,
                            value,
                            expires_at: Deadline::at(expires_at),
                        }
                    }
                    CHANGE_DELETE => Mutation::Delete { key: r.key()? },
                    CHANGE_CLEAR => Mutation::Clear,
                    CHANGE_EXPIRE => Mutation::Expire { key: r.key()? },
                    other => return Err(DecodeError::ChangeTag(other)),
                };
                mutations.push(Versioned { version, mutation });
            }
            let request = match r.u8()? {
                0 => None,
                1 => {
                    let id = r.text()?.into_boxed_str();
                    let fingerprint = r.u64()?;
                    Some((id, fingerprint, r.outcome()?))
                }
                other => return Err(DecodeError::RequestFlag(other)),
            };
            Record::Txn {
                project,
                at,
                mutations,
                request,
            }
        }
        VERSION => Record::Version {
            project: r.project()?,
            version: r.u64()?,
        },
        INCARNATION => Record::Incarnation {
            project: r.project()?,
            base: r.u64()?,
        },
        RETIRED => Record::Retired {
            project: r.project()?,
            last: r.u64()?,
        },
        history::HISTORY => history::decode_history(&mut r)?,
        history::HISTORY_EVENT => history::decode_history_event(&mut r)?,
        other => return Err(DecodeError::Kind(other)),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(record)
}

struct Cursor<'a, 'c>(&'a [u8], &'c mut Option<ProjectName>);

impl<'a> Cursor<'a, '_> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::PastEnd {
                len: n,
                left: self.0.len(),
            });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn project(&mut self) -> Result<ProjectName, DecodeError> {
        let len = self.u8()? as usize;
        if len > MAX_PROJECT_NAME_LEN {
            return Err(DecodeError::ProjectTooLong(len));
        }
        let raw = self.take(len)?;
        if let Some(last) = self.1.as_ref().filter(|p| p.as_str().as_bytes() == raw) {
            return Ok(last.clone());
        }
        let name = std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8("project name"))?;
        let project = ProjectName::parse(name)?;
        *self.1 = Some(project.clone());
        Ok(project)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8("text field"))
    }

    fn outcome(&mut self) -> Result<TxnOutcome, DecodeError> {
        let applied = self.u8()? != 0;
        let failed_check = Some(self.u32()?).filter(|&i| i != u32::MAX);
        let current_version = self.u64()?;
        let count = self.u32()? as usize;
        let mut results = Vec::with_capacity(count.min(self.0.len() / 9));
        for _ in 0..count {
            results.push(match self.u8()? {
                RESULT_SET => OpOutcome::Set {
                    version: self.u64()?,
                },
                RESULT_DELETE => OpOutcome::Delete {
                    deleted: self.u8()? != 0,
                    version: self.u64()?,
                },
                RESULT_INCR => OpOutcome::Incr {
                    value: f64::from_bits(self.u64()?),
                    version: self.u64()?,
                },
                RESULT_MERGE => {
                    let version = self.u64()?;
                    OpOutcome::Merge {
                        value: bytes::Bytes::copy_from_slice(self.bytes()?),
                        version,
                    }
                }
                RESULT_CLEAR => OpOutcome::Clear {
                    removed: self.u64()?,
                    version: self.u64()?,
                },
                other => return Err(DecodeError::ResultTag(other)),
            });
        }
        Ok(TxnOutcome {
            applied,
            failed_check,
            current_version,
            results,
        })
    }

    fn key(&mut self) -> Result<std::sync::Arc<str>, DecodeError> {
        let raw = self.bytes()?;
        if raw.is_empty() {
            return Err(DecodeError::EmptyKey);
        }
        std::str::from_utf8(raw)
            .map(Into::into)
            .map_err(|_| DecodeError::NotUtf8("key"))
    }
}

mod history;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod quota_tests;

mod token;

#[cfg(test)]
mod token_tests;
