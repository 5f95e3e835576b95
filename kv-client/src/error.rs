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
    /// The call did not succeed within its deadline (the client's
    /// [`timeout`](crate::ClientBuilder::timeout)), retries included.
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = kv_client::Error::Timeout {
    ///     timeout: Duration::from_secs(5),
    ///     attempts: 4,
    ///     may_have_applied: true,
    ///     request_id: Some("r-1".into()),
    /// };
    /// assert_eq!(e.code(), kv_client::Code::DeadlineExceeded);
    /// assert!(e.to_string().starts_with("deadline of 5 s passed after 4 attempts; the outcome is unknown"));
    /// ```
    #[error(
        "{}",
        deadline_message(timeout, attempts, may_have_applied, request_id)
    )]
    Timeout {
        /// The deadline the call had.
        timeout: Duration,
        /// Attempts made (the one cut off by the deadline included).
        attempts: u32,
        /// A write that may have been applied: an attempt may have reached
        /// the server. False for reads, and when every attempt surely
        /// failed before it could apply.
        may_have_applied: bool,
        /// The write's request id: sending the write again with it is
        /// safe (it applies at most once).
        request_id: Option<String>,
    },
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
    /// Writing what the server sent to a local writer failed (a backup's
    /// file, say).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    /// The gRPC code of this error: the server's for [`Error::Status`];
    /// `UNAVAILABLE` for connection failures, `DEADLINE_EXCEEDED` for
    /// timeouts, `INVALID_ARGUMENT` for input refused by the SDK,
    /// `FAILED_PRECONDITION` when a stored value does not fit the requested
    /// type, `INTERNAL` for protocol errors, `UNKNOWN` when local output
    /// failed.
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
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::InvalidArgument(_) | Error::Encode(_) => Code::InvalidArgument,
            Error::Decode(_) => Code::FailedPrecondition,
            Error::Protocol(_) => Code::Internal,
            Error::Output(_) => Code::Unknown,
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
        retry_after(status)
    }
}

/// The status a pipelined call's error stands for, with its retry hint
/// as the unary call's trailer.
pub(crate) fn call_status(e: kv_proto::v1::CallError) -> tonic::Status {
    let mut status = tonic::Status::new(Code::from_i32(e.code), e.message);
    if let Some(ms) = e.retry_after_ms {
        status
            .metadata_mut()
            .insert(kv_proto::contract::RETRY_AFTER_HEADER, ms.into());
    }
    status
}

/// `5 s`, `1.5 s`, `300 ms`: a deadline as people write it.
fn human(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else if duration >= Duration::from_secs(1) {
        format!("{} s", duration.as_secs_f64())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// The message of [`Error::Timeout`].
pub(crate) fn deadline_message(
    timeout: &Duration,
    attempts: &u32,
    may_have_applied: &bool,
    request_id: &Option<String>,
) -> String {
    let tries = if *attempts == 1 {
        "attempt"
    } else {
        "attempts"
    };
    let outcome = match (may_have_applied, request_id) {
        (false, _) => "the outcome is known: nothing was applied".to_string(),
        (true, Some(id)) => format!(
            "the outcome is unknown: an attempt may have been applied (retrying with the same request id {id:?} is safe)"
        ),
        (true, None) => "the outcome is unknown: an attempt may have been applied (the call had no request id, so retrying it may apply it twice)".to_string(),
    };
    format!(
        "deadline of {} passed after {attempts} {tries}; {outcome}",
        human(*timeout)
    )
}

/// The `retry-after-ms` hint of a status, if it has a valid one.
pub(crate) fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let value = status
        .metadata()
        .get(kv_proto::contract::RETRY_AFTER_HEADER)?
        .to_str()
        .ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}
