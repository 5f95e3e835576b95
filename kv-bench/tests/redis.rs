//! kv-bench against a real redis-server (skipped when it is not installed,
//! unless KV_TEST_REQUIRE_ALL=1).

mod common;

use common::{Server, assert_clean, run_json};

fn redis() -> Option<Server> {
    kv_tests::tool_available("redis-server", "--version").then(Server::redis)
}

fn args<'a>(addr: &'a str, workload: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["--target", "redis", "--addr", addr, "--workload", workload];
    argv.extend_from_slice(&["--keys", "1000", "--duration", "1s", "--warmup", "200ms"]);
    argv.extend_from_slice(extra);
    argv
}

async fn connect(server: &Server) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", server.addr))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server")
}

/// Every key of the 1000-key space that holds a value.
async fn stored(conn: &mut redis::aio::MultiplexedConnection) -> Vec<Vec<u8>> {
    let mut pipe = redis::pipe();
    for n in 0..1000 {
        pipe.cmd("GET").arg(format!("k{n:015}"));
    }
    let values: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await.unwrap();
    values.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_sets_store_raw_values_of_the_requested_size() {
    let Some(server) = redis() else { return };
    let addr = server.addr_arg();
    let result = run_json(&args(
        &addr,
        "set",
        &["--value-bytes", "200", "--concurrency", "8"],
    ));
    assert_clean(&result, "redis", "set");
    assert_eq!(result["redis_mode"], "multiplexed");
    assert_eq!(result["connections"], 1);

    let mut conn = connect(&server).await;
    let values = stored(&mut conn).await;
    assert!(!values.is_empty(), "the run wrote no key");
    assert!(values.iter().all(|v| v.len() == 200));
    // No TTL was asked for.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("k000000000000001")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl == -1 || ttl == -2, "PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_gets_over_separate_connections_never_miss() {
    let Some(server) = redis() else { return };
    let addr = server.addr_arg();
    let result = run_json(&args(
        &addr,
        "get",
        &[
            "--preload",
            "--redis-mode",
            "connections",
            "--connections",
            "4",
            "--concurrency",
            "8",
        ],
    ));
    assert_clean(&result, "redis", "get");
    assert_eq!(result["redis_mode"], "connections");
    assert_eq!(result["connections"], 4);
    assert_eq!(result["misses"], 0, "{result:#}");
    assert_eq!(stored(&mut connect(&server).await).await.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_carry_the_ttl() {
    let Some(server) = redis() else { return };
    let addr = server.addr_arg();
    let result = run_json(&args(
        &addr,
        "set-many",
        &["--batch", "16", "--ttl-share", "1", "--ttl-ms", "600000"],
    ));
    assert_clean(&result, "redis", "set-many");
    let ops = result["ops_per_sec"].as_f64().unwrap();
    assert_eq!(result["keys_per_sec"].as_f64().unwrap(), ops * 16.0);

    let mut conn = connect(&server).await;
    let mut with_ttl = 0;
    for n in 0..1000 {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("k{n:015}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        // -2: never written; anything else must be a TTL, never -1 (none).
        assert_ne!(ttl, -1, "k{n:015} has no TTL");
        if ttl > 0 {
            assert!(ttl <= 600_000);
            with_ttl += 1;
        }
    }
    assert!(with_ttl > 0);

    let result = run_json(&args(&addr, "get-many", &["--batch", "16"]));
    assert_clean(&result, "redis", "get-many");
    let misses = result["misses"].as_u64().unwrap();
    assert!(misses < result["ops"].as_u64().unwrap() * 16);
}
