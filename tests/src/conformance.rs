//! The conformance cases. Each one starts from an empty server and checks
//! one part of the contract through the SDK, or through the raw gRPC client
//! for input the SDK refuses to send. Cases avoid assumptions about the
//! backend beyond the documented defaults (4096-byte keys, 16 MiB values,
//! 10-year TTLs, 32 levels of nesting).

use std::{collections::HashSet, fmt::Debug, time::Duration};

use kv_client::{
    Code, DeleteOptions, Error, EventKind, IncrOptions, ListOptions, MergeOptions, SetOptions,
    WatchOptions,
};
use kv_proto::v1::{GetRequest, HasRequest, SetRequest};
use prost_types::{ListValue, Struct, Value, value::Kind};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::ctx::{Ctx, next_event};

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

/// Every change of a project gets its next version; Get returns the entry's
/// version and deadline; projects count separately.
pub async fn versions_count_up_per_project(ctx: &Ctx) {
    let kv = ctx.client.project("versions");
    assert_eq!(
        kv.set_with("a", &1, SetOptions::new())
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        kv.set_with("b", &2, SetOptions::new())
            .await
            .unwrap()
            .version,
        2
    );
    let a = kv.get_entry::<i64>("a").await.unwrap().unwrap();
    assert_eq!((a.value, a.version, a.expires_at_ms), (1, 1, None));
    let ttl = kv
        .set_with("t", &3, SetOptions::new().ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(ttl.version, 3);
    let t = kv.get_entry::<i64>("t").await.unwrap().unwrap();
    let deadline = t.expires_at_ms.expect("a deadline");
    let now = now_ms(ctx);
    assert!(
        deadline > now + 55_000 && deadline <= now + 61_000,
        "deadline {deadline} vs now {now}"
    );
    let deleted = kv.delete_with("a", DeleteOptions::new()).await.unwrap();
    assert_eq!((deleted.deleted, deleted.version), (true, 4));
    // Deleting what is not there changes nothing and takes no version.
    let again = kv.delete_with("a", DeleteOptions::new()).await.unwrap();
    assert_eq!((again.deleted, again.version), (false, 0));
    assert_eq!(
        kv.set_with("a", &5, SetOptions::new())
            .await
            .unwrap()
            .version,
        5
    );
    let other = ctx.client.project("versions-other");
    assert_eq!(
        other
            .set_with("a", &1, SetOptions::new())
            .await
            .unwrap()
            .version,
        1
    );
}

/// The time the server's clock shows, as well as the test can tell.
fn now_ms(ctx: &Ctx) -> u64 {
    use kv_engine::Clock;
    match &ctx.time {
        crate::Time::Manual(clock) => clock.now_ms(),
        crate::Time::Real => kv_engine::SystemClock.now_ms(),
    }
}

/// if_absent and if_version apply only when they hold; a failed condition
/// is an answer carrying the current version; keep_ttl keeps the deadline.
pub async fn conditional_sets_compare_and_swap(ctx: &Ctx) {
    let kv = ctx.client.project("cas");
    let first = kv.set_if_absent("k", &"first").await.unwrap();
    assert_eq!((first.applied, first.version), (true, 1));
    let second = kv.set_if_absent("k", &"second").await.unwrap();
    assert_eq!((second.applied, second.version), (false, 1));
    assert_eq!(kv.get::<String>("k").await.unwrap().unwrap(), "first");

    let stale = kv.compare_and_swap("k", 7, &"stale").await.unwrap();
    assert_eq!((stale.applied, stale.version), (false, 1));
    let swapped = kv.compare_and_swap("k", 1, &"swapped").await.unwrap();
    assert_eq!((swapped.applied, swapped.version), (true, 2));
    assert_eq!(kv.get::<String>("k").await.unwrap().unwrap(), "swapped");
    // CAS on a missing key never applies.
    let missing = kv.compare_and_swap("nope", 1, &1).await.unwrap();
    assert_eq!((missing.applied, missing.version), (false, 0));
    assert_code(
        kv.set_with("k", &1, SetOptions::new().if_version(0)).await,
        Code::InvalidArgument,
        "versions start at 1",
    );
    let mut both = raw_set("k", Some(number(1.0)), None);
    both.if_absent = true;
    both.if_version = Some(2);
    assert_status(
        ctx.raw.clone().set(request(both, Some("cas"))).await,
        Code::InvalidArgument,
        "if_absent and if_version exclude each other",
    );

    kv.set_with_ttl("ttl", &1, Duration::from_secs(60))
        .await
        .unwrap();
    let deadline = kv
        .get_entry::<i64>("ttl")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms;
    kv.set_with("ttl", &2, SetOptions::new().keep_ttl())
        .await
        .unwrap();
    let kept = kv.get_entry::<i64>("ttl").await.unwrap().unwrap();
    assert_eq!((kept.value, kept.expires_at_ms), (2, deadline));
    kv.set("ttl", &3).await.unwrap();
    assert_eq!(
        kv.get_entry::<i64>("ttl")
            .await
            .unwrap()
            .unwrap()
            .expires_at_ms,
        None
    );
    // An expired key is absent for if_absent.
    kv.set_with_ttl("short", &1, Duration::from_millis(50))
        .await
        .unwrap();
    ctx.advance(Duration::from_millis(60)).await;
    assert!(kv.set_if_absent("short", &2).await.unwrap().applied);
}

/// Incr adds to numbers (absent counts as 0), refuses non-numbers and
/// results beyond ±2^53 without changing anything.
pub async fn incr_adds_and_refuses_what_is_not_a_number(ctx: &Ctx) {
    let kv = ctx.client.project("incr");
    assert_eq!(kv.incr("n", 5.0).await.unwrap(), 5.0);
    assert_eq!(kv.incr("n", -7.0).await.unwrap(), -2.0);
    assert_eq!(kv.incr("n", 0.5).await.unwrap(), -1.5);
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(-1.5));
    kv.set("s", &"text").await.unwrap();
    assert_code(
        kv.incr("s", 1.0).await,
        Code::FailedPrecondition,
        "not a number",
    );
    kv.set("o", &json!({"a": 1})).await.unwrap();
    assert_code(kv.incr("o", 1.0).await, Code::FailedPrecondition, "object");
    let max = 9_007_199_254_740_992_f64;
    kv.set("big", &(max as u64 - 1)).await.unwrap();
    assert_eq!(kv.incr("big", 1.0).await.unwrap(), max);
    assert_code(
        kv.incr("big", 1.0).await,
        Code::FailedPrecondition,
        "9007199254740992",
    );
    assert_eq!(kv.get::<u64>("big").await.unwrap(), Some(max as u64));
    let mut raw = kv_proto::v1::IncrRequest {
        key: "n".into(),
        delta: f64::INFINITY,
        ..Default::default()
    };
    assert_status(
        ctx.raw
            .clone()
            .incr(request(raw.clone(), Some("incr")))
            .await,
        Code::InvalidArgument,
        "delta",
    );
    raw.delta = 1e300;
    assert_status(
        ctx.raw.clone().incr(request(raw, Some("incr"))).await,
        Code::InvalidArgument,
        "2^53",
    );
}

