//! Logs of the real binary: `--log-format json` lines all parse, each
//! request has a line with its method, project, code, latency and request
//! id, a slow request is warned about, and no secret (admin token, project
//! token, a rejected token) and no key or value appears in any line.

use std::time::Duration;

use kv_client::{Client, Code, Quota, WatchOptions};
use kv_proto::v1::{HasRequest, kv_service_client::KvServiceClient};
use kv_tests::BinaryServer;
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const ADMIN: &str = "admin-Secret-7f3a9c1e5b2d4608";
const WRONG_TOKEN: &str = "wrong-Secret-0b1c2d3e4f5a6b7c";
const KEY: &str = "key-Hv4Tb9Rc2Ye6";
const VALUE: &str = "value-Zq8Xw3Lm5Np1";
const BATCHED_KEY: &str = "key-Pl3Qa8Vu1Ek5";
const BATCHED_VALUE: &str = "value-Gy2Ho7Ti4Ds0";
const WATCHED_KEY: &str = "key-Wt7Kd2Pf8Sg3";
const WATCHED_VALUE: &str = "value-Jr6Bn1Cx4Mv9";

fn request_lines(lines: &[Json]) -> Vec<&Json> {
    lines
        .iter()
        .filter(|line| line["target"] == "kv_server::request")
        .collect()
}

