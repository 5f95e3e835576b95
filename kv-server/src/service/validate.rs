//! Validation: wire requests into engine operations, refused with
//! [`RequestError`] (INVALID_ARGUMENT or RESOURCE_EXHAUSTED, naming the
//! field and the limit) before anything reaches the engine.

use std::sync::Arc;

use kv_engine::{
    Check, Op, RequestId, Ttl, Txn, jsonops,
    value::{self},
};
use kv_proto::wire;
use prost::Message;
use sha2::Digest;

use super::{
    error::RequestError,
    shared::{KvService, Scope},
};
use crate::config::MAX_REQUEST_ID_BYTES;

impl<B> KvService<B> {
    /// `key` checked: 1 to the key limit bytes of UTF-8. The wire view
    /// carries keys as bytes (slices of the received frame), so this is
    /// where text that is not UTF-8 is refused.
    pub(super) fn key<'k>(
        &self,
        key: &'k (impl AsRef<[u8]> + ?Sized),
    ) -> Result<&'k str, RequestError> {
        let key = key.as_ref();
        let max = self.limits.max_key_bytes;
        match key.len() {
            0 => Err(RequestError::EmptyKey { max }),
            len if len > max => Err(RequestError::KeyTooLong { len, max }),
            _ => std::str::from_utf8(key).map_err(|e| RequestError::KeyNotUtf8 {
                at: e.valid_up_to(),
                max,
            }),
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
        key: &[u8],
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
        key: &[u8],
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
    /// The request id of `request`, moved out of it, with the
    /// fingerprint of the rest of the request: SHA-256 over the method's
    /// name and the request encoded without its id (so the fingerprints
    /// of ids remembered in the log stay comparable across versions).
    pub(super) fn request_id<M: Message>(
        method: &str,
        request: &mut M,
        id_field: fn(&mut M) -> &mut String,
    ) -> Result<Option<RequestId>, RequestError> {
        let field = id_field(request);
        if field.is_empty() {
            return Ok(None);
        }
        if field.len() > MAX_REQUEST_ID_BYTES {
            return Err(RequestError::RequestIdTooLong {
                len: field.len(),
                max: MAX_REQUEST_ID_BYTES,
            });
        }
        let id = std::mem::take(field);
        thread_local! {
            // Reused so that fingerprinting allocates nothing per call.
            static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let fingerprint = ENCODED.with_borrow_mut(|encoded| {
            encoded.clear();
            request.encode_raw(encoded);
            let mut digest = sha2::Sha256::new();
            digest.update(method.as_bytes());
            digest.update([0]);
            digest.update(&encoded[..]);
            let digest = digest.finalize();
            u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
        });
        Ok(Some(RequestId {
            id: Arc::from(id),
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

#[cfg(test)]
mod tests {
    use kv_proto::wire::SetRequest;
    use prost::Message;
    use sha2::Digest;

    use super::KvService;

    /// What fingerprints were before they stopped copying the request:
    /// ids remembered in an existing log must still match their retries.
    fn copied_fingerprint(method: &str, request: &SetRequest) -> u64 {
        let mut bare = request.clone();
        bare.request_id.clear();
        let mut digest = sha2::Sha256::new();
        digest.update(method.as_bytes());
        digest.update([0]);
        digest.update(bare.encode_to_vec());
        u64::from_le_bytes(digest.finalize()[..8].try_into().unwrap())
    }

    #[test]
    fn the_fingerprint_covers_the_request_without_its_id_as_before() {
        let original = SetRequest {
            key: "cart:42".into(),
            value: b"\x1a\x03abc".to_vec().into(),
            ttl_ms: Some(5000),
            request_id: "0123456789abcdef".into(),
            ..Default::default()
        };
        let mut request = original.clone();
        let id = KvService::<()>::request_id("Set", &mut request, |r| &mut r.request_id)
            .unwrap()
            .unwrap();
        assert_eq!(&*id.id, "0123456789abcdef");
        assert!(request.request_id.is_empty(), "the id moved out");
        assert_eq!(id.fingerprint, copied_fingerprint("Set", &original));
        // Another method, value or TTL with the same id is another request.
        let mut other = original.clone();
        let again = KvService::<()>::request_id("Delete", &mut other, |r| &mut r.request_id);
        assert_ne!(again.unwrap().unwrap().fingerprint, id.fingerprint);
        let mut other = SetRequest {
            ttl_ms: Some(5001),
            ..original.clone()
        };
        let again = KvService::<()>::request_id("Set", &mut other, |r| &mut r.request_id);
        assert_ne!(again.unwrap().unwrap().fingerprint, id.fingerprint);
        // No id: nothing to remember, nothing taken.
        let mut bare = SetRequest {
            request_id: String::new(),
            ..original
        };
        assert!(
            KvService::<()>::request_id("Set", &mut bare, |r| &mut r.request_id)
                .unwrap()
                .is_none()
        );
    }
}
