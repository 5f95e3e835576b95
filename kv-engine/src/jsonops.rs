//! Read-modify-write operations on stored JSON values: numeric increment and
//! RFC 7386 JSON merge patch.
//!
//! These are pure functions from canonical encoded `google.protobuf.Value`
//! bytes (see [`crate::value`]) to canonical encoded bytes, so an engine can
//! run them under its own lock and record only the resulting value, keeping
//! writes expressed as resulting states (see [`super::Mutation`]).
//!
//! Inputs are expected to be canonical already; arbitrary bytes never panic,
//! they are refused with an error.
//!
//! ```
//! use kv_engine::jsonops::{incr, merge_patch, number};
//! use prost::Message;
//! use prost_types::{Struct, Value, value::Kind};
//!
//! let (counter, n) = incr(None, 2.0).unwrap();
//! assert_eq!((&*counter, n), (&*number(2.0), 2.0));
//!
//! let patch = Value {
//!     kind: Some(Kind::StructValue(Struct {
//!         fields: [("n".to_string(), Value::decode(&*counter).unwrap())].into(),
//!     })),
//! };
//! let merged = merge_patch(None, &patch.encode_to_vec()).unwrap();
//! assert_eq!(&*merged, patch.encode_to_vec().as_slice());
//! ```

use std::{collections::BTreeMap, fmt};

use prost::Message;
use prost_types::{Struct, Value, value::Kind};

/// Largest magnitude an incr result may have: 2^53 (beyond it doubles skip
/// integers).
///
/// Every integer up to 2^53 in magnitude is an exact `f64`, so a counter that
/// stays within it never silently loses an increment.
///
/// ```
/// use kv_engine::jsonops::MAX_EXACT;
///
/// assert_eq!(MAX_EXACT, 2f64.powi(53));
/// assert_eq!(MAX_EXACT + 1.0, MAX_EXACT); // the first integer a double skips
/// ```
pub const MAX_EXACT: f64 = 9007199254740992.0;

/// Why [`incr`] refused.
///
/// ```
/// use kv_engine::jsonops::{NumberError, incr};
/// use prost::Message;
/// use prost_types::{Value, value::Kind};
///
/// let text = Value { kind: Some(Kind::StringValue("7".into())) }.encode_to_vec();
/// let err = incr(Some(&text), 1.0).unwrap_err();
/// assert_eq!(err, NumberError::NotANumber { kind: "string" });
/// assert_eq!(err.to_string(), "the stored value is a JSON string, not a number; incr applies only to numbers");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NumberError {
    /// The stored value is not a JSON number. `kind` is "string", "boolean",
    /// "null", "object", "array".
    #[error("the stored value is a JSON {kind}, not a number; incr applies only to numbers")]
    NotANumber {
        /// The JSON type of the stored value.
        kind: &'static str,
    },
    /// The result would be beyond ±2^53, or the delta is not finite.
    #[error("{}", OutOfRangeMessage { current: *.current, delta: *.delta })]
    OutOfRange {
        /// The stored number (0 for an absent key).
        current: f64,
        /// The refused delta.
        delta: f64,
    },
    /// The stored bytes do not decode as a JSON value.
    #[error("the stored value is not a valid encoded google.protobuf.Value")]
    Malformed,
}

/// Why [`merge_patch`] refused.
///
/// ```
/// use kv_engine::jsonops::{MergeError, merge_patch};
///
/// let err = merge_patch(None, &[0xff]).unwrap_err();
/// assert_eq!(err, MergeError::Malformed { which: "patch" });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The stored value or the patch does not decode as a JSON value.
    #[error("the {which} value is not a valid encoded google.protobuf.Value")]
    Malformed {
        /// `"current"` (the stored value) or `"patch"`.
        which: &'static str,
    },
}

