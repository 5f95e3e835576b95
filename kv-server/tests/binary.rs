//! The real `kv-server` binary: the conformance suite on the real clock,
//! signals, start-up errors.

use std::{process::Command, time::Duration};

use kv_tests::{BinaryServer, Ctx, Target, Time};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// The binary as a conformance target: a fresh process per case.
struct Binary {
    server: BinaryServer,
    ctx: Ctx,
}

impl Target for Binary {
    async fn start() -> Self {
        let server = BinaryServer::start(BIN, &[]);
        let ctx = Ctx::connect(server.addr, Time::Real).await;
        Self { server, ctx }
    }

    fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    async fn stop(self) {
        drop(self.ctx);
        let log = self.server.log();
        let status = tokio::task::spawn_blocking(move || self.server.terminate())
            .await
            .unwrap();
        assert!(status.success(), "exit status {status}; log: {log:?}");
    }
}

kv_tests::conformance_suite!(Binary);

#[tokio::test]
async fn sigterm_exits_zero_after_logging_shutdown() {
    let server = BinaryServer::start(BIN, &[]);
    let kv = kv_client::Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
        .project("p");
    kv.set("k", &1).await.unwrap();
    let (status, log) = tokio::task::spawn_blocking(move || server.terminate_with_log())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
}

#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--listen", &addr])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn bad_limits_are_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--max-key-bytes", "0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-key-bytes is 0"), "{stderr}");
    // Environment variables set flags too.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KV_MAX_TTL_MS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-ttl-ms is 0"));
}

#[tokio::test]
async fn limits_from_flags_and_environment_apply() {
    let server = BinaryServer::start(BIN, &["--max-key-bytes", "8"]);
    let kv = kv_client::Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
        .project("p");
    kv.set("12345678", &1).await.unwrap();
    let err = kv.set("123456789", &1).await.unwrap_err();
    assert_eq!(err.code(), kv_client::Code::ResourceExhausted);
    assert!(err.to_string().contains("the limit is 8 bytes"), "{err}");
    drop(server);

    let server = BinaryServer::start_with_env(BIN, &[], &[("KV_MAX_TTL_MS", "1000")]);
    let kv = kv_client::Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
        .project("p");
    kv.set_with_ttl("k", &1, Duration::from_millis(1000))
        .await
        .unwrap();
    let err = kv
        .set_with_ttl("k", &1, Duration::from_millis(1001))
        .await
        .unwrap_err();
    assert_eq!(err.code(), kv_client::Code::InvalidArgument);
    assert!(err.to_string().contains("the limit is 1000 ms"), "{err}");
}

/// The README's SDK example (kv-client/examples/quickstart.rs, built by
/// `cargo test --workspace`) runs as written against the real binary.
#[test]
fn readme_quickstart_runs_against_the_binary() {
    let example = std::path::Path::new(BIN)
        .parent()
        .expect("binary has a directory")
        .join("examples")
        .join("quickstart");
    if !example.exists() {
        assert!(
            !kv_tests::require_all(),
            "{} not built; run the workspace tests (cargo test --workspace)",
            example.display()
        );
        println!(
            "SKIPPED: {} not built (run cargo test --workspace)",
            example.display()
        );
        return;
    }
    let server = BinaryServer::start(BIN, &[]);
    let out = Command::new(&example)
        .env("KV_URL", format!("http://{}", server.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quickstart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("quickstart ok: cleared 1 key(s)"));
}
