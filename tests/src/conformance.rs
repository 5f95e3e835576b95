//! The conformance cases. Each one starts from an empty server and checks
//! one part of the contract through the SDK, or through the raw gRPC client
//! for input the SDK refuses to send. Cases avoid assumptions about the
//! backend beyond the documented defaults (4096-byte keys, 16 MiB values,
//! 10-year TTLs, 32 levels of nesting).

use std::{collections::HashSet, fmt::Debug, time::Duration};

use kv_client::{Code, Error};
use kv_proto::v1::{GetRequest, HasRequest, SetRequest};
use prost_types::{ListValue, Struct, Value, value::Kind};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::Ctx;

const MAX_KEY_BYTES: usize = 4096;
const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
const MAX_TTL_MS: u64 = 3650 * 24 * 60 * 60 * 1000;

#[track_caller]
fn assert_code<T: Debug>(result: Result<T, Error>, code: Code, says: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} saying {says:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code(), code, "wrong code for error: {e}");
            assert!(
                e.to_string().contains(says),
                "error {e:?} does not say {says:?}"
            );
        }
    }
}

#[track_caller]
fn assert_status<T: Debug>(result: Result<T, tonic::Status>, code: Code, says: &str) {
    assert_code(result.map_err(Error::from), code, says);
}

fn request<T>(message: T, project: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(project) = project {
        request
            .metadata_mut()
            .insert("x-kv-project", project.parse().expect("ascii project"));
    }
    request
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn nested_lists(depth: usize) -> Value {
    (0..depth).fold(number(1.0), |inner, _| Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![inner],
        })),
    })
}

fn nested_objects(depth: usize) -> Value {
    (0..depth).fold(number(1.0), |inner, _| Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [("k".to_string(), inner)].into(),
        })),
    })
}

fn raw_set(key: &str, value: Option<Value>, ttl_ms: Option<u64>) -> SetRequest {
    SetRequest {
        key: key.into(),
        value,
        ttl_ms,
        ..SetRequest::default()
    }
}

/// Get, has and delete of a key never written.
pub async fn missing_key_is_not_found(ctx: &Ctx) {
    let kv = ctx.client.project("p");
    assert_eq!(kv.get::<Json>("nope").await.unwrap(), None);
    assert!(!kv.has("nope").await.unwrap());
    assert!(!kv.delete("nope").await.unwrap());
    let reply = ctx
        .raw
        .clone()
        .get(request(GetRequest { key: "nope".into() }, Some("p")))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.found);
    assert_eq!(reply.value, None, "a missing key carries no value");
}

/// Strings, numbers, booleans, objects, arrays and null come back as sent.
pub async fn every_json_type_round_trips(ctx: &Ctx) {
    let kv = ctx.client.project("types");
    let values = [
        json!("hello"),
        json!(""),
        json!("ünïcødé ✓ 🔑"),
        json!(0),
        json!(-17),
        json!(3.25),
        json!(-1e-300),
        json!(1e300),
        json!(9_007_199_254_740_992_u64),
        json!(-9_007_199_254_740_992_i64),
        json!(true),
        json!(false),
        json!(null),
        json!([]),
        json!({}),
        json!([1, "two", null, [3], {"four": 4}]),
        json!({"user": {"name": "Ada", "tags": ["a", "b"], "age": 36, "admin": false, "nick": null}}),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        kv.set(&key, value).await.unwrap();
        assert_eq!(
            kv.get::<Json>(&key).await.unwrap().as_ref(),
            Some(value),
            "key {key}"
        );
    }
}

/// A stored null is found (with a null value); a missing key is not.
pub async fn null_is_found_and_distinct_from_missing(ctx: &Ctx) {
    let kv = ctx.client.project("nulls");
    kv.set("n", &json!(null)).await.unwrap();
    assert_eq!(kv.get::<Json>("n").await.unwrap(), Some(Json::Null));
    assert_eq!(kv.get::<Option<u32>>("n").await.unwrap(), Some(None));
    assert!(kv.has("n").await.unwrap());
    let reply = ctx
        .raw
        .clone()
        .get(request(GetRequest { key: "n".into() }, Some("nulls")))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.found);
    assert_eq!(
        reply.value.and_then(|v| v.kind),
        Some(Kind::NullValue(0)),
        "null travels as null_value"
    );
}