/// Adds `delta` to the number stored in `current` (None = absent key, counts
/// as 0). Returns the canonical encoded Value of the result and the result.
///
/// Integer operands always give the exact integer result or an error: the
/// result is refused, never rounded or clamped, when its exact value is beyond
/// ±[`MAX_EXACT`]. Fractional deltas round as any double addition does.
///
/// ```
/// use kv_engine::jsonops::{MAX_EXACT, NumberError, incr, number};
///
/// let (bytes, n) = incr(Some(&number(41.0)), 1.0).unwrap();
/// assert_eq!((&*bytes, n), (&*number(42.0), 42.0));
///
/// assert!(incr(Some(&number(MAX_EXACT - 1.0)), 1.0).is_ok());
/// assert_eq!(
///     incr(Some(&number(MAX_EXACT)), 1.0),
///     Err(NumberError::OutOfRange { current: MAX_EXACT, delta: 1.0 }),
/// );
/// ```
///
/// # Errors
///
/// [`NumberError::NotANumber`] when a non-number is stored,
/// [`NumberError::OutOfRange`] when `delta` is not finite or the result is
/// beyond ±2^53, [`NumberError::Malformed`] when `current` does not decode.
pub fn incr(current: Option<&[u8]>, delta: f64) -> Result<(Box<[u8]>, f64), NumberError> {
    let current = match current {
        None => 0.0,
        Some(bytes) => match Value::decode(bytes)
            .map_err(|_| NumberError::Malformed)?
            .kind
        {
            // A canonical value never holds a non-finite number; such bytes
            // were not written by this server.
            Some(Kind::NumberValue(n)) if n.is_finite() => n,
            Some(Kind::NumberValue(_)) | None => return Err(NumberError::Malformed),
            Some(Kind::NullValue(_)) => return Err(NumberError::NotANumber { kind: "null" }),
            Some(Kind::StringValue(_)) => return Err(NumberError::NotANumber { kind: "string" }),
            Some(Kind::BoolValue(_)) => return Err(NumberError::NotANumber { kind: "boolean" }),
            Some(Kind::StructValue(_)) => return Err(NumberError::NotANumber { kind: "object" }),
            Some(Kind::ListValue(_)) => return Err(NumberError::NotANumber { kind: "array" }),
        },
    };
    let out_of_range = NumberError::OutOfRange { current, delta };
    if !delta.is_finite() {
        return Err(out_of_range);
    }
    let (sum, error) = two_sum(current, delta);
    // Rounding is monotonic and 2^53 is a double, so a rounded sum below the
    // limit means the exact sum is too. At the limit itself the rounded sum
    // may hide an exact 2^53 + 1: the rounding error tells which side it is.
    let beyond = sum.abs() > MAX_EXACT
        || (sum.abs() == MAX_EXACT
            && error != 0.0
            && error.is_sign_positive() == sum.is_sign_positive());
    if beyond {
        return Err(out_of_range);
    }
    Ok((number(sum), sum))
}

/// Canonical encoding of a JSON number.
///
/// `n` should be finite: JSON has no NaN or infinity, and
/// [`crate::value::canonicalize`] refuses them.
///
/// ```
/// use kv_engine::jsonops::number;
/// use kv_engine::value::canonicalize;
///
/// let bytes = number(1.5);
/// assert_eq!(canonicalize(&bytes, 64).unwrap(), bytes);
/// ```
pub fn number(n: f64) -> Box<[u8]> {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
    .encode_to_vec()
    .into_boxed_slice()
}

