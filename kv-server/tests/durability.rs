//! The durable engine in-process: restarts keep the exact state, snapshots
//! compact the log, damage is cut (torn tail) or refused (corruption), and a
//! data directory serves one server at a time.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kv_engine::{
    Backend, ManualClock,
    project::ProjectName,
    wal::{Damage, DurableStore, FsyncPolicy, LogOptions, OpenError, codec::FrameDamage},
};
use kv_server::config::Config;
use kv_tests::{CLOCK_START_MS, InProcessDurable, Target};
use serde_json::{Value as Json, json};

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

fn options(fsync: FsyncPolicy) -> LogOptions {
    LogOptions {
        fsync,
        ..LogOptions::default()
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Result<DurableStore, OpenError> {
    DurableStore::open(dir, options(FsyncPolicy::Always), clock.clone())
}

/// Options that snapshot as soon as the log passes 4 KiB (and twice the
/// live data), without fsync: for tests that need snapshots quickly.
fn snapshotting() -> LogOptions {
    LogOptions {
        snapshot_min_log_bytes: 4096,
        ..options(FsyncPolicy::Never)
    }
}

/// Overwrites `keys` keys of `project` 2000 times: far more log than live
/// data, so [`snapshotting`] options write a snapshot.
async fn overwrite_until_snapshot(store: &DurableStore, project: &ProjectName, keys: u32) {
    for i in 0..2000u32 {
        store
            .set(
                project,
                &format!("k{}", i % keys),
                value((i % 200) as u8),
                None,
            )
            .await
            .unwrap();
    }
}

fn project(name: &str) -> ProjectName {
    ProjectName::parse(name).unwrap()
}

/// The canonical encoding of a small JSON number, as the service stores it.
fn value(n: u8) -> Box<[u8]> {
    let mut v = vec![0x11];
    v.extend_from_slice(&f64::from(n).to_le_bytes());
    v.into_boxed_slice()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_values_ttls_deletes_and_clears_per_project() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let server = InProcessDurable::start_in(dir.path(), Config::default(), clock.clone()).await;
    let (a, b) = (
        server.ctx().client.project("a"),
        server.ctx().client.project("b"),
    );
    a.set("plain", &json!({"x": [1, 2, null]})).await.unwrap();
    a.set("null", &json!(null)).await.unwrap();
    a.set_with_ttl("ttl-long", &"stays", Duration::from_secs(3600))
        .await
        .unwrap();
    a.set_with_ttl("ttl-short", &"goes while down", Duration::from_millis(500))
        .await
        .unwrap();
    a.set_with_ttl("ttl-cleared", &1, Duration::from_millis(500))
        .await
        .unwrap();
    a.set("ttl-cleared", &2).await.unwrap();
    a.set("deleted", &1).await.unwrap();
    assert!(a.delete("deleted").await.unwrap());
    a.set("overwritten", &1).await.unwrap();
    a.set("overwritten", &"two").await.unwrap();
    b.set("plain", &"b's").await.unwrap();
    b.set("gone", &1).await.unwrap();
    assert_eq!(b.clear().await.unwrap(), 2);
    b.set("after-clear", &true).await.unwrap();
    server.stop().await;

    clock.advance(600);
    let server = InProcessDurable::start_in(dir.path(), Config::default(), clock.clone()).await;
    let (a, b) = (
        server.ctx().client.project("a"),
        server.ctx().client.project("b"),
    );
    assert_eq!(
        a.get::<Json>("plain").await.unwrap(),
        Some(json!({"x": [1, 2, null]}))
    );
    assert_eq!(a.get::<Json>("null").await.unwrap(), Some(Json::Null));
    assert_eq!(
        a.get::<String>("ttl-long").await.unwrap().as_deref(),
        Some("stays")
    );
    assert_eq!(
        a.get::<Json>("ttl-short").await.unwrap(),
        None,
        "deadline passed while down"
    );
    assert_eq!(
        a.get::<i32>("ttl-cleared").await.unwrap(),
        Some(2),
        "a plain set dropped the TTL"
    );
    assert_eq!(a.get::<Json>("deleted").await.unwrap(), None);
    assert_eq!(
        a.get::<String>("overwritten").await.unwrap().as_deref(),
        Some("two")
    );
    assert_eq!(b.get::<Json>("plain").await.unwrap(), None);
    assert_eq!(b.get::<Json>("gone").await.unwrap(), None);
    assert_eq!(b.get::<bool>("after-clear").await.unwrap(), Some(true));
    // A key whose deadline passed while the server was down is absent to
    // reads at once and removed by the expiry task (here or just before,
    // by the server's own task, whose expiry may still be on its way to
    // the log when ours finds nothing left to take); the TTL survives with
    // its deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        kv_engine::Backend::expire_due(&*server.store, 1000).await;
        let stored = server.store.memory().stored_entries();
        if stored == 6 || std::time::Instant::now() > deadline {
            assert_eq!(stored, 6, "the key due while down was not reclaimed");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    clock.advance(3600 * 1000);
    assert!(!a.has("ttl-long").await.unwrap());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_restart_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let config = Config {
        log: LogOptions {
            snapshot_min_log_bytes: 16 * 1024,
            ..LogOptions::default()
        },
        ..Config::default()
    };
    let server = InProcessDurable::start_in(dir.path(), config.clone(), clock.clone()).await;
    let kv = server.ctx().client.project("p");
    // Overwrites make the log outgrow the live data many times over.
    for round in 0..40 {
        for k in 0..20 {
            kv.set(
                &format!("k{k}"),
                &json!({"round": round, "pad": "x".repeat(100)}),
            )
            .await
            .unwrap();
        }
    }
    kv.set_with_ttl("ttl", &1, Duration::from_secs(60))
        .await
        .unwrap();
    kv.delete("k0").await.unwrap();
    let snapshot_written = async {
        while files(dir.path(), ".snap").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), snapshot_written)
        .await
        .expect("a snapshot is written");
    server.stop().await;

    let snaps = files(dir.path(), ".snap");
    assert_eq!(snaps.len(), 1, "older snapshots are removed: {snaps:?}");
    let base = snaps[0].file_stem().unwrap().to_string_lossy().to_string();
    for segment in files(dir.path(), ".log") {
        let stem = segment.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            stem >= base,
            "segment {stem} older than snapshot {base} was removed"
        );
    }
    let log_bytes: u64 = files(dir.path(), ".log")
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        log_bytes < 40 * 20 * 150,
        "log compacted to {log_bytes} bytes"
    );

    let server = InProcessDurable::start_in(dir.path(), config, clock.clone()).await;
    assert!(server.store.recovered().snapshot.is_some());
    let kv = server.ctx().client.project("p");
    assert_eq!(kv.get::<Json>("k0").await.unwrap(), None);
    for k in 1..20 {
        let v: Json = kv.get(&format!("k{k}")).await.unwrap().unwrap();
        assert_eq!(v["round"], json!(39), "k{k}");
    }
    assert!(kv.has("ttl").await.unwrap());
    clock.advance(60_000);
    assert!(
        !kv.has("ttl").await.unwrap(),
        "the TTL came back from the snapshot"
    );
    server.stop().await;
}

