//! A failing disk, for real: the server runs with an `LD_PRELOAD` shim
//! (kv-server/tests/fault/fsync_shim.c) whose fsync and fdatasync fail with
//! EIO while a control file exists. A write whose fsync failed is never
//! acknowledged nor visible, later writes are refused with UNAVAILABLE
//! saying why, reads go on, and writes resume once the disk is healthy and
//! the log has been re-verified. A restart finds exactly the acknowledged
//! writes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kv_client::Code;
use kv_tests::{BinaryServer, tool_available};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// Builds the shim into `dir`; `None` (skipped) without a C compiler,
/// unless `KV_TEST_REQUIRE_ALL=1`.
fn build_shim(dir: &Path) -> Option<PathBuf> {
    if !tool_available("cc", "--version") {
        return None;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fault/fsync_shim.c");
    let shim = dir.join("fsync_shim.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc could not build the shim: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(shim)
}

/// A server on `data` whose fsyncs fail while `control` exists.
struct Faulty {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    control: PathBuf,
    shim: PathBuf,
}

impl Faulty {
    fn new() -> Option<Self> {
        let tmp = tempfile::tempdir().unwrap();
        let shim = build_shim(tmp.path())?;
        Some(Self {
            data: tmp.path().join("data"),
            control: tmp.path().join("fail-fsync"),
            shim,
            _tmp: tmp,
        })
    }

    fn start(&self, args: &[&str]) -> BinaryServer {
        let env = [
            ("LD_PRELOAD", self.shim.to_str().unwrap()),
            ("KV_FAULT_FSYNC_FAIL", self.control.to_str().unwrap()),
        ];
        BinaryServer::start_in_with_env(BIN, &self.data, args, &env)
    }

    fn fail(&self, failing: bool) {
        if failing {
            std::fs::write(&self.control, b"").unwrap();
        } else {
            std::fs::remove_file(&self.control).unwrap();
        }
    }
}

fn assert_stopped(error: &kv_client::Error) {
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("the write-ahead log could not be synced (fdatasync of")
            && message.contains("Input/output error")
            && message.contains("writes are stopped until the log is re-verified; reads go on"),
        "{message}"
    );
}

/// Writes `key` until it is accepted (each refusal must be the stop),
/// within `patience`.
async fn write_once_resumed(kv: &kv_client::Project, key: &str, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        match kv.set(key, &"resumed").await {
            Ok(()) => return,
            Err(e) => {
                assert_stopped(&e);
                assert!(
                    Instant::now() < deadline,
                    "writes did not resume within {patience:?} of the disk healing"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits (5 s at most) for the server's health to be `want`.
async fn assert_health(server: &BinaryServer, want: ServingStatus) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health is {status:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The failure scenario common to both fsync policies: returns the keys
/// acknowledged and the keys refused.
async fn fail_and_heal(faulty: &Faulty, server: &BinaryServer) -> (Vec<String>, Vec<String>) {
    let kv = server.project("disk").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let key = format!("before-{i}");
        kv.set(&key, &i).await.unwrap();
        acked.push(key);
    }

    faulty.fail(true);
    // Under an interval policy the failing fsync may be the background
    // one: give it its interval, then every write is refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = Vec::new();
    for i in 0..3 {
        let key = format!("refused-{i}");
        assert_stopped(&kv.set(&key, &i).await.unwrap_err());
        refused.push(key);
    }
    assert_health(server, ServingStatus::NotServing).await;
    // Reads go on and do not see the refused writes.
    assert_eq!(kv.get::<i64>("before-3").await.unwrap(), Some(3));
    for key in &refused {
        assert!(!kv.has(key).await.unwrap(), "{key} was refused");
    }
    // Still failing after several re-verification attempts: still refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let key = "refused-while-failing".to_string();
    assert_stopped(&kv.set(&key, &1).await.unwrap_err());
    refused.push(key);

    faulty.fail(false);
    write_once_resumed(&kv, "resumed", Duration::from_secs(15)).await;
    acked.push("resumed".into());
    assert_health(server, ServingStatus::Serving).await;
    for i in 0..5 {
        let key = format!("after-{i}");
        kv.set(&key, &i).await.unwrap();
        acked.push(key);
    }
    (acked, refused)
}

async fn assert_restart_keeps_exactly(faulty: &Faulty, acked: &[String], refused: &[String]) {
    // Restarted without the shim: recovery re-reads every frame.
    let server = BinaryServer::start_in(BIN, &faulty.data, &[]);
    let kv = server.project("disk").await;
    for key in acked {
        assert!(kv.has(key).await.unwrap(), "acknowledged {key} is lost");
    }
    for key in refused {
        assert!(!kv.has(key).await.unwrap(), "refused {key} came back");
    }
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_stops_writes_until_the_log_is_re_verified() {
    let Some(faulty) = Faulty::new() else {
        return;
    };
    let server = faulty.start(&["--fsync", "always"]);
    let (acked, refused) = fail_and_heal(&faulty, &server).await;
    let (status, log) = tokio::task::spawn_blocking(move || server.terminate_with_log())
        .await
        .unwrap();
    assert!(
        status.success(),
        "clean shutdown after a failed fsync: {status}"
    );
    assert!(
        log.iter().any(|l| l.contains("re-verified; writes resume")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("could not be re-verified")),
        "re-verification was tried while the disk still failed: {log:#?}"
    );
    assert_restart_keeps_exactly(&faulty, &acked, &refused).await;
}

/// Under an interval policy, writes acknowledged before the failed fsync
/// may be missing from the disk: writes resume only once a snapshot of
/// memory (exactly the acknowledged writes) is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_interval_policy_a_snapshot_makes_the_acknowledged_writes_durable() {
    let Some(faulty) = Faulty::new() else {
        return;
    };
    let server = faulty.start(&["--fsync", "interval:50"]);
    let (acked, refused) = fail_and_heal(&faulty, &server).await;
    let (status, log) = tokio::task::spawn_blocking(move || server.terminate_with_log())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        log.iter().any(|l| l.contains("snapshot written")),
        "{log:#?}"
    );
    assert_restart_keeps_exactly(&faulty, &acked, &refused).await;
}