/// RFC 7386 JSON merge patch: applies `patch` (canonical Value bytes) to
/// `current` (None = absent key). Returns the canonical encoded result.
///
/// Semantics are exactly RFC 7386 section 2: an object patch merges into
/// `current` when that is an object (else into `{}`), a `null` member removes
/// its name, any other member merges recursively; a non-object patch,
/// `null` included, replaces the target entirely.
///
/// A non-object patch does not read `current` at all, so `current` is only
/// decoded (and only refused as malformed) when the patch is an object.
///
/// The result nests no deeper than the deeper of `current` and `patch`, so
/// merging two values within [`crate::value::MAX_DEPTH`] stays within it.
///
/// ```
/// use kv_engine::jsonops::merge_patch;
/// use prost::Message;
/// use prost_types::{Struct, Value, value::Kind};
///
/// let object = |fields: Vec<(&str, Value)>| Value {
///     kind: Some(Kind::StructValue(Struct {
///         fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
///     })),
/// };
/// let text = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
/// let null = Value { kind: Some(Kind::NullValue(0)) };
///
/// // {"a":"b","b":"c"} patched with {"a":null,"c":"d"} is {"b":"c","c":"d"}.
/// let current = object(vec![("a", text("b")), ("b", text("c"))]).encode_to_vec();
/// let patch = object(vec![("a", null), ("c", text("d"))]).encode_to_vec();
/// let merged = merge_patch(Some(&current), &patch).unwrap();
/// let expected = object(vec![("b", text("c")), ("c", text("d"))]);
/// assert_eq!(&*merged, expected.encode_to_vec().as_slice());
/// ```
///
/// # Errors
///
/// [`MergeError::Malformed`] when `patch`, or `current` when it is read, does
/// not decode as a JSON value.
pub fn merge_patch(current: Option<&[u8]>, patch: &[u8]) -> Result<Box<[u8]>, MergeError> {
    let patch = decode(patch).ok_or(MergeError::Malformed { which: "patch" })?;
    let merged = match patch.kind {
        Some(Kind::StructValue(members)) => {
            let target = match current {
                None => BTreeMap::new(),
                Some(bytes) => match decode(bytes)
                    .ok_or(MergeError::Malformed { which: "current" })?
                    .kind
                {
                    Some(Kind::StructValue(Struct { fields })) => fields,
                    _ => BTreeMap::new(),
                },
            };
            merge_members(target, members)
        }
        // Replacing the whole value: the stored one is irrelevant.
        _ => patch,
    };
    Ok(merged.encode_to_vec().into_boxed_slice())
}

/// Decodes a value, refusing bytes that are not a JSON value at the top
/// (empty bytes decode to a Value with no kind).
fn decode(bytes: &[u8]) -> Option<Value> {
    Value::decode(bytes).ok().filter(|v| v.kind.is_some())
}

/// MergePatch(Target, Patch) of RFC 7386 section 2, for an object patch and
/// the target's members (empty when the target was not an object).
///
/// Recursion follows the patch's nesting, which prost's decoder bounds, so
/// even arbitrary bytes cannot exhaust the stack.
fn merge_members(mut target: BTreeMap<String, Value>, patch: Struct) -> Value {
    for (name, value) in patch.fields {
        match value.kind {
            Some(Kind::NullValue(_)) => {
                target.remove(&name);
            }
            Some(Kind::StructValue(members)) => {
                let inner = match target.remove(&name) {
                    Some(Value {
                        kind: Some(Kind::StructValue(Struct { fields })),
                    }) => fields,
                    _ => BTreeMap::new(),
                };
                target.insert(name, merge_members(inner, members));
            }
            _ => {
                target.insert(name, value);
            }
        }
    }
    Value {
        kind: Some(Kind::StructValue(Struct { fields: target })),
    }
}

/// `a + b` rounded, and the exact rounding error (Knuth's TwoSum): the exact
/// sum is `sum + error` whenever `sum` is finite.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let sum = a + b;
    let b_part = sum - a;
    let a_part = sum - b_part;
    (sum, (a - a_part) + (b - b_part))
}

/// The text of [`NumberError::OutOfRange`].
struct OutOfRangeMessage {
    current: f64,
    delta: f64,
}

