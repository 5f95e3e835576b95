use std::time::Duration;

use tonic::Code;

/// Everything that can go wrong in a kv call. Each error carries a gRPC
/// [`Code`] (see [`Error::code`]), so callers can branch on one thing
/// whether the server or the SDK refused.
///
/// ```
/// use kv_client::{Code, Error};
/// let e = Error::InvalidArgument("key is empty".into());
/// assert_eq!(e.code(), Code::InvalidArgument);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status.
    #[error("kv server refused the call: {code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(#[from] tonic::Status),
    /// The SDK could not reach the server.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL given to the builder.
        url: String,
        /// What the transport said.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call did not finish within the configured timeout.
    #[error("kv call timed out after {0:?}")]
    Timeout(Duration),
    /// The SDK refused the input before sending it (bad project name, a
    /// number JSON cannot carry exactly, a TTL of zero...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The value could not be turned into JSON.
    #[error("cannot encode the value as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The stored JSON does not fit the type asked for.
    #[error("stored value does not match the requested type: {0}")]
    Decode(#[source] serde_json::Error),
    /// The server sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC code of this error: the server's for [`Error::Status`];
    /// `UNAVAILABLE` for connection failures, `DEADLINE_EXCEEDED` for
    /// timeouts, `INVALID_ARGUMENT` for input refused by the SDK,
    /// `FAILED_PRECONDITION` when a stored value does not fit the requested
    /// type, `INTERNAL` for protocol errors.
    ///
    /// ```
    /// use kv_client::{Code, Error};
    /// let e = Error::from(tonic::Status::not_found("x"));
    /// assert_eq!(e.code(), Code::NotFound);
    /// ```
    pub fn code(&self) -> Code {
        match self {
            Error::Status(status) => status.code(),
            Error::Connect { .. } => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::InvalidArgument(_) | Error::Encode(_) => Code::InvalidArgument,
            Error::Decode(_) => Code::FailedPrecondition,
            Error::Protocol(_) => Code::Internal,
        }
    }

    /// How long the server asked to wait before trying again: set when a
    /// call was refused by its project's rate limit (`RESOURCE_EXHAUSTED`
    /// with the `retry-after-ms` trailer, or its pipelined equivalent).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut status = tonic::Status::resource_exhausted("over the limit");
    /// status.metadata_mut().insert("retry-after-ms", 340.into());
    /// let e = kv_client::Error::from(status);
    /// assert_eq!(e.retry_after(), Some(Duration::from_millis(340)));
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        let Error::Status(status) = self else {
            return None;
        };
        let ms = status.metadata().get(RETRY_AFTER_HEADER)?.to_str().ok()?;
        ms.parse().ok().map(Duration::from_millis)
    }
}

/// The trailer of a call refused by a rate limit: ms until it may pass.
pub(crate) const RETRY_AFTER_HEADER: &str = "retry-after-ms";

/// The status a pipelined call's error stands for, with its retry hint
/// as the unary call's trailer.
pub(crate) fn call_status(e: kv_proto::v1::CallError) -> tonic::Status {
    let mut status = tonic::Status::new(Code::from_i32(e.code), e.message);
    if let Some(ms) = e.retry_after_ms {
        status.metadata_mut().insert(RETRY_AFTER_HEADER, ms.into());
    }
    status
}
