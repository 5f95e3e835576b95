//! gRPC statuses for the engine's errors: each error type is matched
//! exhaustively in one place, so a new variant does not compile until it
//! has a code and a message.

use kv_engine::{EngineError, WatchError};
use tonic::Status;

/// The status of a refused or failed engine call. One exhaustive match:
/// a new [`EngineError`] variant does not compile until it has a code.
pub fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Storage { .. } => {
            tracing::warn!(error = %e, "write failed in storage");
            Status::unavailable(e.to_string())
        }
        EngineError::WritesStopped { .. } => {
            tracing::warn!(error = %e, "write refused: the log is not writable");
            Status::unavailable(e.to_string())
        }
        EngineError::Unreachable { .. } | EngineError::OutcomeUnknown { .. } => {
            tracing::warn!(error = %e, "storage call failed");
            Status::unavailable(e.to_string())
        }
        EngineError::Contended { .. } => Status::aborted(e.to_string()),
        EngineError::DeadlineOverflow { .. } => Status::invalid_argument(e.to_string()),
        EngineError::QuotaExceeded(_) => {
            crate::metrics::metrics().quota_refused();
            Status::resource_exhausted(e.to_string())
        }
        EngineError::MergedTooLarge { .. }
        | EngineError::Overloaded { .. }
        | EngineError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
        EngineError::NotANumber { .. }
        | EngineError::NumberOutOfRange { .. }
        | EngineError::RequestIdReused { .. } => Status::failed_precondition(e.to_string()),
        EngineError::Internal(_) => {
            tracing::error!(error = %e, "internal error");
            Status::internal(e.to_string())
        }
        // Its message names the key: the caller gets it, the log does not.
        EngineError::Unmergeable { .. } => {
            tracing::error!("internal error: a stored value could not be merged");
            Status::internal(e.to_string())
        }
        EngineError::ProjectGone { .. }
        | EngineError::ProjectNotFound { .. }
        | EngineError::TokenNotFound { .. } => Status::not_found(e.to_string()),
        EngineError::ProjectExists { .. } => Status::already_exists(e.to_string()),
    }
}

/// The status of a watch that cannot start.
pub fn watch_status(e: WatchError) -> Status {
    match e {
        WatchError::TooOld { .. } => Status::out_of_range(e.to_string()),
        WatchError::Ahead { .. } => Status::invalid_argument(e.to_string()),
        WatchError::Recreated { .. } | WatchError::OtherIncarnation { .. } => {
            Status::failed_precondition(e.to_string())
        }
        WatchError::Unavailable { .. } => Status::unavailable(e.to_string()),
    }
}
