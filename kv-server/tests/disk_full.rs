//! A full disk, for real: the data directory on a small tmpfs. Writes that
//! cannot be logged fail with UNAVAILABLE and are not visible, reads go on,
//! writes resume once space is freed, and a restart finds exactly the
//! acknowledged writes (memory and disk never diverged).

use std::{path::Path, process::Command};

use kv_tests::{BinaryServer, require_all};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    !require_all(),
                    "cannot mount a tmpfs (KV_TEST_REQUIRE_ALL=1): {why}"
                );
                println!("SKIPPED: cannot mount a tmpfs ({why}); run as root to test a full disk");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_and_recovers() {
    let Some(tmpfs) = Tmpfs::mount("2m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let ballast = tmpfs.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 512 * 1024]).unwrap();
    let args = ["--snapshot-min-log-bytes", "1073741824"];
    let server = BinaryServer::start_in(BIN, &data, &args);
    let kv = server.project("full").await;
    let value = "v".repeat(16 * 1024);

    let mut acked = Vec::new();
    let refused = loop {
        let key = format!("k{}", acked.len());
        match kv.set(&key, &value).await {
            Ok(()) => acked.push(key),
            Err(e) => break (key, e),
        }
        assert!(acked.len() < 1000, "a 2 MiB disk never filled up");
    };
    let (refused_key, error) = refused;
    assert_eq!(error.code(), kv_client::Code::Unavailable, "{error}");
    assert!(
        error.to_string().contains("could not append to the log"),
        "{error}"
    );
    assert!(!acked.is_empty());

    // Still full: refused again and never visible, while reads go on.
    for _ in 0..3 {
        assert_eq!(
            kv.set(&refused_key, &value).await.unwrap_err().code(),
            kv_client::Code::Unavailable
        );
    }
    let lost = kv.set("refused-while-full", &value).await.unwrap_err();
    assert_eq!(lost.code(), kv_client::Code::Unavailable);
    assert!(
        !kv.has(&refused_key).await.unwrap(),
        "a refused write is not visible"
    );
    assert_eq!(
        kv.get::<String>(&acked[0]).await.unwrap().map(|v| v.len()),
        Some(value.len())
    );

    // Space comes back: writes resume.
    std::fs::remove_file(&ballast).unwrap();
    kv.set("after", &"space freed").await.unwrap();
    kv.set(&refused_key, &value).await.unwrap();

    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(
        status.success(),
        "clean shutdown after a full disk: {status}"
    );

    let server = BinaryServer::start_in(BIN, &data, &args);
    let kv = server.project("full").await;
    for key in &acked {
        assert_eq!(
            kv.get::<String>(key).await.unwrap().map(|v| v.len()),
            Some(value.len()),
            "{key}"
        );
    }
    assert_eq!(
        kv.get::<String>("after").await.unwrap().as_deref(),
        Some("space freed")
    );
    assert!(
        kv.has(&refused_key).await.unwrap(),
        "the retried write landed"
    );
    assert!(
        !kv.has("refused-while-full").await.unwrap(),
        "a refused write did not reach the disk"
    );
}
