//! `kv-bench expiry` against the real kv-server binary: every key's EXPIRED
//! event is seen soon after its deadline, and a watch the server cuts off
//! is reported as an error naming the flag that fixes it.

mod common;

use std::time::Duration;

use common::{kv_server, run_bench, subcommand_json};
use kv_tests::BinaryServer;

/// The result fields, in the order `--json` writes them.
const FIELDS: &[&str] = &[
    "keys",
    "written_in_s",
    "expired",
    "missing",
    "lag_ms",
    "label",
    "ttl_ms",
    "spread_ms",
    "value_bytes",
    "batch",
    "concurrency",
    "timeout_s",
    "project",
    "seed",
    "early",
    "server_lag_ms",
];

/// Runs `kv-bench expiry` with `args` plus `--json FILE`; expects success
/// and returns the JSON text.
fn expiry_json(args: &[&str]) -> String {
    let (stdout, text) = subcommand_json("expiry", args);
    let mut lines = stdout.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.trim_start().starts_with("keys")),
        "the table is on stdout: {stdout}"
    );
    assert!(lines.next().is_some(), "a result row: {stdout}");
    text
}

/// Lag percentiles, checked to be in order; returns (p99, max).
fn lag(result: &serde_json::Value, name: &str) -> (u64, u64) {
    let lag = &result[name];
    let p = |q: &str| {
        lag[q]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}.{q}: {result:#}"))
    };
    assert!(
        p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max"),
        "{name} percentiles out of order: {lag}"
    );
    (p("p99"), p("max"))
}

#[test]
fn every_key_expires_soon_after_its_deadline() {
    // `never`: the test measures expiry, not durability. The expiry task
    // runs every 100 ms (the default, given explicitly: the bound below
    // depends on it).
    let server = BinaryServer::start(
        &kv_server(),
        &["--fsync", "never", "--expiry-interval-ms", "100"],
    );
    let addr = server.addr.to_string();
    let text = expiry_json(&[
        "--url",
        &addr,
        "--keys",
        "2000",
        "--ttl-ms",
        "1500",
        "--spread-ms",
        "1000",
        // 20 calls: 20 deadlines spread over the second.
        "--batch",
        "100",
        "--timeout",
        "20s",
        "--label",
        "spread",
    ]);
    // The fields are all there, in the documented order.
    let positions: Vec<usize> = FIELDS
        .iter()
        .map(|field| {
            text.find(&format!("\"{field}\":"))
                .unwrap_or_else(|| panic!("{field} is missing: {text}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "fields out of order: {text}"
    );
    let result: serde_json::Value = serde_json::from_str(&text).expect("the result is JSON");
    assert_eq!(result["keys"], 2000, "{result:#}");
    assert_eq!(result["expired"], 2000, "{result:#}");
    assert_eq!(result["missing"], 0, "{result:#}");
    assert_eq!(result["early"], 0, "{result:#}");
    assert_eq!(result["label"], "spread");
    assert_eq!(
        (result["ttl_ms"].clone(), result["spread_ms"].clone()),
        (1500.into(), 1000.into())
    );
    assert!(result["written_in_s"].as_f64().unwrap() > 0.0);
    let (p99, max) = lag(&result, "lag_ms");
    // The expiry interval is 100 ms; the rest is slack for a loaded
    // machine and a debug build.
    assert!(p99 < 1500, "p99 lag {p99} ms: {result:#}");
    // The client's deadlines are at or before the server's: its lag is
    // never below the server-deadline lag.
    let (server_p99, server_max) = lag(&result, "server_lag_ms");
    assert!(server_p99 <= p99 && server_max <= max, "{result:#}");

    // Everything due at one instant.
    let text = expiry_json(&[
        "--url",
        &addr,
        "--keys",
        "2000",
        "--ttl-ms",
        "1500",
        "--spread-ms",
        "0",
        "--timeout",
        "20s",
    ]);
    let result: serde_json::Value = serde_json::from_str(&text).expect("the result is JSON");
    assert_eq!(
        (result["expired"].clone(), result["missing"].clone()),
        (2000.into(), 0.into()),
        "{result:#}"
    );
    let (p99, _) = lag(&result, "lag_ms");
    assert!(p99 < 1500, "p99 lag {p99} ms: {result:#}");
}

#[test]
fn a_watch_the_server_cuts_off_names_the_flag() {
    // A history of 100 changes: one SetMany of 1000 keys is more than it
    // holds, so the server cuts the watch off.
    let server = BinaryServer::start(
        &kv_server(),
        &["--fsync", "never", "--watch-history-events", "100"],
    );
    let addr = server.addr.to_string();
    let outcome = run_bench(
        &[
            "expiry", "--url", &addr, "--keys", "3000", "--ttl-ms", "30000", "--batch", "1000",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        outcome.code,
        Some(1),
        "{}\n{}",
        outcome.stdout,
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("cut off the watch")
            && outcome.stderr.contains("--watch-history-events"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stdout.is_empty(),
        "no result row: {}",
        outcome.stdout
    );
}
