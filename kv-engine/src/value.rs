//! JSON values as the server stores them.
//!
//! A value arrives as the encoded bytes of a `google.protobuf.Value` (see
//! `kv_proto::wire`). It is decoded once to check it, then stored as its
//! canonical encoding: compact (a 100-byte string costs 103 bytes), exactly
//! sized for accounting, and ready to go back on the wire as is.

use std::fmt::Write as _;

use prost::Message;
use prost_types::{ListValue, Struct, Value, value::Kind};

/// Deepest nesting of arrays and objects a value may have (the contract's
/// limit; see the tests below for how it was measured).
pub use kv_contract::MAX_DEPTH;

/// Largest value limit any configuration may set (1 GiB); gRPC frames carry
/// at most 4 GiB and a single value that size would not be a key-value
/// workload. The log's record bound derives from it.
pub const MAX_VALUE_LIMIT: usize = 1024 * 1024 * 1024;

/// Why a value was refused.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The request carried no value (or an empty `google.protobuf.Value`).
    #[error("value is required: send a google.protobuf.Value (use null_value for JSON null)")]
    Missing,
    /// The encoded value is larger than the configured limit.
    #[error("value is {len} bytes encoded; the limit is {limit} bytes")]
    TooLarge {
        /// Encoded size of the refused value.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("value nests arrays/objects deeper than the limit of {MAX_DEPTH} levels")]
    TooDeep,
    /// The bytes are not a valid `google.protobuf.Value`.
    #[error("value is not a valid google.protobuf.Value: {0}")]
    Malformed(#[source] prost::DecodeError),
    /// A nested value has none of its kinds set (JSON has no such value).
    #[error("value at {path} has no kind set (null, number, string, bool, struct or list)")]
    NoKind {
        /// JSON path of the offending value, like `$.a[2]`.
        path: String,
    },
    /// A number is NaN or infinite, which JSON cannot carry.
    #[error("number at {path} is {number}; JSON numbers must be finite")]
    NonFinite {
        /// JSON path of the offending number.
        path: String,
        /// The number.
        number: f64,
    },
}

/// Checks an encoded `google.protobuf.Value` and returns its canonical
/// encoding, copied into its own allocation (never a view into the request
/// buffer, which would keep the whole receive buffer alive).
///
/// ```
/// use kv_engine::value::{canonicalize, ValueError};
/// use prost::Message;
/// use prost_types::{value::Kind, Value};
///
/// let encoded = Value { kind: Some(Kind::NumberValue(1.5)) }.encode_to_vec();
/// assert_eq!(&*canonicalize(&encoded, 1024).unwrap(), encoded.as_slice());
///
/// let nan = Value { kind: Some(Kind::NumberValue(f64::NAN)) }.encode_to_vec();
/// assert!(matches!(canonicalize(&nan, 1024), Err(ValueError::NonFinite { .. })));
/// ```
///
/// # Errors
///
/// [`ValueError`] when the value is missing, over `max_len` bytes, malformed,
/// nested deeper than [`MAX_DEPTH`], or holds a non-finite number or a
/// kind-less value.
pub fn canonicalize(encoded: &[u8], max_len: usize) -> Result<Box<[u8]>, ValueError> {
    if encoded.is_empty() {
        return Err(ValueError::Missing);
    }
    if encoded.len() > max_len {
        return Err(ValueError::TooLarge {
            len: encoded.len(),
            limit: max_len,
        });
    }
    let mut value = Value::decode(encoded).map_err(|e| {
        // prost offers no error kind to match on, only its message.
        if e.to_string().contains("recursion limit reached") {
            ValueError::TooDeep
        } else {
            ValueError::Malformed(e)
        }
    })?;
    let mut path = Vec::new();
    check(&mut value, 0, &mut path)?;
    Ok(value.encode_to_vec().into_boxed_slice())
}

enum Segment<'a> {
    Field(&'a str),
    Index(usize),
}

fn check<'a>(
    value: &'a mut Value,
    depth: usize,
    path: &mut Vec<Segment<'a>>,
) -> Result<(), ValueError> {
    match &mut value.kind {
        None => Err(ValueError::NoKind { path: render(path) }),
        Some(Kind::NumberValue(n)) if !n.is_finite() => Err(ValueError::NonFinite {
            path: render(path),
            number: *n,
        }),
        // NullValue has one member; any other number on the wire means null.
        Some(Kind::NullValue(n)) => {
            *n = 0;
            Ok(())
        }
        Some(Kind::NumberValue(_) | Kind::StringValue(_) | Kind::BoolValue(_)) => Ok(()),
        Some(Kind::StructValue(Struct { fields })) => {
            if depth == MAX_DEPTH {
                return Err(ValueError::TooDeep);
            }
            for (name, field) in fields.iter_mut() {
                path.push(Segment::Field(name));
                check(field, depth + 1, path)?;
                path.pop();
            }
            Ok(())
        }
        Some(Kind::ListValue(ListValue { values })) => {
            if depth == MAX_DEPTH {
                return Err(ValueError::TooDeep);
            }
            for (i, item) in values.iter_mut().enumerate() {
                path.push(Segment::Index(i));
                check(item, depth + 1, path)?;
                path.pop();
            }
            Ok(())
        }
    }
}

