//! The ordered index built after a recovery: whatever writes (inserts,
//! deletes, expiries, clears) run before, during and after the build,
//! the installed index holds exactly the map's keys, and a List waiting
//! for it shows exactly the project's keys at the page's version.

use super::{load::OrderBuild, *};
use std::collections::BTreeMap;

use crate::ManualClock;

fn project() -> ProjectName {
    ProjectName::parse("p").unwrap()
}

fn set(store: &MemoryStore, key: &str, expires_at: Option<u64>) {
    let value = vec![0x20, 0x01].into_boxed_slice();
    let key = key.into();
    store.apply(
        &project(),
        Mutation::Set {
            key,
            value,
            expires_at: expires_at.and_then(Deadline::at),
        },
    );
}

fn remove(store: &MemoryStore, key: &str, expire: bool) {
    let key = key.into();
    let mutation = if expire {
        Mutation::Expire { key }
    } else {
        Mutation::Delete { key }
    };
    store.apply(&project(), mutation);
}

fn ns(store: &MemoryStore) -> Arc<Namespace> {
    store.namespace(&project()).unwrap()
}

/// The installed index and the map's keys, both in byte order.
fn index_and_map(store: &MemoryStore) -> (Vec<String>, Vec<String>) {
    let ns = ns(store);
    let index: Vec<String> = match &*read_lock(&ns.cold().order) {
        OrderIndex::Ready(tree) => {
            // The index holds the map's own blocks, never an overwritten
            // one (which would keep its old value alive).
            for block in tree {
                let held = ns.entries.get(block.key());
                assert!(
                    held.is_some_and(|held| held.ptr_eq(block)),
                    "the index holds a block the map does not: {block:?}"
                );
            }
            tree.iter().map(|b| b.key().to_string()).collect()
        }
        OrderIndex::Building(_) => panic!("index not installed"),
    };
    let mut map: Vec<String> = Vec::new();
    let _ = ns.entries.try_for_each(|b| {
        map.push(b.key().to_string());
        Ok::<_, ()>(())
    });
    map.sort_unstable();
    if !ns.entries.is_big() {
        // A small namespace's keys are not indexed: Lists sort them.
        assert!(index.is_empty(), "a small namespace has an index");
        return (map.clone(), map);
    }
    (index, map)
}

fn listed(store: &MemoryStore) -> ListPage {
    let query = ListQuery {
        limit: 10_000_000,
        keys_only: true,
        ..ListQuery::default()
    };
    store.list_now(&project(), &query)
}

/// Random writes over a key space larger than an inline build: sets
/// (some with deadlines), deletes, expiries through the purge, and
/// now and then a clear.
fn random_writes(store: &MemoryStore, clock: &ManualClock, rng: &mut fastrand::Rng, n: usize) {
    for _ in 0..n {
        let key = format!("k{:06}", rng.u64(..12_000));
        match rng.u64(..10_000) {
            0 => {
                store.apply(&project(), Mutation::Clear);
            }
            1..=5_499 => set(store, &key, None),
            5_500..=6_999 => set(store, &key, Some(clock.now_ms() + 1 + rng.u64(..5))),
            7_000..=8_999 => remove(store, &key, false),
            9_000..=9_899 => {
                // A recovery turns sets already due into expiries; after
                // it, the purge expires what fell due.
                if store.loading() {
                    remove(store, &key, true);
                } else {
                    clock.advance(1);
                    store.purge_expired(64);
                }
            }
            _ => clock.advance(1),
        }
    }
}

#[test]
fn an_index_built_after_the_load_replays_the_changes_queued_meanwhile() {
    for seed in 1..=8u64 {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = MemoryStore::with_clock(clock.clone());
        let mut rng = fastrand::Rng::with_seed(seed);
        store.begin_load();
        random_writes(&store, &clock, &mut rng, 20_000);
        // Enough keys added since the load's last clear for a build in
        // the background.
        for i in 0..8_000 {
            set(&store, &format!("k{:06}", i), None);
        }
        let build = store.end_load();
        assert!(!build.is_empty(), "seed {seed}: the build was inlined");
        // Before the builder gathers the load's keys, between that and
        // the install, and after it.
        random_writes(&store, &clock, &mut rng, 5_000);
        let (_, ns) = &build.namespaces[0];
        let tree = OrderBuild::sorted(ns);
        random_writes(&store, &clock, &mut rng, 5_000);
        assert!(!ns.order_built());
        OrderBuild::install(ns, tree);
        assert!(ns.order_built());
        let (index, map) = index_and_map(&store);
        assert_eq!(index, map, "seed {seed}");
        random_writes(&store, &clock, &mut rng, 5_000);
        let (index, map) = index_and_map(&store);
        assert_eq!(index, map, "seed {seed}");
        let now = clock.now_ms();
        let mut live = BTreeSet::new();
        let _ = ns.entries.try_for_each(|e| {
            if e.is_live(now) {
                live.insert(e.key().to_string());
            }
            Ok::<_, ()>(())
        });
        let live: Vec<String> = live.into_iter().collect();
        let page: Vec<String> = listed(&store)
            .entries
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(page, live, "seed {seed}");
    }
}

