//! Reopening a [`Watch`](crate::Watch) whose stream ended in a way another
//! stream can pick up from: which ends qualify, and the attempts (with the
//! client's backoff and failover) that open the next stream.

use std::time::Duration;

use kv_proto::{
    contract::{INCARNATION_HEADER, PROJECT_HEADER, RESUME_FROM_HEADER, WATCH_START_HEADER},
    v1 as pb,
};
use tonic::{Code, Status, Streaming, metadata::MetadataMap};

use crate::{Error, Project, retry::Failure};

/// A watch stream the server accepted, with what its headers say.
pub(crate) struct Opened {
    pub(crate) stream: Streaming<pb::WatchEvent>,
    /// The version it delivers changes after (`None` from a server that
    /// does not say).
    pub(crate) start: Option<u64>,
    /// The incarnation it follows (`None` from a server that does not say).
    pub(crate) incarnation: Option<u64>,
}

fn number(metadata: &MetadataMap, name: &str) -> Option<u64> {
    metadata.get(name)?.to_str().ok()?.parse().ok()
}

impl Opened {
    pub(crate) fn new(response: tonic::Response<Streaming<pb::WatchEvent>>) -> Self {
        let (metadata, stream, _) = response.into_parts();
        Opened {
            stream,
            start: number(&metadata, WATCH_START_HEADER),
            incarnation: number(&metadata, INCARNATION_HEADER),
        }
    }
}

/// How a watch stream's error end may be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// For good: the error goes to the caller.
    Final,
    /// Another stream may carry on, after the version the server names
    /// (if it names one).
    Resumable { after: Option<u64> },
}

/// Whether a watch that ended with `status` can be opened again without a
/// gap: the connection broke (a transport error), the server said
/// `UNAVAILABLE` (it is shutting down, or its store is unreachable), or it
/// cut the watch naming the version to resume after (a lagging watcher at
/// the memory limit). Everything else is final: `OUT_OF_RANGE`,
/// `FAILED_PRECONDITION`, a revoked token, a deleted project, a watcher
/// the history left behind (`RESOURCE_EXHAUSTED` without a resume point:
/// its changes are gone).
pub(crate) fn classify(status: &Status) -> End {
    let after = number(status.metadata(), RESUME_FROM_HEADER);
    // tonic keeps the transport error as the source of the statuses it
    // makes itself; a status decoded from the server's trailers has none.
    let transport = std::error::Error::source(status).is_some();
    if transport || status.code() == Code::Unavailable || after.is_some() {
        End::Resumable { after }
    } else {
        End::Final
    }
}

/// Opens `request` again on `project`, after waiting `wait`: one attempt
/// after another, on the endpoint the client's failover picks, with the
/// client's backoff between them, each bounded by the client's per-call
/// timeout (until the server accepts the watch). Gives up after the retry
/// policy's number of attempts, or at once on an error no retry can fix.
///
/// A `RESOURCE_EXHAUSTED` is retried here too: the same request was
/// accepted before, so it is a limit that passes (the memory limit, a
/// rate limit: after its retry-after hint when it gives one).
pub(crate) async fn reopen(
    project: Project,
    request: pb::WatchRequest,
    wait: Duration,
) -> Result<Opened, Error> {
    tokio::time::sleep(wait).await;
    let header = project.header()?.clone();
    let client = &project.client;
    let policy = client.retry;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let (index, conn) = client.endpoints.pick();
        let mut attempt = client.request_without_deadline(request.clone());
        attempt
            .metadata_mut()
            .insert(PROJECT_HEADER, header.clone());
        let failure = match tokio::time::timeout(client.timeout, conn.kv().watch(attempt)).await {
            Ok(Ok(response)) => return Ok(Opened::new(response)),
            Ok(Err(status)) => Failure::from_status(status),
            Err(_) => {
                // An endpoint that does not answer within the timeout is
                // as good as down.
                let mut failure = Failure::fatal(Error::Timeout {
                    timeout: client.timeout,
                    attempts,
                    may_have_applied: false,
                    request_id: None,
                });
                failure.retryable = true;
                failure.failover = true;
                failure
            }
        };
        if failure.failover {
            client.endpoints.failed(index);
        }
        let busy = failure.error.code() == Code::ResourceExhausted;
        if !(failure.retryable || busy) || attempts >= policy.attempts() {
            return Err(failure.error);
        }
        let wait = failure
            .retry_after
            .unwrap_or_else(|| policy.backoff(attempts));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumable_ends_are_told_apart() {
        assert_eq!(
            classify(&Status::unavailable("the server is shutting down")),
            End::Resumable { after: None }
        );
        let mut cut = Status::resource_exhausted("at the memory limit");
        cut.metadata_mut()
            .insert(RESUME_FROM_HEADER, "41".parse().unwrap());
        assert_eq!(classify(&cut), End::Resumable { after: Some(41) });
        for status in [
            Status::resource_exhausted("watch fell behind"),
            Status::out_of_range("too old"),
            Status::failed_precondition("recreated"),
            Status::unauthenticated("revoked"),
            Status::not_found("deleted"),
            Status::permission_denied("read only"),
        ] {
            assert_eq!(classify(&status), End::Final, "{status:?}");
        }
    }
}