/// Writes three records, returns the directory and the byte range of the
/// last record in the last segment.
async fn three_writes(clock: &Arc<ManualClock>) -> (tempfile::TempDir, PathBuf, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), clock).unwrap();
    let p = project("p");
    store.set(&p, "a", value(1), None).await.unwrap();
    store.set(&p, "b", value(2), Some(60_000)).await.unwrap();
    let segment = files(dir.path(), ".log").pop().unwrap();
    let before_last = fs::metadata(&segment).unwrap().len();
    store.set(&p, "c", value(3), None).await.unwrap();
    store.close().await.unwrap();
    let end = fs::metadata(&segment).unwrap().len();
    (dir, segment, before_last, end)
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let (dir, segment, start, end) = three_writes(&clock).await;
    let p = project("p");
    for cut in start..end {
        let copy = copy_dir(dir.path());
        let torn = copy.path().join(segment.file_name().unwrap());
        fs::OpenOptions::new()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let store = open(copy.path(), &clock).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(store.recovered().torn_bytes, cut - start, "cut at {cut}");
        assert_eq!(fs::metadata(&torn).unwrap().len(), start, "tail truncated");
        assert!(store.has(&p, "a").await.unwrap() && store.has(&p, "b").await.unwrap());
        assert!(!store.has(&p, "c").await.unwrap(), "cut at {cut}");
        store.close().await.unwrap();
        // And the truncated directory opens cleanly again.
        let again = open(copy.path(), &clock).unwrap();
        assert_eq!(again.recovered().torn_bytes, 0);
        again.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_middle_stops_start_up_unless_repair() {
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let (dir, segment, _, _) = three_writes(&clock).await;
    let mut bytes = fs::read(&segment).unwrap();
    let flip_at = 8 + 12 + 3; // inside the first record's payload
    bytes[flip_at] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();
    let before = fs::read(&segment).unwrap();
    match open(dir.path(), &clock) {
        Err(OpenError::Corrupt {
            file,
            offset,
            damage,
        }) => {
            assert_eq!(file, segment);
            assert_eq!(offset, 8, "the damaged record starts after the header");
            assert_eq!(damage, Damage::Frame(FrameDamage::Checksum));
            let message = OpenError::Corrupt {
                file,
                offset,
                damage,
            }
            .to_string();
            assert!(message.contains("checksum mismatch"), "{message}");
            assert!(message.contains("--repair"), "{message}");
        }
        Ok(_) => panic!("a corrupt log must not open"),
        Err(other) => panic!("expected Corrupt, got {other}"),
    }
    assert_eq!(
        fs::read(&segment).unwrap(),
        before,
        "a refused start changes nothing"
    );

    let repaired = DurableStore::open(
        dir.path(),
        LogOptions {
            repair: true,
            ..LogOptions::default()
        },
        clock.clone(),
    )
    .unwrap();
    assert_eq!(repaired.recovered().repaired_bytes, bytes.len() as u64 - 8);
    assert_eq!(
        repaired.memory().stored_entries(),
        0,
        "everything from the damage on is dropped"
    );
    let p = project("p");
    repaired.set(&p, "new", value(9), None).await.unwrap();
    repaired.close().await.unwrap();
    let reopened = open(dir.path(), &clock).unwrap();
    assert!(reopened.has(&p, "new").await.unwrap());
    reopened.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_temp_snapshots_are_removed_and_wrong_versions_refused() {
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let (dir, segment, _, _) = three_writes(&clock).await;
    fs::write(
        dir.path().join("00000000000000000099.snap.tmp"),
        b"KVSNAP\x01\x00half a snapshot",
    )
    .unwrap();
    let store = open(dir.path(), &clock).unwrap();
    assert_eq!(store.recovered().removed_temp_files, 1);
    assert_eq!(store.memory().stored_entries(), 3);
    store.close().await.unwrap();
    assert!(files(dir.path(), ".tmp").is_empty());

    let mut bytes = fs::read(&segment).unwrap();
    bytes[6] = 7;
    fs::write(&segment, &bytes).unwrap();
    match open(dir.path(), &clock) {
        Err(error @ OpenError::Corrupt { offset, .. }) => {
            assert_eq!(offset, 6);
            assert!(
                matches!(
                    error,
                    OpenError::Corrupt {
                        damage: Damage::Frame(FrameDamage::UnsupportedVersion(7)),
                        ..
                    }
                ),
                "{error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("format version 7 is not supported"),
                "{message}"
            );
        }
        Ok(_) => panic!("a log of another version must not open"),
        Err(other) => panic!("expected Corrupt, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused() {
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dir = tempfile::tempdir().unwrap();
    let options = snapshotting();
    let store = DurableStore::open(dir.path(), options.clone(), clock.clone()).unwrap();
    overwrite_until_snapshot(&store, &project("p"), 10).await;
    store.close().await.unwrap();
    let snap = files(dir.path(), ".snap")
        .pop()
        .expect("a snapshot was written");
    let len = fs::metadata(&snap).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&snap)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    match DurableStore::open(dir.path(), options, clock.clone()) {
        Err(OpenError::Corrupt { file, .. }) => assert_eq!(file, snap),
        Ok(_) => panic!("a cut snapshot must not open"),
        Err(other) => panic!("expected Corrupt, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_per_directory() {
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), &clock).unwrap();
    match open(dir.path(), &clock) {
        Err(e @ OpenError::Locked { .. }) => {
            assert!(e.to_string().contains("in use by another kv-server"), "{e}")
        }
        Ok(_) => panic!("two stores on one directory"),
        Err(other) => panic!("expected Locked, got {other}"),
    }
    first.close().await.unwrap();
    // Released on close.
    open(dir.path(), &clock).unwrap().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_close_fail_cleanly() {
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &clock).unwrap();
    store.close().await.unwrap();
    let err = store
        .set(&project("p"), "k", value(1), None)
        .await
        .unwrap_err();
    assert_eq!(
        kv_server::status::engine_status(err).code(),
        tonic::Code::Unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_survives_snapshots() {
    use kv_engine::{Quota, wal::AdminChange};
    use kv_server::auth::new_token;
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dir = tempfile::tempdir().unwrap();
    let options = snapshotting();
    let store = DurableStore::open(dir.path(), options.clone(), clock.clone()).unwrap();
    let shop = project("shop");
    let quota = Quota {
        max_keys: Some(7),
        max_bytes: None,
        ..Quota::default()
    };
    store
        .admin(AdminChange::CreateProject {
            project: shop.clone(),
            quota,
        })
        .await
        .unwrap();
    let kept = new_token(shop.clone(), true, 1).unwrap().meta;
    let revoked = new_token(shop.clone(), false, 2).unwrap().meta;
    for token in [&kept, &revoked] {
        store
            .admin(AdminChange::CreateToken {
                token: token.clone(),
                incarnation: 0,
            })
            .await
            .unwrap();
    }
    store
        .admin(AdminChange::RevokeToken {
            id: revoked.id.clone(),
        })
        .await
        .unwrap();
    // Until a snapshot replaces the log holding those records.
    overwrite_until_snapshot(&store, &shop, 5).await;
    store.close().await.unwrap();
    assert!(
        !files(dir.path(), ".snap").is_empty(),
        "a snapshot was written"
    );

    let reopened = DurableStore::open(dir.path(), options, clock).unwrap();
    assert!(reopened.recovered().snapshot.is_some());
    assert_eq!(reopened.catalog().project(&shop), Some(quota));
    assert_eq!(reopened.catalog().token(&kept.id), Some(kept));
    assert_eq!(reopened.catalog().token(&revoked.id), None);
    assert_eq!(reopened.memory().usage(&shop).keys, 5);
    reopened.close().await.unwrap();
}

/// A project loaded by a restart builds its ordered key index on its first
/// listing, and that listing includes what was written and deleted after
/// the restart but before it; later writes keep the index exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_after_a_restart_sees_the_loaded_and_the_newer_keys_in_order() {
    use kv_engine::ListQuery;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let p = project("listed");
    let store = open(dir.path(), &clock).unwrap();
    for key in ["m", "c", "x", "a"] {
        store.set(&p, key, value(1), None).await.unwrap();
    }
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path(), &clock).unwrap();
    store.set(&p, "b", value(2), None).await.unwrap();
    assert!(store.delete(&p, "x").await.unwrap());
    let keys = |page: kv_engine::ListPage| -> Vec<String> {
        page.entries.iter().map(|(k, _)| k.to_string()).collect()
    };
    let query = ListQuery {
        limit: 10,
        ..ListQuery::default()
    };
    assert_eq!(
        keys(store.list(&p, &query).await.unwrap()),
        ["a", "b", "c", "m"]
    );
    store.set(&p, "d", value(3), None).await.unwrap();
    assert!(store.delete(&p, "a").await.unwrap());
    assert_eq!(
        keys(store.list(&p, &query).await.unwrap()),
        ["b", "c", "d", "m"]
    );
    store.close().await.unwrap();
}

/// A string value holding `marker`, canonical encoded as the service
/// stores it: field 3 (string_value), length, bytes.
fn marked(marker: &str) -> Box<[u8]> {
    let mut v = vec![0x1a, marker.len() as u8];
    v.extend_from_slice(marker.as_bytes());
    v.into_boxed_slice()
}

/// Whether any file of `dir` holds `marker`.
fn dir_holds(dir: &Path, marker: &str) -> bool {
    fs::read_dir(dir).unwrap().any(|e| {
        let bytes = fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
    })
}

/// A deleted project's data, history, request ids, tokens and numbering
/// never come back: not after a restart that replays the deletion, nor
/// after the snapshot the deletion asks for, which also takes the old
/// values off the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_project_stays_deleted_through_restarts_and_its_snapshot() {
    use kv_engine::{Quota, Txn, wal::AdminChange};
    use kv_server::auth::new_token;
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dir = tempfile::tempdir().unwrap();
    let b = project("b");
    let marker = "old-tenant-4f1c9a7e2b6d8035";
    let store = open(dir.path(), &clock).unwrap();
    let create = AdminChange::CreateProject {
        project: b.clone(),
        quota: Quota::default(),
    };
    store.admin(create.clone()).await.unwrap();
    let token = new_token(b.clone(), false, 1).unwrap().meta;
    store
        .admin(AdminChange::CreateToken {
            token: token.clone(),
            incarnation: 0,
        })
        .await
        .unwrap();
    let mut remembered = Txn::op(kv_engine::Op::Set {
        key: "b1".into(),
        value: marked(marker),
        ttl: kv_engine::Ttl::Never,
    });
    remembered.request = Some(kv_engine::RequestId {
        id: "req-1".into(),
        fingerprint: 7,
    });
    store.submit(&b, remembered.clone()).await.unwrap();
    for i in 0..5 {
        store
            .set(&b, &format!("k{i}"), value(i), None)
            .await
            .unwrap();
    }
    let old_last = store.memory().version(&b);
    assert_eq!(old_last, 6);
    assert!(dir_holds(dir.path(), marker), "the value is on disk first");

    // Only the first of two deletes finds the project.
    let deleted = store
        .admin(AdminChange::DeleteProject { project: b.clone() })
        .await
        .unwrap();
    assert_eq!(deleted.removed, 6);
    assert!(
        store
            .admin(AdminChange::DeleteProject { project: b.clone() })
            .await
            .is_err()
    );
    let recreated = store.admin(create.clone()).await.unwrap();
    assert!(recreated.incarnation > old_last);
    assert!(
        recreated.incarnation >= CLOCK_START_MS,
        "numbered after the clock"
    );
    // A token meant for the deleted incarnation never opens the new one.
    let stale = new_token(b.clone(), false, 2).unwrap().meta;
    let refused = store
        .admin(AdminChange::CreateToken {
            token: stale,
            incarnation: 0,
        })
        .await;
    assert!(refused.is_err());
    // Nor does a write admitted for it.
    let mut late = Txn::op(kv_engine::Op::Delete { key: "x".into() });
    late.incarnation = Some(0);
    assert!(store.submit(&b, late).await.is_err());

    let check = |store: &DurableStore| {
        let mem = store.memory();
        assert_eq!(mem.incarnation(&b), recreated.incarnation);
        assert_eq!(mem.entry_now(&b, "b1"), None);
        assert_eq!(mem.usage(&b).keys, 0);
        assert_eq!(store.catalog().token(&token.id), None);
        assert!(store.catalog().project(&b).is_some());
        // From 0 is the new incarnation's start (out of range once the
        // bounded history has moved past it); old versions are refused as
        // such.
        match mem.subscribe(&b, kv_engine::WatchTarget::All, Some(0)) {
            Ok(from_zero) => assert_eq!(from_zero.incarnation(), recreated.incarnation),
            Err(e) => assert!(
                matches!(e, kv_engine::WatchError::TooOld { from: 0, .. }),
                "{e}"
            ),
        }
        for from in [1, old_last] {
            let refused = mem.subscribe(&b, kv_engine::WatchTarget::All, Some(from));
            assert!(
                matches!(refused, Err(kv_engine::WatchError::Recreated { .. })),
                "from {from}"
            );
        }
    };
    check(&store);
    // The old tenant's request id is not remembered by the new project:
    // the same id and fingerprint applies afresh.
    let mut retry = remembered.clone();
    retry.ops = vec![kv_engine::Op::Set {
        key: "b1".into(),
        value: value(9),
        ttl: kv_engine::Ttl::Never,
    }];
    let retried = store.submit(&b, retry).await.unwrap();
    assert!(retried.results.iter().all(|r| matches!(
        r,
        kv_engine::OpOutcome::Set { version } if *version > recreated.incarnation
    )));
    store
        .submit(&b, Txn::op(kv_engine::Op::Delete { key: "b1".into() }))
        .await
        .unwrap();
    store.close().await.unwrap();

    // The deletion asked for a snapshot: the old values are off the disk.
    assert!(!files(dir.path(), ".snap").is_empty());
    assert!(!dir_holds(dir.path(), marker));

    let store = open(dir.path(), &clock).unwrap();
    check(&store);
    let first_new = store.set(&b, "n", value(1), None).await;
    first_new.unwrap();
    assert!(store.memory().version(&b) > recreated.incarnation + 1);
    store.close().await.unwrap();
}

/// Of concurrent creates of one name exactly one succeeds, and of
/// concurrent deletes exactly one reports the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_deletes_of_one_name_succeed_once() {
    use kv_engine::{Quota, wal::AdminChange};
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), &clock).unwrap());
    let p = project("race");
    let creates: Vec<_> = (0..32)
        .map(|_| {
            let (store, p) = (store.clone(), p.clone());
            tokio::spawn(async move {
                store
                    .admin(AdminChange::CreateProject {
                        project: p,
                        quota: Quota::default(),
                    })
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert!(
                matches!(e, kv_engine::EngineError::ProjectExists { .. }),
                "{e}"
            ),
        }
    }
    assert_eq!(won, 1);
    for i in 0..10 {
        store
            .set(&p, &format!("k{i}"), value(i), None)
            .await
            .unwrap();
    }
    let deletes: Vec<_> = (0..16)
        .map(|_| {
            let (store, p) = (store.clone(), p.clone());
            tokio::spawn(
                async move { store.admin(AdminChange::DeleteProject { project: p }).await },
            )
        })
        .collect();
    let mut removed = Vec::new();
    for delete in deletes {
        match delete.await.unwrap() {
            Ok(outcome) => removed.push(outcome.removed),
            Err(e) => assert!(
                matches!(e, kv_engine::EngineError::ProjectNotFound { .. }),
                "{e}"
            ),
        }
    }
    assert_eq!(removed, vec![10]);
    store.close().await.unwrap();
}