/// Incr with a TTL is a fixed window: the deadline is set when the key is
/// made and kept by later increments; after it, counting starts again.
pub async fn incr_with_ttl_is_a_fixed_window(ctx: &Ctx) {
    let kv = ctx.client.project("window");
    let options = || IncrOptions::new().ttl(Duration::from_millis(400));
    assert_eq!(kv.incr_with("w", 1.0, options()).await.unwrap().value, 1.0);
    let deadline = kv
        .get_entry::<f64>("w")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms;
    assert!(deadline.is_some());
    ctx.advance(Duration::from_millis(100)).await;
    assert_eq!(kv.incr_with("w", 1.0, options()).await.unwrap().value, 2.0);
    assert_eq!(
        kv.get_entry::<f64>("w")
            .await
            .unwrap()
            .unwrap()
            .expires_at_ms,
        deadline,
        "later increments keep the window's deadline"
    );
    ctx.advance(Duration::from_millis(400)).await;
    assert_eq!(kv.incr_with("w", 1.0, options()).await.unwrap().value, 1.0);
}

/// Merge applies RFC 7386: members replace, null removes, objects merge, a
/// non-object patch replaces; it returns the merged value.
pub async fn merge_applies_json_merge_patch(ctx: &Ctx) {
    let kv = ctx.client.project("merge");
    let merged: Json = kv
        .merge("p", &json!({"a": 1, "b": {"c": 2}}))
        .await
        .unwrap();
    assert_eq!(merged, json!({"a": 1, "b": {"c": 2}}));
    let merged: Json = kv
        .merge("p", &json!({"a": null, "b": {"d": [1]}, "e": "x"}))
        .await
        .unwrap();
    assert_eq!(merged, json!({"b": {"c": 2, "d": [1]}, "e": "x"}));
    assert_eq!(kv.get::<Json>("p").await.unwrap(), Some(merged));
    let replaced: Json = kv.merge("p", &json!([1, 2])).await.unwrap();
    assert_eq!(replaced, json!([1, 2]));
    kv.set("scalar", &5).await.unwrap();
    let over: Json = kv.merge("scalar", &json!({"k": true})).await.unwrap();
    assert_eq!(over, json!({"k": true}));
    // No TTL in the merge keeps the key's deadline; a TTL sets a new one.
    kv.set_with_ttl("t", &json!({}), Duration::from_secs(60))
        .await
        .unwrap();
    let deadline = kv
        .get_entry::<Json>("t")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms;
    let _: Json = kv.merge("t", &json!({"x": 1})).await.unwrap();
    assert_eq!(
        kv.get_entry::<Json>("t")
            .await
            .unwrap()
            .unwrap()
            .expires_at_ms,
        deadline
    );
    let with_ttl: kv_client::Versioned<Json> = kv
        .merge_with(
            "t",
            &json!({"y": 2}),
            MergeOptions::new().ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(with_ttl.value, json!({"x": 1, "y": 2}));
    let after = kv
        .get_entry::<Json>("t")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms
        .unwrap();
    assert!(
        after < deadline.unwrap(),
        "the merge's TTL replaced the deadline"
    );
}

/// A batch applies its ops only when every check holds and every op
/// succeeds; results come back per op.
pub async fn batch_is_all_or_nothing(ctx: &Ctx) {
    let kv = ctx.client.project("batch");
    kv.set("a", &10).await.unwrap();
    kv.set("text", &"t").await.unwrap();
    let failed = kv
        .batch()
        .check_version("a", 99)
        .set("b", &1)
        .commit()
        .await
        .unwrap();
    assert!(!failed.applied);
    assert_eq!((failed.failed_check, failed.current_version), (Some(0), 1));
    assert!(failed.results.is_empty());
    assert!(!kv.has("b").await.unwrap());

    // An op that fails (incr of a string) undoes the ops before it.
    let refused = kv
        .batch()
        .set("b", &1)
        .incr("a", 5.0)
        .incr("text", 1.0)
        .commit()
        .await;
    assert_code(refused, Code::FailedPrecondition, "not a number");
    assert!(!kv.has("b").await.unwrap());
    assert_eq!(kv.get::<i64>("a").await.unwrap(), Some(10));

    let done = kv
        .batch()
        .check_version("a", 1)
        .check_absent("b")
        .set("b", &1)
        .incr("a", 5.0)
        .incr("a", 1.0)
        .merge("m", &json!({"k": "v"}))
        .delete("text")
        .commit()
        .await
        .unwrap();
    assert!(done.applied);
    let versions: Vec<u64> = done.results.iter().map(|r| r.version()).collect();
    assert_eq!(versions, vec![3, 4, 5, 6, 7]);
    assert_eq!(kv.get::<i64>("a").await.unwrap(), Some(16));
    assert_eq!(kv.get::<Json>("m").await.unwrap(), Some(json!({"k": "v"})));
    assert!(!kv.has("text").await.unwrap());
}

/// GetMany, SetMany and DeleteMany work on many keys in one call.
pub async fn bulk_calls_read_and_write_many_keys(ctx: &Ctx) {
    let kv = ctx.client.project("bulk");
    let values: Vec<(String, i64)> = (0..50).map(|i| (format!("k{i:02}"), i)).collect();
    let versions = kv
        .set_many(values.iter().map(|(k, v)| (k.as_str(), v)))
        .await
        .unwrap();
    assert_eq!(versions, (1..=50).collect::<Vec<u64>>());
    let got = kv
        .get_many::<i64, _>(["k03", "missing", "k49", "k03"])
        .await
        .unwrap();
    let got: Vec<Option<i64>> = got.into_iter().map(|e| e.map(|e| e.value)).collect();
    assert_eq!(got, vec![Some(3), None, Some(49), Some(3)]);
    assert_eq!(kv.delete_many(["k00", "k01", "missing"]).await.unwrap(), 2);
    assert!(!kv.has("k00").await.unwrap());
    assert_status(
        ctx.raw
            .clone()
            .get_many(request(
                kv_proto::v1::GetManyRequest::default(),
                Some("bulk"),
            ))
            .await,
        Code::InvalidArgument,
        "keys has 0 items; it must have 1 to 1000",
    );
    let too_many: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    assert_code(
        kv.get_many::<i64, _>(&too_many).await,
        Code::ResourceExhausted,
        "1 to 1000",
    );
}

/// List pages through live keys in byte order with a cursor, by prefix,
/// without expired keys, and refuses pages over 1000.
pub async fn list_pages_in_key_order(ctx: &Ctx) {
    let kv = ctx.client.project("list");
    let mut keys: Vec<String> = (0..25).map(|i| format!("item:{i}")).collect();
    keys.extend(["a", "a/b", "ab", "é", "item"].map(String::from));
    for key in keys.iter().rev() {
        kv.set(key, &key.len()).await.unwrap();
    }
    kv.set_with_ttl("item:gone", &0, Duration::from_millis(50))
        .await
        .unwrap();
    ctx.advance(Duration::from_millis(60)).await;
    keys.sort();
    let mut seen = Vec::new();
    let mut options = ListOptions::new().limit(4);
    loop {
        let page = kv.list(options.clone()).await.unwrap();
        assert!(page.entries.len() <= 4);
        seen.extend(page.entries.into_iter().map(|e| e.key));
        match page.next_start_after {
            Some(after) => options = options.start_after(after),
            None => break,
        }
    }
    assert_eq!(seen, keys);
    let items = kv.list_all("item:").await.unwrap();
    assert_eq!(items.len(), 25);
    assert!(items.iter().all(|e| e.key.starts_with("item:")));
    assert_eq!(items[0].value, Some(json!(6)));
    let keys_only = kv.list(ListOptions::new().keys_only()).await.unwrap();
    assert!(keys_only.entries.iter().all(|e| e.value.is_none()));
    // 31 writes, and the expiry of item:gone once the expiry task ran.
    assert!(
        (31..=32).contains(&keys_only.version),
        "page version {}",
        keys_only.version
    );
    let newest = keys_only.entries.iter().map(|e| e.version).max();
    assert_eq!(newest, Some(30), "the page reflects every write");
    assert_code(
        kv.list(ListOptions::new().limit(1001)).await,
        Code::InvalidArgument,
        "the maximum is 1000",
    );
}

/// A watch delivers each change once, in version order, with its cause:
/// sets with values, deletes, expiries and one event per clear; projects
/// are separate; resuming from a version replays what followed it.
pub async fn watch_reports_changes_with_causes(ctx: &Ctx) {
    let kv = ctx.client.project("watched");
    let other = ctx.client.project("unwatched");
    let mut all = kv.watch(WatchOptions::all()).await.unwrap();
    let mut one = kv.watch(WatchOptions::key("k")).await.unwrap();
    other.set("k", &"elsewhere").await.unwrap();
    kv.set("k", &1).await.unwrap();
    kv.incr("n", 2.0).await.unwrap();
    kv.set_with_ttl("t", &true, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(kv.delete("k").await.unwrap());
    ctx.advance(Duration::from_millis(150)).await;
    let mut expected = vec![
        (EventKind::Set, "k", Some(json!(1)), 1),
        (EventKind::Set, "n", Some(json!(2)), 2),
        (EventKind::Set, "t", Some(json!(true)), 3),
        (EventKind::Deleted, "k", None, 4),
        (EventKind::Expired, "t", None, 5),
    ];
    for (kind, key, value, version) in &expected {
        let event = next_event(&mut all).await;
        assert_eq!(
            (event.kind, event.key.as_str(), &event.value, event.version),
            (*kind, *key, value, *version)
        );
    }
    assert_eq!(kv.clear().await.unwrap(), 1);
    let cleared = next_event(&mut all).await;
    assert_eq!(
        (cleared.kind, cleared.key.as_str(), cleared.version),
        (EventKind::Cleared, "", 6)
    );
    // The key watch saw only its key, and the clear.
    let mine: Vec<(EventKind, u64)> = [
        next_event(&mut one).await,
        next_event(&mut one).await,
        next_event(&mut one).await,
    ]
    .iter()
    .map(|e| (e.kind, e.version))
    .collect();
    assert_eq!(
        mine,
        vec![
            (EventKind::Set, 1),
            (EventKind::Deleted, 4),
            (EventKind::Cleared, 6)
        ]
    );
    // Resume from version 3: the changes after it, again.
    let mut resumed = kv.watch(WatchOptions::all().from_version(3)).await.unwrap();
    expected.push((EventKind::Cleared, "", None, 6));
    for (kind, _, _, version) in &expected[3..] {
        let event = next_event(&mut resumed).await;
        assert_eq!((event.kind, event.version), (*kind, *version));
    }
    assert_code(
        kv.watch(WatchOptions::all().from_version(60))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "ahead of the project's current version 6",
    );
}

/// A write retried with its request id is applied once and answers the
/// first outcome; the same id with another request is refused.
pub async fn request_ids_make_retries_safe(ctx: &Ctx) {
    let kv = ctx.client.project("retries");
    let options = || IncrOptions::new().request_id("incr-1");
    let first = kv.incr_with("n", 1.0, options()).await.unwrap();
    let retry = kv.incr_with("n", 1.0, options()).await.unwrap();
    assert_eq!((retry.value, retry.version), (first.value, first.version));
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(1.0));
    assert_code(
        kv.incr_with("n", 2.0, options()).await,
        Code::FailedPrecondition,
        "already used for a different request",
    );
    // Ids are per project.
    let elsewhere = ctx.client.project("retries-2");
    assert_eq!(
        elsewhere
            .incr_with("n", 1.0, options())
            .await
            .unwrap()
            .value,
        1.0
    );
    // A conditional write's first answer stands even once it would differ.
    let set = || SetOptions::new().if_absent().request_id("set-1");
    assert!(kv.set_with("once", &1, set()).await.unwrap().applied);
    assert!(kv.set_with("once", &1, set()).await.unwrap().applied);
    assert!(!kv.set_if_absent("once", &1).await.unwrap().applied);
}