fn render(path: &[Segment<'_>]) -> String {
    let mut out = String::from("$");
    for segment in path {
        // Writing to a String cannot fail.
        let _ = match segment {
            Segment::Field(name) => write!(out, "[{name:?}]"),
            Segment::Index(i) => write!(out, "[{i}]"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    fn list(values: Vec<Value>) -> Value {
        Value {
            kind: Some(Kind::ListValue(ListValue { values })),
        }
    }

    fn object(name: &str, value: Value) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [(name.to_string(), value)].into(),
            })),
        }
    }

    fn nested(depth: usize, wrap: fn(Value) -> Value) -> Value {
        (0..depth).fold(number(1.0), |v, _| wrap(v))
    }

    fn in_list(v: Value) -> Value {
        list(vec![v])
    }

    fn in_object(v: Value) -> Value {
        object("k", v)
    }

    /// How deep prost itself lets a value nest, when decoding a bare Value
    /// and when decoding one inside a response as a prost client does.
    fn prost_max_depth(wrap: fn(Value) -> Value) -> (usize, usize) {
        let mut bare = 0;
        let mut in_response = 0;
        for depth in 1..200 {
            let encoded = nested(depth, wrap).encode_to_vec();
            if Value::decode(encoded.as_slice()).is_ok() {
                bare = depth;
            }
            let response = kv_proto::wire::GetResponse {
                found: true,
                value: encoded.into(),
                ..Default::default()
            }
            .encode_to_vec();
            if kv_proto::v1::GetResponse::decode(response.as_slice()).is_ok() {
                in_response = depth;
            }
        }
        (bare, in_response)
    }

    #[test]
    fn prost_limits_are_above_the_documented_depth() {
        // Measured: these are prost's effective JSON depths. If prost changes
        // its recursion limit, MAX_DEPTH and the docs must be revisited.
        assert_eq!(prost_max_depth(in_object), (33, 33));
        assert_eq!(prost_max_depth(in_list), (50, 49));
    }

    #[test]
    fn max_depth_is_accepted_and_one_more_is_refused() {
        for wrap in [in_list as fn(Value) -> Value, in_object] {
            let ok = nested(MAX_DEPTH, wrap).encode_to_vec();
            assert!(canonicalize(&ok, usize::MAX).is_ok());
            let deep = nested(MAX_DEPTH + 1, wrap).encode_to_vec();
            assert!(matches!(
                canonicalize(&deep, usize::MAX),
                Err(ValueError::TooDeep)
            ));
        }
        // Far beyond what prost decodes: still a clean TooDeep.
        let very_deep = nested(500, in_object).encode_to_vec();
        assert!(matches!(
            canonicalize(&very_deep, usize::MAX),
            Err(ValueError::TooDeep)
        ));
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        let v = object("a", list(vec![number(1.0), number(f64::INFINITY)])).encode_to_vec();
        match canonicalize(&v, usize::MAX) {
            Err(ValueError::NonFinite { path, number }) => {
                assert_eq!(path, r#"$["a"][1]"#);
                assert_eq!(number, f64::INFINITY);
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
    }

    #[test]
    fn missing_kindless_oversize_and_garbage_are_refused() {
        assert!(matches!(canonicalize(&[], 10), Err(ValueError::Missing)));
        let kindless = list(vec![Value { kind: None }]).encode_to_vec();
        assert!(matches!(
            canonicalize(&kindless, 100),
            Err(ValueError::NoKind { path }) if path == "$[0]"
        ));
        let big = Value {
            kind: Some(Kind::StringValue("x".repeat(100))),
        }
        .encode_to_vec();
        assert!(matches!(
            canonicalize(&big, 50),
            Err(ValueError::TooLarge {
                len: 102,
                limit: 50
            })
        ));
        assert!(matches!(
            canonicalize(&[0x2a, 0xff], 100),
            Err(ValueError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_fields_and_odd_nulls_are_canonicalized() {
        // Field 99 (unknown) then null_value = 7.
        let odd = [0x98, 0x06, 0x01, 0x08, 0x07];
        let canonical = canonicalize(&odd, 100).unwrap();
        let null = Value {
            kind: Some(Kind::NullValue(0)),
        };
        assert_eq!(&*canonical, null.encode_to_vec().as_slice());
    }
}
