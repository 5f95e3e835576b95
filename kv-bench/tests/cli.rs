//! Flags kv-bench refuses, unreachable servers, and `chart`.

mod common;

use std::time::Duration;

use common::{Outcome, free_port, run_bench};

const LIMIT: Duration = Duration::from_secs(30);

fn refused(args: &[&str], code: i32, says: &str) -> Outcome {
    let outcome = run_bench(args, LIMIT);
    assert_eq!(
        outcome.code,
        Some(code),
        "kv-bench {args:?} should exit {code}; stdout: {} stderr: {}",
        outcome.stdout,
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(says),
        "kv-bench {args:?} should say {says:?}; it said: {}",
        outcome.stderr
    );
    outcome
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    refused(&["run", "--target", "memcached"], 2, "--target");
    refused(
        &["run", "--target", "sdk", "--duration", "10x"],
        2,
        "unknown unit",
    );
    refused(
        &["run", "--target", "redis", "--ttl-share", "1.5"],
        2,
        "--ttl-share",
    );
    refused(
        &["run", "--target", "sdk", "--mix", "get=80,put=20"],
        2,
        "unknown operation \"put\"",
    );
    refused(
        &[
            "run",
            "--target",
            "sdk",
            "--keys",
            "100000",
            "--key-bytes",
            "4",
        ],
        2,
        "--key-bytes 4 is too short for --keys 100000",
    );
    refused(
        &["run", "--target", "etcd", "--workload", "get-many"],
        2,
        "not supported for etcd",
    );
    refused(
        &[
            "run",
            "--target",
            "redis",
            "--connections",
            "4",
            "--concurrency",
            "8",
        ],
        2,
        "--redis-mode connections",
    );
    refused(
        &[
            "run",
            "--target",
            "sdk",
            "--workload",
            "get",
            "--mix",
            "get=1",
        ],
        2,
        "--mix applies to --workload mixed only",
    );
    refused(
        &[
            "run",
            "--target",
            "unary",
            "--workload",
            "set-many",
            "--batch",
            "0",
        ],
        2,
        "--batch 0 is out of range",
    );
    refused(
        &["run", "--target", "sdk", "--concurrency", "0"],
        2,
        "--concurrency",
    );
    refused(
        &[
            "run",
            "--target",
            "redis",
            "--url",
            "127.0.0.1:1,127.0.0.1:2",
        ],
        2,
        "several apply to the kv targets (sdk, unary) and redis-cluster only",
    );
    refused(
        &[
            "run",
            "--target",
            "unary",
            "--url",
            "127.0.0.1:1,127.0.0.1:2",
            "--connections",
            "2",
            "--concurrency",
            "3",
        ],
        2,
        "--connections 2 on each of 2 URLs is more than --concurrency 3",
    );
    refused(
        &[
            "run",
            "--target",
            "redis-cluster",
            "--connections",
            "2",
            "--concurrency",
            "8",
        ],
        2,
        "--connections must be 1",
    );
}

#[test]
fn bad_expiry_flags_are_refused_with_a_clear_message() {
    refused(&["expiry", "--keys", "0"], 2, "--keys must be at least 1");
    refused(
        &["expiry", "--batch", "1001"],
        2,
        "--batch 1001 is out of range",
    );
    refused(
        &["expiry", "--value-bytes", "1"],
        2,
        "--value-bytes 1 is too small",
    );
    refused(&["expiry", "--ttl-ms", "0"], 2, "--ttl-ms");
    refused(&["expiry", "--spread-ms=-5"], 2, "--spread-ms");
    refused(
        &["expiry", "--timeout", "0s"],
        2,
        "--timeout must be more than 0",
    );
    refused(&["expiry", "--timeout", "soon"], 2, "--timeout");
}

