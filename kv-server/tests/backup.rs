//! Online backup and restore with the real binary: a backup taken through
//! the SDK while 16 writers run restores (with `kv-server restore`) to
//! exactly the writes before its cut; damaged backups are refused and leave
//! nothing behind.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kv_client::{Client, IncrOptions, Quota, SetOptions};
use kv_tests::BinaryServer;
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const ADMIN: &str = "backup-test-admin-token-0123456789";
const WRITERS: usize = 16;
const KEYS_PER_WRITER: u64 = 6;

/// Small segments and snapshots, so the backup spans a snapshot and
/// several segments, and snapshots run while it is read.
const ARGS: &[&str] = &[
    "--admin-token",
    ADMIN,
    "--fsync",
    "never",
    "--segment-bytes",
    "65536",
    "--snapshot-min-log-bytes",
    "131072",
];

async fn client(server: &BinaryServer, token: &str) -> Client {
    Client::builder(format!("http://{}", server.addr))
        .token(token)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connects")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Each project's version at the cut, from the backup's header (layout in
/// the README's "Backup and restore").
fn cut_versions(backup: &[u8]) -> HashMap<String, u64> {
    assert_eq!(&backup[..8], b"KVBACKUP");
    let mut at = 10;
    assert_eq!(backup[at], 1, "the header section comes first");
    at += 9 + 8 + 8;
    let str_at = |at: &mut usize| {
        let len = u16::from_le_bytes([backup[*at], backup[*at + 1]]) as usize;
        let s = String::from_utf8(backup[*at + 2..*at + 2 + len].to_vec()).unwrap();
        *at += 2 + len;
        s
    };
    let scope = backup[at];
    at += 1;
    if scope == 1 {
        let _project = str_at(&mut at);
    }
    let _server_version = str_at(&mut at);
    let count = u32::from_le_bytes(backup[at..at + 4].try_into().unwrap());
    at += 4;
    let mut versions = HashMap::new();
    for _ in 0..count {
        let name = str_at(&mut at);
        let version = u64::from_le_bytes(backup[at..at + 8].try_into().unwrap());
        at += 8;
        versions.insert(name, version);
    }
    versions
}

fn restore(from: &Path, into: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["restore", "--from"])
        .arg(from)
        .arg("--data-dir")
        .arg(into)
        .output()
        .expect("runs kv-server restore")
}

