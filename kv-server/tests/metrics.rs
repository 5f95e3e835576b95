//! `/metrics` of the real binary: counters moved by exactly the calls of a
//! mixed workload (writes, reads, an auth failure, a rate-limit and a quota
//! refusal), the output linted by `promtool check metrics`, scraped by a
//! real Prometheus (`up == 1` through its HTTP API), and the per-project
//! series held to the top N with 10000 projects.
//!
//! promtool and prometheus come from the Debian package `prometheus`; the
//! tests that need them skip without them unless `KV_TEST_REQUIRE_ALL=1`.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kv_client::{Client, Quota};
use kv_proto::v1::{DeleteRequest, GetRequest, SetRequest, kv_service_client::KvServiceClient};
use kv_tests::{BinaryServer, tool_available};
use prost_types::{Value, value::Kind};
use tonic::{Request, transport::Channel};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const ADMIN: &str = "admin-secret-0123456789abcdef";

/// Starts the binary with metrics on a free loopback port; returns it and
/// the metrics address (from its "metrics on" log line).
fn start(args: &[&str], env: &[(&str, &str)]) -> (BinaryServer, SocketAddr) {
    let mut all = vec!["--metrics-listen", "127.0.0.1:0"];
    if !args.contains(&"--fsync") {
        all.extend(["--fsync", "never"]);
    }
    all.extend_from_slice(args);
    let server = BinaryServer::start_with_env(BIN, &all, env);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = server.log().iter().find_map(|line| {
            let rest = line.split("metrics on http://").nth(1)?;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return (server, addr);
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address in {:?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 GET; returns the status code and body.
fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // hyper sends a fixed-length body for a full response.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, body.to_string())
}

/// Every sample of a Prometheus text exposition, by series.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let (status, body) = http_get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let parsed = samples(&body);
    (body, parsed)
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn requests(method: &str, code: &str) -> String {
    format!("kv_requests_total{{service=\"kv.v1.KvService\",method=\"{method}\",code=\"{code}\"}}")
}

fn on<T>(project: &str, token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-kv-project", project.parse().unwrap());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn set(key: &str) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: Some(Value {
            kind: Some(Kind::StringValue("v".into())),
        }),
        ..SetRequest::default()
    }
}