fn line_for<'a>(lines: &[&'a Json], method_suffix: &str, code: &str) -> &'a Json {
    lines
        .iter()
        .copied()
        .find(|line| {
            line["method"]
                .as_str()
                .is_some_and(|m| m.ends_with(method_suffix))
                && line["code"] == code
        })
        .unwrap_or_else(|| panic!("no {method_suffix} line with code {code} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_each_request_and_never_a_secret_or_value() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    let server = BinaryServer::start_with_env(
        BIN,
        &[
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        // An empty RUST_LOG leaves the level to --log-level.
        &[("RUST_LOG", "")],
    );
    let url = format!("http://{}", server.addr);
    let admin = Client::builder(url.clone())
        .token(ADMIN)
        .connect()
        .await
        .unwrap()
        .admin();
    admin
        .create_project("orders", Quota::default())
        .await
        .unwrap();
    let token = admin.create_token("orders", false).await.unwrap().token;

    // Unbatched: each call is its own unary request with its own line.
    let kv = Client::builder(url.clone())
        .token(token.clone())
        .auto_batching(false)
        .connect()
        .await
        .unwrap()
        .project("orders");
    kv.set(KEY, &VALUE).await.unwrap();
    assert_eq!(kv.get::<String>(KEY).await.unwrap().as_deref(), Some(VALUE));
    let mut watch = kv.watch(WatchOptions::key(WATCHED_KEY)).await.unwrap();
    kv.set(WATCHED_KEY, &WATCHED_VALUE).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next_event())
        .await
        .expect("the watch delivers the change")
        .expect("the watch is open")
        .unwrap();
    assert_eq!(event.key, WATCHED_KEY);
    // Keep the stream open long enough that its duration is unmistakable.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(watch);

    // A token without x-kv-project: the line names the token's project.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = KvServiceClient::new(channel);
    let mut has = tonic::Request::new(HasRequest { key: KEY.into() });
    has.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(raw.has(has).await.unwrap().into_inner().exists);

    // Batched calls ride one Pipeline stream, logged once when it ends.
    let batched = Client::builder(url.clone())
        .token(token.clone())
        .connect()
        .await
        .unwrap();
    batched
        .project("orders")
        .set(BATCHED_KEY, &BATCHED_VALUE)
        .await
        .unwrap();
    drop(batched);

    let intruder = Client::builder(url)
        .token(WRONG_TOKEN)
        .auto_batching(false)
        .connect()
        .await
        .unwrap()
        .project("orders");
    let refused = intruder.get::<String>(KEY).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    // The server notices the cancelled watch and ends its stream.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_, log) = server.terminate_with_log();
    assert!(log.len() > 5, "{log:#?}");
    let lines: Vec<Json> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }

    let requests = request_lines(&lines);
    let set = line_for(&requests, "KvService/Set", "OK");
    assert_eq!(set["level"], "DEBUG");
    assert_eq!(set["project"], "orders");
    assert!(
        set["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{set}"
    );
    let request_id = set["request_id"].as_str().unwrap();
    assert!(!request_id.is_empty(), "a write's line has its request id");
    let get = line_for(&requests, "KvService/Get", "OK");
    assert_eq!(get["project"], "orders");
    let has = line_for(&requests, "KvService/Has", "OK");
    assert_eq!(has["project"], "orders", "the token's project: {has}");
    let created = line_for(&requests, "AdminService/CreateProject", "OK");
    assert!(created["latency_ms"].is_number());
    line_for(&requests, "KvService/Get", "UNAUTHENTICATED");
    // The watch is logged once, when it ends, with its whole duration.
    let watch_lines: Vec<_> = requests
        .iter()
        .filter(|l| l["method"].as_str().unwrap().ends_with("KvService/Watch"))
        .collect();
    assert_eq!(watch_lines.len(), 1, "{watch_lines:#?}");
    assert_eq!(watch_lines[0]["project"], "orders");
    let lasted = watch_lines[0]["latency_ms"].as_f64().unwrap();
    assert!(lasted >= 300.0, "the watch lasted {lasted} ms");
    // The batched set rode a Pipeline stream: one line for the stream,
    // none for the call in it.
    assert!(
        requests.iter().any(|l| l["method"]
            .as_str()
            .unwrap()
            .ends_with("KvService/Pipeline")),
        "{requests:#?}"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|l| l["method"].as_str().unwrap().ends_with("KvService/Set"))
            .count(),
        2,
        "the two unbatched sets only"
    );

    let all = log.join("\n");
    for secret in [ADMIN, token.as_str(), WRONG_TOKEN] {
        assert!(!all.contains(secret), "a secret is in the log");
    }
    for data in [
        KEY,
        VALUE,
        WATCHED_KEY,
        WATCHED_VALUE,
        BATCHED_KEY,
        BATCHED_VALUE,
    ] {
        assert!(!all.contains(data), "{data} is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_is_warned_about_and_rust_log_wins_over_the_level() {
    // RUST_LOG=info (the harness's) wins over --log-level debug: no DEBUG
    // request lines, only the warnings.
    let server = BinaryServer::start(
        BIN,
        &[
            "--log-level",
            "debug",
            "--slow-request-ms",
            "1",
            "--fsync",
            "always",
        ],
    );
    let kv = Client::builder(format!("http://{}", server.addr))
        .auto_batching(false)
        .connect()
        .await
        .unwrap()
        .project("slow");
    let big = "v".repeat(2 << 20);
    kv.set("big", &big).await.unwrap();
    let (_, log) = server.terminate_with_log();
    let slow: Vec<_> = log
        .iter()
        .filter(|l| l.contains("slow request") && l.contains("KvService/Set"))
        .collect();
    assert_eq!(slow.len(), 1, "{log:#?}");
    let line = slow[0];
    assert!(line.contains("WARN"), "{line}");
    for field in [
        "project=\"slow\"",
        "code=\"OK\"",
        "latency_ms=",
        "answer_ms=",
        "request_id=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(
        !log.iter().any(|l| l.contains("DEBUG")),
        "RUST_LOG=info must win over --log-level debug: {log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains("vvvvvvvv")));
}

#[test]
fn a_bad_log_level_or_rust_log_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        dir.path(),
        &["--log-level", "loud"],
        &[("RUST_LOG", "")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--log-level"), "{err}");
    let (code, err) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        dir.path(),
        &[],
        &[("RUST_LOG", "kv_server=loud")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("RUST_LOG"), "{err}");
}
