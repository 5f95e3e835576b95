//! The change history across restarts: random writes (sets with and
//! without TTL, multi-key transactions, deletes, clears), clock moves,
//! logged expiries, project deletions and recreations, and restarts that
//! load snapshots as well as segments. After every restart each project's
//! history is exactly what it was before (same floor, same events with
//! their kinds, keys, values, deadlines and versions), and a watcher
//! resumed from any retained version gets exactly the changes after it,
//! then the next write with the next version: no gap, no duplicate.

mod common;

use std::sync::Arc;

use kv_engine::{
    Backend, ManualClock, Op, Quota, Settings, Txn, WatchError, WatchTarget,
    project::ProjectName,
    wal::{AdminChange, DurableStore},
    watch::Event,
};
use proptest::prelude::*;

const PROJECTS: [&str; 2] = ["a", "b"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
/// Small, so the window's bound is reached and restored.
const HISTORY_EVENTS: usize = 12;

#[derive(Debug, Clone)]
enum Step {
    Set {
        p: usize,
        k: usize,
        v: u8,
        ttl: Option<u64>,
    },
    /// Two sets in one transaction (one log record).
    Pair {
        p: usize,
        v: u8,
    },
    Delete {
        p: usize,
        k: usize,
    },
    Clear {
        p: usize,
    },
    Advance(u64),
    /// What the server's expiry task does: log and publish due expiries.
    Expire,
    /// DeleteProject then CreateProject: a new incarnation.
    Recreate {
        p: usize,
    },
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let p = 0..PROJECTS.len();
    let k = 0..KEYS.len();
    prop_oneof![
        8 => (p.clone(), k.clone(), any::<u8>(), prop::option::of(1..50u64))
            .prop_map(|(p, k, v, ttl)| Step::Set { p, k, v, ttl }),
        2 => (p.clone(), any::<u8>()).prop_map(|(p, v)| Step::Pair { p, v }),
        3 => (p.clone(), k).prop_map(|(p, k)| Step::Delete { p, k }),
        1 => p.clone().prop_map(|p| Step::Clear { p }),
        2 => (0..40u64).prop_map(Step::Advance),
        2 => Just(Step::Expire),
        1 => p.prop_map(|p| Step::Recreate { p }),
        2 => Just(Step::Restart),
    ]
}

fn encoded(v: u8) -> Box<[u8]> {
    vec![0x1a, 0x01, v].into_boxed_slice()
}

fn settings() -> Settings {
    Settings {
        watch_history_events: HISTORY_EVENTS,
        ..Settings::DEFAULT
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> DurableStore {
    common::open_churning(dir, clock, settings())
}

/// A project's retained history: the newest version it no longer holds,
/// and every event after it, read through a watcher as a client would.
async fn window(store: &DurableStore, project: &ProjectName) -> (u64, Vec<Event>) {
    let floor = match store.watch(project, WatchTarget::All, Some(0)).await {
        Ok(_) => store.incarnation(project),
        Err(WatchError::TooOld { oldest, .. }) => oldest,
        Err(e) => panic!("watch from 0: {e}"),
    };
    (floor, events_after(store, project, floor).await)
}

/// Every event after `from` up to the project's current version.
async fn events_after(store: &DurableStore, project: &ProjectName, from: u64) -> Vec<Event> {
    let current = store.memory().version(project);
    let mut watch = store
        .watch(project, WatchTarget::All, Some(from))
        .await
        .unwrap_or_else(|e| panic!("watch from {from}: {e}"));
    let mut events = Vec::new();
    while watch.cursor() < current {
        let batch = watch.next_batch(1000).await.expect("within the history");
        events.extend(batch.iter().map(|e| (**e).clone()));
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_history_after_a_restart_is_the_history_before_it(steps in prop::collection::vec(step(), 1..90)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let projects: Vec<ProjectName> = PROJECTS.iter().map(|p| ProjectName::parse(p).unwrap()).collect();
        let mut store = open(dir.path(), &clock);
        for project in &projects {
            let create = AdminChange::CreateProject { project: project.clone(), quota: Quota::default() };
            runtime.block_on(store.admin(create)).unwrap();
        }
        for step in steps {
            match step {
                Step::Set { p, k, v, ttl } => {
                    runtime.block_on(store.set(&projects[p], KEYS[k], encoded(v), ttl)).unwrap();
                }
                Step::Pair { p, v } => {
                    let mut txn = Txn::op(Op::Set { key: "pair/x".into(), value: encoded(v), ttl: kv_engine::Ttl::Never });
                    txn.ops.push(Op::Incr { key: "pair/n".into(), delta: 1.0, ttl_ms: Some(30) });
                    runtime.block_on(store.submit(&projects[p], txn)).unwrap();
                }
                Step::Delete { p, k } => {
                    runtime.block_on(store.delete(&projects[p], KEYS[k])).unwrap();
                }
                Step::Clear { p } => {
                    runtime.block_on(store.clear(&projects[p])).unwrap();
                }
                Step::Advance(ms) => clock.advance(ms),
                Step::Expire => {
                    runtime.block_on(store.expire_due(1000));
                }
                Step::Recreate { p } => {
                    let project = projects[p].clone();
                    runtime.block_on(store.admin(AdminChange::DeleteProject { project: project.clone() })).unwrap();
                    let create = AdminChange::CreateProject { project, quota: Quota::default() };
                    runtime.block_on(store.admin(create)).unwrap();
                    // The deletion's snapshot runs meanwhile, maybe while
                    // later steps write: its fuzzy walk is part of the test.
                }
                Step::Restart => {
                    let before: Vec<_> = projects.iter().map(|p| runtime.block_on(window(&store, p))).collect();
                    let versions: Vec<_> = projects.iter().map(|p| store.memory().version(p)).collect();
                    let incarnations: Vec<_> = projects.iter().map(|p| store.incarnation(p)).collect();
                    runtime.block_on(store.close()).unwrap();
                    drop(store);
                    store = open(dir.path(), &clock);
                    for (i, project) in projects.iter().enumerate() {
                        prop_assert_eq!(store.incarnation(project), incarnations[i]);
                        prop_assert_eq!(store.memory().version(project), versions[i]);
                        let after = runtime.block_on(window(&store, project));
                        prop_assert_eq!(&after, &before[i], "project {}", project);
                        let (floor, events) = after;
                        // The window is the newest changes, contiguous.
                        let held = versions[i] - floor;
                        prop_assert!(held as usize <= HISTORY_EVENTS);
                        prop_assert!(held as usize == HISTORY_EVENTS || floor == incarnations[i]);
                        for (n, event) in events.iter().enumerate() {
                            prop_assert_eq!(event.version, floor + 1 + n as u64);
                        }
                        if floor > incarnations[i] {
                            let refused = runtime.block_on(store.watch(project, WatchTarget::All, Some(floor - 1)));
                            let too_old = matches!(refused, Err(WatchError::TooOld { oldest, .. }) if oldest == floor);
                            prop_assert!(too_old, "from {} under floor {}", floor - 1, floor);
                        }
                        // A resume from inside the window: its suffix.
                        let from = floor + held / 2;
                        let suffix = runtime.block_on(events_after(&store, project, from));
                        prop_assert_eq!(&suffix[..], &events[(held / 2) as usize..]);
                    }
                    // The next write continues the history seamlessly.
                    let project = &projects[0];
                    let from = store.memory().version(project);
                    let mut watch = runtime.block_on(store.watch(project, WatchTarget::All, Some(from.saturating_sub(1).max(store.incarnation(project))))).unwrap();
                    runtime.block_on(store.set(project, "next", encoded(0), None)).unwrap();
                    let mut seen = Vec::new();
                    while watch.cursor() < from + 1 {
                        seen.extend(runtime.block_on(watch.next_batch(10)).unwrap().iter().map(|e| e.version));
                    }
                    let want: Vec<u64> = ((from.saturating_sub(1).max(store.incarnation(project)) + 1)..=from + 1).collect();
                    prop_assert_eq!(seen, want);
                }
            }
        }
        runtime.block_on(store.close()).unwrap();
    }
}
