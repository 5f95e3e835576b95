//! The SDK's auto-batching stream (`Pipeline`) against the real binary:
//! many concurrent callers on one client get exactly their own results and
//! errors, calls on a key apply in the order made, large values split into
//! several frames, credentials are checked on the stream, a restart fails
//! the calls in flight with UNAVAILABLE and the next call reconnects, and
//! the stream's results equal the unary calls'.

use std::time::Duration;

use kv_client::{Client, Code, DeleteOptions, IncrOptions, SetOptions};
use kv_tests::BinaryServer;
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const ARGS: &[&str] = &["--fsync", "never"];
/// The most any one phase of a test may take.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PHASE_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PHASE_LIMIT:?}"))
}

async fn client(server: &BinaryServer) -> Client {
    Client::connect(format!("http://{}", server.addr))
        .await
        .expect("SDK connects to the server")
}

async fn unary(server: &BinaryServer) -> Client {
    Client::builder(format!("http://{}", server.addr))
        .auto_batching(false)
        .connect()
        .await
        .expect("SDK connects to the server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_on_one_client_get_their_own_results() {
    let server = BinaryServer::start(BIN, ARGS);
    let kv = client(&server).await.project("pipe");
    // 64 tasks × 100 increments of one counter and of their own key, plus
    // a set and get of a key of their own each round, all on one client.
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for round in 0..100 {
                    seen.push(kv.incr("shared", 1.0).await.unwrap() as u64);
                    let own = kv.incr(&format!("own:{t}"), 1.0).await.unwrap();
                    assert_eq!(own, f64::from(round + 1));
                    let key = format!("value:{t}");
                    kv.set(&key, &json!({"t": t, "round": round}))
                        .await
                        .unwrap();
                    let back: Json = kv.get(&key).await.unwrap().unwrap();
                    assert_eq!(back, json!({"t": t, "round": round}));
                    // A bad call among good ones fails alone.
                    let err = kv.get::<Json>("").await.unwrap_err();
                    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(bounded("incrementing", task).await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=6400).collect::<Vec<u64>>(), "every step once");
    assert_eq!(kv.get::<u64>("shared").await.unwrap(), Some(6400));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_key_apply_in_the_order_made() {
    let server = BinaryServer::start(BIN, ARGS);
    let kv = client(&server).await.project("order");
    for round in 0..20 {
        // Made one after another without waiting: a set, a read of it, an
        // increment on top, a delete, a read of the delete, a final set.
        let key = format!("k{round}");
        let (set, read, incr, deleted, gone, last, read_last) = tokio::join!(
            kv.set_with(&key, &10, SetOptions::new()),
            kv.get::<f64>(&key),
            kv.incr(&key, 5.0),
            kv.delete(&key),
            kv.has(&key),
            kv.set_with(&key, &round, SetOptions::new()),
            kv.get::<u64>(&key),
        );
        let set = set.unwrap();
        assert!(set.applied);
        assert_eq!(read.unwrap(), Some(10.0), "the read sees the set before it");
        assert_eq!(incr.unwrap(), 15.0);
        assert!(deleted.unwrap());
        assert!(!gone.unwrap(), "the delete before it is seen");
        assert!(last.unwrap().version > set.version);
        assert_eq!(read_last.unwrap(), Some(round));
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_travel_in_several_frames() {
    let server = BinaryServer::start(BIN, &["--fsync", "never", "--max-value-bytes", "500000"]);
    let kv = client(&server).await.project("big");
    // 32 concurrent 200 KB values: several frames' worth each way.
    let writes: Vec<_> = (0..32u8)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let value = char::from(b'A' + i).to_string().repeat(200_000);
                kv.set(&format!("big:{i}"), &value).await.unwrap();
                let back: String = kv.get(&format!("big:{i}")).await.unwrap().unwrap();
                assert_eq!(back, value);
            })
        })
        .collect();
    for write in writes {
        bounded("large values", write).await.unwrap();
    }
    // Over the value limit, on the stream (600 KB) or as a unary call
    // (the SDK sends calls over 1 MiB unary): refused alone, naming the
    // limit, and the stream goes on.
    for size in [600_000, 2_100_000] {
        let value = "x".repeat(size);
        let (refused, fine) = tokio::join!(kv.set("too-big", &value), kv.get::<String>("big:0"));
        let err = refused.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert!(err.to_string().contains("500000"), "{err}");
        assert_eq!(fine.unwrap().map(|v| v.len()), Some(200_000));
    }
    assert!(!kv.has("too-big").await.unwrap());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_results_equal_unary_results() {
    let server = BinaryServer::start(BIN, ARGS);
    let streamed = client(&server).await.project("same");
    let plain = unary(&server).await.project("same");
    for (kv, other) in [(&streamed, &plain), (&plain, &streamed)] {
        kv.clear().await.unwrap();
        let created = kv
            .set_with("k", &json!({"a": 1}), SetOptions::new().if_absent())
            .await
            .unwrap();
        assert!(created.applied);
        let again = other
            .set_with("k", &json!({"a": 2}), SetOptions::new().if_absent())
            .await
            .unwrap();
        assert!(!again.applied);
        assert_eq!(again.version, created.version);
        let entry = other.get_entry::<Json>("k").await.unwrap().unwrap();
        assert_eq!(entry.value, json!({"a": 1}));
        assert_eq!(entry.version, created.version);
        let merged: Json = kv.merge("k", &json!({"b": 2})).await.unwrap();
        assert_eq!(merged, json!({"a": 1, "b": 2}));
        let err = other.incr("k", 1.0).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        let id = kv_client::new_request_id();
        let first = kv
            .incr_with("n", 2.0, IncrOptions::new().request_id(id.clone()))
            .await
            .unwrap();
        let retry = other
            .incr_with("n", 2.0, IncrOptions::new().request_id(id))
            .await
            .unwrap();
        assert_eq!(first, retry, "a retry answers with the first outcome");
        let stale = other
            .delete_with("k", DeleteOptions::new().if_version(1))
            .await
            .unwrap();
        assert!(!stale.deleted);
        assert!(kv.delete("k").await.unwrap());
        assert!(!other.has("k").await.unwrap());
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_checks_credentials() {
    let admin = "admin-secret-for-pipeline-tests";
    let server = BinaryServer::start(BIN, &["--fsync", "never", "--admin-token", admin]);
    let url = format!("http://{}", server.addr);
    let anonymous = Client::connect(url.clone()).await.unwrap().project("p");
    let err = anonymous.get::<Json>("k").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let admin_client = Client::builder(url.clone())
        .token(admin)
        .connect()
        .await
        .unwrap();
    let adm = admin_client.admin();
    adm.create_project("p", kv_client::Quota::default())
        .await
        .unwrap();
    let reader = adm.create_token("p", true).await.unwrap();
    let kv = Client::builder(url.clone())
        .token(reader.token.clone())
        .connect()
        .await
        .unwrap()
        .project("p");
    assert_eq!(kv.get::<Json>("k").await.unwrap(), None);
    // A read-only token reads over the stream but cannot write on it.
    let err = kv.set("k", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    // Revoked while the stream is open: the next frame is refused.
    adm.revoke_token(&reader.info.id).await.unwrap();
    let err = kv.get::<Json>("k").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fails_calls_in_flight_and_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(BIN, dir.path(), ARGS);
    let addr = server.addr;
    let kv = Client::builder(format!("http://{addr}"))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
        .project("restart");
    kv.set("before", &1).await.unwrap();
    // Callers keep calling while the server stops.
    let callers: Vec<_> = (0..8)
        .map(|t| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for i in 0..2000 {
                    match kv.set(&format!("t{t}:{i}"), &i).await {
                        Ok(()) => {}
                        Err(e) => {
                            errors.push(e.code());
                            break;
                        }
                    }
                }
                errors
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.terminate();
    for caller in callers {
        for code in bounded("callers", caller).await.unwrap() {
            assert!(
                matches!(code, Code::Unavailable | Code::Cancelled | Code::Unknown),
                "a call cut off by the restart ended with {code:?}"
            );
        }
    }
    let again = BinaryServer::start_in(
        BIN,
        dir.path(),
        &["--fsync", "never", "--listen", &addr.to_string()],
    );
    // The same client, same handle: a new stream on the new server.
    let mut reconnected = false;
    for _ in 0..50 {
        if let Ok(value) = kv.get::<u64>("before").await {
            assert_eq!(value, Some(1));
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reconnected,
        "the client never got through to the restarted server"
    );
    again.terminate();
}
