//! serde_json values <-> google.protobuf.Value.
//!
//! Numbers travel as doubles (JSON/JavaScript semantics). An integer whose
//! magnitude exceeds 2^53 would be rounded in a double, so it is refused
//! rather than silently changed; integral doubles come back as integers so
//! they deserialize into integer types.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

use crate::Error;

pub use kv_proto::contract::{MAX_DEPTH, MAX_SAFE_INTEGER};

pub(crate) fn to_proto(json: &Json) -> Result<Value, Error> {
    to_proto_at(json, 0)
}

fn to_proto_at(json: &Json, depth: usize) -> Result<Value, Error> {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(number_to_f64(n)?),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => {
            check_depth(depth)?;
            Kind::ListValue(ListValue {
                values: items
                    .iter()
                    .map(|item| to_proto_at(item, depth + 1))
                    .collect::<Result<_, _>>()?,
            })
        }
        Json::Object(fields) => {
            check_depth(depth)?;
            Kind::StructValue(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), to_proto_at(v, depth + 1)?)))
                    .collect::<Result<_, Error>>()?,
            })
        }
    };
    Ok(Value { kind: Some(kind) })
}

fn check_depth(depth: usize) -> Result<(), Error> {
    if depth >= MAX_DEPTH {
        return Err(Error::InvalidArgument(format!(
            "value nests arrays/objects deeper than the limit of {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

fn number_to_f64(n: &Number) -> Result<f64, Error> {
    let unsafe_integer = |shown: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!(
            "integer {shown} cannot be stored exactly: JSON numbers are doubles, exact only within ±2^53 ({MAX_SAFE_INTEGER}); store it as a string"
        ))
    };
    if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(unsafe_integer(&i));
        }
        Ok(i as f64)
    } else if let Some(u) = n.as_u64() {
        if u > MAX_SAFE_INTEGER {
            return Err(unsafe_integer(&u));
        }
        Ok(u as f64)
    } else {
        // serde_json only holds finite floats.
        n.as_f64()
            .ok_or_else(|| Error::InvalidArgument(format!("number {n} is not representable")))
    }
}

pub(crate) fn from_proto(value: Value) -> Result<Json, Error> {
    Ok(match value.kind {
        None => return Err(Error::Protocol("server sent a value with no kind".into())),
        Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) => Json::Number(f64_to_number(n)?),
        Some(Kind::ListValue(list)) => Json::Array(
            list.values
                .into_iter()
                .map(from_proto)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(object)) => Json::Object(
            object
                .fields
                .into_iter()
                .map(|(k, v)| Ok((k, from_proto(v)?)))
                .collect::<Result<Map<_, _>, Error>>()?,
        ),
    })
}

fn f64_to_number(n: f64) -> Result<Number, Error> {
    // Integral values within the safe range come back as integers, so that
    // `u32`, `i64`... fields deserialize (serde_json refuses 3.0 for a u32).
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER as f64 {
        return Ok(Number::from(n as i64));
    }
    Number::from_f64(n).ok_or_else(|| Error::Protocol(format!("server sent non-finite number {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn integers_beyond_2_pow_53_are_refused_not_rounded() {
        let max = MAX_SAFE_INTEGER;
        for ok in [json!(max), json!(-(max as i64)), json!(0), json!(1.5)] {
            assert_eq!(from_proto(to_proto(&ok).unwrap()).unwrap(), ok);
        }
        for bad in [
            json!(max + 1),
            json!(-(max as i64) - 1),
            json!(u64::MAX),
            json!(i64::MIN),
        ] {
            let err = to_proto(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains("2^53"), "{err}");
        }
        // Nested too.
        assert!(to_proto(&json!({"a": [1, max + 1]})).is_err());
    }

    #[test]
    fn integral_doubles_come_back_as_integers() {
        let v = from_proto(to_proto(&json!(3.0)).unwrap()).unwrap();
        assert!(v.is_i64(), "{v:?}");
        let big = from_proto(Value {
            kind: Some(Kind::NumberValue(1e300)),
        })
        .unwrap();
        assert!(big.is_f64());
        let neg_zero = from_proto(to_proto(&json!(-0.0)).unwrap()).unwrap();
        assert_eq!(neg_zero, json!(0));
    }

    #[test]
    fn depth_limit_matches_the_server() {
        let nest = |n: usize| (0..n).fold(json!(1), |v, _| json!([v]));
        assert!(to_proto(&nest(MAX_DEPTH)).is_ok());
        assert!(to_proto(&nest(MAX_DEPTH + 1)).is_err());
    }

    fn json_strategy() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            (-(MAX_SAFE_INTEGER as i64)..=MAX_SAFE_INTEGER as i64).prop_map(|i| json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite() && f.fract() != 0.0)
                .prop_map(|f| json!(f)),
            ".*".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::btree_map(".*", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn json_round_trips_through_protobuf(json in json_strategy()) {
            prop_assert_eq!(from_proto(to_proto(&json).unwrap()).unwrap(), json);
        }
    }
}
