//! Health and `/metrics` of the real binary on the Redis Cluster backend:
//! the front-end's own counters move by exactly the calls made, the
//! figures only the cluster keeps are absent, and the output passes
//! `promtool check metrics` (skipped without promtool unless
//! `KV_TEST_REQUIRE_ALL=1`).

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kv_proto::v1::{SetRequest, kv_service_client::KvServiceClient};
use kv_tests::{BinaryServer, tool_available};
use prost_types::{Value, value::Kind};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect();
    (body.to_string(), samples)
}

pub(crate) async fn health_and_metrics_on_the_cluster_backend(seeds: &[String], bin: &str) {
    let urls = seeds.join(",");
    let server = BinaryServer::start(
        bin,
        &[
            "--backend",
            "redis-cluster",
            "--redis-url",
            &urls,
            "--redis-namespace",
            "metrics",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let found = server.log().iter().find_map(|line| {
            let rest = line.split("metrics on http://").nth(1)?;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            break addr;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address: {:?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let mut kv = KvServiceClient::new(channel);
    for i in 0..3 {
        let mut request = tonic::Request::new(SetRequest {
            key: format!("k{i}"),
            value: Some(Value {
                kind: Some(Kind::NumberValue(f64::from(i))),
            }),
            ..SetRequest::default()
        });
        request
            .metadata_mut()
            .insert("x-kv-project", "shop".parse().unwrap());
        kv.set(request).await.unwrap();
    }

    let (text, m) = scrape(metrics);
    let set_ok = "kv_requests_total{service=\"kv.v1.KvService\",method=\"Set\",code=\"OK\"}";
    assert_eq!(m.get(set_ok), Some(&3.0), "{text}");
    let health_ok =
        "kv_requests_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"}";
    assert_eq!(m.get(health_ok), Some(&1.0), "{text}");
    assert_eq!(
        m.get("kv_project_ops_total{project=\"shop\"}"),
        Some(&3.0),
        "{text}"
    );
    assert!(m.get("kv_memory_in_use_bytes").is_some_and(|&v| v > 0.0));
    assert!(m.contains_key("process_cpu_seconds_total"), "{text}");
    // What the cluster keeps itself is not reported by the front-end.
    for absent in [
        "kv_project_keys",
        "kv_project_bytes",
        "kv_entries",
        "kv_log_",
        "kv_snapshot",
        "kv_recovery_seconds",
        "kv_expired_keys",
    ] {
        assert!(
            !m.keys().any(|s| s.starts_with(absent)) && !text.contains(&format!("# TYPE {absent}")),
            "{absent} reported on the cluster backend:\n{text}"
        );
    }

    if tool_available("promtool", "--version") {
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
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
