//! The change history across restarts, at the engine's level: kept in a
//! snapshot, rebuilt from the log, bounded by the settings of the run that
//! loads it, and absent (starting at the project's version) when a
//! snapshot of an older format has none.

use std::{path::Path, sync::Arc};

use super::{
    DurableStore, FsyncPolicy, LogOptions,
    codec::{self, FrameReader, Record},
    dir::{Kind, parse_name},
    frame::{FILE_HEADER_LEN, SNAPSHOT_MAGIC, frame},
};
use crate::{
    Backend, ManualClock, Quota, Settings, WatchError, WatchTarget, project::ProjectName,
    wal::AdminChange, watch::EventKind,
};

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>, settings: Settings) -> DurableStore {
    DurableStore::open_with(dir, options(), clock.clone(), settings).expect("opens")
}

fn value(i: u64) -> Box<[u8]> {
    // A protobuf Value holding the number `i`.
    let mut v = vec![0x11];
    v.extend_from_slice(&(i as f64).to_le_bytes());
    v.into_boxed_slice()
}

fn files(dir: &Path, kind: Kind) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_name(e.unwrap().file_name().to_str()?))
        .filter(|(_, k)| *k == kind)
        .map(|(seq, _)| seq)
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Writes 40 changes to `p` (sets, a delete, a clear), then deletes
/// another project, which writes a snapshot at once and removes the
/// segments that logged them; returns the store, closed.
async fn history_then_snapshot(dir: &Path, clock: &Arc<ManualClock>, p: &ProjectName) {
    let store = open(dir, clock, Settings::DEFAULT);
    for i in 1..=37 {
        store
            .set(p, &format!("k{}", i % 5), value(i), None)
            .await
            .unwrap();
    }
    store.delete(p, "k1").await.unwrap();
    store.clear(p).await.unwrap();
    store.set(p, "last", value(40), None).await.unwrap();
    let gone = ProjectName::parse("gone").unwrap();
    let create = AdminChange::CreateProject {
        project: gone.clone(),
        quota: Quota::default(),
    };
    store.admin(create).await.unwrap();
    store.set(&gone, "x", value(1), None).await.unwrap();
    store
        .admin(AdminChange::DeleteProject { project: gone })
        .await
        .unwrap();
    // Closing waits for the snapshot the deletion started.
    store.close().await.unwrap();
    let snapshots = files(dir, Kind::Snapshot);
    assert_eq!(snapshots.len(), 1, "the deletion wrote a snapshot");
    assert!(
        files(dir, Kind::Segment).iter().all(|&s| s >= snapshots[0]),
        "the segments before the snapshot are gone"
    );
}

#[tokio::test]
async fn a_snapshot_keeps_the_history_the_segments_it_replaces_logged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let p = ProjectName::parse("p").unwrap();
    history_then_snapshot(dir.path(), &clock, &p).await;

    let store = open(dir.path(), &clock, Settings::DEFAULT);
    assert!(store.recovered().snapshot.is_some());
    let mem = store.memory();
    assert_eq!(mem.history_window(&p), Some((0, (1..=40).collect())));
    let mut watch = store.watch(&p, WatchTarget::All, Some(36)).await.unwrap();
    let events = watch.next_batch(100).await.unwrap();
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.version, e.kind, e.key.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (37, EventKind::Set, "k2".to_string()),
            (38, EventKind::Deleted, "k1".to_string()),
            (39, EventKind::Cleared, String::new()),
            (40, EventKind::Set, "last".to_string()),
        ]
    );
    assert_eq!(events[0].value.as_deref(), Some(&*value(37)));
    // The next write follows the restored history, without a gap.
    store.set(&p, "after", value(41), None).await.unwrap();
    let next = watch.next_batch(100).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].version, 41);
    store.close().await.unwrap();

    // A run with a smaller history keeps only the newest changes of it.
    let settings = Settings {
        watch_history_events: 10,
        ..Settings::DEFAULT
    };
    let store = open(dir.path(), &clock, settings);
    assert_eq!(
        store.memory().history_window(&p),
        Some((31, (32..=41).collect()))
    );
    let refused = store.watch(&p, WatchTarget::All, Some(30)).await;
    assert!(matches!(
        refused,
        Err(WatchError::TooOld {
            from: 30,
            oldest: 31
        })
    ));
    store.close().await.unwrap();
}

