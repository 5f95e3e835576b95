//! kv-bench `--target redis-cluster` against a real Redis Cluster on
//! loopback (three masters with a replica each; skipped when redis-server or
//! redis-cli is not installed, unless KV_TEST_REQUIRE_ALL=1).

mod common;

use common::{assert_clean, run_json};
use kv_tests::cluster::RedisCluster;

fn args<'a>(seeds: &'a str, workload: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["--target", "redis-cluster", "--url", seeds];
    argv.extend_from_slice(&["--workload", workload, "--concurrency", "8"]);
    argv.extend_from_slice(&["--duration", "1s", "--warmup", "200ms"]);
    argv.extend_from_slice(extra);
    argv
}

/// The first of keys `0..limit` (16-byte names after `tag`) that holds a
/// value, with the value.
fn first_stored(cluster: &RedisCluster, tag: &str, limit: u64) -> Option<(String, String)> {
    let seed = cluster.masters()[0];
    (0..limit).find_map(|n| {
        let key = format!("{tag}k{n:015}");
        let value = cluster.cli(seed, &["-c", "GET", &key]).trim().to_string();
        (!value.is_empty()).then_some((key, value))
    })
}

/// One cluster for every run (starting one takes seconds): single-key
/// workloads under the usual names on every master, then batches under
/// their task's hash tag.
#[test]
fn drives_a_three_master_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let seeds = cluster.seeds().join(",");

    let result = run_json(&args(
        &seeds,
        "set",
        &["--keys", "1000", "--value-bytes", "200"],
    ));
    assert_clean(&result, "redis-cluster", "set");
    assert_eq!(result["connections"], 1, "{result:#}");
    assert!(result["redis_mode"].is_null(), "{result:#}");
    // Written under the usual 16-byte names, raw values of the asked size.
    let (key, value) = first_stored(&cluster, "", 100).expect("the run wrote a key");
    assert_eq!(key.len(), 16);
    assert_eq!(value.len(), 200, "{key} holds {value:?}");
    // The keys are spread over the slots, so every master holds some.
    for port in cluster.masters() {
        let keys: u64 = cluster
            .cli(port, &["DBSIZE"])
            .trim()
            .parse()
            .expect("DBSIZE");
        assert!(keys > 0, "master {port} holds no key");
    }

    let result = run_json(&args(&seeds, "get", &["--keys", "1000", "--preload"]));
    assert_clean(&result, "redis-cluster", "get");
    assert_eq!(result["misses"], 0, "{result:#}");
    assert!(result["preload_s"].as_f64().unwrap() > 0.0);

    // EXISTS and DEL too.
    let mix = ["--keys", "1000", "--mix", "get=25,set=25,has=25,delete=25"];
    let result = run_json(&args(&seeds, "mixed", &mix));
    assert_clean(&result, "redis-cluster", "mixed");

    // Batches: 50 keys under each task's tag, written with a TTL.
    let batch = ["--keys", "50", "--batch", "16"];
    let mut extra = batch.to_vec();
    extra.extend_from_slice(&["--ttl-share", "1", "--ttl-ms", "600000"]);
    let result = run_json(&args(&seeds, "set-many", &extra));
    assert_clean(&result, "redis-cluster", "set-many");
    let ops = result["ops_per_sec"].as_f64().unwrap();
    assert_eq!(result["keys_per_sec"].as_f64().unwrap(), ops * 16.0);
    for task in [0, 7] {
        let tag = format!("{{b{task}}}");
        let (key, value) = first_stored(&cluster, &tag, 50).expect("a tagged key");
        assert_eq!(value.len(), 100, "{key} holds {value:?}");
        let seed = cluster.masters()[0];
        let ttl: i64 = cluster
            .cli(seed, &["-c", "PTTL", &key])
            .trim()
            .parse()
            .expect("PTTL");
        assert!((1..=600_000).contains(&ttl), "{key}: PTTL {ttl}");
    }

    // The same tags are read back: every key of the 50 was written by now.
    let result = run_json(&args(&seeds, "get-many", &batch));
    assert_clean(&result, "redis-cluster", "get-many");
    assert_eq!(result["batch"], 16);
    assert_eq!(result["misses"], 0, "{result:#}");
}