impl fmt::Display for OutOfRangeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (current, delta) = (Shown(self.current), Shown(self.delta));
        if !self.delta.is_finite() {
            return write!(
                f,
                "incr of {current} by {delta} refused: the delta must be a finite number \
                 and the result within ±2^53 = 9007199254740992"
            );
        }
        write!(f, "incr result ")?;
        // The rounded double sum can itself read 2^53; show the exact sum
        // so the message explains the refusal.
        match exact_integer_sum(self.current, self.delta) {
            Some(sum) => write!(f, "{sum}")?,
            None => {
                let (sum, error) = two_sum(self.current, self.delta);
                if error != 0.0 && sum.is_finite() {
                    write!(f, "about ")?;
                }
                write!(f, "{}", Shown(sum))?;
            }
        }
        write!(
            f,
            " (current {current} + delta {delta}) is beyond ±2^53 = 9007199254740992, \
             the largest magnitude at which every integer is exact"
        )
    }
}

/// The exact sum of two integral doubles, when i128 holds it.
fn exact_integer_sum(a: f64, b: f64) -> Option<i128> {
    // Within 2^100 the casts are exact and the sum cannot overflow.
    let fits = |x: f64| x.fract() == 0.0 && x.abs() < 2f64.powi(100);
    (fits(a) && fits(b)).then(|| a as i128 + b as i128)
}

