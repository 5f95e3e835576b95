//! The real `kv-server` binary: the conformance suite (its clockless cases
//! and a real expiry), signals, start-up errors.

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

// The cases that let time pass run in process on the manual clock; here
// one real expiry shows the binary's clock and expiry task at work.
kv_tests::conformance_suite!(Binary, real_clock);

#[tokio::test]
async fn sigterm_exits_zero_after_logging_shutdown() {
    let server = BinaryServer::start(BIN, &[]);
    let kv = server.project("p").await;
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

/// Open watches do not hold a shutdown: SIGTERM ends them at once with
/// UNAVAILABLE naming the version to resume from, and the server exits well
/// within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_watches_with_the_version_to_resume_from() {
    let server = BinaryServer::start(BIN, &["--shutdown-grace-ms", "20000"]);
    let kv = server.project("p").await;
    // Not resumed by itself, so the server's status reaches the test.
    let options = kv_client::WatchOptions::all().resume(false);
    let mut watch = kv.watch(options).await.unwrap();
    kv.set("k", &1).await.unwrap();
    let event = watch.next_event().await.unwrap().unwrap();
    assert_eq!(event.version, 1);
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit took {:?}: the watch held the drain",
        started.elapsed()
    );
    let ended = watch.next_event().await.expect("an ending status");
    let err = ended.expect_err("the watch ends with an error");
    assert_eq!(err.code(), kv_client::Code::Unavailable, "{err}");
    assert!(err.to_string().contains("from_version 1"), "{err}");
    let kv_client::Error::Status(status) = err else {
        panic!("not a status: {err}")
    };
    let trailer = status.metadata().get(kv_client::RESUME_FROM_HEADER);
    assert_eq!(trailer.and_then(|v| v.to_str().ok()), Some("1"));
}

#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = kv_tests::run_to_exit(BIN, &addr, dir.path(), &[], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn bad_limits_are_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        dir.path(),
        &["--max-key-bytes", "0"],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--max-key-bytes is 0"), "{stderr}");
    // Environment variables set flags too.
    let (code, stderr) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        dir.path(),
        &[],
        &[("KV_MAX_TTL_MS", "0")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--max-ttl-ms is 0"));
}

#[tokio::test]
async fn limits_from_flags_and_environment_apply() {
    let server = BinaryServer::start(BIN, &["--max-key-bytes", "8"]);
    let kv = server.project("p").await;
    kv.set("12345678", &1).await.unwrap();
    let err = kv.set("123456789", &1).await.unwrap_err();
    assert_eq!(err.code(), kv_client::Code::ResourceExhausted);
    assert!(err.to_string().contains("the limit is 8 bytes"), "{err}");
    drop(server);

    let server = BinaryServer::start_with_env(BIN, &[], &[("KV_MAX_TTL_MS", "1000")]);
    let kv = server.project("p").await;
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

#[test]
fn a_second_server_on_the_same_directory_exits_and_touches_nothing() {
    let first = BinaryServer::start(BIN, &[]);
    let listing = |dir: &std::path::Path| {
        let mut files: Vec<(String, u64, std::time::SystemTime)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = listing(&first.data_dir);
    let (code, stderr) = kv_tests::run_to_exit(BIN, "127.0.0.1:0", &first.data_dir, &[], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("is in use by another kv-server"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("listening on"),
        "it never served: {stderr}"
    );
    assert_eq!(
        listing(&first.data_dir),
        before,
        "the directory is untouched"
    );
}

#[tokio::test]
async fn a_restart_of_the_binary_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(BIN, dir.path(), &[]);
    let kv = server.project("p").await;
    kv.set("k", &serde_json::json!({"kept": true}))
        .await
        .unwrap();
    kv.set_with_ttl("t", &1, Duration::from_secs(3600))
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let server = BinaryServer::start_in(BIN, dir.path(), &[]);
    let kv = server.project("p").await;
    assert_eq!(
        kv.get::<serde_json::Value>("k").await.unwrap(),
        Some(serde_json::json!({"kept": true}))
    );
    assert!(kv.has("t").await.unwrap());
    assert!(
        server.log().iter().any(|l| l.contains("recovered")),
        "{:?}",
        server.log()
    );
}

#[tokio::test]
async fn corruption_stops_start_up_naming_file_and_offset_unless_repair() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(BIN, dir.path(), &[]);
    let kv = server.project("p").await;
    for i in 0..10 {
        kv.set(&format!("k{i}"), &i).await.unwrap();
    }
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());

    // Flip a byte inside the 5th record of the segment that holds them.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let record_len = (bytes.len() - 8) / 10;
    let offset = 8 + 4 * record_len;
    bytes[offset + 20] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let (code, stderr) = kv_tests::run_to_exit(BIN, "127.0.0.1:0", dir.path(), &[], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("corrupt at offset {offset}")),
        "{stderr}"
    );
    assert!(stderr.contains("--repair"), "{stderr}");

    let server = BinaryServer::start_in(BIN, dir.path(), &["--repair"]);
    assert!(
        server.log().iter().any(|l| l.contains("repair")
            && l.contains(&format!("dropped_bytes={}", bytes.len() - offset))),
        "{:?}",
        server.log()
    );
    let kv = server.project("p").await;
    for i in 0..10 {
        assert_eq!(kv.has(&format!("k{i}")).await.unwrap(), i < 4, "k{i}");
    }
}