/// One acknowledged write: key, the value it left, its version.
type Acked = (String, Json, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_16_writers_restores_exactly_the_writes_before_its_cut() {
    let work = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(BIN, &work.path().join("a"), ARGS);
    let admin = client(&server, ADMIN).await.admin();
    let quota = Quota {
        max_keys: Some(50_000),
        ops_per_second: Some(0),
        ..Quota::default()
    };
    admin.create_project("shop", quota).await.unwrap();
    admin
        .create_project("other", Quota::default())
        .await
        .unwrap();
    let secret = admin.create_token("shop", false).await.unwrap().token;
    let shop = client(&server, &secret).await.project("shop");
    shop.set("before", &json!({"n": 1})).await.unwrap();
    // Expires after the backup, before the restored server starts.
    shop.set_with_ttl("short-lived", &1, Duration::from_millis(2500))
        .await
        .unwrap();
    let short_deadline = now_ms() + 2500;
    shop.set_with_ttl("long-lived", &2, Duration::from_secs(3600))
        .await
        .unwrap();
    let long_deadline = shop
        .get_entry::<Json>("long-lived")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (shop, stop, acked) = (shop.clone(), Arc::clone(&stop), Arc::clone(&acked));
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{w}-{}", n % KEYS_PER_WRITER);
                let done = if w % 2 == 0 {
                    let value = json!({"writer": w, "n": n, "pad": "x".repeat(64)});
                    let outcome = shop
                        .set_with(&key, &value, SetOptions::new())
                        .await
                        .expect("set acknowledged");
                    (key, value, outcome.version)
                } else {
                    let outcome = shop
                        .incr_with(&key, 1.0, IncrOptions::new())
                        .await
                        .expect("incr acknowledged");
                    (key, json!(outcome.value as u64), outcome.version)
                };
                acked.lock().unwrap().push(done);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut backup = Vec::new();
    let summary = admin.backup(None, &mut backup).await.expect("backup");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(summary.bytes, backup.len() as u64);
    assert_eq!(summary.checksum.len(), 64);
    // The cut spans a snapshot and the segments after it.
    let has = |needle: &[u8]| backup.windows(needle.len()).any(|w| w == needle);
    assert!(has(b".snap") && has(b".log"), "a snapshot and segments");
    let cut = cut_versions(&backup);
    let shop_cut = cut["shop"];
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let (before, after): (Vec<_>, Vec<_>) = acked.iter().partition(|(_, _, v)| *v <= shop_cut);
    assert!(
        !before.is_empty() && !after.is_empty(),
        "writes ran on both sides of the cut ({} before, {} after)",
        before.len(),
        after.len()
    );
    // Each key's state at the cut: its last write at or below the cut.
    let mut expected: HashMap<String, Option<(Json, u64)>> = HashMap::new();
    for (key, value, version) in &acked {
        let slot = expected.entry(key.clone()).or_insert(None);
        if *version <= shop_cut && slot.as_ref().is_none_or(|(_, v)| v < version) {
            *slot = Some((value.clone(), *version));
        }
    }
    server.terminate();

    let file = work.path().join("kv.backup");
    std::fs::write(&file, &backup).unwrap();
    let restored_dir = work.path().join("b");
    let out = restore(&file, &restored_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restore failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&summary.checksum), "{stdout}");

    let wait = short_deadline.saturating_sub(now_ms()) + 200;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let restored = BinaryServer::start_in(BIN, &restored_dir, ARGS);
    // The token made before the backup opens the restored server.
    let shop = client(&restored, &secret).await.project("shop");
    for (key, want) in &expected {
        let found = shop.get_entry::<Json>(key).await.unwrap();
        match (want, found) {
            (None, None) => {}
            (Some((value, version)), Some(entry)) => {
                assert_eq!(
                    (&entry.value, entry.version),
                    (value, *version),
                    "key {key}"
                );
            }
            (want, found) => panic!(
                "key {key}: expected {want:?} at the cut (version {shop_cut}), found {found:?}"
            ),
        }
    }
    let before = shop.get_entry::<Json>("before").await.unwrap().unwrap();
    assert_eq!(before.value, json!({"n": 1}));
    assert!(
        shop.get::<Json>("short-lived").await.unwrap().is_none(),
        "a key whose deadline passed after the backup is expired after the restore"
    );
    let long = shop.get_entry::<Json>("long-lived").await.unwrap().unwrap();
    assert_eq!(long.expires_at_ms, long_deadline, "absolute deadlines kept");
    let admin = client(&restored, ADMIN).await.admin();
    let info = admin.get_project("shop").await.unwrap();
    assert_eq!(info.quota, quota);
    let names: Vec<String> = admin
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["other", "shop"]);
    assert_eq!(admin.list_tokens(Some("shop")).await.unwrap().len(), 1);
    // New writes continue after the restored versions.
    let next = shop
        .set_with("after-restore", &3, SetOptions::new())
        .await
        .unwrap();
    assert!(next.version > shop_cut);
    restored.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_non_empty_targets_are_refused_and_nothing_is_written() {
    let work = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(BIN, &work.path().join("a"), ARGS);
    let admin = client(&server, ADMIN).await.admin();
    admin
        .create_project("shop", Quota::default())
        .await
        .unwrap();
    let shop = client(&server, ADMIN).await.project("shop");
    for i in 0..300 {
        shop.set(&format!("k{i}"), &json!({"i": i, "pad": "y".repeat(200)}))
            .await
            .unwrap();
    }
    let mut backup = Vec::new();
    admin.backup(None, &mut backup).await.unwrap();
    server.terminate();

    let refused = |name: &str, bytes: &[u8], expect: &[&str]| {
        let file = work.path().join(format!("{name}.backup"));
        std::fs::write(&file, bytes).unwrap();
        let target = work.path().join(format!("{name}-target"));
        let out = restore(&file, &target);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        for part in expect {
            assert!(stderr.contains(part), "{name}: {part:?} not in {stderr}");
        }
        assert!(!target.exists(), "{name}: the target was created");
    };
    let mut flipped = backup.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    refused(
        "flipped",
        &flipped,
        &["is corrupt", "SHA-256", "nothing was written"],
    );
    let cut = &backup[..backup.len() * 2 / 3];
    refused(
        "cut",
        cut,
        &["truncated", &format!("the file has {}", cut.len())],
    );
    refused("empty", &[], &["truncated"]);
    refused(
        "not-a-backup",
        b"KVLOG\0 not a backup at all",
        &["does not start with KVBACKUP"],
    );

    // A non-empty target is refused and left as it was.
    let file = work.path().join("good.backup");
    std::fs::write(&file, &backup).unwrap();
    let busy = work.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"mine").unwrap();
    let out = restore(&file, &busy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it is not empty (1 entries)"), "{stderr}");
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"mine");

    // No temporary directory is left beside the targets.
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The intact file restores into an existing empty directory.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let started = Instant::now();
    let out = restore(&file, &empty);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let restored = BinaryServer::start_in(BIN, &empty, ARGS);
    let shop = client(&restored, ADMIN).await.project("shop");
    for i in [0, 150, 299] {
        let got: Json = shop.get(&format!("k{i}")).await.unwrap().unwrap();
        assert_eq!(got["i"], json!(i));
    }
    restored.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_project_backup_restores_that_project_alone_with_its_tokens() {
    let work = tempfile::tempdir().unwrap();
    let server = BinaryServer::start_in(BIN, &work.path().join("a"), ARGS);
    let admin = client(&server, ADMIN).await.admin();
    let quota = Quota {
        max_keys: Some(777),
        ..Quota::default()
    };
    admin.create_project("shop", quota).await.unwrap();
    admin
        .create_project("other", Quota::default())
        .await
        .unwrap();
    let shop_token = admin.create_token("shop", false).await.unwrap();
    let revoked = admin.create_token("shop", true).await.unwrap();
    let other_token = admin.create_token("other", false).await.unwrap().token;
    let shop = client(&server, &shop_token.token).await.project("shop");
    let other = client(&server, &other_token).await.project("other");
    let mut versions = HashMap::new();
    for i in 0..500 {
        let key = format!("k{}", i % 120);
        let outcome = shop
            .set_with(&key, &json!({"i": i}), SetOptions::new())
            .await
            .unwrap();
        versions.insert(key, (i, outcome.version));
        other.set(&format!("o{i}"), &i).await.unwrap();
    }
    shop.delete("k0").await.unwrap();
    versions.remove("k0");
    assert!(admin.revoke_token(&revoked.info.id).await.unwrap());

    let denied = client(&server, &shop_token.token)
        .await
        .admin()
        .backup(Some("shop"), Vec::new())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), kv_client::Code::PermissionDenied, "{denied}");
    let missing = admin.backup(Some("nope"), Vec::new()).await.unwrap_err();
    assert_eq!(missing.code(), kv_client::Code::NotFound, "{missing}");
    let mut backup = Vec::new();
    admin.backup(Some("shop"), &mut backup).await.unwrap();
    assert!(
        !backup.windows(5).any(|w| w == b"other"),
        "nothing of the other project is in the file"
    );
    assert_eq!(cut_versions(&backup).keys().collect::<Vec<_>>(), ["shop"]);
    server.terminate();

    let file = work.path().join("shop.backup");
    std::fs::write(&file, &backup).unwrap();
    let target = work.path().join("b");
    let out = restore(&file, &target);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("project shop only"), "{stdout}");
    let restored = BinaryServer::start_in(BIN, &target, ARGS);
    let admin = client(&restored, ADMIN).await.admin();
    let names: Vec<String> = admin
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["shop"]);
    assert_eq!(admin.get_project("shop").await.unwrap().quota, quota);
    let tokens = admin.list_tokens(None).await.unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].id, shop_token.info.id);
    let shop = client(&restored, &shop_token.token).await.project("shop");
    assert!(shop.get::<Json>("k0").await.unwrap().is_none());
    for (key, (i, version)) in &versions {
        let entry = shop.get_entry::<Json>(key).await.unwrap().unwrap();
        assert_eq!((entry.value, entry.version), (json!({"i": i}), *version));
    }
    for token in [&revoked.token, &other_token] {
        let refused = client(&restored, token)
            .await
            .project("shop")
            .get::<Json>("k1")
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            kv_client::Code::Unauthenticated,
            "{refused}"
        );
    }
    restored.terminate();
}
