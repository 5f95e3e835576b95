//! Per-project rate limits: exact admission counts per one-second window on
//! the manual clock (unary and pipelined calls, bytes written), the
//! `retry-after-ms` hint, server defaults against a project's own quota, a
//! flooding project next to a quiet one, and the real binary's trailer.

use std::{sync::Arc, time::Duration};

use kv_client::Code;
use kv_engine::{ManualClock, Quota, wal::LogOptions};
use kv_proto::v1::{GetRequest, SetRequest, kv_service_client::KvServiceClient};
use kv_server::config::Config;
use kv_tests::{BinaryServer, CLOCK_START_MS, InProcess, InProcessDurable, Target};
use prost_types::{Value, value::Kind};
use tonic::{Request, Status, transport::Channel};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

fn config(defaults: Quota) -> Config {
    Config {
        log: LogOptions {
            quota: defaults,
            ..LogOptions::default()
        },
        ..Config::default()
    }
}

fn ops(n: u64) -> Quota {
    Quota {
        ops_per_second: Some(n),
        ..Quota::default()
    }
}

fn on<T>(project: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-kv-project", project.parse().unwrap());
    request
}

/// A string value whose canonical encoding is `len + 2` bytes (tag and
/// one-byte length, for `len` under 128).
fn text(len: usize) -> Option<Value> {
    Some(Value {
        kind: Some(Kind::StringValue("x".repeat(len))),
    })
}

fn set(key: &str, value_len: usize) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: text(value_len),
        ..SetRequest::default()
    }
}

fn retry_after(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A unary get or set on `project`: even calls write, odd ones read.
async fn call(raw: &mut KvServiceClient<Channel>, project: &str, i: usize) -> Result<(), Status> {
    if i.is_multiple_of(2) {
        raw.set(on(project, set(&format!("k{i}"), 1))).await?;
    } else {
        let get = GetRequest {
            key: format!("k{}", i - 1),
        };
        raw.get(on(project, get)).await?;
    }
    Ok(())
}

fn assert_refused(status: &Status, says: &str, retry_ms: u64) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(says),
        "{status:?} does not say {says:?}"
    );
    assert_eq!(retry_after(status), Some(retry_ms), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_are_admitted_exactly_up_to_the_limit_per_window() {
    let server = InProcess::start_with(config(ops(50))).await;
    let mut raw = server.ctx().raw.clone();
    // A quarter into a window: it reopens in 750 ms.
    server.clock.advance(250);
    for window in 0..3 {
        for i in 0..50 {
            call(&mut raw, "shop", i)
                .await
                .unwrap_or_else(|e| panic!("window {window}, call {i}: {e:?}"));
        }
        // Refused calls count toward nothing: the window stays at 50.
        for _ in 0..3 {
            let refused = call(&mut raw, "shop", 0).await.unwrap_err();
            assert_refused(
                &refused,
                "project shop is over its limit of 50 operations per second (server default --default-ops-per-second); retry after 750 ms",
                750,
            );
        }
        server.clock.advance(749);
        let refused = call(&mut raw, "shop", 1).await.unwrap_err();
        assert_refused(&refused, "retry after 1 ms", 1);
        server.clock.advance(1 + 250);
    }
    // Another project has a window of its own.
    call(&mut raw, "other", 0).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_per_second_are_limited_and_reads_are_not() {
    let limit = Quota {
        write_bytes_per_second: Some(100),
        ..Quota::default()
    };
    let server = InProcess::start_with(config(limit)).await;
    let mut raw = server.ctx().raw.clone();
    // Key 1 byte + value 48 (46 characters, tag, length) = 49 bytes each.
    raw.set(on("shop", set("a", 46))).await.unwrap();
    raw.set(on("shop", set("b", 46))).await.unwrap();
    let refused = raw.set(on("shop", set("c", 1))).await.unwrap_err();
    assert_refused(
        &refused,
        "project shop is over its limit of 100 bytes written per second (server default --default-write-bytes-per-second): 98 written in this second, this write is 4",
        1000,
    );
    // The two bytes left still fit a write of exactly two bytes: a delete
    // of a two-byte key.
    let delete = kv_proto::v1::DeleteRequest {
        key: "zz".into(),
        ..Default::default()
    };
    raw.delete(on("shop", delete)).await.unwrap();
    // Reads write nothing.
    for _ in 0..20 {
        raw.get(on("shop", GetRequest { key: "a".into() }))
            .await
            .unwrap();
    }
    // A single write larger than the limit is refused for good: no hint.
    let huge = raw.set(on("shop", set("d", 120))).await.unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted);
    assert!(huge.message().contains("can never be admitted"), "{huge:?}");
    assert_eq!(retry_after(&huge), None);
    server.clock.advance(1000);
    raw.set(on("shop", set("c", 1))).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_are_counted_and_carry_the_hint() {
    let server = InProcess::start_with(config(ops(10))).await;
    server.clock.advance(600);
    // The SDK sends concurrent calls over its Pipeline stream.
    let kv = server.ctx().client.project("shop");
    let calls: Vec<_> = (0..25)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.set(&format!("k{i}"), &i).await })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                assert!(
                    e.to_string().contains("limit of 10 operations per second"),
                    "{e}"
                );
                assert_eq!(e.retry_after(), Some(Duration::from_millis(400)));
                refused += 1;
            }
        }
    }
    assert_eq!((admitted, refused), (10, 15));
    let e = kv.get::<i32>("k0").await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_millis(400)));
    server.clock.advance(400);
    kv.get::<i32>("k0").await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_project_does_not_hold_back_a_quiet_one() {
    let server = InProcess::start_with(config(ops(100))).await;
    let flooders: Vec<_> = (0..16)
        .map(|t| {
            let kv = server.ctx().client.project("flood");
            tokio::spawn(async move {
                let (mut admitted, mut refused) = (0, 0);
                for i in 0..100 {
                    match kv.set(&format!("t{t}-{i}"), &i).await {
                        Ok(()) => admitted += 1,
                        Err(e) => {
                            assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                            refused += 1;
                        }
                    }
                }
                (admitted, refused)
            })
        })
        .collect();
    let quiet = server.ctx().client.project("quiet");
    // 80 calls: within the quiet project's own 100 per second.
    for i in 0..40 {
        quiet.set(&format!("q{i}"), &i).await.unwrap();
        let _: Option<i32> = quiet.get(&format!("q{i}")).await.unwrap();
    }
    let (mut admitted, mut refused) = (0, 0);
    for flooder in flooders {
        let (a, r) = flooder.await.unwrap();
        admitted += a;
        refused += r;
    }
    assert_eq!((admitted, refused), (100, 1500));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_quota_overrides_the_server_default() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let server = InProcessDurable::start_in(dir.path(), config(ops(5)), clock).await;
    let admin = server.ctx().client.admin();
    let free = admin
        .create_project("free", ops(0).into_client())
        .await
        .unwrap();
    assert_eq!(free.quota.ops_per_second, Some(0));
    admin
        .create_project("capped", kv_client::Quota::default())
        .await
        .unwrap();
    let capped = admin
        .set_quota("capped", ops(2).into_client())
        .await
        .unwrap();
    assert_eq!(capped.quota.ops_per_second, Some(2));
    assert_eq!(
        admin
            .get_project("capped")
            .await
            .unwrap()
            .quota
            .ops_per_second,
        Some(2)
    );
    let mut raw = server.ctx().raw.clone();
    for i in 0..40 {
        call(&mut raw, "free", i).await.unwrap();
    }
    for i in 0..2 {
        call(&mut raw, "capped", i).await.unwrap();
    }
    let refused = call(&mut raw, "capped", 0).await.unwrap_err();
    assert_refused(
        &refused,
        "project capped is over its limit of 2 operations per second (quota ops_per_second)",
        1000,
    );
    for i in 0..5 {
        call(&mut raw, "plain", i).await.unwrap();
    }
    let refused = call(&mut raw, "plain", 0).await.unwrap_err();
    assert_refused(
        &refused,
        "limit of 5 operations per second (server default",
        1000,
    );
    server.stop().await;
}

