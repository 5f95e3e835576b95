//! Replays on worker threads against one thread, the ordered index
//! built from a snapshot's key order, and histories rebuilt without the
//! changes their rings drop.

use super::*;
use crate::ManualClock;

type Records = Vec<(ProjectName, Vec<Versioned>, Option<Arc<str>>)>;

/// Random records over three projects: sets (some with deadlines,
/// some numbered, some not), deletes, expiries, now and then a clear
/// or a remembered request.
fn records(seed: u64, n: usize) -> Records {
    records_numbered(seed, n, false)
}

/// [`records`]; with `numbered`, every change numbered and no gap
/// between versions (as a log without repairs has).
fn records_numbered(seed: u64, n: usize, numbered: bool) -> Records {
    let mut rng = fastrand::Rng::with_seed(seed);
    let projects: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| ProjectName::parse(p).unwrap())
        .collect();
    let mut versions = [0u64; 3];
    (0..n)
        .map(|i| {
            let p = rng.usize(..3);
            let mutations = (0..rng.usize(1..4))
                .map(|_| {
                    let key: Arc<str> = format!("k{:04}", rng.u64(..3000)).into();
                    let mutation = match rng.u32(..1000) {
                        0..=2 => Mutation::Clear,
                        3..=599 => Mutation::Set {
                            key,
                            value: vec![0x20, rng.u8(..)].into_boxed_slice(),
                            expires_at: rng
                                .bool()
                                .then(|| 1_000 + rng.u64(..100))
                                .and_then(Deadline::at),
                        },
                        600..=849 => Mutation::Delete { key },
                        _ => Mutation::Expire { key },
                    };
                    // Records of the first log format carry no version.
                    let version = if rng.u32(..10) == 0 && !numbered {
                        0
                    } else {
                        versions[p] + 1 + u64::from(rng.u32(..10) == 0 && !numbered)
                    };
                    versions[p] = versions[p].max(version).max(versions[p] + 1);
                    Versioned { version, mutation }
                })
                .collect();
            let request = (rng.u32(..20) == 0).then(|| Arc::from(format!("r{i}")));
            (projects[p].clone(), mutations, request)
        })
        .collect()
}

fn remembered(at: u64) -> Remembered {
    Remembered {
        fingerprint: 7,
        at,
        outcome: Arc::new(crate::TxnOutcome::default()),
    }
}

/// Everything a recovery leaves that the workers touch or that is
/// ordered: entries, usage, versions, expiry index, ordered keys,
/// history, remembered requests.
fn state(store: &MemoryStore) -> String {
    let mut out = Vec::new();
    store
        .for_each_stored(|p, k, v, at, version| {
            out.push(format!("{p} {k} {v:?} {at:?} {version}"));
            Ok::<(), ()>(())
        })
        .unwrap();
    out.sort();
    let mut usages = store.project_usages();
    usages.sort_by(|a, b| a.0.cmp(&b.0));
    let mut versions = store.versions();
    versions.sort();
    out.push(format!("{usages:?} {versions:?} {}", store.data_bytes()));
    out.push(format!("expiries {}", store.pending_expiries()));
    let mut expiries = Vec::new();
    for shard in store.expiry.shards.iter() {
        for r in lock(shard).iter() {
            expiries.push(format!("{:?} {} {}", r.at, r.project, r.key));
        }
    }
    expiries.sort();
    out.extend(expiries);
    let mut namespaces = store.namespaces();
    namespaces.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, ns) in namespaces {
        // No cold part: an empty index, not yet made.
        match ns
            .cold_if_made()
            .map(|cold| read_lock(&cold.order))
            .as_deref()
        {
            None => out.push(format!("{p} order {{}}")),
            Some(OrderIndex::Ready(tree)) => out.push(format!("{p} order {tree:?}")),
            Some(OrderIndex::Building(_)) => out.push(format!("{p} order not built")),
        }
        out.push(format!("{p} history {:?}", ns.hub.window()));
    }
    let mut requests = Vec::new();
    store
        .for_each_remembered(|p, id, r| {
            requests.push(format!("{p} request {id} {}", r.at));
            Ok::<(), ()>(())
        })
        .unwrap();
    requests.sort();
    out.extend(requests);
    out.join("\n")
}

fn recover(workers: usize, seed: u64) -> String {
    recover_from(workers, &records(seed, 4000), None).0
}

/// Replays `records` (the first thousand as a snapshot's part, the rest
/// as the log, with a new incarnation now and then) with `horizons` given
/// after the log's first `at` records; returns the state and the changes
/// not published.
fn recover_from(
    workers: usize,
    records: &Records,
    horizons: Option<(Horizons, usize)>,
) -> (String, u64) {
    let clock = Arc::new(ManualClock::new(1_050));
    let settings = Settings {
        watch_history_events: 500,
        ..Settings::default()
    };
    let store = MemoryStore::with_settings(clock, settings);
    store.begin_load();
    let skipped = std::thread::scope(|scope| {
        let mut replayer = Replayer::start(scope, &store, workers);
        let (state_part, changes) = records.split_at(1000);
        // A snapshot's part (publishing nothing), then the log's.
        for (p, mutations, request) in state_part.iter().cloned() {
            let request = request.map(|id| (id, remembered(1_000)));
            replayer.apply_commit(&p, mutations, request);
        }
        replayer.flush();
        store.begin_log_replay();
        let (tx, rx) = sync_channel(1);
        let mut horizons = horizons.map(|(h, at)| (Some(Arc::new(h)), at));
        if horizons.is_some() {
            replayer.begin_log(rx, false);
        }
        for (i, (p, mutations, request)) in changes.iter().cloned().enumerate() {
            if let Some((h, at)) = &mut horizons
                && *at == i
            {
                tx.send(h.take()).unwrap();
            }
            let request = request.map(|id| (id, remembered(1_000)));
            replayer.apply_commit(&p, mutations, request);
            if i % 700 == 0 {
                replayer.flush();
                store.start_incarnation(&p, store.version(&p) + 5);
            }
        }
        replayer.skipped()
    });
    store.end_load().run();
    (state(&store), skipped)
}

