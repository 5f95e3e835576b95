//! Options of the write calls, and request ids.

use std::time::Duration;

use kv_proto::v1 as pb;

use crate::Error;

pub use kv_proto::contract::MAX_REQUEST_ID_BYTES;

/// A fresh request id, unique to this call: 128 bits as 32 lowercase hex
/// digits, a random 64-bit prefix drawn once per process followed by a
/// 64-bit counter. Ids of one process never repeat; two processes share
/// ids only if they drew the same prefix (a chance of 2^-64 per pair).
/// Every write the SDK sends carries one unless told otherwise, so an id
/// costs a counter increment, not a call into the OS for randomness.
///
/// Give the same id to every retry of one write (see
/// [`SetOptions::request_id`]): the server applies the write once and
/// answers retries with the first outcome.
///
/// ```
/// let id = kv_client::new_request_id();
/// assert_eq!(id.len(), 32);
/// assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
/// assert_ne!(id, kv_client::new_request_id());
/// ```
pub fn new_request_id() -> String {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            fallback_random(&mut bytes);
        }
        u64::from_le_bytes(bytes)
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}{count:016x}")
}

/// Randomness when the OS source fails: `RandomState` keys are random per
/// process, mixed with the clock.
fn fallback_random(bytes: &mut [u8; 8]) {
    use std::{
        collections::hash_map::RandomState,
        hash::{BuildHasher, Hasher},
        time::{SystemTime, UNIX_EPOCH},
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    bytes.copy_from_slice(&hasher.finish().to_le_bytes());
}

/// The wire form of an optional request id, checked.
pub(crate) fn request_id(id: &Option<String>) -> Result<String, Error> {
    match id {
        None => Ok(String::new()),
        Some(id) if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES => {
            Err(Error::InvalidArgument(format!(
                "request id is {} bytes; request ids are 1 to {MAX_REQUEST_ID_BYTES} bytes",
                id.len()
            )))
        }
        Some(id) => Ok(id.clone()),
    }
}

/// A TTL in whole milliseconds (a fraction rounds up); zero is refused.
pub(crate) fn ttl_ms(ttl: Duration) -> Result<u64, Error> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument("ttl is zero".into()));
    }
    Ok(u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

pub(crate) fn optional_ttl_ms(ttl: Option<Duration>) -> Result<Option<u64>, Error> {
    ttl.map(ttl_ms).transpose()
}

/// An increment must be finite and within ±2^53, like every number the SDK
/// sends.
pub(crate) fn check_delta(delta: f64) -> Result<f64, Error> {
    if !delta.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "delta {delta} is not a finite number"
        )));
    }
    if delta.abs() > crate::MAX_SAFE_INTEGER as f64 {
        return Err(Error::InvalidArgument(format!(
            "delta {delta} is beyond ±2^53 ({}); JSON numbers are doubles",
            crate::MAX_SAFE_INTEGER
        )));
    }
    Ok(delta)
}

/// What happens to a key's deadline on a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The key never expires (an earlier TTL is removed).
    #[default]
    Never,
    /// The key expires this long from now.
    Ttl(Duration),
    /// The key keeps its current deadline (none when absent).
    Keep,
}

impl Expiry {
    /// `(ttl_ms, keep_ttl)` on the wire.
    pub(crate) fn wire(self) -> Result<(Option<u64>, bool), Error> {
        Ok(match self {
            Expiry::Never => (None, false),
            Expiry::Ttl(ttl) => (Some(ttl_ms(ttl)?), false),
            Expiry::Keep => (None, true),
        })
    }
}

/// The precondition of a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Condition {
    #[default]
    Always,
    Absent,
    Version(u64),
}

/// Options of [`Project::set_with`](crate::Project::set_with): expiry, a
/// condition (absent, or at a version: compare-and-swap) and a request id.
///
/// By default the write is unconditional and the key never expires (any
/// earlier TTL is removed). [`ttl`](Self::ttl) and [`keep_ttl`](Self::keep_ttl)
/// replace each other, as do [`if_absent`](Self::if_absent) and
/// [`if_version`](Self::if_version): the last one given wins.
///
/// ```
/// use std::time::Duration;
/// use kv_client::SetOptions;
///
/// let create_once = SetOptions::new().if_absent().ttl(Duration::from_secs(30));
/// let cas = SetOptions::new().if_version(7).keep_ttl();
/// let retry_safe = SetOptions::new().request_id(kv_client::new_request_id());
/// # let _ = (create_once, cas, retry_safe);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetOptions {
    expiry: Expiry,
    condition: Condition,
    request_id: Option<String>,
}

