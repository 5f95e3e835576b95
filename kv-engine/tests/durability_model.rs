//! Model-based property test of the durable engine with restarts: random
//! operations, clock moves and restarts (which replay snapshots and logs)
//! against a `BTreeMap` model must agree on every answer.

mod common;

use std::{collections::BTreeMap, sync::Arc};

use kv_engine::{Backend, Clock, ManualClock, Settings, project::ProjectName, wal::DurableStore};
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
    Delete {
        p: usize,
        k: usize,
    },
    Clear {
        p: usize,
    },
    Advance(u64),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROJECTS.len();
    let k = 0..KEYS.len();
    prop_oneof![
        6 => (p.clone(), k.clone(), any::<u8>(), prop::option::of(1..50u64))
            .prop_map(|(p, k, v, ttl)| Op::Set { p, k, v, ttl }),
        3 => (p.clone(), k.clone()).prop_map(|(p, k)| Op::Get { p, k }),
        2 => (p.clone(), k.clone()).prop_map(|(p, k)| Op::Delete { p, k }),
        1 => p.prop_map(|p| Op::Clear { p }),
        2 => (0..40u64).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

fn encoded(v: u8) -> Box<[u8]> {
    vec![0x1a, 0x01, v].into_boxed_slice()
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> DurableStore {
    common::open_churning(dir, clock, Settings::DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn durable_engine_matches_model_across_restarts(ops in prop::collection::vec(op(), 1..80)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let projects: Vec<ProjectName> = PROJECTS.iter().map(|p| ProjectName::parse(p).unwrap()).collect();
        let mut store = open(dir.path(), &clock);
        // (project, key) -> (value, absolute deadline)
        let mut model: BTreeMap<(usize, usize), (u8, Option<u64>)> = BTreeMap::new();
        let live = |model: &BTreeMap<(usize, usize), (u8, Option<u64>)>, p, k, now: u64| {
            model.get(&(p, k)).and_then(|&(v, at)| at.is_none_or(|at| at > now).then_some(v))
        };

        for op in ops {
            let now = clock.now_ms();
            match op {
                Op::Set { p, k, v, ttl } => {
                    runtime.block_on(store.set(&projects[p], KEYS[k], encoded(v), ttl)).unwrap();
                    model.insert((p, k), (v, ttl.map(|t| now + t)));
                }
                Op::Get { p, k } => {
                    let got = runtime.block_on(store.get(&projects[p], KEYS[k])).unwrap();
                    let want = live(&model, p, k, now).map(|v| encoded(v).into_vec());
                    prop_assert_eq!(got.map(|b| b.value.to_vec()), want);
                }
                Op::Delete { p, k } => {
                    let was_live = live(&model, p, k, now).is_some();
                    model.remove(&(p, k));
                    prop_assert_eq!(runtime.block_on(store.delete(&projects[p], KEYS[k])).unwrap(), was_live);
                }
                Op::Clear { p } => {
                    let count = KEYS.iter().enumerate().filter(|(k, _)| live(&model, p, *k, now).is_some()).count();
                    model.retain(|(mp, _), _| *mp != p);
                    prop_assert_eq!(runtime.block_on(store.clear(&projects[p])).unwrap(), count as u64);
                }
                Op::Advance(ms) => clock.advance(ms),
                Op::Restart => {
                    runtime.block_on(store.close()).unwrap();
                    drop(store);
                    store = open(dir.path(), &clock);
                    model.retain(|_, (_, at)| at.is_none_or(|at| at > now));
                    // Everything live is loaded; what lapsed while the
                    // store was closed is held until the expiry task
                    // removes it (as a logged change watchers see).
                    runtime.block_on(store.expire_due(1_000));
                    prop_assert_eq!(store.memory().stored_entries(), model.len());
                }
            }
        }
        runtime.block_on(store.close()).unwrap();
    }
}
