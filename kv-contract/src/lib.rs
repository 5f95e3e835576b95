//! The rules of the `kv.v1` contract that the server, the storage engine
//! and every SDK share: metadata names, the project-name rule, and the
//! limits a client can check before sending. Defined once here, so they
//! cannot drift apart; `kv-proto` re-exports this crate as
//! `kv_proto::contract` for clients.
//!
//! A leaf with no dependencies on gRPC or storage, so the engine can use it
//! without seeing either.
//!
//! ```
//! use kv_contract::{PROJECT_HEADER, check_project_name};
//! assert_eq!(PROJECT_HEADER, "x-kv-project");
//! assert!(check_project_name("shop-eu.1").is_ok());
//! assert!(check_project_name("no/slashes").is_err());
//! ```

/// Request metadata naming the project of a call (open mode, or the admin
/// token).
pub const PROJECT_HEADER: &str = "x-kv-project";

/// Response metadata of `Pipeline`: the server runs each call on the
/// project its frame or call names. A client must not send calls of
/// several projects on a stream whose headers lack it.
pub const CALL_PROJECTS_HEADER: &str = "x-kv-call-projects";

/// Response metadata of `Pipeline`: the stream takes GetMany, SetMany and
/// DeleteMany calls too. A client must send those as unary calls on a
/// stream whose headers lack it (an older server answers them
/// `INVALID_ARGUMENT`).
pub const MANY_CALLS_HEADER: &str = "x-kv-many-calls";

/// Status metadata (a trailer, for a refused call) of a call refused by a
/// rate limit (`RESOURCE_EXHAUSTED`): the whole milliseconds until it may
/// be admitted. A pipelined call's error carries it as `retry_after_ms`.
pub const RETRY_AFTER_HEADER: &str = "retry-after-ms";

/// Response metadata of `Watch`: the version the watch delivers changes
/// after (its `from_version`, or the project's version when it started
/// "from now"). A client that loses the stream before any event resumes
/// from it.
pub const WATCH_START_HEADER: &str = "x-kv-watch-start";

/// Response metadata of `Watch`: the incarnation of the project watched,
/// to resume with.
pub const INCARNATION_HEADER: &str = "x-kv-incarnation";

/// Status metadata (a trailer) of a watch the server ended but that may be
/// opened again without a gap (the server is shutting down, or cut a
/// lagging watcher at its memory limit): the version to resume after.
/// Every change up to it that the watch follows has been sent before the
/// status.
pub const RESUME_FROM_HEADER: &str = "x-kv-resume-from";

/// The project of a call that names none.
pub const DEFAULT_PROJECT: &str = "default";

/// Longest project name, in characters.
pub const MAX_PROJECT_NAME_LEN: usize = 64;

/// Deepest nesting of arrays and objects a value may have (`[[1]]` is 2).
///
/// prost stops decoding at 100 nested messages: a prost client decodes a
/// response holding objects nested 33 deep or arrays nested 49 deep, and no
/// deeper (measured in the engine's value tests). 32 is one limit for both
/// shapes that every prost client (and other languages' default limits of
/// 100) can read.
pub const MAX_DEPTH: usize = 32;

/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Largest integer a JSON number (an IEEE-754 double) holds exactly: 2^53.
/// Increments stay within ±this.
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Why a project name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectNameError {
    /// The name is empty.
    #[error(
        "project name is empty; names are 1-{MAX_PROJECT_NAME_LEN} characters of [A-Za-z0-9_.-]"
    )]
    Empty,
    /// The name is longer than [`MAX_PROJECT_NAME_LEN`].
    #[error(
        "project name is {len} characters long; the limit is {MAX_PROJECT_NAME_LEN} characters of [A-Za-z0-9_.-]"
    )]
    TooLong {
        /// Length of the refused name in characters.
        len: usize,
    },
    /// The name has a character outside `[A-Za-z0-9_.-]`.
    #[error("project name contains {found:?}; names may only contain [A-Za-z0-9_.-]")]
    BadCharacter {
        /// The first offending character.
        found: char,
    },
}

/// Checks the project-name rule: 1 to 64 characters of `[A-Za-z0-9_.-]`.
/// The restricted alphabet keeps names safe in metadata, file names and log
/// lines without escaping.
///
/// ```
/// use kv_contract::{ProjectNameError, check_project_name};
/// assert_eq!(check_project_name(""), Err(ProjectNameError::Empty));
/// assert_eq!(check_project_name(&"a".repeat(65)), Err(ProjectNameError::TooLong { len: 65 }));
/// ```
///
/// # Errors
///
/// [`ProjectNameError`] naming what is wrong.
pub fn check_project_name(name: &str) -> Result<(), ProjectNameError> {
    if name.is_empty() {
        return Err(ProjectNameError::Empty);
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ProjectNameError::BadCharacter { found });
    }
    // Only ASCII is left, so bytes are characters.
    if name.len() > MAX_PROJECT_NAME_LEN {
        return Err(ProjectNameError::TooLong { len: name.len() });
    }
    Ok(())
}

/// The canonical names of the gRPC status codes, indexed by code: the
/// request log's `code` field and the metrics' `code` label.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