impl SetOptions {
    /// An unconditional write of a key that never expires.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key expires `ttl` from now (millisecond resolution, rounded up;
    /// zero is refused with [`Error::InvalidArgument`] when the call runs).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.expiry = Expiry::Ttl(ttl);
        self
    }

    /// The key keeps its current deadline (none if it is absent).
    pub fn keep_ttl(mut self) -> Self {
        self.expiry = Expiry::Keep;
        self
    }

    /// Writes only if the key is absent (or expired).
    pub fn if_absent(mut self) -> Self {
        self.condition = Condition::Absent;
        self
    }

    /// Writes only if the key exists at exactly `version`
    /// (compare-and-swap). Versions start at 1: the server refuses 0 with
    /// `INVALID_ARGUMENT`.
    pub fn if_version(mut self, version: u64) -> Self {
        self.condition = Condition::Version(version);
        self
    }

    /// Makes retries safe: the server applies a write with this id once and
    /// answers a retry with the first outcome (1 to
    /// [`MAX_REQUEST_ID_BYTES`] bytes; see [`new_request_id`]).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(
        &self,
        key: &str,
        value: prost_types::Value,
    ) -> Result<pb::SetRequest, Error> {
        let (ttl_ms, keep_ttl) = self.expiry.wire()?;
        let (if_absent, if_version) = match self.condition {
            Condition::Always => (false, None),
            Condition::Absent => (true, None),
            Condition::Version(version) => (false, Some(version)),
        };
        Ok(pb::SetRequest {
            key: key.into(),
            value: Some(value),
            ttl_ms,
            if_absent,
            if_version,
            keep_ttl,
            request_id: request_id(&self.request_id)?,
        })
    }
}

/// Options of [`Project::delete_with`](crate::Project::delete_with): a
/// version the key must be at, and a request id.
///
/// ```
/// let options = kv_client::DeleteOptions::new().if_version(12).request_id("del-cart-7");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    if_version: Option<u64>,
    request_id: Option<String>,
}

impl DeleteOptions {
    /// An unconditional delete.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes only if the key exists at exactly `version`.
    pub fn if_version(mut self, version: u64) -> Self {
        self.if_version = Some(version);
        self
    }

    /// Makes retries safe; see [`SetOptions::request_id`].
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(&self, key: &str) -> Result<pb::DeleteRequest, Error> {
        Ok(pb::DeleteRequest {
            key: key.into(),
            if_version: self.if_version,
            request_id: request_id(&self.request_id)?,
        })
    }
}

/// Options of [`Project::clear_with`](crate::Project::clear_with): a
/// request id.
///
/// ```
/// let options = kv_client::ClearOptions::new().request_id(kv_client::new_request_id());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearOptions {
    request_id: Option<String>,
}

impl ClearOptions {
    /// A clear without a request id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes retries safe; see [`SetOptions::request_id`].
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(&self) -> Result<pb::ClearRequest, Error> {
        Ok(pb::ClearRequest {
            request_id: request_id(&self.request_id)?,
        })
    }
}

/// Options of [`Project::incr_with`](crate::Project::incr_with): the TTL of
/// a key the increment creates, and a request id.
///
/// The TTL applies only when the key is created: an existing key keeps its
/// deadline, so the first increment starts a fixed window (a rate limiter).
///
/// ```
/// use std::time::Duration;
/// let per_minute = kv_client::IncrOptions::new().ttl(Duration::from_secs(60));
/// # let _ = per_minute;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncrOptions {
    ttl: Option<Duration>,
    request_id: Option<String>,
}

impl IncrOptions {
    /// No TTL, no request id.
    pub fn new() -> Self {
        Self::default()
    }

    /// A key this call creates expires `ttl` from now (zero is refused).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Makes retries safe; see [`SetOptions::request_id`]. An increment is
    /// not idempotent, so this is what makes retrying one safe.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(&self, key: &str, delta: f64) -> Result<pb::IncrRequest, Error> {
        Ok(pb::IncrRequest {
            key: key.into(),
            delta: check_delta(delta)?,
            ttl_ms: optional_ttl_ms(self.ttl)?,
            request_id: request_id(&self.request_id)?,
        })
    }
}

/// Options of [`Project::merge_with`](crate::Project::merge_with): a new
/// TTL, and a request id.
///
/// Without a TTL the key keeps its deadline (none when the merge creates
/// it); with one, the key expires that long from now.
///
/// ```
/// use std::time::Duration;
/// let options = kv_client::MergeOptions::new().ttl(Duration::from_secs(3600));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeOptions {
    ttl: Option<Duration>,
    request_id: Option<String>,
}