#[test]
fn an_unreachable_server_fails_the_run() {
    let addr = format!("127.0.0.1:{}", free_port());
    for target in ["sdk", "unary", "redis", "redis-cluster"] {
        let outcome = refused(
            &[
                "run",
                "--target",
                target,
                "--addr",
                &addr,
                "--duration",
                "1s",
            ],
            1,
            "cannot connect",
        );
        assert!(
            outcome.stdout.is_empty(),
            "no result row: {}",
            outcome.stdout
        );
    }
    let outcome = refused(
        &["expiry", "--url", &addr, "--keys", "10"],
        1,
        "cannot connect to kv",
    );
    assert!(
        outcome.stdout.is_empty(),
        "no result row: {}",
        outcome.stdout
    );
}

/// A result object as `run --json` writes it.
fn result(label: &str, concurrency: u32, ops_per_sec: f64) -> serde_json::Value {
    serde_json::json!({
        "target": "sdk", "workload": "get", "label": label,
        "concurrency": concurrency, "connections": 1, "client_threads": 1,
        "duration_s": 10.0, "ops": (ops_per_sec * 10.0) as u64,
        "ops_per_sec": ops_per_sec, "keys_per_sec": ops_per_sec, "errors": 0,
        "latency_us": {"p50": 100, "p90": 200, "p99": 300, "p999": 400, "max": 500, "mean": 120.0},
        "value_bytes": 100, "key_bytes": 16, "keys": 1000, "ttl_share": 0.0,
        "batch": 1, "rate": null
    })
}

#[test]
fn chart_draws_a_png_from_result_files() {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    if !std::path::Path::new(FONT).exists() {
        assert!(
            !kv_tests::require_all(),
            "{FONT} is required (KV_TEST_REQUIRE_ALL=1): install fonts-dejavu-core"
        );
        println!("SKIPPED: {FONT} not found (Debian package fonts-dejavu-core)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One file with one object, one with an array (two series, repeated
    // runs at one concurrency).
    let single = dir.path().join("one.json");
    std::fs::write(&single, result("kv SDK", 1, 3000.0).to_string()).unwrap();
    let many = dir.path().join("many.json");
    let array = serde_json::Value::Array(vec![
        result("kv SDK", 8, 15000.0),
        result("kv SDK", 64, 30000.0),
        result("Redis multiplexed", 1, 9000.0),
        result("Redis multiplexed", 8, 50000.0),
        result("Redis multiplexed", 8, 54000.0),
        result("Redis multiplexed", 64, 90000.0),
    ]);
    std::fs::write(&many, array.to_string()).unwrap();
    let out = dir.path().join("chart.png");
    let inputs = format!("{},{}", single.display(), many.display());
    let outcome = run_bench(
        &[
            "chart",
            "--input",
            &inputs,
            "--out",
            out.to_str().unwrap(),
            "--title",
            "Throughput vs concurrency (test)",
        ],
        LIMIT,
    );
    assert_eq!(outcome.code, Some(0), "chart failed: {}", outcome.stderr);
    assert!(
        outcome.stdout.contains("2 series, 7 results"),
        "{}",
        outcome.stdout
    );
    let png = std::fs::read(&out).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    // A 1200x700 chart with lines, points and text, deflated: tens of KB.
    // A blank image of that size deflates to about 3 KB.
    assert!(png.len() > 10_000, "only {} bytes", png.len());
}

#[test]
fn chart_names_the_font_flag_when_the_font_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("r.json");
    std::fs::write(&input, result("x", 1, 1.0).to_string()).unwrap();
    let out = dir.path().join("chart.png");
    let missing = dir.path().join("no-such-font.ttf");
    refused(
        &[
            "chart",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--font",
            missing.to_str().unwrap(),
        ],
        1,
        "(--font)",
    );
    assert!(!out.exists());
}

#[test]
fn chart_refuses_files_that_hold_no_results() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("r.json");
    std::fs::write(&input, r#"{"hello": "world"}"#).unwrap();
    let out = dir.path().join("chart.png");
    refused(
        &[
            "chart",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        1,
        "not a result",
    );
}
