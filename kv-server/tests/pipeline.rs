//! The SDK's auto-batching stream (`Pipeline`) against the real binary:
//! many concurrent callers on one client get exactly their own results and
//! errors, calls on a key apply in the order made, large values split into
//! several frames, credentials are checked on the stream, a restart fails
//! the calls in flight with UNAVAILABLE and the next call reconnects, and
//! the stream's results equal the unary calls', GetMany, SetMany and
//! DeleteMany included (their ordering against the stream's writes is
//! checked on a raw stream, call by call).

use std::time::Duration;

use kv_client::{
    Client, Code, DeleteManyOptions, DeleteOptions, Entry, IncrOptions, SetManyOptions, SetOptions,
};
use kv_proto::v1::{
    self as wire, call::Request as Req, kv_service_client::KvServiceClient, reply::Response as Res,
};
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
    let (many, refused, removed) = tokio::join!(
        kv.get_many::<Json, _>(["k", "l"]),
        kv.set_many([("k", &1), ("l", &2)]),
        kv.delete_many(["k"]),
    );
    assert_eq!(many.unwrap(), [None, None]);
    for err in [refused.unwrap_err(), removed.unwrap_err()] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_key_calls_on_the_stream_equal_the_unary_calls() {
    let server = BinaryServer::start(BIN, ARGS);
    let one_stream = client(&server).await;
    let streamed = one_stream.project("many");
    let plain = unary(&server).await.project("many");
    let keys = ["a", "missing", "b", "a", "t"];
    for (kv, other) in [(&streamed, &plain), (&plain, &streamed)] {
        kv.clear().await.unwrap();
        let (a, b) = (json!({"n": 1}), json!([1, "two"]));
        let written = kv.set_many([("a", &a), ("b", &b)]).await.unwrap();
        let timed = other
            .set_many_with(
                [("t", &json!("ttl"))],
                SetManyOptions::new().ttl(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        let (mine, theirs) = tokio::join!(
            kv.get_many::<Json, _>(keys),
            other.get_many::<Json, _>(keys)
        );
        let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
        assert_eq!(mine, theirs, "the same moment read both ways");
        let entry = |value: &Json, version| Entry {
            value: value.clone(),
            version,
            expires_at_ms: None,
            incarnation: 0,
        };
        assert_eq!(mine[0], Some(entry(&a, written[0])));
        assert_eq!(mine[1], None);
        assert_eq!(mine[2], Some(entry(&b, written[1])));
        assert_eq!(mine[3], mine[0], "a duplicate reads the same entry");
        let t = mine[4].as_ref().unwrap();
        assert_eq!((t.value.clone(), t.version), (json!("ttl"), timed[0]));
        assert!(t.expires_at_ms.is_some(), "the TTL is reported");

        // A request id answers a retry, on either path, with the first
        // outcome.
        let id = kv_client::new_request_id();
        let first = kv
            .set_many_with([("c", &1)], SetManyOptions::new().request_id(id.clone()))
            .await
            .unwrap();
        let retry = other
            .set_many_with([("c", &1)], SetManyOptions::new().request_id(id))
            .await
            .unwrap();
        assert_eq!(first, retry);
        let id = kv_client::new_request_id();
        let removed = kv
            .delete_many_with(
                ["a", "c", "missing"],
                DeleteManyOptions::new().request_id(id.clone()),
            )
            .await
            .unwrap();
        assert_eq!(removed, 2);
        let again = other
            .delete_many_with(
                ["a", "c", "missing"],
                DeleteManyOptions::new().request_id(id),
            )
            .await
            .unwrap();
        assert_eq!(again, 2, "the first outcome, not a second delete");
        assert_eq!(other.delete_many(["a", "b"]).await.unwrap(), 1);

        // Errors: the unary status, code and message alike.
        let too_many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
        let entries: Vec<(String, &Json)> = too_many.iter().map(|k| (k.clone(), &a)).collect();
        let (g1, g2) = tokio::join!(
            kv.get_many::<Json, _>(&too_many),
            other.get_many::<Json, _>(&too_many)
        );
        let (s1, s2) = tokio::join!(
            kv.set_many(entries.iter().map(|(k, v)| (k.as_str(), *v))),
            other.set_many(entries.iter().map(|(k, v)| (k.as_str(), *v)))
        );
        let (e1, e2) = tokio::join!(
            kv.get_many::<Json, _>(["fine", ""]),
            other.get_many::<Json, _>(["fine", ""])
        );
        let (d1, d2) = tokio::join!(kv.delete_many(["", "x"]), other.delete_many(["", "x"]));
        for (one, two, code, says) in [
            (
                g1.unwrap_err(),
                g2.unwrap_err(),
                Code::ResourceExhausted,
                "1000",
            ),
            (
                s1.unwrap_err(),
                s2.unwrap_err(),
                Code::ResourceExhausted,
                "1000",
            ),
            (
                e1.unwrap_err(),
                e2.unwrap_err(),
                Code::InvalidArgument,
                "keys[1]",
            ),
            (
                d1.unwrap_err(),
                d2.unwrap_err(),
                Code::InvalidArgument,
                "keys[0]",
            ),
        ] {
            assert_eq!(one.code(), code, "{one}");
            assert_eq!(one.to_string(), two.to_string());
            assert!(one.to_string().contains(says), "{one}");
        }
        assert!(!kv.has("k0").await.unwrap(), "nothing of a refused SetMany");
    }
    // Another project sees none of it, on the same stream.
    let elsewhere = one_stream.project("elsewhere");
    assert_eq!(
        elsewhere.get_many::<Json, _>(["b", "t"]).await.unwrap(),
        [None, None]
    );
    assert_eq!(elsewhere.set_many([("b", &1)]).await.unwrap().len(), 1);
    assert_eq!(
        streamed.get::<Json>("b").await.unwrap(),
        None,
        "deleted in `many` above, untouched by `elsewhere`"
    );
    server.terminate();
}

/// Sends `calls` as one frame on `stream` and collects a reply for each,
/// by id.
async fn exchange(
    frames: &tokio::sync::mpsc::Sender<wire::PipelineRequest>,
    replies: &mut tonic::Streaming<wire::PipelineResponse>,
    calls: Vec<(Req, &str)>,
) -> Vec<Res> {
    let count = calls.len();
    let calls = calls
        .into_iter()
        .enumerate()
        .map(|(i, (request, project))| wire::Call {
            id: i as u64,
            timeout_ms: 0,
            request: Some(request),
            project: project.into(),
        })
        .collect();
    frames
        .send(wire::PipelineRequest {
            calls,
            project: "raw".into(),
        })
        .await
        .unwrap();
    let mut got: Vec<Option<Res>> = vec![None; count];
    let mut left = count;
    while left > 0 {
        let frame = bounded("replies", replies.message())
            .await
            .unwrap()
            .expect("the stream stays open");
        for reply in frame.replies {
            let slot = &mut got[reply.id as usize];
            assert!(slot.is_none(), "call {} answered twice", reply.id);
            *slot = reply.response;
            left -= 1;
        }
    }
    got.into_iter().map(Option::unwrap).collect()
}

fn set_op(key: &str, n: f64) -> wire::SetOp {
    wire::SetOp {
        key: key.into(),
        value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n)),
        }),
        ttl_ms: None,
        keep_ttl: false,
    }
}

