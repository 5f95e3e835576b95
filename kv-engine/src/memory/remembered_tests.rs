//! A snapshot's walk of the remembered request ids, copied in runs under
//! short holds of the table's lock: each id still remembered is written
//! once, whatever the writer remembers and evicts between two runs.

use std::collections::{HashMap, HashSet};

use super::{idempotency::REMEMBERED_RUN, *};
use crate::ManualClock;

const NOW: u64 = 1_000_000;

fn store(max_ids: usize) -> MemoryStore {
    let settings = Settings {
        idempotency_max_ids: max_ids,
        ..Settings::default()
    };
    MemoryStore::with_settings(Arc::new(ManualClock::new(NOW)), settings)
}

fn remember(store: &MemoryStore, id: &str, at: u64) {
    let remembered = Remembered {
        fingerprint: 7,
        at,
        outcome: Arc::new(TxnOutcome::default()),
    };
    store.remember(&ProjectName::parse("p").unwrap(), id.into(), remembered);
}

#[test]
fn a_walk_in_runs_writes_every_id_remembered_throughout_once() {
    let max = 3 * REMEMBERED_RUN + 100;
    let store = store(max);
    for i in 0..max {
        remember(&store, &format!("old-{i}"), NOW - 1000 + (i as u64 % 7));
    }
    // Remembered again later: sits twice in the order of arrival.
    remember(&store, "old-5", NOW);

    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut calls = 0;
    let mut added = 0;
    store
        .for_each_remembered(|_, id, r| {
            assert!(
                seen.insert(id.to_string(), r.at).is_none(),
                "{id} written twice"
            );
            calls += 1;
            // Between runs (and within one) the writer goes on: new ids
            // arrive and, the table being full, the oldest are evicted.
            if calls % 1000 == 0 {
                for _ in 0..300 {
                    remember(&store, &format!("new-{added}"), NOW);
                    added += 1;
                }
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    assert!(added > 0);

    // Every id remembered before the walk and still remembered after it
    // was remembered throughout: the walk must have written it.
    let mut after = HashSet::new();
    store
        .for_each_remembered(|_, id, _| {
            after.insert(id.to_string());
            Ok::<(), ()>(())
        })
        .unwrap();
    let kept: Vec<&String> = after.iter().filter(|id| id.starts_with("old-")).collect();
    assert!(kept.len() > REMEMBERED_RUN, "{} kept", kept.len());
    for id in kept {
        assert!(
            seen.contains_key(id),
            "{id} remembered throughout, not written"
        );
    }
    assert_eq!(
        seen.get("old-5"),
        Some(&NOW),
        "the latest outcome of a reused id"
    );
}

#[test]
fn ids_past_their_window_are_not_written() {
    let clock = Arc::new(ManualClock::new(NOW));
    let store = MemoryStore::with_settings(clock.clone(), Settings::default());
    let window = Settings::default().idempotency_window_ms;
    remember(&store, "older", NOW - 10);
    remember(&store, "newer", NOW);
    // The older id's window has closed, the newer one's has not.
    clock.advance(window - 5);
    let mut seen = Vec::new();
    store
        .for_each_remembered(|_, id, _| {
            seen.push(id.to_string());
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(seen, ["newer"]);
}
