//! kv-bench against the real kv-server binary (SDK and unary targets) and
//! against its own reference server.

mod common;

use std::time::Duration;

use common::{Server, assert_clean, kv_server, run_bench, run_json};
use kv_tests::BinaryServer;

/// Defaults of these tests' runs (short: enough operations to check, quick
/// in debug builds); a flag given in `extra` replaces its default.
const DEFAULTS: &[(&str, &str)] = &[
    ("--keys", "1000"),
    ("--concurrency", "4"),
    ("--duration", "1s"),
    ("--warmup", "200ms"),
];

fn start_kv() -> BinaryServer {
    // `never`: these tests check behaviour, not durability, and fsyncs on a
    // shared CI disk would only make them slower.
    BinaryServer::start(&kv_server(), &["--fsync", "never"])
}

fn args<'a>(target: &'a str, addr: &'a str, workload: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["--target", target, "--addr", addr, "--workload", workload];
    for (flag, value) in DEFAULTS {
        if !extra.contains(flag) {
            argv.extend_from_slice(&[flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    argv
}

/// Every key of a 1000-key space that holds a value, as JSON.
async fn stored(project: &kv_client::Project) -> Vec<serde_json::Value> {
    let keys: Vec<String> = (0..1000).map(|n| format!("k{n:015}")).collect();
    project
        .get_many::<serde_json::Value, _>(&keys)
        .await
        .expect("get_many")
        .into_iter()
        .flatten()
        .map(|entry| entry.value)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sets_store_values_of_the_requested_size() {
    let server = start_kv();
    let addr = server.addr.to_string();
    // 300 encoded bytes: a 297-byte string (tag, 2-byte length, bytes).
    let result = run_json(&args("sdk", &addr, "set", &["--value-bytes", "300"]));
    assert_clean(&result, "sdk", "set");
    assert_eq!(result["value_bytes"], 300);
    assert_eq!(result["keys_per_sec"], result["ops_per_sec"]);

    let values = stored(&server.project("bench").await).await;
    assert!(!values.is_empty(), "the run wrote no key");
    for value in &values {
        assert_eq!(value.as_str().map(str::len), Some(297), "{value}");
    }
    // Nothing leaked into another project.
    assert!(stored(&server.project("default").await).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_gets_never_miss() {
    let server = start_kv();
    let addr = server.addr.to_string();
    for target in ["sdk", "unary"] {
        let project = format!("preload-{target}");
        let result = run_json(&args(
            target,
            &addr,
            "get",
            &["--preload", "--project", &project],
        ));
        assert_clean(&result, target, "get");
        assert_eq!(result["misses"], 0, "{result:#}");
        assert!(result["preload_s"].as_f64().unwrap() > 0.0);
        assert_eq!(stored(&server.project(&project).await).await.len(), 1000);
    }
    // Without a preload, gets on an empty project all miss.
    let result = run_json(&args("unary", &addr, "get", &["--project", "empty"]));
    assert_clean(&result, "unary", "get");
    assert_eq!(result["misses"], result["ops"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_writes_carry_the_ttl_share() {
    let server = start_kv();
    let addr = server.addr.to_string();
    let result = run_json(&args(
        "unary",
        &addr,
        "set",
        &[
            "--ttl-share",
            "1",
            "--ttl-ms",
            "600000",
            "--connections",
            "2",
        ],
    ));
    assert_clean(&result, "unary", "set");
    assert_eq!(result["connections"], 2);
    let project = server.project("bench").await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut checked = 0;
    for n in 0..1000 {
        if let Some(entry) = project
            .get_entry::<serde_json::Value>(&format!("k{n:015}"))
            .await
            .unwrap()
        {
            let deadline = entry.expires_at_ms.expect("every write carried a TTL");
            assert!(
                deadline > now_ms && deadline <= now_ms + 600_000,
                "deadline {deadline} vs now {now_ms}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_workloads_count_keys() {
    let server = start_kv();
    let addr = server.addr.to_string();
    let result = run_json(&args("sdk", &addr, "set-many", &["--batch", "16"]));
    assert_clean(&result, "sdk", "set-many");
    assert_eq!(result["batch"], 16);
    let ops = result["ops_per_sec"].as_f64().unwrap();
    assert_eq!(result["keys_per_sec"].as_f64().unwrap(), ops * 16.0);

    let result = run_json(&args("unary", &addr, "get-many", &["--batch", "16"]));
    assert_clean(&result, "unary", "get-many");
    let ops = result["ops"].as_u64().unwrap();
    // Keys the set-many run did not reach miss; the rest hit.
    assert!(result["misses"].as_u64().unwrap() < ops * 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_in_open_loop_holds_the_rate() {
    let server = start_kv();
    let addr = server.addr.to_string();
    let result = run_json(&args(
        "sdk",
        &addr,
        "mixed",
        &[
            "--mix",
            "get=50,set=30,has=10,delete=10",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "200ms",
            // Slack for a loaded machine: a task that falls behind its
            // schedule loses the operations still due at the end.
            "--concurrency",
            "8",
        ],
    ));
    assert_clean(&result, "sdk", "mixed");
    assert_eq!(result["mix"], "get=50,set=30,has=10,delete=10");
    assert_eq!(result["rate"], 200.0);
    let achieved = result["ops_per_sec"].as_f64().unwrap();
    assert!(
        (150.0..=210.0).contains(&achieved),
        "asked 200 ops/s, got {achieved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_serves_what_it_implements() {
    let server = Server::reference();
    let addr = server.addr_arg();
    let result = run_json(&args("unary", &addr, "set", &[]));
    assert_clean(&result, "unary", "set");
    let result = run_json(&args("unary", &addr, "get-many", &["--preload"]));
    assert_clean(&result, "unary", "get-many");
    assert_eq!(result["misses"], 0);

    // The SDK's unary calls reach the same map.
    let client = kv_client::Client::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let project = client.project("bench");
    let value: serde_json::Value = project.get("k000000000000007").await.unwrap().unwrap();
    assert_eq!(value.as_str().map(str::len), Some(98));
    assert!(project.has("k000000000000007").await.unwrap());
    assert!(project.delete("k000000000000007").await.unwrap());
    assert!(!project.has("k000000000000007").await.unwrap());
    let err = project.clear().await.unwrap_err();
    assert_eq!(err.code(), kv_client::Code::Unimplemented);
    assert!(
        err.to_string()
            .contains("only implements Get/Set/Has/Delete/GetMany/SetMany")
    );
}

/// Every key of a 1000-key space a reference server at `addr` holds.
async fn stored_at(addr: &str) -> Vec<serde_json::Value> {
    let client = kv_client::Client::connect(format!("http://{addr}"))
        .await
        .unwrap();
    stored(&client.project("bench")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_spread_the_tasks_over_every_front_end() {
    for target in ["sdk", "unary"] {
        // Reference servers share nothing: each holds what reached it.
        let (a, b) = (Server::reference(), Server::reference());
        let urls = format!("{},{}", a.addr_arg(), b.addr_arg());
        let result = run_json(&args(
            target,
            &urls,
            "set",
            &["--connections", "2", "--concurrency", "4"],
        ));
        assert_clean(&result, target, "set");
        // Two connections to each URL.
        assert_eq!(result["connections"], 4, "{result:#}");
        for server in [&a, &b] {
            let values = stored_at(&server.addr_arg()).await;
            assert!(
                !values.is_empty(),
                "{target}: nothing reached {}",
                server.addr
            );
        }
    }
}

#[test]
fn reference_server_refuses_a_taken_address() {
    let server = Server::reference();
    let outcome = run_bench(
        &["reference-server", "--addr", &server.addr_arg()],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("cannot listen on"),
        "{}",
        outcome.stderr
    );
}
