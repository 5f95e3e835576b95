//! Validation: wire requests into engine operations, refused with
//! [`RequestError`] (INVALID_ARGUMENT or RESOURCE_EXHAUSTED, naming the
//! field and the limit) before anything reaches the engine.

use kv_engine::{
    Check, Op, RequestId, Ttl, Txn, jsonops,
    value::{self, ValueError},
};
use kv_proto::wire;
use prost::Message;
use sha2::Digest;
use tonic::Status;

use super::{KvService, Scope};
use crate::{config::MAX_REQUEST_ID_BYTES, metadata::ProjectError};

/// A request the service refuses before it reaches the engine.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request's project name cannot be used.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The key is empty.
    #[error("key is empty; keys must be 1 to {max} bytes")]
    EmptyKey {
        /// The key limit.
        max: usize,
    },
    /// The key is over the limit.
    #[error("key is {len} bytes; the limit is {max} bytes")]
    KeyTooLong {
        /// Size of the refused key.
        len: usize,
        /// The key limit.
        max: usize,
    },
    /// The value was refused.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// `ttl_ms` is 0.
    #[error("ttl_ms is 0; it must be 1 to {max} ms (omit it for no expiry)")]
    TtlZero {
        /// The TTL limit.
        max: u64,
    },
    /// `ttl_ms` is over the limit.
    #[error("ttl_ms is {ttl_ms}; the limit is {max} ms")]
    TtlTooLong {
        /// The refused TTL.
        ttl_ms: u64,
        /// The TTL limit.
        max: u64,
    },
    /// Two fields that exclude each other were both given.
    #[error("{0}")]
    Conflict(&'static str),
    /// `if_version` or a version check is 0.
    #[error("{field} is 0; versions start at 1 (use if_absent / absent for a missing key)")]
    VersionZero {
        /// The field.
        field: &'static str,
    },
    /// An increment's delta is not a finite number within ±2^53.
    #[error("delta is {delta}; it must be a finite number within ±2^53 (9007199254740992)")]
    BadDelta {
        /// The refused delta.
        delta: f64,
    },
    /// A multi-key call has too many (or no) items.
    #[error("{what} has {count} items; it must have 1 to {max}")]
    Count {
        /// Which list.
        what: &'static str,
        /// How many it had.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A batch op without its kind.
    #[error("ops[{index}] has none of set, delete, incr or merge")]
    EmptyOp {
        /// Its index.
        index: usize,
    },
    /// A check without its condition.
    #[error("checks[{index}] has neither version nor absent")]
    EmptyCheck {
        /// Its index.
        index: usize,
    },
    /// A List limit over the maximum.
    #[error("limit is {limit}; the maximum is {max} (0 means {default})")]
    ListLimit {
        /// The refused limit.
        limit: u32,
        /// The maximum.
        max: usize,
        /// The default.
        default: usize,
    },
    /// The request id is too long.
    #[error("request_id is {len} bytes; the limit is {max} bytes")]
    RequestIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field of a multi-key request was refused; names where.
    #[error("{at}: {source}")]
    At {
        /// Where, like `ops[3].set.value`.
        at: String,
        /// What.
        #[source]
        source: Box<RequestError>,
    },
    /// A response would be larger than the message limit.
    #[error(
        "the response would be over {limit} bytes (the message limit); ask for fewer or smaller keys"
    )]
    ResponseTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl RequestError {
    pub(super) fn at(self, at: impl Into<String>) -> Self {
        Self::At {
            at: at.into(),
            source: Box::new(self),
        }
    }

    fn is_resource(&self) -> bool {
        match self {
            Self::KeyTooLong { .. }
            | Self::Value(ValueError::TooLarge { .. })
            | Self::RequestIdTooLong { .. }
            | Self::ResponseTooLarge { .. } => true,
            // Too many is a limit; none at all is a malformed request.
            Self::Count { count, .. } => *count > 0,
            Self::At { source, .. } => source.is_resource(),
            _ => false,
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        // Over a size or count limit: RESOURCE_EXHAUSTED; anything else
        // malformed: INVALID_ARGUMENT.
        if e.is_resource() {
            Status::resource_exhausted(e.to_string())
        } else {
            Status::invalid_argument(e.to_string())
        }
    }
}

impl<B> KvService<B> {
    pub(super) fn key<'k>(&self, key: &'k str) -> Result<&'k str, RequestError> {
        let max = self.limits.max_key_bytes;
        match key.len() {
            0 => Err(RequestError::EmptyKey { max }),
            len if len > max => Err(RequestError::KeyTooLong { len, max }),
            _ => Ok(key),
        }
    }

    pub(super) fn ttl(&self, ttl_ms: Option<u64>) -> Result<Option<u64>, RequestError> {
        let max = self.limits.max_ttl_ms;
        match ttl_ms {
            Some(0) => Err(RequestError::TtlZero { max }),
            Some(ttl_ms) if ttl_ms > max => Err(RequestError::TtlTooLong { ttl_ms, max }),
            ttl => Ok(ttl),
        }
    }

    pub(super) fn value(&self, encoded: &[u8]) -> Result<Box<[u8]>, RequestError> {
        Ok(value::canonicalize(encoded, self.limits.max_value_bytes)?)
    }

    pub(super) fn count(&self, what: &'static str, count: usize) -> Result<(), RequestError> {
        let max = self.limits.max_batch_ops;
        if count == 0 || count > max {
            return Err(RequestError::Count { what, count, max });
        }
        Ok(())
    }

    pub(super) fn set_op(&self, op: &wire::SetOp) -> Result<Op, RequestError> {
        let key = self.key(&op.key)?;
        let value = self.value(&op.value).map_err(|e| e.at("value"))?;
        let ttl = match (self.ttl(op.ttl_ms)?, op.keep_ttl) {
            (Some(_), true) => {
                return Err(RequestError::Conflict(
                    "ttl_ms and keep_ttl exclude each other: give one or neither",
                ));
            }
            (Some(ms), false) => Ttl::After(ms),
            (None, true) => Ttl::Keep,
            (None, false) => Ttl::Never,
        };
        Ok(Op::Set {
            key: key.into(),
            value,
            ttl,
        })
    }

    pub(super) fn incr_op(
        &self,
        key: &str,
        delta: f64,
        ttl_ms: Option<u64>,
    ) -> Result<Op, RequestError> {
        let key = self.key(key)?;
        if !delta.is_finite() || delta.abs() > jsonops::MAX_EXACT {
            return Err(RequestError::BadDelta { delta });
        }
        Ok(Op::Incr {
            key: key.into(),
            delta,
            ttl_ms: self.ttl(ttl_ms)?,
        })
    }

    pub(super) fn merge_op(
        &self,
        key: &str,
        patch: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Op, RequestError> {
        let key = self.key(key)?;
        let patch = self.value(patch).map_err(|e| e.at("patch"))?;
        Ok(Op::Merge {
            key: key.into(),
            patch,
            ttl_ms: self.ttl(ttl_ms)?,
        })
    }

    /// The request id of a mutating call, bound to a digest of the request
    /// (without the id) so the same id with another request is caught.
    pub(super) fn request_id<M: Message + Clone>(
        method: &str,
        id: &str,
        request: &M,
        clear_id: impl FnOnce(&mut M),
    ) -> Result<Option<RequestId>, RequestError> {
        if id.is_empty() {
            return Ok(None);
        }
        if id.len() > MAX_REQUEST_ID_BYTES {
            return Err(RequestError::RequestIdTooLong {
                len: id.len(),
                max: MAX_REQUEST_ID_BYTES,
            });
        }
        let mut bare = request.clone();
        clear_id(&mut bare);
        let mut digest = sha2::Sha256::new();
        digest.update(method.as_bytes());
        digest.update([0]);
        digest.update(bare.encode_to_vec());
        let digest = digest.finalize();
        let fingerprint = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        Ok(Some(RequestId {
            id: id.into(),
            fingerprint,
        }))
    }

    pub(super) fn txn(
        &self,
        scope: &Scope,
        checks: Vec<Check>,
        ops: Vec<Op>,
        request: Option<RequestId>,
    ) -> Txn {
        Txn {
            checks,
            ops,
            request,
            max_value_bytes: self.limits.max_value_bytes,
            incarnation: Some(scope.incarnation),
        }
    }
}
