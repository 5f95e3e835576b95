//! Requests the service refuses before they reach the engine.

use kv_engine::value::ValueError;
use tonic::Status;

use crate::metadata::ProjectError;

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
    /// The key is not UTF-8.
    #[error(
        "key is not UTF-8 (byte {at} starts an invalid sequence); keys are UTF-8 text of 1 to {max} bytes"
    )]
    KeyNotUtf8 {
        /// The offset of the first byte that is not UTF-8.
        at: usize,
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
