//! Histories rebuilt by a restart without the changes their rings drop:
//! the rings come out exactly as they were before the stop.

use std::{path::Path, sync::Arc};

use super::{DurableStore, FsyncPolicy, LogOptions};
use crate::{
    Backend, ManualClock, Settings, WatchTarget,
    project::ProjectName,
    watch::{Event, EventKind},
};

/// Rings of this many changes.
const RING: usize = 50;

fn open(dir: &Path, clock: &Arc<ManualClock>) -> DurableStore {
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let settings = Settings {
        watch_history_events: RING,
        ..Settings::DEFAULT
    };
    DurableStore::open_with(dir, options, clock.clone(), settings).expect("opens")
}

fn value(i: u64) -> Box<[u8]> {
    // A protobuf Value holding the number `i`.
    let mut v = vec![0x11];
    v.extend_from_slice(&(i as f64).to_le_bytes());
    v.into_boxed_slice()
}

/// `project`'s ring: its floor and every event it holds.
async fn ring(store: &DurableStore, project: &ProjectName) -> (u64, Vec<Event>) {
    let (floor, versions) = store.memory().history_window(project).unwrap();
    let mut watch = store
        .watch(project, WatchTarget::All, Some(floor))
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.len() < versions.len() {
        events.extend(
            watch
                .next_batch(1000)
                .await
                .unwrap()
                .iter()
                .map(|e| Event::clone(e)),
        );
    }
    let held: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(held, versions);
    (floor, events)
}

#[tokio::test]
async fn a_restart_after_more_changes_than_a_ring_holds_rebuilds_exactly_its_last_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let (busy, quiet) = (
        ProjectName::parse("busy").unwrap(),
        ProjectName::parse("quiet").unwrap(),
    );
    let store = open(dir.path(), &clock);
    for i in 0..400u64 {
        store
            .set(&busy, &format!("k{}", i % 40), value(i), None)
            .await
            .unwrap();
        if i % 7 == 0 {
            store.delete(&busy, &format!("k{}", i % 40)).await.unwrap();
        }
        if i % 10 == 0 {
            store
                .set(&quiet, &format!("q{i}"), value(i), None)
                .await
                .unwrap();
        }
    }
    store.clear(&busy).await.unwrap();
    for i in 0..30u64 {
        let ttl = (i % 2 == 0).then_some(10 + i);
        store
            .set(&busy, &format!("t{i}"), value(i), ttl)
            .await
            .unwrap();
    }
    clock.advance(20);
    let expired = store.expire_due(100).await;
    assert!(expired > 0);
    store.set(&busy, "last", value(1), None).await.unwrap();
    let before_busy = ring(&store, &busy).await;
    let before_quiet = ring(&store, &quiet).await;
    assert_eq!(before_quiet.1.len(), 40, "fewer changes than a ring holds");
    let last = store.memory().version(&busy);
    assert_eq!(before_busy.0, last - RING as u64, "the ring is full");
    let kinds: Vec<EventKind> = before_busy.1.iter().map(|e| e.kind).collect();
    for kind in [EventKind::Set, EventKind::Cleared, EventKind::Expired] {
        assert!(kinds.contains(&kind), "{kind:?} among the kept changes");
    }
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path(), &clock);
    assert_eq!(store.recovered().snapshot, None, "replayed from the log");
    assert_eq!(
        store.recovered().history_skipped,
        last - RING as u64,
        "every change of the busy project but its last {RING} was left out, none of the quiet one's"
    );
    assert_eq!(ring(&store, &busy).await, before_busy);
    assert_eq!(ring(&store, &quiet).await, before_quiet);
    // The history goes on from there.
    let mut watch = store
        .watch(&busy, WatchTarget::All, Some(last))
        .await
        .unwrap();
    store.set(&busy, "after", value(2), None).await.unwrap();
    assert_eq!(watch.next_batch(10).await.unwrap()[0].version, last + 1);
    store.close().await.unwrap();
}
