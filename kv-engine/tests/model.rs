//! Model-based property test: random operations on the in-memory engine
//! and on a plain `BTreeMap` model under a manual clock must agree on every
//! answer, and the engine's expiry index must stay exact.

use std::{collections::BTreeMap, sync::Arc};

use kv_engine::{
    Applied, Deadline, ManualClock, Mutation, memory::MemoryStore, project::ProjectName,
};
use proptest::prelude::*;

const PROJECTS: [&str; 2] = ["a", "b"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

#[derive(Debug, Clone)]
enum Op {
    Set {
        p: usize,
        k: usize,
        v: u8,
        ttl: Option<u64>,
    },
    Get {
        p: usize,
        k: usize,
    },
    Has {
        p: usize,
        k: usize,
    },
    Delete {
        p: usize,
        k: usize,
    },
    Clear {
        p: usize,
    },
    Advance(u64),
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROJECTS.len();
    let k = 0..KEYS.len();
    prop_oneof![
        4 => (p.clone(), k.clone(), any::<u8>(), prop::option::of(1..50u64))
            .prop_map(|(p, k, v, ttl)| Op::Set { p, k, v, ttl }),
        3 => (p.clone(), k.clone()).prop_map(|(p, k)| Op::Get { p, k }),
        2 => (p.clone(), k.clone()).prop_map(|(p, k)| Op::Has { p, k }),
        2 => (p.clone(), k.clone()).prop_map(|(p, k)| Op::Delete { p, k }),
        1 => p.prop_map(|p| Op::Clear { p }),
        2 => (0..40u64).prop_map(Op::Advance),
        2 => Just(Op::Purge),
    ]
}

/// What the model keeps: value and absolute deadline, expired or not (an
/// expired entry lingers until a purge, as in the engine).
type Model = BTreeMap<(usize, usize), (u8, Option<u64>)>;

fn live(entry: Option<&(u8, Option<u64>)>, now: u64) -> Option<u8> {
    entry.and_then(|&(v, at)| at.is_none_or(|at| at > now).then_some(v))
}

fn encoded(v: u8) -> Box<[u8]> {
    // A google.protobuf.Value string of one character: distinct per v.
    vec![0x1a, 0x01, v].into_boxed_slice()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let clock = Arc::new(ManualClock::new(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        let projects: Vec<ProjectName> = PROJECTS.iter().map(|p| ProjectName::parse(p).unwrap()).collect();
        let mut model = Model::new();
        let mut now = 1_000;

        for op in ops {
            match op {
                Op::Set { p, k, v, ttl } => {
                    let expires_at = ttl.map(|t| now + t);
                    let applied = store.apply(&projects[p], Mutation::Set { key: KEYS[k].into(), value: encoded(v), expires_at: expires_at.and_then(Deadline::at) });
                    prop_assert_eq!(applied, Applied { removed: 0 });
                    model.insert((p, k), (v, expires_at));
                }
                Op::Get { p, k } => {
                    let got = store.get_now(&projects[p], KEYS[k]);
                    let want = live(model.get(&(p, k)), now).map(|v| bytes::Bytes::from(encoded(v).into_vec()));
                    prop_assert_eq!(got, want);
                }
                Op::Has { p, k } => {
                    prop_assert_eq!(store.has_now(&projects[p], KEYS[k]), live(model.get(&(p, k)), now).is_some());
                }
                Op::Delete { p, k } => {
                    let was_live = live(model.get(&(p, k)), now).is_some();
                    model.remove(&(p, k));
                    let applied = store.apply(&projects[p], Mutation::Delete { key: KEYS[k].into() });
                    prop_assert_eq!(applied, Applied { removed: u64::from(was_live) });
                }
                Op::Clear { p } => {
                    let live_count = model.iter().filter(|((mp, _), e)| *mp == p && live(Some(e), now).is_some()).count();
                    model.retain(|(mp, _), _| *mp != p);
                    prop_assert_eq!(store.apply(&projects[p], Mutation::Clear), Applied { removed: live_count as u64 });
                }
                Op::Advance(ms) => {
                    clock.advance(ms);
                    now += ms;
                }
                Op::Purge => {
                    store.purge_expired(usize::MAX);
                    model.retain(|_, e| live(Some(e), now).is_some());
                }
            }
            // Memory holds exactly the model's entries, and the expiry index
            // one record per entry with a deadline: nothing leaks.
            prop_assert_eq!(store.stored_entries(), model.len());
            let model_bytes: usize = model.keys().map(|(_, k)| KEYS[*k].len() + 3).sum();
            prop_assert_eq!(store.data_bytes(), model_bytes as u64);
            for (p, project) in projects.iter().enumerate() {
                let keys: Vec<usize> = model.keys().filter(|(mp, _)| *mp == p).map(|(_, k)| *k).collect();
                let usage = store.usage(project);
                prop_assert_eq!(usage.keys, keys.len() as u64);
                prop_assert_eq!(usage.bytes, keys.iter().map(|k| (KEYS[*k].len() + 3) as u64).sum::<u64>());
            }
            prop_assert_eq!(store.pending_expiries(), model.values().filter(|(_, at)| at.is_some()).count());
        }
    }
}

/// Threads racing sets with and without TTL, deletes and clears on the same
/// few keys: afterwards every entry with a deadline is still reachable by
/// the purge (no index record lost to a race), and the index holds nothing
/// stale.
#[test]
fn racing_writers_keep_the_expiry_index_exact() {
    let clock = Arc::new(ManualClock::new(1_000));
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let project = ProjectName::parse("race").unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            let project = project.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let key: Arc<str> = KEYS[(i % 4) as usize].into();
                    let mutation = match (i + t) % 7 {
                        0 => Mutation::Delete { key },
                        1 if i % 1000 == 0 => Mutation::Clear,
                        // Same deadline from different threads, to hit the
                        // duplicate-record case.
                        2 | 3 => Mutation::Set {
                            key,
                            value: encoded(1),
                            expires_at: Deadline::at(5_000),
                        },
                        4 => Mutation::Set {
                            key,
                            value: encoded(2),
                            expires_at: Deadline::at(5_000 + i % 3),
                        },
                        _ => Mutation::Set {
                            key,
                            value: encoded(3),
                            expires_at: None,
                        },
                    };
                    store.apply(&project, mutation);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let with_deadline = KEYS.iter().filter(|k| store.has_now(&project, k)).count();
    assert!(
        store.pending_expiries() <= with_deadline,
        "no stale records"
    );
    clock.advance(10_000);
    store.purge_expired(usize::MAX);
    let live = KEYS.iter().filter(|k| store.has_now(&project, k)).count();
    assert_eq!(
        store.stored_entries(),
        live,
        "every expired entry was reclaimed"
    );
    assert_eq!(store.pending_expiries(), 0);
}