#[test]
fn open_mode_refuses_non_loopback_addresses_unless_insecure_open() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let (code, stderr) = kv_tests::run_to_exit(BIN, addr, dir.path(), &[], &[]);
        assert_eq!(code, Some(2), "{addr}");
        assert!(
            stderr.contains("refusing to serve without authentication"),
            "{stderr}"
        );
        assert!(stderr.contains("--insecure-open"), "{stderr}");
    }
    // With the flag it serves (checked on loopback only), and warns.
    let server =
        BinaryServer::start_with_env(BIN, &["--insecure-open"], &[("KV_LISTEN", "0.0.0.0:0")]);
    let (status, log) = server.terminate_with_log();
    assert!(status.success());
    assert!(
        log.iter()
            .any(|l| l.contains("open mode: no authentication")),
        "{log:?}"
    );
}

#[tokio::test]
async fn the_binary_takes_its_admin_token_from_a_file_and_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "  binary-admin-secret-0123456789\n").unwrap();
    let token_arg = token_file.display().to_string();
    let server = BinaryServer::start(BIN, &["--admin-token-file", &token_arg]);
    assert!(
        !server.log().iter().any(|l| l.contains("open mode")),
        "{:?}",
        server.log()
    );
    let anonymous = server.project("p").await;
    let err = anonymous.has("k").await.unwrap_err();
    assert_eq!(err.code(), kv_client::Code::Unauthenticated, "{err}");
    let admin = kv_client::Client::builder(format!("http://{}", server.addr))
        .token("binary-admin-secret-0123456789")
        .connect()
        .await
        .unwrap();
    admin
        .admin()
        .create_project("p", kv_client::Quota::default())
        .await
        .unwrap();
    let token = admin.admin().create_token("p", false).await.unwrap().token;
    let p = kv_client::Client::builder(format!("http://{}", server.addr))
        .token(token.clone())
        .connect()
        .await
        .unwrap()
        .project("p");
    p.set("k", &1).await.unwrap();
    assert!(p.has("k").await.unwrap());
    drop((p, admin, anonymous));
    let (status, log) = tokio::task::spawn_blocking(move || server.terminate_with_log())
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        !log.iter()
            .any(|l| l.contains("binary-admin-secret") || l.contains(&token)),
        "no secret in the log: {log:?}"
    );

    // With authentication on, a non-loopback address needs no --insecure-open.
    let mut exposed = Command::new(BIN)
        .args(["--listen", "0.0.0.0:0", "--admin-token-file", &token_arg])
        .arg("--data-dir")
        .arg(dir.path().join("exposed"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = exposed.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let listening = std::iter::from_fn(|| seen.recv_timeout(Duration::from_secs(10)).ok())
        .find(|l| l.contains("listening on"))
        .expect("the server starts");
    assert!(listening.contains("listening on 0.0.0.0:"), "{listening}");
    let _ = exposed.kill();
    let _ = exposed.wait();

    let weak = dir.path().join("weak");
    std::fs::write(&weak, "short").unwrap();
    let weak = weak.display().to_string();
    let (code, stderr) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        &dir.path().join("data"),
        &["--admin-token-file", &weak],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("must be at least 16"));
}