/// Rewrites the snapshot as a build before histories wrote it: format 3,
/// no history records.
fn strip_history(dir: &Path) {
    let seq = files(dir, Kind::Snapshot)[0];
    let path = dir.join(super::dir::snapshot_name(seq));
    let bytes = std::fs::read(&path).unwrap();
    let mut reader = FrameReader::open(&bytes[..], bytes.len() as u64, SNAPSHOT_MAGIC).unwrap();
    let mut out = bytes[..FILE_HEADER_LEN].to_vec();
    out[6..8].copy_from_slice(&3u16.to_le_bytes());
    let mut payload = Vec::new();
    let mut dropped = 0;
    while reader.next_into(&mut payload).unwrap() {
        match codec::decode_payload(&payload).unwrap() {
            Record::History { .. } | Record::HistoryEvent { .. } => dropped += 1,
            _ => frame(&mut out, |p| p.extend_from_slice(&payload)),
        }
    }
    assert!(dropped > 40, "the snapshot held the history");
    std::fs::write(&path, out).unwrap();
}

#[tokio::test]
async fn a_snapshot_of_an_older_format_loads_with_an_empty_history() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let p = ProjectName::parse("p").unwrap();
    history_then_snapshot(dir.path(), &clock, &p).await;
    strip_history(dir.path());

    let store = open(dir.path(), &clock, Settings::DEFAULT);
    assert!(store.recovered().snapshot.is_some());
    assert_eq!(store.memory().version(&p), 40);
    assert_eq!(store.memory().history_window(&p), Some((40, Vec::new())));
    assert!(matches!(
        store.watch(&p, WatchTarget::All, Some(0)).await,
        Err(WatchError::TooOld { oldest: 40, .. })
    ));
    let mut watch = store.watch(&p, WatchTarget::All, Some(40)).await.unwrap();
    store.set(&p, "after", value(41), None).await.unwrap();
    assert_eq!(watch.next_batch(10).await.unwrap()[0].version, 41);
    store.close().await.unwrap();
}

/// A set whose deadline passed while the server was down stays in the
/// history as the set it was and is expired after start-up as a change of
/// its own; an expiry that was logged stays in it as an expiry.
#[tokio::test]
async fn expiries_in_the_history_are_what_live_watchers_saw() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let p = ProjectName::parse("p").unwrap();
    let store = open(dir.path(), &clock, Settings::DEFAULT);
    store.set(&p, "logged", value(1), Some(10)).await.unwrap();
    clock.advance(20);
    assert_eq!(store.expire_due(100).await, 1);
    store.set(&p, "lapsed", value(2), Some(10)).await.unwrap();
    store.set(&p, "lapsed", value(3), Some(50)).await.unwrap();
    store.close().await.unwrap();
    clock.advance(100);

    let store = open(dir.path(), &clock, Settings::DEFAULT);
    // Lapsed while the server was down: absent to reads, held until the
    // expiry task removes it as a change of its own, which watchers see.
    assert!(!store.has(&p, "lapsed").await.unwrap());
    assert_eq!(store.memory().stored_entries(), 1);
    assert_eq!(store.expire_due(100).await, 1);
    assert_eq!(store.memory().stored_entries(), 0);
    let mut watch = store.watch(&p, WatchTarget::All, Some(0)).await.unwrap();
    let events = watch.next_batch(10).await.unwrap();
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            let at = e.expires_at.map(crate::Deadline::ms);
            (e.version, e.kind, e.key.to_string(), at)
        })
        .collect();
    let key = |k: &str| k.to_string();
    assert_eq!(
        got,
        vec![
            (1, EventKind::Set, key("logged"), Some(1_010)),
            (2, EventKind::Expired, key("logged"), None),
            (3, EventKind::Set, key("lapsed"), Some(1_030)),
            (4, EventKind::Set, key("lapsed"), Some(1_070)),
            (5, EventKind::Expired, key("lapsed"), None),
        ]
    );
    assert_eq!(events[3].value.as_deref(), Some(&*value(3)));
    store.set(&p, "next", value(5), None).await.unwrap();
    assert_eq!(watch.next_batch(10).await.unwrap()[0].version, 6);
    store.close().await.unwrap();
}