#[test]
fn a_load_cleared_or_small_needs_no_background_build() {
    let store = MemoryStore::new();
    store.begin_load();
    for i in 0..10_000 {
        set(&store, &format!("k{i:06}"), None);
    }
    store.apply(&project(), Mutation::Clear);
    set(&store, "b", None);
    set(&store, "a", None);
    remove(&store, "b", false);
    let build = store.end_load();
    assert!(build.is_empty());
    let (index, map) = index_and_map(&store);
    assert_eq!((index, map), (vec!["a".to_string()], vec!["a".to_string()]));
}

#[test]
fn many_mid_sized_projects_are_not_all_built_before_the_open_returns() {
    let store = MemoryStore::new();
    store.begin_load();
    for name in ["a", "b", "c"] {
        let project = ProjectName::parse(name).unwrap();
        for i in 0..3_000 {
            let key = format!("k{i:05}").into();
            let value = vec![0x20, 0x01].into_boxed_slice();
            let expires_at = None;
            store.apply(
                &project,
                Mutation::Set {
                    key,
                    value,
                    expires_at,
                },
            );
        }
    }
    let build = store.end_load();
    assert_eq!(build.keys(), 6_000);
    build.run();
    for name in ["a", "b", "c"] {
        let project = ProjectName::parse(name).unwrap();
        let query = ListQuery {
            limit: 10_000,
            ..ListQuery::default()
        };
        assert_eq!(store.list_now(&project, &query).entries.len(), 3_000);
    }
}

/// A List started right after the load, while writes go on and the
/// builder runs on its own thread: every page it returns is exactly the
/// project's keys at the page's version.
#[test]
fn lists_during_the_build_wait_and_see_exactly_the_keys_of_their_version() {
    const LOADED: usize = 200_000;
    let store = Arc::new(MemoryStore::new());
    store.begin_load();
    for i in 0..LOADED {
        set(&store, &format!("k{:07}", i * 2), None);
    }
    let build = store.end_load();
    assert_eq!(build.keys(), LOADED);
    let loaded_version = store.version(&project());

    // What each version changed, to rebuild the key set a page shows.
    enum Op {
        Insert(String),
        Remove(String),
        Clear,
    }
    let done = Arc::new(AtomicBool::new(false));
    let lister = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut pages = Vec::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = listed(&store);
                assert!(!page.more);
                let keys: Vec<String> = page.entries.iter().map(|(k, _)| k.to_string()).collect();
                pages.push((page.version, keys));
                if finished {
                    return pages;
                }
            }
        })
    };
    let builder = std::thread::spawn(move || build.run());
    let mut ops = Vec::new();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..20_000u64 {
        let key = format!("k{:07}", rng.u64(..LOADED as u64 * 2));
        let op = match rng.u64(..10) {
            0..=4 => {
                set(&store, &key, None);
                Op::Insert(key)
            }
            5..=7 => {
                remove(&store, &key, false);
                Op::Remove(key)
            }
            _ => {
                remove(&store, &key, true);
                Op::Remove(key)
            }
        };
        ops.push((store.version(&project()), op));
        if round == 15_000 {
            store.apply(&project(), Mutation::Clear);
            ops.push((store.version(&project()), Op::Clear));
        }
    }
    done.store(true, Ordering::Release);
    builder.join().unwrap();
    let pages = lister.join().unwrap();
    let (index, map) = index_and_map(&store);
    assert_eq!(index, map);

    let mut model: BTreeSet<String> = (0..LOADED).map(|i| format!("k{:07}", i * 2)).collect();
    let mut applied = ops.iter().peekable();
    let mut at = loaded_version;
    for (version, keys) in &pages {
        assert!(*version >= at, "pages go forward");
        while let Some((_, op)) = applied.next_if(|(v, _)| v <= version) {
            match op {
                Op::Insert(key) => {
                    model.insert(key.clone());
                }
                Op::Remove(key) => {
                    model.remove(key);
                }
                Op::Clear => model.clear(),
            }
        }
        at = *version;
        assert!(keys.iter().eq(model.iter()), "page at version {version}");
    }
    assert!(pages.len() >= 2);
}

