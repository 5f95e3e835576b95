//! Retries: the policy, which failures are worth another attempt, and the
//! loop that makes them within the call's deadline.
//!
//! A failure is retried when another attempt can succeed where this one
//! failed: the connection failed or was refused, the server said
//! `UNAVAILABLE` (or refused the HTTP/2 stream), the `Pipeline` stream
//! broke under the call, or (when asked) a rate limit said when to come
//! back. Whether it is *safe* is a second question: a read always is; a
//! write is when it carries a request id (the server answers a retry with
//! the first outcome) or when the attempt surely never reached the server.

use std::time::Duration;

use tonic::{Code, Status};

use crate::{Error, error::retry_after};

pub use kv_proto::contract::RETRY_AFTER_HEADER;

/// How calls are retried: how many attempts at most, and how long to wait
/// between them (exponential backoff with full jitter: before attempt
/// `n + 1` the SDK sleeps a random time between zero and
/// `min(max_backoff, initial_backoff × multiplier^(n-1))`).
///
/// Every attempt stays within the call's deadline
/// ([`ClientBuilder::timeout`](crate::ClientBuilder::timeout)); a call whose
/// deadline passes fails with `DEADLINE_EXCEEDED` ([`Error::Timeout`]),
/// saying how many attempts were made and whether one may have been
/// applied.
///
/// ```
/// use std::time::Duration;
/// use kv_client::RetryPolicy;
///
/// let patient = RetryPolicy::default()
///     .max_attempts(20)
///     .initial_backoff(Duration::from_millis(50))
///     .max_backoff(Duration::from_secs(1))
///     .multiplier(2.0);
/// assert_eq!(patient.attempts(), 20);
/// assert_eq!(RetryPolicy::none().attempts(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
}

impl Default for RetryPolicy {
    /// Up to 10 attempts, backing off from up to 20 ms to at most 1 s,
    /// doubling: enough to ride through a server restart of a second or
    /// two within the default 10 s deadline.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// One attempt, never retried.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Attempts at most, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The upper bound of the first backoff.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The largest upper bound any backoff reaches.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// How much the bound grows after each attempt (at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// The most attempts a call makes.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The random wait after attempt `attempt` (1-based) failed.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let grown = self.initial_backoff.as_secs_f64()
            * self
                .multiplier
                .powi(attempt.saturating_sub(1).min(64) as i32);
        let bound = grown.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(bound * fastrand::f64())
    }
}

/// How safe a call is to send again after it may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Safety {
    /// Changes nothing.
    Read,
    /// A write with a request id: a retry gets the first outcome.
    Idempotent,
    /// A write without a request id: sent twice, it may apply twice.
    Unsafe,
}

/// Why an attempt failed, as far as retrying goes.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// Another attempt may succeed.
    pub(crate) retryable: bool,
    /// The attempt may have reached the server (and, for a write, applied).
    pub(crate) maybe_sent: bool,
    /// The endpoint looks down: move to the next one.
    pub(crate) failover: bool,
    /// The server asked to wait this long before trying again.
    pub(crate) retry_after: Option<Duration>,
    /// Attempts this failure stands for: more than one when the
    /// auto-batching stream replayed the call after breaks.
    pub(crate) attempts: u32,
    /// The call's deadline passed while it waited for a replay.
    pub(crate) deadline: bool,
}

impl Failure {
    /// A failure that no retry can fix (bad input, a refusal...).
    pub(crate) fn fatal(error: Error) -> Self {
        Failure {
            error,
            retryable: false,
            maybe_sent: false,
            failover: false,
            retry_after: None,
            attempts: 1,
            deadline: false,
        }
    }

    /// A unary call's status: the server's answer, or a transport failure.
    pub(crate) fn from_status(status: Status) -> Self {
        // tonic keeps the transport error as the source of the statuses it
        // makes itself; a status decoded from the server's trailers has none.
        let transport = std::error::Error::source(&status).is_some();
        let code = status.code();
        let not_sent = transport && surely_not_sent(&status);
        let retry_after = (code == Code::ResourceExhausted)
            .then(|| retry_after(&status))
            .flatten();
        Failure {
            retryable: transport || code == Code::Unavailable,
            // A rate limit refuses the call before it runs.
            maybe_sent: !not_sent && (transport || code != Code::ResourceExhausted),
            failover: transport || code == Code::Unavailable,
            retry_after,
            attempts: 1,
            deadline: false,
            error: Error::Status(status),
        }
    }
}

/// Whether the transport error behind `status` shows the request never
/// reached the server: the connection was refused, or the server refused
/// the HTTP/2 stream before processing it (`REFUSED_STREAM`).
fn surely_not_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_with_jitter() {
        let policy = RetryPolicy::default()
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(100))
            .multiplier(3.0);
        for _ in 0..200 {
            assert!(policy.backoff(1) <= Duration::from_millis(10));
            assert!(policy.backoff(2) <= Duration::from_millis(30));
            assert!(policy.backoff(50) <= Duration::from_millis(100));
        }
        let waits: Vec<_> = (0..50).map(|_| policy.backoff(3)).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "no jitter: {waits:?}");
        assert_eq!(RetryPolicy::none().attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
    }

    #[test]
    fn deadline_messages_say_attempts_and_outcome() {
        let unknown = Error::Timeout {
            timeout: Duration::from_secs(5),
            attempts: 4,
            may_have_applied: true,
            request_id: Some("r-1".into()),
        }
        .to_string();
        assert_eq!(
            unknown,
            "deadline of 5 s passed after 4 attempts; the outcome is unknown: an attempt may have been applied (retrying with the same request id \"r-1\" is safe)"
        );
        let known = Error::Timeout {
            timeout: Duration::from_millis(300),
            attempts: 1,
            may_have_applied: false,
            request_id: None,
        }
        .to_string();
        assert_eq!(
            known,
            "deadline of 300 ms passed after 1 attempt; the outcome is known: nothing was applied"
        );
    }

    #[test]
    fn server_statuses_and_hints_are_told_apart() {
        let refused = Failure::from_status(Status::invalid_argument("bad key"));
        assert!(!refused.retryable && !refused.failover);
        let down = Failure::from_status(Status::unavailable("disk full"));
        assert!(down.retryable && down.maybe_sent && down.failover);
        let mut limited = Status::resource_exhausted("over the rate limit");
        limited
            .metadata_mut()
            .insert(RETRY_AFTER_HEADER, "250".parse().unwrap());
        let limited = Failure::from_status(limited);
        assert!(!limited.retryable);
        assert_eq!(limited.retry_after, Some(Duration::from_millis(250)));
    }
}