impl MergeOptions {
    /// Keep the deadline, no request id.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key expires `ttl` from now (zero is refused).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Makes retries safe; see [`SetOptions::request_id`].
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(
        &self,
        key: &str,
        patch: prost_types::Value,
    ) -> Result<pb::MergeRequest, Error> {
        Ok(pb::MergeRequest {
            key: key.into(),
            patch: Some(patch),
            ttl_ms: optional_ttl_ms(self.ttl)?,
            request_id: request_id(&self.request_id)?,
        })
    }
}

/// Options of [`Project::set_many_with`](crate::Project::set_many_with):
/// the expiry of every entry, and a request id.
///
/// By default the entries never expire; [`ttl`](Self::ttl) and
/// [`keep_ttl`](Self::keep_ttl) replace each other. (Different TTLs per key:
/// use a [`Batch`](crate::Batch).)
///
/// ```
/// use std::time::Duration;
/// let options = kv_client::SetManyOptions::new()
///     .ttl(Duration::from_secs(600))
///     .request_id(kv_client::new_request_id());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetManyOptions {
    expiry: Expiry,
    request_id: Option<String>,
}

impl SetManyOptions {
    /// Entries that never expire, no request id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry expires `ttl` from now (zero is refused).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.expiry = Expiry::Ttl(ttl);
        self
    }

    /// Every entry keeps its key's current deadline (none when absent).
    pub fn keep_ttl(mut self) -> Self {
        self.expiry = Expiry::Keep;
        self
    }

    /// Makes retries safe; see [`SetOptions::request_id`].
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(
        &self,
        entries: Vec<(String, prost_types::Value)>,
    ) -> Result<pb::SetManyRequest, Error> {
        let (ttl_ms, keep_ttl) = self.expiry.wire()?;
        Ok(pb::SetManyRequest {
            entries: entries
                .into_iter()
                .map(|(key, value)| pb::SetOp {
                    key,
                    value: Some(value),
                    ttl_ms,
                    keep_ttl,
                })
                .collect(),
            request_id: request_id(&self.request_id)?,
        })
    }
}

/// Options of [`Project::delete_many_with`](crate::Project::delete_many_with):
/// a request id.
///
/// ```
/// let options = kv_client::DeleteManyOptions::new().request_id("purge-42");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteManyOptions {
    request_id: Option<String>,
}