/// What the log's scan finds in `records`' log part for rings of 500.
fn horizons_of(records: &Records) -> Horizons {
    let mut last: HashMap<ProjectName, u64> = HashMap::new();
    for (p, mutations, _) in &records[1000..] {
        for m in mutations {
            let v = last.entry(p.clone()).or_default();
            *v = (*v).max(m.version);
        }
    }
    Horizons {
        through: last
            .into_iter()
            .filter(|(_, last)| *last > 500)
            .map(|(p, last)| (p, last - 500))
            .collect(),
        ring_bytes: 0,
    }
}

/// Changes that their project's ring drops by the end of the replay are
/// not published, and every ring (floor, versions, kinds, keys, values),
/// like the rest of the state, is what publishing everything leaves:
/// across new incarnations, clears and gaps in the versions, with the
/// horizons known from the log's start or only from part way.
#[test]
fn a_replay_skipping_what_the_rings_drop_leaves_the_same_histories() {
    for seed in 0..4 {
        let records = records_numbered(seed, 4000, true);
        let (full, none) = recover_from(1, &records, None);
        assert_eq!(none, 0);
        assert!(full.contains("history Some"), "{full}");
        for (workers, at) in [(0, 0), (1, 0), (3, 0), (1, 900), (3, 1500)] {
            let given = Some((horizons_of(&records), at));
            let (skipping, skipped) = recover_from(workers, &records, given);
            assert!(
                skipped > 500,
                "seed {seed}, {workers} workers: {skipped} skipped"
            );
            assert!(
                skipping == full,
                "seed {seed}, {workers} workers, at {at}:\n{skipping}\n--- publishing all:\n{full}"
            );
        }
        // The shared byte budget could bind (nothing was restored before
        // the log): nothing is skipped.
        let mut tight = horizons_of(&records);
        tight.ring_bytes = Settings::default().watch_history_total_bytes as u64 + 1;
        let (state, skipped) = recover_from(1, &records, Some((tight, 0)));
        assert_eq!(skipped, 0);
        assert!(state == full);
    }
}

/// The ordered indexes only, one line per project.
fn orders(store: &MemoryStore) -> Vec<String> {
    state(store)
        .lines()
        .filter(|l| l.contains(" order "))
        .map(str::to_string)
        .collect()
}

/// A snapshot's part in key order (sets of 2000 keys per project),
/// then random log records: the index each recovery builds from the
/// snapshot's order, with the log's changes replayed over it, is the
/// one a store applying the same records live keeps key by key.
#[test]
fn an_index_seeded_in_key_order_is_the_one_kept_live() {
    let clock = || Arc::new(ManualClock::new(1_050));
    let snapshot: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| {
            let sets = (0..2000u64)
                .map(|i| Versioned {
                    version: i + 1,
                    mutation: Mutation::Set {
                        key: format!("k{:04}", i * 3 / 2).into(),
                        value: vec![0x20, 1].into_boxed_slice(),
                        expires_at: None,
                    },
                })
                .collect::<Vec<_>>();
            (ProjectName::parse(p).unwrap(), sets)
        })
        .collect();
    for seed in 0..3 {
        // Fewer log changes than half the seed: it is kept.
        let log = records(seed, 300);
        let live = MemoryStore::with_settings(clock(), Settings::default());
        for (p, sets) in &snapshot {
            for chunk in sets.chunks(100) {
                live.apply_commit(p, chunk.to_vec(), None);
            }
        }
        for (p, mutations, _) in log.iter().cloned() {
            live.apply_commit(&p, mutations, None);
        }
        let want = orders(&live);
        for workers in [0, 1, 3] {
            let store = MemoryStore::with_settings(clock(), Settings::default());
            store.begin_load();
            std::thread::scope(|scope| {
                let mut replayer = Replayer::start(scope, &store, workers);
                for (p, sets) in &snapshot {
                    for chunk in sets.chunks(100) {
                        replayer.apply_commit(p, chunk.to_vec(), None);
                    }
                }
                replayer.flush();
                store.begin_log_replay();
                for (p, mutations, _) in log.iter().cloned() {
                    replayer.apply_commit(&p, mutations, None);
                }
            });
            let build = store.end_load();
            assert_eq!(build.presorted, 6000, "seed {seed}, {workers} workers");
            build.run();
            assert_eq!(orders(&store), want, "seed {seed}, {workers} workers");
            for p in ["a", "b", "c"] {
                store.index_keys(&ProjectName::parse(p).unwrap());
            }
        }
    }
}

#[test]
fn workers_leave_exactly_the_state_one_thread_leaves() {
    for seed in 0..4 {
        let alone = recover(0, seed);
        assert!(alone.contains("history Some"), "{alone}");
        for workers in [1, 3] {
            let parallel = recover(workers, seed);
            assert!(
                alone == parallel,
                "seed {seed}, {workers} workers:\n{parallel}\n--- one thread:\n{alone}"
            );
        }
    }
}