/// A number as a person reads it: plain digits, exponent form only for
/// magnitudes whose plain form would run to dozens of digits.
struct Shown(f64);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.abs() < 1e21 || !self.0.is_finite() {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:e}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost_types::ListValue;
    use serde_json::{Value as Json, json};

    use super::*;

    fn to_proto(json: &Json) -> Value {
        let kind = match json {
            Json::Null => Kind::NullValue(0),
            Json::Bool(b) => Kind::BoolValue(*b),
            Json::Number(n) => Kind::NumberValue(n.as_f64().expect("finite number")),
            Json::String(s) => Kind::StringValue(s.clone()),
            Json::Array(items) => Kind::ListValue(ListValue {
                values: items.iter().map(to_proto).collect(),
            }),
            Json::Object(members) => Kind::StructValue(Struct {
                fields: members
                    .iter()
                    .map(|(k, v)| (k.clone(), to_proto(v)))
                    .collect(),
            }),
        };
        Value { kind: Some(kind) }
    }

    fn to_json(value: &Value) -> Json {
        match value.kind.as_ref().expect("kind set") {
            Kind::NullValue(_) => Json::Null,
            Kind::BoolValue(b) => Json::Bool(*b),
            // serde_json tells 1 from 1.0; the json! literals use integers.
            Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 1e15 => json!(*n as i64),
            Kind::NumberValue(n) => json!(n),
            Kind::StringValue(s) => Json::String(s.clone()),
            Kind::ListValue(l) => Json::Array(l.values.iter().map(to_json).collect()),
            Kind::StructValue(s) => Json::Object(
                s.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json(v)))
                    .collect(),
            ),
        }
    }

    fn encode(json: &Json) -> Vec<u8> {
        to_proto(json).encode_to_vec()
    }

    fn decode_json(bytes: &[u8]) -> Json {
        to_json(&Value::decode(bytes).expect("result decodes"))
    }

    /// Merges and checks the result is the canonical encoding of `expected`.
    fn assert_merge(original: Option<Json>, patch: Json, expected: Json) {
        let original = original.as_ref().map(encode);
        let merged = merge_patch(original.as_deref(), &encode(&patch)).unwrap();
        assert_eq!(decode_json(&merged), expected, "patch {patch}");
        assert_eq!(
            crate::value::canonicalize(&merged, usize::MAX).unwrap(),
            merged
        );
        assert_eq!(&*merged, encode(&expected).as_slice());
    }

    #[test]
    fn rfc7386_appendix_a() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (original, patch, expected) in cases {
            assert_merge(Some(original), patch, expected);
        }
    }

    #[test]
    fn rfc7386_section3_example() {
        assert_merge(
            Some(json!({
                "title": "Goodbye!",
                "author": {"givenName": "John", "familyName": "Doe"},
                "tags": ["example", "sample"],
                "content": "This will be unchanged"
            })),
            json!({
                "title": "Hello!",
                "phoneNumber": "+01-123-456-7890",
                "author": {"familyName": null},
                "tags": ["example"]
            }),
            json!({
                "title": "Hello!",
                "author": {"givenName": "John"},
                "tags": ["example"],
                "content": "This will be unchanged",
                "phoneNumber": "+01-123-456-7890"
            }),
        );
    }

    #[test]
    fn absent_current_merges_into_nothing() {
        assert_merge(None, json!({"a":1,"b":null}), json!({"a":1}));
        assert_merge(None, json!({"a":{"b":null}}), json!({"a":{}}));
        assert_merge(None, json!(null), json!(null));
        assert_merge(None, json!([1]), json!([1]));
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let patch = encode(&json!({"a":1}));
        for garbage in [&[][..], &[0xff], &[0x2a, 0x05]] {
            assert_eq!(
                merge_patch(None, garbage),
                Err(MergeError::Malformed { which: "patch" })
            );
            assert_eq!(
                merge_patch(Some(garbage), &patch),
                Err(MergeError::Malformed { which: "current" })
            );
            assert_eq!(incr(Some(garbage), 1.0), Err(NumberError::Malformed));
        }
        // A replacing patch never reads the stored value.
        assert!(merge_patch(Some(&[0xff]), &encode(&json!(1))).is_ok());
        // Non-finite numbers are never stored by the server.
        assert_eq!(
            incr(Some(&number(f64::NAN)), 1.0),
            Err(NumberError::Malformed)
        );
        assert_eq!(
            incr(Some(&number(f64::INFINITY)), -1.0),
            Err(NumberError::Malformed)
        );
    }

    #[test]
    fn incr_absent_and_numbers() {
        assert_eq!(incr(None, 5.0), Ok((number(5.0), 5.0)));
        assert_eq!(incr(None, -2.5), Ok((number(-2.5), -2.5)));
        assert_eq!(incr(Some(&number(40.0)), 2.0), Ok((number(42.0), 42.0)));
        assert_eq!(incr(Some(&number(0.5)), 0.25), Ok((number(0.75), 0.75)));
        assert_eq!(incr(Some(&number(3.0)), -3.0), Ok((number(0.0), 0.0)));
        let (bytes, n) = incr(Some(&number(-0.0)), -0.0).unwrap();
        assert!(n == 0.0 && n.is_sign_negative());
        assert_eq!(bytes, number(-0.0));
    }

    #[test]
    fn incr_refuses_every_non_number_kind() {
        for (stored, kind) in [
            (json!("7"), "string"),
            (json!(true), "boolean"),
            (json!(null), "null"),
            (json!({"n": 1}), "object"),
            (json!([1]), "array"),
        ] {
            assert_eq!(
                incr(Some(&encode(&stored)), 1.0),
                Err(NumberError::NotANumber { kind })
            );
        }
    }

    #[test]
    fn incr_bounds_are_exactly_two_to_the_53() {
        let ok = |current: f64, delta: f64, result: f64| {
            assert_eq!(
                incr(Some(&number(current)), delta),
                Ok((number(result), result))
            );
        };
        let refused = |current: f64, delta: f64| {
            assert_eq!(
                incr(Some(&number(current)), delta),
                Err(NumberError::OutOfRange { current, delta })
            );
        };
        ok(MAX_EXACT - 1.0, 1.0, MAX_EXACT);
        ok(-(MAX_EXACT - 1.0), -1.0, -MAX_EXACT);
        ok(MAX_EXACT, 0.0, MAX_EXACT);
        ok(MAX_EXACT, -1.0, MAX_EXACT - 1.0);
        ok(0.0, -MAX_EXACT, -MAX_EXACT);
        // 2^53 + 1 rounds to 2^53 as a double: still refused.
        refused(MAX_EXACT, 1.0);
        refused(-MAX_EXACT, -1.0);
        refused(MAX_EXACT - 1.0, 2.0);
        refused(0.0, MAX_EXACT + 2.0);
        refused(0.5, MAX_EXACT);
        refused(f64::MAX, f64::MAX);
        // A stored number beyond the range can be brought back into it.
        ok(1e20, -1e20, 0.0);
        refused(1e20, 0.0);
        assert_eq!(
            incr(None, MAX_EXACT + 2.0),
            Err(NumberError::OutOfRange {
                current: 0.0,
                delta: MAX_EXACT + 2.0
            })
        );
    }

    #[test]
    fn incr_refuses_non_finite_deltas() {
        for delta in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let refused = incr(Some(&number(1.0)), delta).unwrap_err();
            assert!(
                matches!(refused, NumberError::OutOfRange { current: 1.0, delta: d } if d.to_bits() == delta.to_bits())
            );
            assert!(incr(None, delta).is_err());
        }
    }

    #[test]
    fn out_of_range_messages_name_the_exact_result() {
        let message =
            |current: f64, delta: f64| NumberError::OutOfRange { current, delta }.to_string();
        assert_eq!(
            message(MAX_EXACT, 1.0),
            "incr result 9007199254740993 (current 9007199254740992 + delta 1) is beyond \
             ±2^53 = 9007199254740992, the largest magnitude at which every integer is exact"
        );
        assert!(message(0.5, MAX_EXACT).starts_with("incr result about 9007199254740992 "));
        assert!(
            message(1e300, 1.0).starts_with("incr result about 1e300 (current 1e300 + delta 1)")
        );
        assert_eq!(
            message(3.0, f64::INFINITY),
            "incr of 3 by inf refused: the delta must be a finite number and the result \
             within ±2^53 = 9007199254740992"
        );
    }

    /// Small JSON values with few distinct names, so patches hit existing
    /// members, nulls remove some and nested objects merge.
    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            (-1000i32..1000).prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|n| json!(n)),
            "[a-c]{0,3}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Json> {
        prop::collection::btree_map("[a-d]", json_value(), 0..5)
            .prop_map(|m| Json::Object(m.into_iter().collect()))
    }

    /// The exact sum, refused beyond ±2^53.
    fn reference_incr(current: i64, delta: i64) -> Result<f64, NumberError> {
        let sum = current + delta;
        if sum.unsigned_abs() <= 1 << 53 {
            Ok(sum as f64)
        } else {
            Err(NumberError::OutOfRange {
                current: current as f64,
                delta: delta as f64,
            })
        }
    }

    const LIMIT: i64 = 1 << 53;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Applying the same patch twice changes nothing the second time.
        #[test]
        fn merge_patch_is_idempotent(
            current in prop::option::of(prop_oneof![json_object(), json_value()]),
            patch in prop_oneof![3 => json_object(), 1 => json_value()],
        ) {
            let current = current.as_ref().map(encode);
            let patch = encode(&patch);
            let once = merge_patch(current.as_deref(), &patch).unwrap();
            let twice = merge_patch(Some(&once), &patch).unwrap();
            prop_assert_eq!(&once, &twice);
            prop_assert_eq!(crate::value::canonicalize(&once, usize::MAX).unwrap(), once);
        }

        /// Integer increments match i64 arithmetic wherever it stays within
        /// ±2^53, and are refused everywhere else.
        #[test]
        fn incr_matches_integer_arithmetic(
            current in prop_oneof![-LIMIT..=LIMIT, (LIMIT - 4)..=LIMIT, -LIMIT..=(4 - LIMIT)],
            delta in prop_oneof![-LIMIT..=LIMIT, -4i64..=4],
        ) {
            let expected = reference_incr(current, delta).map(|n| (number(n), n));
            prop_assert_eq!(incr(Some(&number(current as f64)), delta as f64), expected);
        }

        /// Arbitrary bytes never panic either operation.
        #[test]
        fn arbitrary_bytes_never_panic(
            a in prop::collection::vec(any::<u8>(), 0..64),
            b in prop::collection::vec(any::<u8>(), 0..64),
            delta in any::<f64>(),
        ) {
            let _ = incr(Some(&a), delta);
            let _ = merge_patch(Some(&a), &b);
            let _ = merge_patch(None, &b);
        }
    }
}