impl DeleteManyOptions {
    /// No request id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes retries safe; see [`SetOptions::request_id`].
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub(crate) fn to_request(&self, keys: Vec<String>) -> Result<pb::DeleteManyRequest, Error> {
        Ok(pb::DeleteManyRequest {
            keys,
            request_id: request_id(&self.request_id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;

    fn value() -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::BoolValue(true)),
        }
    }

    #[test]
    fn set_options_default_to_an_unconditional_write_without_expiry() {
        let request = SetOptions::new().to_request("k", value()).unwrap();
        assert_eq!(
            request,
            pb::SetRequest {
                key: "k".into(),
                value: Some(value()),
                ttl_ms: None,
                if_absent: false,
                if_version: None,
                keep_ttl: false,
                request_id: String::new(),
            }
        );
    }

    #[test]
    fn set_options_map_onto_the_request() {
        let request = SetOptions::new()
            .ttl(Duration::from_micros(1500))
            .if_absent()
            .request_id("r-1")
            .to_request("k", value())
            .unwrap();
        assert_eq!(request.ttl_ms, Some(2), "a fraction of a ms rounds up");
        assert!(request.if_absent);
        assert_eq!(request.if_version, None);
        assert!(!request.keep_ttl);
        assert_eq!(request.request_id, "r-1");

        let request = SetOptions::new()
            .if_version(9)
            .keep_ttl()
            .to_request("k", value())
            .unwrap();
        assert_eq!(request.if_version, Some(9));
        assert!(!request.if_absent);
        assert!(request.keep_ttl);
        assert_eq!(request.ttl_ms, None);
    }

    #[test]
    fn the_last_condition_and_expiry_win() {
        let request = SetOptions::new()
            .if_version(3)
            .if_absent()
            .keep_ttl()
            .ttl(Duration::from_secs(1))
            .to_request("k", value())
            .unwrap();
        assert!(request.if_absent);
        assert_eq!(request.if_version, None);
        assert!(!request.keep_ttl);
        assert_eq!(request.ttl_ms, Some(1000));

        let request = SetOptions::new()
            .if_absent()
            .if_version(3)
            .ttl(Duration::from_secs(1))
            .keep_ttl()
            .to_request("k", value())
            .unwrap();
        assert!(!request.if_absent);
        assert_eq!(request.if_version, Some(3));
        assert!(request.keep_ttl);
        assert_eq!(request.ttl_ms, None);
    }

    #[test]
    fn zero_ttls_and_bad_request_ids_are_refused() {
        let zero = SetOptions::new()
            .ttl(Duration::ZERO)
            .to_request("k", value());
        assert_eq!(zero.unwrap_err().code(), tonic::Code::InvalidArgument);
        let zero = IncrOptions::new().ttl(Duration::ZERO).to_request("k", 1.0);
        assert_eq!(zero.unwrap_err().code(), tonic::Code::InvalidArgument);
        let zero = MergeOptions::new()
            .ttl(Duration::ZERO)
            .to_request("k", value());
        assert_eq!(zero.unwrap_err().code(), tonic::Code::InvalidArgument);
        let zero = SetManyOptions::new()
            .ttl(Duration::ZERO)
            .to_request(vec![("k".into(), value())]);
        assert_eq!(zero.unwrap_err().code(), tonic::Code::InvalidArgument);

        for bad in [String::new(), "x".repeat(MAX_REQUEST_ID_BYTES + 1)] {
            let err = DeleteOptions::new()
                .request_id(bad.clone())
                .to_request("k")
                .unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
            assert!(ClearOptions::new().request_id(bad).to_request().is_err());
        }
        let longest = "x".repeat(MAX_REQUEST_ID_BYTES);
        let request = ClearOptions::new()
            .request_id(longest.clone())
            .to_request()
            .unwrap();
        assert_eq!(request.request_id, longest);
    }

    #[test]
    fn deltas_follow_the_number_rules() {
        let max = crate::MAX_SAFE_INTEGER as f64;
        for ok in [0.0, -1.5, max, -max] {
            assert_eq!(check_delta(ok).unwrap(), ok);
        }
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            max * 2.0,
            -max - 2.0,
        ] {
            let err = check_delta(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
        let request = IncrOptions::new()
            .ttl(Duration::from_secs(60))
            .request_id("i")
            .to_request("hits", -2.5)
            .unwrap();
        assert_eq!(
            request,
            pb::IncrRequest {
                key: "hits".into(),
                delta: -2.5,
                ttl_ms: Some(60_000),
                request_id: "i".into(),
            }
        );
        assert!(IncrOptions::new().to_request("k", f64::NAN).is_err());
    }

    #[test]
    fn delete_merge_clear_and_many_options_map_onto_requests() {
        assert_eq!(
            DeleteOptions::new()
                .if_version(4)
                .request_id("d")
                .to_request("k")
                .unwrap(),
            pb::DeleteRequest {
                key: "k".into(),
                if_version: Some(4),
                request_id: "d".into(),
            }
        );
        assert_eq!(
            DeleteOptions::new().to_request("k").unwrap(),
            pb::DeleteRequest {
                key: "k".into(),
                if_version: None,
                request_id: String::new(),
            }
        );
        let merge = MergeOptions::new().to_request("k", value()).unwrap();
        assert_eq!(merge.ttl_ms, None);
        assert_eq!(merge.patch, Some(value()));
        let set_many = SetManyOptions::new()
            .keep_ttl()
            .request_id("m")
            .to_request(vec![("a".into(), value()), ("b".into(), value())])
            .unwrap();
        assert_eq!(set_many.request_id, "m");
        assert_eq!(set_many.entries.len(), 2);
        assert!(
            set_many
                .entries
                .iter()
                .all(|e| e.keep_ttl && e.ttl_ms.is_none())
        );
        assert_eq!(set_many.entries[1].key, "b");
        let delete_many = DeleteManyOptions::new()
            .request_id("dm")
            .to_request(vec!["a".into()])
            .unwrap();
        assert_eq!(delete_many.keys, ["a"]);
        assert_eq!(delete_many.request_id, "dm");
    }

    #[test]
    fn request_ids_are_unique_hex_with_one_prefix_per_process() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16], "one random prefix per process");
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let mut x = [0u8; 8];
        let mut y = [0u8; 8];
        fallback_random(&mut x);
        fallback_random(&mut y);
        assert_ne!(x, y);
        assert_ne!(x, [0; 8]);
    }
}
