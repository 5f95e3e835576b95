//! Exit codes and the one error type every command returns.

use kv_client::Code;

/// Success.
pub(crate) const OK: u8 = 0;
/// A key or project not found, `has` false, a condition that did not hold.
pub(crate) const NO: u8 = 1;
/// Bad command line (clap exits with 2 as well).
pub(crate) const USAGE: u8 = 2;
/// The server could not be reached, or a call ran out of time.
pub(crate) const UNAVAILABLE: u8 = 3;
/// The token is missing, wrong, revoked or not allowed to do this.
pub(crate) const AUTH: u8 = 4;
/// The server refused the request (invalid argument, quota, precondition).
pub(crate) const REFUSED: u8 = 5;
/// The user declined a prompt, or an import was stopped before its end.
pub(crate) const ABORTED: u8 = 6;
/// A local file or input line could not be read or understood.
pub(crate) const INPUT: u8 = 7;
/// Any other server error (internal, protocol).
pub(crate) const SERVER: u8 = 8;

/// Why a command failed: the message for stderr and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    pub(crate) fn input(message: impl Into<String>) -> Self {
        Self::new(INPUT, message)
    }
}

/// The exit code a gRPC code maps to.
pub(crate) fn code_for(code: Code) -> u8 {
    match code {
        Code::Ok => OK,
        Code::NotFound => NO,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => UNAVAILABLE,
        Code::Unauthenticated | Code::PermissionDenied => AUTH,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Aborted => REFUSED,
        _ => SERVER,
    }
}

impl From<kv_client::Error> for Failure {
    fn from(e: kv_client::Error) -> Self {
        // The server's own words, not the SDK's wrapper around them.
        let message = match &e {
            kv_client::Error::Status(status) => {
                format!("{:?}: {}", status.code(), status.message())
            }
            other => other.to_string(),
        };
        let code = match &e {
            // A connection the transport lost under the call (a TLS peer
            // refusing our certificate after the handshake, a reset) is
            // reported as UNKNOWN; it is the network, not the server.
            kv_client::Error::Status(status)
                if status.code() == Code::Unknown
                    && status.message().contains("transport error") =>
            {
                UNAVAILABLE
            }
            _ => code_for(e.code()),
        };
        Self::new(code, message)
    }
}
