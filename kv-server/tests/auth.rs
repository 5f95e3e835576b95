//! Tenancy and security: admin API, project tokens (pinning, read-only,
//! revocation), credential parsing, isolation through every RPC, and
//! durability of projects, tokens and quotas.

use std::{sync::Arc, time::Duration};

use kv_client::{Client, Code, Quota};
use kv_engine::ManualClock;
use kv_proto::v1::{HasRequest, kv_service_client::KvServiceClient};
use kv_server::{auth::AdminToken, config::Config};
use kv_tests::{CLOCK_START_MS, InProcessDurable, Target};

const ADMIN: &str = "admin-secret-0123456789abcdef";

fn config() -> Config {
    Config {
        admin_token: Some(AdminToken::new(ADMIN).unwrap()),
        ..Config::default()
    }
}

async fn start(dir: &std::path::Path) -> InProcessDurable {
    InProcessDurable::start_in(dir, config(), Arc::new(ManualClock::new(CLOCK_START_MS))).await
}

async fn client(server: &InProcessDurable, token: Option<&str>) -> Client {
    let mut builder = Client::builder(server.ctx().url.clone());
    if let Some(token) = token {
        builder = builder.token(token);
    }
    builder.connect().await.unwrap()
}

#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, kv_client::Error>, code: Code, says: &str) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code(), code, "{err}");
    assert!(err.to_string().contains(says), "{err} lacks {says:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_one_project_can_never_touch_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin = client(&server, Some(ADMIN)).await.admin();
    admin.create_project("a", Quota::default()).await.unwrap();
    admin.create_project("b", Quota::default()).await.unwrap();
    let ta = admin.create_token("a", false).await.unwrap().token;
    let tb = admin.create_token("b", false).await.unwrap().token;
    let b_own = client(&server, Some(&tb)).await.project("b");
    b_own.set("secret", &"b's").await.unwrap();

    let a_client = client(&server, Some(&ta)).await;
    // Its own project, with or without naming it.
    a_client.project("a").set("k", &1).await.unwrap();
    assert_eq!(
        a_client.project("a").get::<i32>("k").await.unwrap(),
        Some(1)
    );

    // Every RPC against b: denied.
    let b_via_a = a_client.project("b");
    let says = "this token is for project a; the call names project b";
    denied(
        b_via_a.get::<String>("secret").await,
        Code::PermissionDenied,
        says,
    );
    denied(b_via_a.has("secret").await, Code::PermissionDenied, says);
    denied(
        b_via_a.set("secret", &"stolen").await,
        Code::PermissionDenied,
        says,
    );
    denied(
        b_via_a.set_with_ttl("x", &1, Duration::from_secs(5)).await,
        Code::PermissionDenied,
        says,
    );
    denied(b_via_a.delete("secret").await, Code::PermissionDenied, says);
    denied(b_via_a.clear().await, Code::PermissionDenied, says);
    // b's data is untouched.
    assert_eq!(
        b_own.get::<String>("secret").await.unwrap().as_deref(),
        Some("b's")
    );
    // a's data is invisible to b.
    assert_eq!(b_own.get::<i32>("k").await.unwrap(), None);
    // The admin token reaches any project by name.
    let admin_data = client(&server, Some(ADMIN)).await;
    assert_eq!(
        admin_data
            .project("b")
            .get::<String>("secret")
            .await
            .unwrap()
            .as_deref(),
        Some("b's")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tokens_read_and_revoked_tokens_stop_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin = client(&server, Some(ADMIN)).await.admin();
    admin.create_project("p", Quota::default()).await.unwrap();
    let writer = admin.create_token("p", false).await.unwrap();
    let reader = admin.create_token("p", true).await.unwrap();
    let w = client(&server, Some(&writer.token)).await.project("p");
    let r = client(&server, Some(&reader.token)).await.project("p");
    w.set("k", &"v").await.unwrap();
    assert_eq!(r.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    assert!(r.has("k").await.unwrap());
    for result in [
        r.set("k", &"no").await.map(|_| ()),
        r.delete("k").await.map(|_| ()),
        r.clear().await.map(|_| ()),
    ] {
        denied(result, Code::PermissionDenied, "read-only");
    }

    // Secrets never come back from the API.
    let listed = admin.list_tokens(Some("p")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|t| t.id == reader.info.id && t.read_only));

    assert!(admin.revoke_token(&writer.info.id).await.unwrap());
    denied(
        w.set("k", &"after").await,
        Code::Unauthenticated,
        "unknown or revoked token",
    );
    assert!(
        !admin.revoke_token(&writer.info.id).await.unwrap(),
        "already gone"
    );
    assert_eq!(r.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin = client(&server, Some(ADMIN)).await.admin();
    admin.create_project("p", Quota::default()).await.unwrap();
    let real = admin.create_token("p", false).await.unwrap().token;
    let channel = tonic::transport::Channel::from_shared(server.ctx().url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = KvServiceClient::new(channel);
    let oversize = format!("Bearer {}", "x".repeat(600));
    // The real token with its last hex digit changed.
    let last = if real.ends_with('0') { '1' } else { '0' };
    let tampered = format!("Bearer {}{last}", &real[..real.len() - 1]);
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing credentials"),
        (Some(String::new()), "expected `Bearer <token>`"),
        (Some("Bearer".into()), "expected `Bearer <token>`"),
        (Some("Bearer ".into()), "empty"),
        (Some("Basic dXNlcjpwYXNz".into()), "only the Bearer scheme"),
        (Some("Bearer garbage".into()), "unknown or revoked token"),
        (
            Some("Bearer kv_0000000000000000_00".into()),
            "unknown or revoked token",
        ),
        (Some(tampered), "unknown or revoked token"),
        (Some(oversize), "longer than 512"),
    ];
    for (header, says) in cases {
        let mut request = tonic::Request::new(HasRequest { key: "k".into() });
        if let Some(header) = &header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        let status = raw.has(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{header:?}: {status:?}"
        );
        assert!(
            status.message().contains(says),
            "{header:?}: {}",
            status.message()
        );
    }
    // The admin API: project tokens are refused, anonymous callers too.
    denied(
        client(&server, Some(&real))
            .await
            .admin()
            .list_projects()
            .await,
        Code::PermissionDenied,
        "needs the admin token",
    );
    denied(
        client(&server, None).await.admin().list_projects().await,
        Code::Unauthenticated,
        "missing credentials",
    );
    denied(
        client(&server, None).await.project("p").has("k").await,
        Code::Unauthenticated,
        "missing credentials",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_tokens_and_quotas_survive_restart_and_delete_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin = client(&server, Some(ADMIN)).await.admin();
    let created = admin
        .create_project(
            "shop",
            Quota {
                max_keys: Some(2),
                max_bytes: None,
                ..Quota::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.quota.max_keys, Some(2));
    denied(
        admin.create_project("shop", Quota::default()).await,
        Code::AlreadyExists,
        "already exists",
    );
    denied(
        admin.create_token("nope", false).await,
        Code::NotFound,
        "not registered",
    );
    let token = admin.create_token("shop", false).await.unwrap().token;
    let shop = client(&server, Some(&token)).await.project("shop");
    shop.set("a", &1).await.unwrap();
    shop.set("b", &2).await.unwrap();
    denied(
        shop.set("c", &3).await,
        Code::ResourceExhausted,
        "quota of 2 keys",
    );
    server.stop().await;

    let server = start(dir.path()).await;
    let admin = client(&server, Some(ADMIN)).await.admin();
    let shop = client(&server, Some(&token)).await.project("shop");
    assert_eq!(
        shop.get::<i32>("a").await.unwrap(),
        Some(1),
        "the token still works"
    );
    denied(
        shop.set("c", &3).await,
        Code::ResourceExhausted,
        "quota of 2 keys",
    );
    let info = admin.get_project("shop").await.unwrap();
    assert_eq!((info.keys, info.quota.max_keys), (2, Some(2)));
    admin
        .set_quota(
            "shop",
            Quota {
                max_keys: Some(3),
                max_bytes: None,
                ..Quota::default()
            },
        )
        .await
        .unwrap();
    shop.set("c", &3).await.unwrap();
    assert_eq!(admin.list_projects().await.unwrap().len(), 1);

    assert_eq!(admin.delete_project("shop").await.unwrap(), 3);
    // The handle's open stream ends with NOT_FOUND naming the project; a
    // call that meets it there says so, a later one finds its token gone.
    let err = shop.get::<i32>("a").await.expect_err("must be refused");
    match err.code() {
        Code::NotFound => assert!(
            err.to_string().contains("project shop was deleted"),
            "{err}"
        ),
        Code::Unauthenticated => assert!(err.to_string().contains("unknown or revoked"), "{err}"),
        other => panic!("{other:?}: {err}"),
    }
    denied(
        shop.get::<i32>("a").await,
        Code::Unauthenticated,
        "unknown or revoked",
    );
    denied(
        admin.get_project("shop").await,
        Code::NotFound,
        "not registered",
    );
    admin
        .create_project("shop", Quota::default())
        .await
        .unwrap();
    let fresh = admin.create_token("shop", false).await.unwrap().token;
    let shop = client(&server, Some(&fresh)).await.project("shop");
    assert_eq!(
        shop.get::<i32>("a").await.unwrap(),
        None,
        "a recreated project starts empty"
    );
    server.stop().await;

    let server = start(dir.path()).await;
    let shop = client(&server, Some(&fresh)).await.project("shop");
    assert_eq!(shop.get::<i32>("a").await.unwrap(), None);
    denied(
        client(&server, Some(&token))
            .await
            .project("shop")
            .has("a")
            .await,
        Code::Unauthenticated,
        "unknown or revoked",
    );
    server.stop().await;
}