/// Lists of a namespace while it is small (its keys sorted per List) and
/// after it grew (its ordered index) agree with a sorted model: prefixes,
/// start points, limits, expired keys, deletes and clears.
#[test]
fn lists_agree_with_a_model_before_and_after_the_namespace_grows() {
    for seed in 1..=20u64 {
        let clock = Arc::new(ManualClock::new(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        let mut rng = fastrand::Rng::with_seed(seed);
        // Key -> deadline (0: none).
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let keys = 2 + rng.usize(..24);
        for _ in 0..300 {
            let key = format!("{}{}", ["a", "ab", "b"][rng.usize(..3)], rng.usize(..keys));
            match rng.u8(..10) {
                0..=4 => {
                    let deadline = if rng.bool() {
                        0
                    } else {
                        clock.now_ms() + 1 + rng.u64(..3)
                    };
                    set(&store, &key, (deadline > 0).then_some(deadline));
                    model.insert(key, deadline);
                }
                5 | 6 => {
                    remove(&store, &key, false);
                    model.remove(&key);
                }
                7 if rng.u8(..20) == 0 => {
                    store.apply(&project(), Mutation::Clear);
                    model.clear();
                }
                _ => clock.advance(1),
            }
            let now = clock.now_ms();
            let prefix = ["", "a", "ab", "b", "c"][rng.usize(..5)].to_string();
            let start_after = ["", "a", "a1", "ab3", "b"][rng.usize(..5)].to_string();
            let limit = 1 + rng.usize(..6);
            let query = ListQuery {
                prefix: prefix.clone(),
                start_after: start_after.clone(),
                limit,
                keys_only: rng.bool(),
            };
            let page = store.list_now(&project(), &query);
            let matching: Vec<&String> = model
                .iter()
                .filter(|(k, d)| {
                    k.starts_with(&prefix) && **k > start_after && (**d == 0 || **d > now)
                })
                .map(|(k, _)| k)
                .collect();
            let listed: Vec<&str> = page.entries.iter().map(|(k, _)| &**k).collect();
            let expected: Vec<&str> = matching.iter().take(limit).map(|k| k.as_str()).collect();
            assert_eq!(listed, expected, "seed {seed}, {query:?}");
            assert_eq!(page.more, matching.len() > limit, "seed {seed}, {query:?}");
            for (_, entry) in &page.entries {
                assert_eq!(entry.value.is_empty(), query.keys_only);
            }
        }
        let (index, map) = index_and_map(&store);
        assert_eq!(index, map, "seed {seed}");
    }
}

/// A read admitted to one incarnation answers from that incarnation only:
/// not after the project is deleted, not from the project created again
/// under its name, and a name never used reads as empty.
#[test]
fn reads_in_an_incarnation_never_answer_from_another() {
    let store = MemoryStore::new();
    let p = project();
    assert_eq!(store.entry_in(&p, 0, "k"), Some(None));
    assert_eq!(store.has_in(&p, 0, "k"), Some(false));
    set(&store, "k", None);
    let first = store.entry_in(&p, 0, "k").unwrap().unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(store.has_in(&p, 0, "k"), Some(true));
    // Another incarnation than the one held: no answer.
    assert_eq!(store.entry_in(&p, 7, "k"), None);
    store.delete_project(&p);
    let next = store.incarnation(&p);
    assert!(next > 1);
    assert_eq!(store.entry_in(&p, 0, "k"), None);
    assert_eq!(store.has_in(&p, 0, "k"), None);
    // Deleted, no namespace yet: the next incarnation reads as empty.
    assert_eq!(store.entry_in(&p, next, "k"), Some(None));
    set(&store, "k", None);
    assert_eq!(store.entry_in(&p, 0, "k"), None);
    assert!(store.entry_in(&p, next, "k").unwrap().is_some());
}

/// A project that is only written and read makes no cold part (index,
/// build flag, request table); a request id, a List of a big namespace
/// and a recovery's namespace do.
#[test]
fn the_cold_part_is_made_only_when_used() {
    let store = MemoryStore::new();
    set(&store, "a", None);
    let _ = store.entry_now(&project(), "a");
    let _ = store.list_now(&project(), &ListQuery::default());
    assert!(ns(&store).cold_if_made().is_none());
    for i in 0..=entries::SMALL_KEYS {
        set(&store, &format!("k{i}"), None);
    }
    assert!(ns(&store).cold_if_made().is_some());
    let query = ListQuery {
        limit: 100,
        ..ListQuery::default()
    };
    let page = store.list_now(&project(), &query);
    assert_eq!(page.entries.len(), entries::SMALL_KEYS + 2);
}