fn numbers(reply: &Res) -> Vec<Option<f64>> {
    let Res::GetMany(r) = reply else {
        panic!("not a GetMany reply: {reply:?}")
    };
    r.results
        .iter()
        .map(|r| match r.value.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(prost_types::value::Kind::NumberValue(n)) if r.found => Some(*n),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_key_calls_keep_their_order_with_the_streams_writes() {
    // Every write waits for its fsync, so a read that did not wait for the
    // writes sent before it would see the older value.
    let server = BinaryServer::start(BIN, &["--fsync", "always"]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = KvServiceClient::new(channel);
    let (frames, outgoing) = tokio::sync::mpsc::channel(4);
    let response = raw
        .pipeline(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("x-kv-many-calls")
            .map(|v| v.to_str().unwrap()),
        Some("1"),
        "the server says it takes many-key calls"
    );
    let mut replies = response.into_inner();
    let get_many = |keys: &[&str]| {
        Req::GetMany(wire::GetManyRequest {
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
    };
    for round in 0..20 {
        let n = f64::from(round);
        let got = exchange(
            &frames,
            &mut replies,
            vec![
                (
                    Req::Set(wire::SetRequest {
                        key: "k".into(),
                        value: set_op("k", n).value,
                        ..Default::default()
                    }),
                    "",
                ),
                (get_many(&["other", "k"]), ""),
                (
                    Req::SetMany(wire::SetManyRequest {
                        entries: vec![set_op("k", n + 0.5), set_op("j", n)],
                        request_id: String::new(),
                    }),
                    "",
                ),
                (get_many(&["j", "k"]), ""),
                (
                    Req::DeleteMany(wire::DeleteManyRequest {
                        keys: vec!["k".into()],
                        request_id: String::new(),
                    }),
                    "",
                ),
                (get_many(&["k", "j"]), ""),
                (Req::Get(wire::GetRequest { key: "j".into() }), ""),
                // Another project, on the same frame: none of it.
                (get_many(&["j", "k"]), "raw-other"),
                (get_many(&[]), ""),
                (get_many(&["ok", ""]), ""),
            ],
        )
        .await;
        assert_eq!(numbers(&got[1]), [None, Some(n)], "round {round}");
        let Res::SetMany(set) = &got[2] else {
            panic!("{:?}", got[2])
        };
        assert_eq!(set.versions.len(), 2);
        assert_eq!(numbers(&got[3]), [Some(n), Some(n + 0.5)]);
        assert_eq!(
            got[4],
            Res::DeleteMany(wire::DeleteManyResponse { deleted: 1 })
        );
        assert_eq!(numbers(&got[5]), [None, Some(n)]);
        let Res::Get(j) = &got[6] else {
            panic!("{:?}", got[6])
        };
        assert_eq!(j.version, set.versions[1]);
        assert_eq!(numbers(&got[7]), [None, None]);
        for (reply, says) in [(&got[8], "keys"), (&got[9], "keys[1]")] {
            let Res::Error(e) = reply else {
                panic!("not an error: {reply:?}")
            };
            assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
            assert!(e.message.contains(says), "{e:?}");
        }
    }
    drop(frames);
    server.terminate();
}
