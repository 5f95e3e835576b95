//! Per-project rate limits: exact admission counts per one-second window on
//! the manual clock (unary and pipelined calls, bytes written), the
//! `retry-after-ms` hint, server defaults against a project's own quota, a
//! flooding project next to a quiet one, and the real binary's trailer;
//! then per-token limits on top of the project's (unary, bytes, pipelined,
//! the binary with a token created through the admin API).

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

// Per-token limits, on top of the project's.

const ADMIN: &str = "admin-secret-0123456789abcdef";

/// A durable server requiring authentication, with `defaults`.
async fn start_authenticated(dir: &std::path::Path, defaults: Quota) -> InProcessDurable {
    let config = Config {
        admin_token: Some(kv_server::auth::AdminToken::new(ADMIN).unwrap()),
        ..config(defaults)
    };
    InProcessDurable::start_in(dir, config, Arc::new(ManualClock::new(CLOCK_START_MS))).await
}

async fn client_with(url: &str, token: &str) -> kv_client::Client {
    kv_client::Client::builder(url.to_string())
        .token(token)
        .connect()
        .await
        .unwrap()
}

fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn token_ops(n: u64) -> kv_client::TokenLimits {
    kv_client::TokenLimits {
        ops_per_second: Some(n),
        ..Default::default()
    }
}