async fn grpc(addr: SocketAddr) -> KvServiceClient<Channel> {
    KvServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_moves_each_counter_by_exactly_its_calls() {
    let (server, metrics) = start(&[], &[("KV_ADMIN_TOKEN", ADMIN)]);
    let admin = Client::builder(format!("http://{}", server.addr))
        .token(ADMIN)
        .connect()
        .await
        .unwrap()
        .admin();
    admin
        .create_project("shop", Quota::default())
        .await
        .unwrap();
    let one_per_second = Quota {
        ops_per_second: Some(1),
        ..Quota::default()
    };
    admin.create_project("slow", one_per_second).await.unwrap();
    let one_key = Quota {
        max_keys: Some(1),
        ..Quota::default()
    };
    admin.create_project("tiny", one_key).await.unwrap();
    let (_, before) = scrape(metrics);

    let mut kv = grpc(server.addr).await;
    let token = Some(ADMIN);
    for i in 0..7 {
        kv.set(on("shop", token, set(&format!("k{i}"))))
            .await
            .unwrap();
    }
    for i in 0..2 {
        let delete = DeleteRequest {
            key: format!("k{i}"),
            ..DeleteRequest::default()
        };
        kv.delete(on("shop", token, delete)).await.unwrap();
    }
    for i in 2..5 {
        let get = GetRequest {
            key: format!("k{i}"),
        };
        kv.get(on("shop", token, get)).await.unwrap();
    }
    // No credentials at all.
    let get = GetRequest { key: "k2".into() };
    let refused = kv.get(on("shop", None, get)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // One operation per second: calls until one is refused (within a
    // second or two), counting exactly what was refused.
    let (mut admitted, mut limited) = (0, 0);
    while limited == 0 {
        let get = GetRequest { key: "x".into() };
        match kv.get(on("slow", token, get)).await {
            Ok(_) => admitted += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
                limited += 1;
            }
        }
        assert!(admitted < 10, "no call refused at 1 op/s");
    }
    // One key: the second is refused by the quota.
    kv.set(on("tiny", token, set("a"))).await.unwrap();
    let over = kv.set(on("tiny", token, set("b"))).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over}");
    assert!(over.message().contains("keys"), "{over}");

    let (text, after) = scrape(metrics);
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(&requests("Set", "OK")),
        7.0 + 1.0,
        "shop's 7, tiny's 1"
    );
    assert_eq!(moved(&requests("Set", "RESOURCE_EXHAUSTED")), 1.0);
    assert_eq!(moved(&requests("Delete", "OK")), 2.0);
    assert_eq!(moved(&requests("Get", "OK")), 3.0 + admitted as f64);
    assert_eq!(moved(&requests("Get", "UNAUTHENTICATED")), 1.0);
    assert_eq!(
        moved(&requests("Get", "RESOURCE_EXHAUSTED")),
        f64::from(limited)
    );
    assert_eq!(moved("kv_auth_failures_total{reason=\"missing\"}"), 1.0);
    assert_eq!(
        moved("kv_rate_limit_refusals_total{subject=\"project\",limit=\"ops_per_second\"}"),
        f64::from(limited)
    );
    assert_eq!(moved("kv_quota_refusals_total"), 1.0);
    // Admitted operations: shop's 7 sets, 2 deletes and 3 gets.
    assert_eq!(moved("kv_project_ops_total{project=\"shop\"}"), 12.0);
    assert_eq!(value(&after, "kv_project_keys{project=\"shop\"}"), 5.0);
    assert_eq!(value(&after, "kv_project_keys{project=\"tiny\"}"), 1.0);
    // The latency histogram counts every finished Set.
    let set_count = "kv_request_duration_seconds_count{service=\"kv.v1.KvService\",method=\"Set\"}";
    let set_inf = "kv_request_duration_seconds_bucket{le=\"+Inf\",service=\"kv.v1.KvService\",method=\"Set\"}";
    assert_eq!(moved(set_count), 9.0);
    assert_eq!(value(&after, set_count), value(&after, set_inf));
    // This test's connections are open; the calls are all finished.
    assert!(value(&after, "kv_connections_open") >= 2.0, "{text}");
    let set_open = "kv_calls_open{service=\"kv.v1.KvService\",method=\"Set\"}";
    assert_eq!(value(&after, set_open), 0.0);
    assert!(value(&after, "kv_memory_in_use_bytes") > 0.0);
    assert!(value(&after, "kv_memory_limit_bytes") >= value(&after, "kv_memory_in_use_bytes"));
    assert!(value(&after, "process_resident_memory_bytes") > 0.0);
    assert!(value(&after, "process_open_fds") > 0.0);
    assert!(value(&after, "process_start_time_seconds") > 1.6e9);
    assert!(after.contains_key("kv_recovery_seconds"), "{text}");
    // The log writer saw shop's 7 sets and 2 deletes, and tiny's 2 sets
    // (the refused one is evaluated in its batch, then not logged).
    assert_eq!(moved("kv_log_batch_writes_sum"), 11.0);
    assert!(moved("kv_log_append_duration_seconds_count") >= 1.0);
    assert!(moved("kv_log_appended_bytes_total") > 0.0);
    // --fsync never: the writer never syncs while serving.
    assert_eq!(moved("kv_log_fsync_duration_seconds_count"), 0.0);

    // The SDK batches calls into Pipeline frames: 4 one by one (a frame
    // each), then 12 at once (as few frames as it likes).
    let piped = Client::builder(format!("http://{}", server.addr))
        .token(ADMIN)
        .connect()
        .await
        .unwrap()
        .project("shop");
    for i in 0..4 {
        piped.set(&format!("s{i}"), &i).await.unwrap();
    }
    let keys: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let together: Vec<_> = keys.iter().map(|k| piped.set(k, &1)).collect();
    for result in futures_util::future::join_all(together).await {
        result.unwrap();
    }
    let (_, piped_after) = scrape(metrics);
    let frames = value(&piped_after, "kv_pipeline_calls_per_frame_count")
        - value(&after, "kv_pipeline_calls_per_frame_count");
    let calls = value(&piped_after, "kv_pipeline_calls_per_frame_sum")
        - value(&after, "kv_pipeline_calls_per_frame_sum");
    assert_eq!(calls, 16.0, "every call in some frame");
    assert!((5.0..=16.0).contains(&frames), "{frames} frames");
    let pipeline_open = "kv_calls_open{service=\"kv.v1.KvService\",method=\"Pipeline\"}";
    assert_eq!(value(&piped_after, pipeline_open), 1.0, "the SDK's stream");
    assert_eq!(
        value(&piped_after, "kv_project_ops_total{project=\"shop\"}")
            - value(&after, "kv_project_ops_total{project=\"shop\"}"),
        16.0
    );

    // Anything but /metrics is refused, naming where they are.
    let (status, body) = http_get(metrics, "/", None);
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");

    if tool_available("promtool", "--version") {
        promtool_check(&text);
    }
}