/// serde types go in and come out, integers as integers.
pub async fn typed_values_round_trip(ctx: &Ctx) {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Cart {
        owner: String,
        items: Vec<(String, u32)>,
        total_cents: u64,
        discount: Option<f64>,
    }
    let kv = ctx.client.project("shop");
    let cart = Cart {
        owner: "ada".into(),
        items: vec![("apple".into(), 3), ("pear".into(), 1)],
        total_cents: 1234,
        discount: Some(0.15),
    };
    kv.set("cart:ada", &cart).await.unwrap();
    assert_eq!(kv.get::<Cart>("cart:ada").await.unwrap(), Some(cart));
    // A value of the wrong shape is a decode error, not a panic.
    kv.set("n", &42).await.unwrap();
    assert_code(
        kv.get::<Cart>("n").await,
        Code::FailedPrecondition,
        "does not match",
    );
    assert_eq!(kv.get::<u8>("n").await.unwrap(), Some(42));
}

/// A second set replaces the first.
pub async fn set_overwrites(ctx: &Ctx) {
    let kv = ctx.client.project("p");
    kv.set("k", &"one").await.unwrap();
    kv.set("k", &json!({"two": 2})).await.unwrap();
    assert_eq!(kv.get::<Json>("k").await.unwrap(), Some(json!({"two": 2})));
}

/// Keys are arbitrary UTF-8, compared byte for byte.
pub async fn unicode_keys_work(ctx: &Ctx) {
    let kv = ctx.client.project("p");
    for key in ["ключ", "🔑/a b", "a\u{0}b", "A", "a", " "] {
        kv.set(key, &key).await.unwrap();
    }
    for key in ["ключ", "🔑/a b", "a\u{0}b", "A", "a", " "] {
        assert_eq!(kv.get::<String>(key).await.unwrap().as_deref(), Some(key));
    }
}

