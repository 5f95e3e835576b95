//! The server's wire view decodes the keys of a Pipeline frame's calls as
//! bytes (slices of the frame) where the public types decode `String`s.
//! Both must agree: on valid frames the same keys, and on damaged frames
//! the wire view refuses whatever the public types refuse, except text
//! that is not UTF-8, which it leaves to the server to refuse (as the
//! server does for every key) — and values, which it leaves encoded.

use kv_proto::{v1, wire};
use proptest::prelude::*;
use prost::Message;
use prost_types::{Value, value::Kind};

/// Each call's id and keys, in order, as bytes.
type CallKeys = Vec<(u64, Vec<Vec<u8>>)>;

fn public_keys(frame: &v1::PipelineRequest) -> CallKeys {
    use v1::call::Request as R;
    frame
        .calls
        .iter()
        .map(|call| {
            let keys: Vec<&str> = match &call.request {
                Some(R::Get(r)) => vec![&r.key],
                Some(R::Set(r)) => vec![&r.key],
                Some(R::Has(r)) => vec![&r.key],
                Some(R::Delete(r)) => vec![&r.key],
                Some(R::Incr(r)) => vec![&r.key],
                Some(R::Merge(r)) => vec![&r.key],
                Some(R::GetMany(r)) => r.keys.iter().map(String::as_str).collect(),
                Some(R::SetMany(r)) => r.entries.iter().map(|e| e.key.as_str()).collect(),
                Some(R::DeleteMany(r)) => r.keys.iter().map(String::as_str).collect(),
                None => Vec::new(),
            };
            (
                call.id,
                keys.into_iter().map(|k| k.as_bytes().to_vec()).collect(),
            )
        })
        .collect()
}

/// As [`public_keys`], and the encoded values the wire view carries.
fn wire_keys(frame: &wire::PipelineRequest) -> (CallKeys, Vec<Vec<u8>>) {
    use wire::call::Request as R;
    let mut values = Vec::new();
    let keys = frame
        .calls
        .iter()
        .map(|call| {
            let keys: Vec<&[u8]> = match &call.request {
                Some(R::Get(r)) => vec![&r.key],
                Some(R::Set(r)) => {
                    values.push(r.value.to_vec());
                    vec![&r.key]
                }
                Some(R::Has(r)) => vec![&r.key],
                Some(R::Delete(r)) => vec![&r.key],
                Some(R::Incr(r)) => vec![&r.key],
                Some(R::Merge(r)) => {
                    values.push(r.patch.to_vec());
                    vec![&r.key]
                }
                Some(R::GetMany(r)) => r.keys.iter().map(|k| &k[..]).collect(),
                Some(R::SetMany(r)) => r
                    .entries
                    .iter()
                    .map(|e| {
                        values.push(e.value.to_vec());
                        &e.key[..]
                    })
                    .collect(),
                Some(R::DeleteMany(r)) => r.keys.iter().map(|k| &k[..]).collect(),
                None => Vec::new(),
            };
            (call.id, keys.into_iter().map(<[u8]>::to_vec).collect())
        })
        .collect();
    (keys, values)
}

fn request() -> impl Strategy<Value = v1::call::Request> {
    use v1::call::Request as R;
    let key = || "[a-zé😀:]{0,12}";
    let value = || {
        prop_oneof![
            any::<bool>().prop_map(Kind::BoolValue),
            "[a-z]{0,8}".prop_map(Kind::StringValue),
        ]
        .prop_map(|kind| Some(Value { kind: Some(kind) }))
    };
    prop_oneof![
        key().prop_map(|key| R::Get(v1::GetRequest { key })),
        key().prop_map(|key| R::Has(v1::HasRequest { key })),
        (key(), value(), proptest::option::of(1u64..1 << 40)).prop_map(|(key, value, ttl_ms)| {
            R::Set(v1::SetRequest {
                key,
                value,
                ttl_ms,
                ..v1::SetRequest::default()
            })
        }),
        (key(), "[a-z0-9]{0,4}").prop_map(|(key, request_id)| R::Delete(v1::DeleteRequest {
            key,
            request_id,
            ..v1::DeleteRequest::default()
        })),
        (key(), -5.0f64..5.0).prop_map(|(key, delta)| R::Incr(v1::IncrRequest {
            key,
            delta,
            ..v1::IncrRequest::default()
        })),
        (key(), value()).prop_map(|(key, patch)| R::Merge(v1::MergeRequest {
            key,
            patch,
            ..v1::MergeRequest::default()
        })),
        proptest::collection::vec(key(), 0..4)
            .prop_map(|keys| R::GetMany(v1::GetManyRequest { keys })),
        proptest::collection::vec(key(), 0..4).prop_map(|keys| R::DeleteMany(
            v1::DeleteManyRequest {
                keys,
                request_id: String::new(),
            }
        )),
        proptest::collection::vec((key(), value()), 0..4).prop_map(|entries| R::SetMany(
            v1::SetManyRequest {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| v1::SetOp {
                        key,
                        value,
                        ..v1::SetOp::default()
                    })
                    .collect(),
                request_id: String::new(),
            }
        )),
    ]
}