/// A unary call with `token`: even `i` sets, odd `i` gets.
async fn call_with(
    raw: &mut KvServiceClient<Channel>,
    token: &str,
    i: usize,
) -> Result<(), Status> {
    if i.is_multiple_of(2) {
        raw.set(bearer(token, set(&format!("k{i}"), 1))).await?;
    } else {
        let get = GetRequest {
            key: format!("k{}", i - 1),
        };
        raw.get(bearer(token, get)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_token_is_admitted_exactly_up_to_its_limit_and_another_token_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_authenticated(dir.path(), Quota::UNLIMITED).await;
    let url = server.ctx().url.clone();
    let admin = client_with(&url, ADMIN).await.admin();
    admin
        .create_project("shop", kv_client::Quota::default())
        .await
        .unwrap();
    let limited = admin
        .create_token_with("shop", false, token_ops(20))
        .await
        .unwrap();
    assert_eq!(limited.info.limits, token_ops(20));
    let free = admin.create_token("shop", false).await.unwrap();
    assert_eq!(free.info.limits, kv_client::TokenLimits::default());
    let listed = admin.list_tokens(Some("shop")).await.unwrap();
    let listed_limited = listed.iter().find(|t| t.id == limited.info.id).unwrap();
    assert_eq!(listed_limited.limits, token_ops(20));

    let mut raw = KvServiceClient::connect(url.clone()).await.unwrap();
    let id = &limited.info.id;
    server.clock.advance(250);
    for window in 0..2 {
        for i in 0..20 {
            call_with(&mut raw, &limited.token, i)
                .await
                .unwrap_or_else(|e| panic!("window {window}, call {i}: {e:?}"));
        }
        for _ in 0..3 {
            let refused = call_with(&mut raw, &limited.token, 0).await.unwrap_err();
            assert_refused(
                &refused,
                &format!(
                    "token {id} is over its limit of 20 operations per second (token ops_per_second); retry after 750 ms"
                ),
                750,
            );
        }
        // The other token of the same project, and the admin token, are
        // not held back.
        for i in 0..60 {
            call_with(&mut raw, &free.token, i).await.unwrap();
        }
        let mut as_admin = bearer(ADMIN, GetRequest { key: "k0".into() });
        as_admin
            .metadata_mut()
            .insert("x-kv-project", "shop".parse().unwrap());
        raw.get(as_admin).await.unwrap();
        server.clock.advance(1000);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_project_limit_still_holds_across_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_authenticated(dir.path(), Quota::UNLIMITED).await;
    let url = server.ctx().url.clone();
    let admin = client_with(&url, ADMIN).await.admin();
    admin
        .create_project("shop", ops(10).into_client())
        .await
        .unwrap();
    let a = admin
        .create_token_with("shop", false, token_ops(6))
        .await
        .unwrap();
    let b = admin.create_token("shop", false).await.unwrap();
    let mut raw = KvServiceClient::connect(url).await.unwrap();
    for i in 0..6 {
        call_with(&mut raw, &a.token, i).await.unwrap();
    }
    // Refused by the token's limit: not counted toward the project's.
    for _ in 0..5 {
        let refused = call_with(&mut raw, &a.token, 0).await.unwrap_err();
        assert_refused(
            &refused,
            &format!("token {} is over its limit of 6", a.info.id),
            1000,
        );
    }
    for i in 0..4 {
        call_with(&mut raw, &b.token, i).await.unwrap();
    }
    let refused = call_with(&mut raw, &b.token, 0).await.unwrap_err();
    assert_refused(
        &refused,
        "project shop is over its limit of 10 operations per second (quota ops_per_second)",
        1000,
    );
    server.clock.advance(1000);
    call_with(&mut raw, &b.token, 0).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_per_second_are_limited_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_authenticated(dir.path(), Quota::UNLIMITED).await;
    let url = server.ctx().url.clone();
    let admin = client_with(&url, ADMIN).await.admin();
    admin
        .create_project("shop", kv_client::Quota::default())
        .await
        .unwrap();
    let limits = kv_client::TokenLimits {
        write_bytes_per_second: Some(100),
        ..Default::default()
    };
    let a = admin
        .create_token_with("shop", false, limits)
        .await
        .unwrap();
    let b = admin.create_token("shop", false).await.unwrap();
    let mut raw = KvServiceClient::connect(url).await.unwrap();
    // 49 bytes each (see `bytes_written_per_second_are_limited_and_reads_are_not`).
    raw.set(bearer(&a.token, set("a", 46))).await.unwrap();
    raw.set(bearer(&a.token, set("b", 46))).await.unwrap();
    let refused = raw.set(bearer(&a.token, set("c", 1))).await.unwrap_err();
    assert_refused(
        &refused,
        &format!(
            "token {} is over its limit of 100 bytes written per second (token write_bytes_per_second): 98 written in this second, this write is 4",
            a.info.id
        ),
        1000,
    );
    // Reads write nothing; the other token writes freely.
    for _ in 0..20 {
        raw.get(bearer(&a.token, GetRequest { key: "a".into() }))
            .await
            .unwrap();
    }
    for i in 0..5 {
        raw.set(bearer(&b.token, set(&format!("b{i}"), 100)))
            .await
            .unwrap();
    }
    let huge = raw.set(bearer(&a.token, set("d", 120))).await.unwrap_err();
    assert!(
        huge.message().contains(&format!(
            "larger than token {}'s limit of 100 bytes written per second",
            a.info.id
        )),
        "{huge:?}"
    );
    assert_eq!(retry_after(&huge), None);
    server.clock.advance(1000);
    raw.set(bearer(&a.token, set("c", 1))).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_with_a_limited_token_are_counted_and_carry_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_authenticated(dir.path(), Quota::UNLIMITED).await;
    let url = server.ctx().url.clone();
    let admin = client_with(&url, ADMIN).await.admin();
    admin
        .create_project("shop", kv_client::Quota::default())
        .await
        .unwrap();
    let limited = admin
        .create_token_with("shop", false, token_ops(10))
        .await
        .unwrap();
    server.clock.advance(600);
    // The SDK sends concurrent calls over its Pipeline stream.
    let kv = client_with(&url, &limited.token).await.project("shop");
    let calls: Vec<_> = (0..25)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.set(&format!("k{i}"), &i).await })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    let says = format!(
        "token {} is over its limit of 10 operations per second",
        limited.info.id
    );
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                assert!(e.to_string().contains(&says), "{e}");
                assert_eq!(e.retry_after(), Some(Duration::from_millis(400)));
                refused += 1;
            }
        }
    }
    assert_eq!((admitted, refused), (10, 15));
    // The admin's calls on the same project are not the token's.
    let as_admin = client_with(&url, ADMIN).await.project("shop");
    // Which ten calls got in is up to the scheduler: count them all.
    let mut stored = 0;
    for i in 0..25 {
        stored += usize::from(
            as_admin
                .get::<i32>(&format!("k{i}"))
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert_eq!(stored, admitted);
    server.clock.advance(400);
    kv.get::<i32>("k0").await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_limits_a_token_created_through_the_admin_api_and_keeps_it_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--fsync", "never", "--admin-token", ADMIN];
    let server = BinaryServer::start_in(BIN, dir.path(), &args);
    let url = format!("http://{}", server.addr);
    let admin = client_with(&url, ADMIN).await.admin();
    admin
        .create_project("shop", kv_client::Quota::default())
        .await
        .unwrap();
    let limited = admin
        .create_token_with("shop", false, token_ops(5))
        .await
        .unwrap();
    let mut raw = KvServiceClient::connect(url.clone()).await.unwrap();
    let until_refused = async |raw: &mut KvServiceClient<Channel>| {
        for i in 0..100 {
            if let Err(status) = raw
                .set(bearer(&limited.token, set(&format!("k{i}"), 1)))
                .await
            {
                return (i, status);
            }
        }
        panic!("100 calls with a token limited to 5 per second were all admitted");
    };
    let (admitted, refused) = until_refused(&mut raw).await;
    // The calls may straddle a window boundary.
    assert!((5..=10).contains(&admitted), "{admitted} admitted");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "token {} is over its limit of 5 operations per second (token ops_per_second)",
            limited.info.id
        )),
        "{refused:?}"
    );
    let wait = retry_after(&refused).expect("a retry-after-ms trailer");
    assert!((1..=1000).contains(&wait), "retry after {wait} ms");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    raw.set(bearer(&limited.token, set("again", 1)))
        .await
        .unwrap();
    assert!(server.terminate().success());

    // The limits are in the log: after a restart they are listed and held.
    let server = BinaryServer::start_in(BIN, dir.path(), &args);
    let url = format!("http://{}", server.addr);
    let admin = client_with(&url, ADMIN).await.admin();
    let listed = admin.list_tokens(Some("shop")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].limits, token_ops(5));
    let mut raw = KvServiceClient::connect(url).await.unwrap();
    let (admitted, refused) = until_refused(&mut raw).await;
    assert!((5..=10).contains(&admitted), "{admitted} admitted");
    assert!(retry_after(&refused).is_some(), "{refused:?}");
    // Revoked, the token is refused as unknown, not as over a limit.
    assert!(admin.revoke_token(&limited.info.id).await.unwrap());
    let status = raw
        .set(bearer(&limited.token, set("k", 1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(server.terminate().success());
}