/// A key with a TTL is there before its deadline and gone after it: get,
/// has and delete all agree at once.
pub async fn ttl_expires_key(ctx: &Ctx) {
    let kv = ctx.client.project("ttl");
    // On a real clock the key must still be there when has() runs: leave a
    // margin for a loaded machine.
    let ttl = if ctx.exact_time() {
        Duration::from_millis(300)
    } else {
        Duration::from_millis(1500)
    };
    kv.set_with_ttl("short", &"bye", ttl).await.unwrap();
    kv.set_with_ttl("long", &"stay", Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(kv.has("short").await.unwrap());
    ctx.advance(ttl + Duration::from_millis(100)).await;
    assert_eq!(kv.get::<Json>("short").await.unwrap(), None);
    assert!(!kv.has("short").await.unwrap());
    assert!(
        !kv.delete("short").await.unwrap(),
        "an expired key is not deleted live"
    );
    assert_eq!(
        kv.get::<String>("long").await.unwrap().as_deref(),
        Some("stay")
    );
}

/// Millisecond resolution: live one millisecond before the deadline, gone at
/// it (only checkable with an exact clock).
pub async fn ttl_deadline_is_exact(ctx: &Ctx) {
    if !ctx.exact_time() {
        return;
    }
    let kv = ctx.client.project("ttl");
    kv.set_with_ttl("k", &1, Duration::from_millis(1000))
        .await
        .unwrap();
    ctx.advance(Duration::from_millis(999)).await;
    assert!(kv.has("k").await.unwrap());
    ctx.advance(Duration::from_millis(1)).await;
    assert!(!kv.has("k").await.unwrap());
    assert_eq!(kv.get::<Json>("k").await.unwrap(), None);
}

/// A set without TTL removes an earlier TTL (Redis SET semantics).
pub async fn plain_set_removes_earlier_ttl(ctx: &Ctx) {
    let kv = ctx.client.project("ttl");
    kv.set_with_ttl("k", &1, Duration::from_millis(300))
        .await
        .unwrap();
    kv.set("k", &2).await.unwrap();
    ctx.advance(Duration::from_millis(400)).await;
    assert_eq!(kv.get::<i32>("k").await.unwrap(), Some(2));
}

/// A set with a TTL replaces the earlier TTL, longer or shorter.
pub async fn set_with_ttl_replaces_ttl(ctx: &Ctx) {
    let kv = ctx.client.project("ttl");
    kv.set_with_ttl("longer", &1, Duration::from_millis(300))
        .await
        .unwrap();
    kv.set_with_ttl("longer", &2, Duration::from_secs(3600))
        .await
        .unwrap();
    kv.set_with_ttl("shorter", &1, Duration::from_secs(3600))
        .await
        .unwrap();
    kv.set_with_ttl("shorter", &2, Duration::from_millis(300))
        .await
        .unwrap();
    kv.set("forever", &1).await.unwrap();
    kv.set_with_ttl("forever", &2, Duration::from_millis(300))
        .await
        .unwrap();
    ctx.advance(Duration::from_millis(400)).await;
    assert_eq!(kv.get::<i32>("longer").await.unwrap(), Some(2));
    assert_eq!(kv.get::<i32>("shorter").await.unwrap(), None);
    assert_eq!(kv.get::<i32>("forever").await.unwrap(), None);
}

/// ttl_ms = 0 and ttl_ms over the maximum are INVALID_ARGUMENT; the maximum
/// itself is accepted. Nothing is stored by a refused set.
pub async fn ttl_zero_and_over_max_are_invalid(ctx: &Ctx) {
    let mut raw = ctx.raw.clone();
    let one = || Some(number(1.0));
    assert_status(
        raw.set(request(raw_set("k", one(), Some(0)), None)).await,
        Code::InvalidArgument,
        "ttl_ms is 0",
    );
    assert_status(
        raw.set(request(raw_set("k", one(), Some(MAX_TTL_MS + 1)), None))
            .await,
        Code::InvalidArgument,
        &format!("the limit is {MAX_TTL_MS} ms"),
    );
    assert_status(
        raw.set(request(raw_set("k", one(), Some(u64::MAX)), None))
            .await,
        Code::InvalidArgument,
        "ttl_ms",
    );
    let kv = ctx.client.project("default");
    assert!(!kv.has("k").await.unwrap(), "a refused set stores nothing");
    raw.set(request(raw_set("k", one(), Some(MAX_TTL_MS)), None))
        .await
        .unwrap();
    assert!(kv.has("k").await.unwrap());
    assert_code(
        kv.set_with_ttl("z", &1, Duration::ZERO).await,
        Code::InvalidArgument,
        "ttl is zero",
    );
    // Sub-millisecond TTLs round up to 1 ms rather than becoming "no TTL".
    kv.set_with_ttl("tiny", &1, Duration::from_micros(10))
        .await
        .unwrap();
    ctx.advance(Duration::from_millis(5)).await;
    assert!(!kv.has("tiny").await.unwrap());
}

/// A set without a value, or with an empty Value, is INVALID_ARGUMENT.
pub async fn missing_value_is_invalid(ctx: &Ctx) {
    let mut raw = ctx.raw.clone();
    assert_status(
        raw.set(request(raw_set("k", None, None), None)).await,
        Code::InvalidArgument,
        "value is required",
    );
    assert_status(
        raw.set(request(
            raw_set("k", Some(Value { kind: None }), None),
            None,
        ))
        .await,
        Code::InvalidArgument,
        "value is required",
    );
    let kindless_inside = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![number(1.0), Value { kind: None }],
        })),
    };
    assert_status(
        raw.set(request(raw_set("k", Some(kindless_inside), None), None))
            .await,
        Code::InvalidArgument,
        "$[1] has no kind",
    );
    assert!(!ctx.client.project("default").has("k").await.unwrap());
}

/// NaN and ±Infinity are refused wherever they are.
pub async fn non_finite_numbers_are_invalid(ctx: &Ctx) {
    let mut raw = ctx.raw.clone();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_status(
            raw.set(request(raw_set("k", Some(number(bad)), None), None))
                .await,
            Code::InvalidArgument,
            "JSON numbers must be finite",
        );
        let inside = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("x".to_string(), number(bad))].into(),
            })),
        };
        assert_status(
            raw.set(request(raw_set("k", Some(inside), None), None))
                .await,
            Code::InvalidArgument,
            r#"$["x"]"#,
        );
    }
    assert!(!ctx.client.project("default").has("k").await.unwrap());
}