/// Scrapes until `done` holds (10 s at most).
fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (text, now) = scrape(addr);
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_expiry_are_reported() {
    let args = [
        "--snapshot-min-log-bytes",
        "4096",
        "--expiry-interval-ms",
        "20",
        "--fsync",
        "always",
    ];
    let (server, metrics) = start(&args, &[]);
    let (_, before) = scrape(metrics);
    assert!(!before.contains_key("kv_snapshot_last_timestamp_seconds"));
    let mut kv = grpc(server.addr).await;
    // One key rewritten: the log outgrows twice the live data, and a
    // snapshot is taken.
    let big = "x".repeat(100);
    for _ in 0..80 {
        let mut request = set("k");
        request.value = Some(Value {
            kind: Some(Kind::StringValue(big.clone())),
        });
        kv.set(on("p", None, request)).await.unwrap();
    }
    let after = scrape_until(metrics, "a snapshot", |m| {
        value(m, "kv_snapshots_total") >= 1.0
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let taken = value(&after, "kv_snapshot_last_timestamp_seconds");
    assert!(
        (now - 60.0..=now + 1.0).contains(&taken),
        "snapshot at {taken}, now {now}"
    );
    assert!(value(&after, "kv_snapshot_last_bytes") > 100.0);
    assert!(value(&after, "kv_snapshot_last_duration_seconds") > 0.0);
    assert_eq!(value(&after, "kv_snapshot_failures_total"), 0.0);
    // --fsync always: one fsync per group commit at least.
    assert!(value(&after, "kv_log_fsync_duration_seconds_count") >= 1.0);
    // Two keys with a 100 ms TTL: reclaimed soon after, a little late.
    for key in ["t1", "t2"] {
        let mut request = set(key);
        request.ttl_ms = Some(100);
        kv.set(on("p", None, request)).await.unwrap();
    }
    let expired = scrape_until(metrics, "2 expired keys", |m| {
        value(m, "kv_expired_keys_total") >= 2.0
    });
    assert_eq!(value(&expired, "kv_expired_keys_total"), 2.0);
    let lag = value(&expired, "kv_expiry_lag_seconds");
    assert!((0.0..5.0).contains(&lag), "lag {lag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_it() {
    if !tool_available("prometheus", "--version") {
        return;
    }
    let (server, metrics) = start(&[], &[]);
    // Some traffic, so the request families have samples.
    let mut kv = grpc(server.addr).await;
    kv.set(on("p", None, set("k"))).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kv\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let query = |q: &str| -> Option<serde_json::Value> {
        let stream_ok = TcpStream::connect_timeout(&port, Duration::from_millis(200)).is_ok();
        if !stream_ok {
            return None;
        }
        let (status, body) = http_get(port, &format!("/api/v1/query?query={q}"), None);
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    };
    let value_of = |answer: &serde_json::Value| -> Option<String> {
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some(answer) = query("up") {
            if value_of(&answer).as_deref() == Some("1") {
                break;
            }
            last = Some(answer);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw up == 1 within 30 s; last answer {last:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // It parsed the samples too, not only reached the endpoint.
    let answer = query("kv_requests_total%7Bmethod%3D%22Set%22%2Ccode%3D%22OK%22%7D")
        .expect("Prometheus answers");
    assert_eq!(value_of(&answer).as_deref(), Some("1"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_projects_make_at_most_top_n_plus_one_series() {
    const PROJECTS: usize = 10_000;
    const TOP: usize = 5;
    let (server, metrics) = start(&["--metrics-top-projects", "5"], &[]);
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Every project one key; big0..big4 more (big4 the most), so the top
    // five by keys are known.
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let mut kv = KvServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            // A call the transport reset (seen once in about twenty runs
            // on a loaded machine, as RST_STREAM CANCEL from the server) is
            // sent again: setting "k" twice is harmless, and the count of
            // operations allows for it.
            let mut resent = Vec::new();
            for i in (worker..PROJECTS).step_by(32) {
                let project = format!("p{i}");
                if let Err(e) = kv.set(on(&project, None, set("k"))).await {
                    assert_eq!(e.code(), tonic::Code::Cancelled, "{e:?}");
                    kv.set(on(&project, None, set("k"))).await?;
                    resent.push(e);
                }
            }
            Ok::<_, tonic::Status>(resent)
        }));
    }
    let mut resent = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(reset) if reset.is_empty() => {}
            Ok(reset) => {
                println!(
                    "calls reset by the transport and sent again: {reset:?}; server log: {:?}",
                    server.log()
                );
                resent += reset.len();
            }
            Err(e) => panic!("{e:?}; server log: {:?}", server.log()),
        }
    }
    let mut kv = KvServiceClient::new(channel);
    for big in 0..TOP {
        for k in 0..(2 + big) {
            kv.set(on(&format!("big{big}"), None, set(&format!("k{k}"))))
                .await
                .unwrap();
        }
    }
    let (text, after) = scrape(metrics);
    for family in [
        "kv_project_keys{",
        "kv_project_bytes{",
        "kv_project_ops_total{",
    ] {
        let series: Vec<&String> = after.keys().filter(|s| s.starts_with(family)).collect();
        assert_eq!(series.len(), TOP + 1, "{family}: {series:?}");
    }
    let keys: HashMap<&str, f64> = after
        .iter()
        .filter_map(|(s, v)| {
            let project = s
                .strip_prefix("kv_project_keys{project=\"")?
                .strip_suffix("\"}")?;
            Some((project, *v))
        })
        .collect();
    for big in 0..TOP {
        assert_eq!(
            keys[format!("big{big}").as_str()],
            (2 + big) as f64,
            "{keys:?}"
        );
    }
    // The rest are summed, not dropped.
    assert_eq!(keys["_other"], PROJECTS as f64, "{keys:?}");
    let ops_total: f64 = after
        .iter()
        .filter(|(s, _)| s.starts_with("kv_project_ops_total{"))
        .map(|(_, v)| v)
        .sum();
    let big_sets: usize = (0..TOP).map(|b| 2 + b).sum();
    let expected = (PROJECTS + big_sets) as f64;
    // A reset call may or may not have been admitted before the reset.
    assert!(
        (expected..=expected + resent as f64).contains(&ops_total),
        "{ops_total} operations, {expected} sent ({resent} sent again)"
    );
    assert!(
        text.len() < 64 * 1024,
        "the exposition grew to {} bytes",
        text.len()
    );
    if tool_available("promtool", "--version") {
        promtool_check(&text);
    }
}

#[test]
fn a_bad_metrics_address_is_refused_by_name() {
    let out = Command::new(BIN)
        .args(["--metrics-listen", "nowhere"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-listen") && stderr.contains("host:port"),
        "{stderr}"
    );
}

#[test]
fn metrics_are_off_unless_asked_for() {
    let server = BinaryServer::start(BIN, &[]);
    let log = server.log();
    assert!(
        !log.iter().any(|l| l.contains("metrics on")),
        "metrics served without --metrics-listen: {log:?}"
    );
}