fn frame() -> impl Strategy<Value = v1::PipelineRequest> {
    (
        proptest::collection::vec(
            (
                any::<u64>(),
                0u64..3,
                proptest::option::of(request()),
                "[a-z]{0,3}",
            ),
            0..6,
        ),
        "[a-z]{0,3}",
    )
        .prop_map(|(calls, project)| v1::PipelineRequest {
            calls: calls
                .into_iter()
                .map(|(id, timeout_ms, request, project)| v1::Call {
                    id,
                    timeout_ms,
                    request,
                    project,
                })
                .collect(),
            project,
        })
}

/// One damage at `at`: a flipped bit, a cut, an inserted byte, or a byte
/// that is not UTF-8.
fn damage(bytes: &mut Vec<u8>, kind: u8, at: usize, byte: u8) {
    if bytes.is_empty() {
        bytes.push(byte);
        return;
    }
    let at = at % bytes.len();
    match kind % 4 {
        0 => bytes[at] ^= 1 << (byte % 8),
        1 => bytes.truncate(at),
        2 => bytes.insert(at, byte),
        _ => bytes[at] = 0x80 | (byte & 0x7f),
    }
}

fn is_value(bytes: &[u8]) -> bool {
    bytes.is_empty() || Value::decode(bytes).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_frames_decode_to_the_same_keys(frame in frame()) {
        let bytes = frame.encode_to_vec();
        let seen = wire::PipelineRequest::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(wire_keys(&seen).0, public_keys(&frame));
        // And encodes back to the very same bytes.
        prop_assert_eq!(seen.encode_to_vec(), bytes);
    }

    #[test]
    fn damaged_frames_are_refused_alike(
        frame in frame(),
        damages in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..3),
    ) {
        let mut bytes = frame.encode_to_vec();
        for (kind, at, byte) in damages {
            damage(&mut bytes, kind, at, byte);
        }
        let public = v1::PipelineRequest::decode(bytes.as_slice());
        let seen = wire::PipelineRequest::decode(bytes.as_slice());
        match (&public, &seen) {
            (Ok(public), Ok(seen)) => prop_assert_eq!(wire_keys(seen).0, public_keys(public)),
            (Ok(_), Err(e)) => {
                return Err(TestCaseError::fail(format!("only the wire view refused it: {e}")));
            }
            (Err(_), Err(_)) => {}
            // Refused by the public types only for what the wire view
            // leaves to the server: a key that is not UTF-8 or a value
            // that does not decode.
            (Err(e), Ok(seen)) => {
                let (keys, values) = wire_keys(seen);
                let bad_key = keys
                    .iter()
                    .flat_map(|(_, keys)| keys)
                    .any(|key| std::str::from_utf8(key).is_err());
                let bad_value = values.iter().any(|value| !is_value(value));
                // A field given twice: the public types merge messages
                // (an earlier bad Value counts) where the wire view keeps
                // the last bytes; prost's error then names where it was.
                let said = e.to_string();
                let named = said.contains("not UTF-8")
                    || ["Value.", "Struct.", "ListValue."].iter().any(|m| said.contains(m));
                prop_assert!(
                    bad_key || bad_value || named,
                    "the wire view took what prost refused: {}", said
                );
            }
        }
    }
}