/// 32 levels of arrays or objects are stored and read back; 33, or far
/// more, are INVALID_ARGUMENT naming the limit, and the server lives on.
pub async fn nesting_limit_is_enforced(ctx: &Ctx) {
    let mut raw = ctx.raw.clone();
    for (shape, make) in [
        ("lists", nested_lists as fn(usize) -> Value),
        ("objects", nested_objects),
    ] {
        let key = format!("deep-{shape}");
        raw.set(request(raw_set(&key, Some(make(32)), None), None))
            .await
            .unwrap_or_else(|e| panic!("32 levels of {shape}: {e}"));
        let back = raw
            .get(request(GetRequest { key: key.clone() }, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(back.value, Some(make(32)), "{shape} read back");
        for depth in [33, 100, 300] {
            assert_status(
                raw.set(request(raw_set("too-deep", Some(make(depth)), None), None))
                    .await,
                Code::InvalidArgument,
                "limit of 32 levels",
            );
        }
    }
    // Still serving.
    assert!(
        ctx.client
            .project("default")
            .has("deep-lists")
            .await
            .unwrap()
    );
    // The SDK refuses before sending.
    let deep = (0..33).fold(json!(1), |v, _| json!([v]));
    assert_code(
        ctx.client.project("default").set("x", &deep).await,
        Code::InvalidArgument,
        "limit of 32 levels",
    );
}

/// Keys are 1..=4096 bytes: empty is INVALID_ARGUMENT, longer is
/// RESOURCE_EXHAUSTED, for every RPC that takes a key.
pub async fn key_limits_are_enforced(ctx: &Ctx) {
    let kv = ctx.client.project("keys");
    let longest = "k".repeat(MAX_KEY_BYTES);
    kv.set(&longest, &1).await.unwrap();
    assert_eq!(kv.get::<i32>(&longest).await.unwrap(), Some(1));
    // Multi-byte characters count in bytes.
    let four_byte_chars = "🔑".repeat(MAX_KEY_BYTES / 4);
    kv.set(&four_byte_chars, &2).await.unwrap();

    let too_long = "k".repeat(MAX_KEY_BYTES + 1);
    let says = "the limit is 4096 bytes";
    assert_code(kv.set(&too_long, &1).await, Code::ResourceExhausted, says);
    assert_code(
        kv.get::<Json>(&too_long).await,
        Code::ResourceExhausted,
        says,
    );
    assert_code(kv.has(&too_long).await, Code::ResourceExhausted, says);
    assert_code(kv.delete(&too_long).await, Code::ResourceExhausted, says);
    let says = "key is empty";
    assert_code(kv.set("", &1).await, Code::InvalidArgument, says);
    assert_code(kv.get::<Json>("").await, Code::InvalidArgument, says);
    assert_code(kv.has("").await, Code::InvalidArgument, says);
    assert_code(kv.delete("").await, Code::InvalidArgument, says);
}

/// Values of several MiB work; over 16 MiB encoded is RESOURCE_EXHAUSTED
/// naming the limit, whether just over or far over.
pub async fn large_values_work_and_oversize_is_refused(ctx: &Ctx) {
    let kv = ctx.client.project("big");
    let five_mib = "x".repeat(5 * 1024 * 1024);
    kv.set("five", &five_mib).await.unwrap();
    assert_eq!(
        kv.get::<String>("five").await.unwrap().as_deref(),
        Some(five_mib.as_str())
    );

    // A string value encodes as tag + varint length (4 bytes here) + bytes.
    let largest = "y".repeat(MAX_VALUE_BYTES - 5);
    kv.set("largest", &largest).await.unwrap();
    assert_eq!(
        kv.get::<String>("largest").await.unwrap().map(|s| s.len()),
        Some(largest.len())
    );

    let just_over = "y".repeat(MAX_VALUE_BYTES - 4);
    assert_code(
        kv.set("over", &just_over).await,
        Code::ResourceExhausted,
        &format!("the limit is {MAX_VALUE_BYTES} bytes"),
    );
    let well_over = "z".repeat(MAX_VALUE_BYTES + 4 * 1024 * 1024);
    assert_code(
        kv.set("over", &well_over).await,
        Code::ResourceExhausted,
        &format!("the limit is {MAX_VALUE_BYTES} bytes"),
    );
    // Past the message limit (room for a multi-key call), the transport
    // refuses it before decoding, with the same code.
    let far_over = "z".repeat(2 * MAX_VALUE_BYTES + 8 * 1024 * 1024);
    assert_code(
        kv.set("over", &far_over).await,
        Code::ResourceExhausted,
        "larger than the limit",
    );
    assert!(!kv.has("over").await.unwrap());
    assert!(kv.has("five").await.unwrap(), "server still serving");
}

/// Integers beyond ±2^53 are refused by the SDK, never rounded.
pub async fn unsafe_integers_are_refused_by_the_sdk(ctx: &Ctx) {
    let kv = ctx.client.project("numbers");
    let max = 9_007_199_254_740_992_u64;
    kv.set("max", &max).await.unwrap();
    assert_eq!(kv.get::<u64>("max").await.unwrap(), Some(max));
    assert_code(
        kv.set("over", &(max + 1)).await,
        Code::InvalidArgument,
        "2^53",
    );
    assert_code(
        kv.set("over", &json!({"id": u64::MAX})).await,
        Code::InvalidArgument,
        "2^53",
    );
    assert_code(
        kv.set("over", &i64::MIN).await,
        Code::InvalidArgument,
        "2^53",
    );
    assert!(!kv.has("over").await.unwrap());
}

/// Nothing one project does is visible to another.
pub async fn projects_are_isolated(ctx: &Ctx) {
    let a = ctx.client.project("tenant-a");
    let b = ctx.client.project("tenant-b");
    a.set("shared-name", &"a's").await.unwrap();
    a.set("only-a", &1).await.unwrap();
    b.set("shared-name", &"b's").await.unwrap();

    assert_eq!(b.get::<Json>("only-a").await.unwrap(), None);
    assert!(!b.has("only-a").await.unwrap());
    assert!(!b.delete("only-a").await.unwrap());
    assert_eq!(b.clear().await.unwrap(), 1, "b clears only its own key");
    assert_eq!(
        a.get::<String>("shared-name").await.unwrap().as_deref(),
        Some("a's")
    );
    assert!(a.has("only-a").await.unwrap());
    assert_eq!(b.get::<Json>("shared-name").await.unwrap(), None);
    // Names differing only in case are different projects.
    let upper = ctx.client.project("TENANT-A");
    assert!(!upper.has("only-a").await.unwrap());
}

/// Without `x-kv-project` a request acts on the project `default`.
pub async fn default_project_when_header_absent(ctx: &Ctx) {
    let mut raw = ctx.raw.clone();
    raw.set(request(raw_set("k", Some(number(7.0)), None), None))
        .await
        .unwrap();
    assert_eq!(
        ctx.client.project("default").get::<i32>("k").await.unwrap(),
        Some(7)
    );
    assert!(!ctx.client.project("other").has("k").await.unwrap());
}

/// A bad project name is INVALID_ARGUMENT naming the rule, from the server
/// (raw client) and from the SDK (before sending).
pub async fn invalid_project_names_are_refused(ctx: &Ctx) {
    let mut raw = ctx.raw.clone();
    let too_long = "p".repeat(65);
    for bad in ["", "has space", "slash/y", "colon:y", too_long.as_str()] {
        assert_status(
            raw.has(request(HasRequest { key: "k".into() }, Some(bad)))
                .await,
            Code::InvalidArgument,
            "x-kv-project",
        );
        assert_code(
            ctx.client.project(bad).has("k").await,
            Code::InvalidArgument,
            "[A-Za-z0-9_.-]",
        );
    }
    // Bytes past ASCII (obs-text) are legal in HTTP/2 headers but not in a
    // project name.
    let mut non_ascii = tonic::Request::new(HasRequest { key: "k".into() });
    let latin1 = tonic::metadata::AsciiMetadataValue::try_from(b"caf\xe9".as_slice())
        .expect("obs-text is a legal header value");
    non_ascii.metadata_mut().insert("x-kv-project", latin1);
    assert_status(
        raw.has(non_ascii).await,
        Code::InvalidArgument,
        "x-kv-project",
    );
    let longest = "p".repeat(64);
    ctx.client.project(&longest).set("k", &1).await.unwrap();
    ctx.client.project("A.b_c-9").set("k", &1).await.unwrap();
}

/// Delete says true only when a live key was removed.
pub async fn delete_reports_whether_a_live_key_was_removed(ctx: &Ctx) {
    let kv = ctx.client.project("del");
    kv.set("k", &1).await.unwrap();
    assert!(kv.delete("k").await.unwrap());
    assert!(!kv.delete("k").await.unwrap());
    assert!(!kv.has("k").await.unwrap());
    kv.set_with_ttl("t", &1, Duration::from_millis(200))
        .await
        .unwrap();
    ctx.advance(Duration::from_millis(300)).await;
    assert!(!kv.delete("t").await.unwrap());
    // A deleted key can be written again.
    kv.set("k", &2).await.unwrap();
    assert_eq!(kv.get::<i32>("k").await.unwrap(), Some(2));
}

/// Clear removes every key of the project and counts only live ones.
pub async fn clear_counts_live_keys_and_spares_other_projects(ctx: &Ctx) {
    let kv = ctx.client.project("clear-me");
    let other = ctx.client.project("keep-me");
    for i in 0..10 {
        kv.set(&format!("k{i}"), &i).await.unwrap();
    }
    kv.set_with_ttl("gone1", &1, Duration::from_millis(200))
        .await
        .unwrap();
    kv.set_with_ttl("gone2", &1, Duration::from_millis(200))
        .await
        .unwrap();
    kv.set_with_ttl("alive", &1, Duration::from_secs(3600))
        .await
        .unwrap();
    other.set("k0", &"kept").await.unwrap();
    ctx.advance(Duration::from_millis(300)).await;
    assert_eq!(kv.clear().await.unwrap(), 11);
    for i in 0..10 {
        assert!(!kv.has(&format!("k{i}")).await.unwrap());
    }
    assert!(!kv.has("alive").await.unwrap());
    assert_eq!(kv.clear().await.unwrap(), 0);
    assert_eq!(
        other.get::<String>("k0").await.unwrap().as_deref(),
        Some("kept")
    );
    assert_eq!(ctx.client.project("never-used").clear().await.unwrap(), 0);
    kv.set("after", &1).await.unwrap();
    assert!(kv.has("after").await.unwrap());
}

/// Many tasks over shared and private keys and projects: no deadlock, no
/// lost acknowledged set, no value that nobody wrote.
pub async fn concurrent_writers_lose_no_acknowledged_set(ctx: &Ctx) {
    const TASKS: usize = 32;
    const ROUNDS: usize = 50;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = ctx.client.clone();
        tasks.push(tokio::spawn(async move {
            let project = client.project(&format!("c{}", t % 4));
            let shared = client.project("c-shared");
            for r in 0..ROUNDS {
                project.set(&format!("own-{t}"), &r).await.unwrap();
                shared.set("hot", &json!([t, r])).await.unwrap();
                shared
                    .set(&format!("hot-{}", r % 5), &json!([t, r]))
                    .await
                    .unwrap();
                if r % 10 == 0 {
                    shared
                        .delete(&format!("hot-{}", (r + 1) % 5))
                        .await
                        .unwrap();
                }
                assert_eq!(
                    project.get::<usize>(&format!("own-{t}")).await.unwrap(),
                    Some(r)
                );
            }
        }));
    }
    // A clearing task in a project nobody else uses must not disturb them.
    let clearer = ctx.client.project("c-clear");
    let clearing = tokio::spawn(async move {
        for i in 0..ROUNDS {
            clearer.set(&format!("x{i}"), &i).await.unwrap();
            clearer.clear().await.unwrap();
        }
    });
    let all = async {
        for task in tasks {
            task.await.expect("writer task");
        }
        clearing.await.expect("clearing task");
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("no deadlock: writers finish within 60 s");

    for t in 0..TASKS {
        let project = ctx.client.project(&format!("c{}", t % 4));
        assert_eq!(
            project.get::<usize>(&format!("own-{t}")).await.unwrap(),
            Some(ROUNDS - 1),
            "task {t}'s last acknowledged set"
        );
    }
    let written: HashSet<(usize, usize)> = (0..TASKS)
        .flat_map(|t| (0..ROUNDS).map(move |r| (t, r)))
        .collect();
    let hot: (usize, usize) = ctx
        .client
        .project("c-shared")
        .get("hot")
        .await
        .unwrap()
        .expect("hot key present");
    assert!(
        written.contains(&hot),
        "hot = {hot:?} was written by some task"
    );
}
