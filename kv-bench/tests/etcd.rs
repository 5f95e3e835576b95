//! kv-bench against a real single-member etcd (skipped when `etcd` is not
//! installed, unless KV_TEST_REQUIRE_ALL=1).

mod common;

use std::time::{Duration, Instant};

use common::{Server, assert_clean, run_bench, run_json};
use tonic::transport::Channel;

/// The same generated client kv-bench uses, to read back what it wrote.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod etcd {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use etcd::{RangeRequest, kv_client::KvClient};

fn etcd() -> Option<Server> {
    kv_tests::tool_available("etcd", "--version").then(Server::etcd)
}

/// A client, once the member has elected itself and answers reads.
async fn ready(server: &Server) -> KvClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut client = KvClient::connect(format!("http://{}", server.addr))
                .await
                .ok()?;
            let request = RangeRequest {
                key: "probe".into(),
                ..RangeRequest::default()
            };
            client.range(request).await.ok().map(|_| client)
        };
        if let Some(client) = attempt.await {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "etcd did not answer; log: {}",
            std::fs::read_to_string(server.log_path().unwrap()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn args<'a>(addr: &'a str, workload: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["--target", "etcd", "--addr", addr, "--workload", workload];
    argv.extend_from_slice(&["--keys", "500", "--concurrency", "8"]);
    argv.extend_from_slice(&["--duration", "1s", "--warmup", "200ms"]);
    argv.extend_from_slice(extra);
    argv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_store_raw_values_and_preloaded_gets_hit() {
    let Some(server) = etcd() else { return };
    let mut client = ready(&server).await;
    let addr = server.addr_arg();

    let result = run_json(&args(&addr, "set", &["--value-bytes", "100"]));
    assert_clean(&result, "etcd", "set");
    let mut found = 0;
    for n in 0..500 {
        let request = RangeRequest {
            key: format!("k{n:015}").into(),
            ..RangeRequest::default()
        };
        let reply = client.range(request).await.unwrap().into_inner();
        for kv in reply.kvs {
            assert_eq!(kv.value.len(), 100);
            found += 1;
        }
    }
    assert!(found > 0, "the run wrote no key");

    let result = run_json(&args(&addr, "get", &["--preload"]));
    assert_clean(&result, "etcd", "get");
    assert_eq!(result["misses"], 0, "{result:#}");

    let result = run_json(&args(&addr, "has", &["--etcd-serializable"]));
    assert_clean(&result, "etcd", "has");
    assert_eq!(result["misses"], 0, "{result:#}");

    let result = run_json(&args(&addr, "mixed", &["--mix", "get=1,delete=1"]));
    assert_clean(&result, "etcd", "mixed");
}

#[test]
fn ttls_are_refused_for_etcd() {
    let outcome = run_bench(
        &[
            "run",
            "--target",
            "etcd",
            "--workload",
            "set",
            "--ttl-share",
            "0.5",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(2));
    assert!(
        outcome.stderr.contains("needs leases"),
        "{}",
        outcome.stderr
    );
}