trait IntoClient {
    fn into_client(self) -> kv_client::Quota;
}

impl IntoClient for Quota {
    fn into_client(self) -> kv_client::Quota {
        kv_client::Quota {
            max_keys: self.max_keys,
            max_bytes: self.max_bytes,
            ops_per_second: self.ops_per_second,
            write_bytes_per_second: self.write_bytes_per_second,
        }
    }
}

/// Unary sets on `project` until one is refused (at most `max` calls):
/// how many were admitted, and the refusal.
async fn until_refused(
    raw: &mut KvServiceClient<Channel>,
    project: &str,
    max: usize,
) -> (usize, Status) {
    for i in 0..max {
        if let Err(status) = raw.set(on(project, set(&format!("k{i}"), 1))).await {
            return (i, status);
        }
    }
    panic!("{max} calls of {project} were all admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_the_trailer_and_applies_quotas_set_through_the_admin_api() {
    let server = BinaryServer::start(BIN, &["--default-ops-per-second", "3"]);
    let url = format!("http://{}", server.addr);
    let client = kv_client::Client::connect(url.clone()).await.unwrap();
    let admin = client.admin();
    admin
        .create_project("shop", ops(5).into_client())
        .await
        .unwrap();
    let mut raw = KvServiceClient::connect(url).await.unwrap();

    let (admitted, refused) = until_refused(&mut raw, "shop", 100).await;
    // The calls may straddle a window boundary: between one and two
    // windows' worth were admitted.
    assert!((5..=10).contains(&admitted), "{admitted} admitted");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains(
            "project shop is over its limit of 5 operations per second (quota ops_per_second)"
        ),
        "{refused:?}"
    );
    let wait = retry_after(&refused).expect("a retry-after-ms trailer");
    assert!((1..=1000).contains(&wait), "retry after {wait} ms");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    raw.set(on("shop", set("again", 1))).await.unwrap();

    // A project without a quota of its own gets the server default.
    let (admitted, refused) = until_refused(&mut raw, "other", 100).await;
    assert!((3..=6).contains(&admitted), "{admitted} admitted");
    assert!(
        refused
            .message()
            .contains("limit of 3 operations per second (server default --default-ops-per-second)"),
        "{refused:?}"
    );

    // Lifting the limit through the admin API takes effect at once.
    admin.set_quota("shop", ops(0).into_client()).await.unwrap();
    for i in 0..30 {
        raw.set(on("shop", set(&format!("free{i}"), 1)))
            .await
            .unwrap();
    }
    assert!(server.terminate().success());
}
