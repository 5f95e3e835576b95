//! Engine microbenchmarks: reads and sets on a 1M-key project (in memory
//! and through the durable store), contention across the map's shards,
//! the expiry sweep, a List page from a big project, and transactions
//! evaluated by the writer (incr on one hot key against plain sets).
//!
//! `cargo bench -p kv-engine --bench engine` runs everything (a few
//! minutes on 2 cores); add a filter to run one group, e.g. `-- ops/`,
//! `-- ops_durable`, `-- contention`, `-- expiry`, `-- list`, `-- txn`.
//! Keys are 16 bytes, values 100 bytes (a canonical encoded
//! `google.protobuf.Value` string), as in `log.rs`. Big stores are built
//! lazily, the first time a benchmark of their group actually runs, so a
//! filtered run does not pay for the others' setup.
//!
//! Fsync per policy (always / interval / never) is measured by `log.rs`
//! (`append/<policy>/<writers>`), not here.

use std::{
    hint::black_box,
    sync::{Arc, Barrier, OnceLock},
    time::{Duration, Instant},
};

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use kv_engine::{
    Backend, Clock, Deadline, ListQuery, ManualClock, Mutation, Op, SystemClock, Ttl, Txn,
    memory::MemoryStore,
    project::ProjectName,
    wal::{DurableStore, FsyncPolicy, LogOptions},
};
use prost::Message;
use prost_types::{Value, value::Kind};

fn value_100_bytes() -> Box<[u8]> {
    let v = Value {
        kind: Some(Kind::StringValue("v".repeat(98))),
    }
    .encode_to_vec();
    assert_eq!(v.len(), 100);
    v.into_boxed_slice()
}

/// A 16-byte key.
fn key(i: u64) -> String {
    format!("key-{i:012}")
}

/// Keys in the big projects.
const KEYS: u64 = 1_000_000;

/// The TTL of the big projects' TTL'd keys: far longer than a run, so
/// nothing expires mid-benchmark and the `ttl` variants measure the cost
/// of carrying (and, for sets, moving) a deadline, not of expiring.
const TTL_MS: u64 = 60 * 60 * 1000;

/// Due deadlines taken per expiry step, as the server's expiry task does
/// (its `PURGE_BATCH`, private to the engine).
const EXPIRY_BATCH: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store holding two projects of 1M keys each: `plain` without TTLs and
/// `ttl` with every key under a deadline. The key strings are built once,
/// so formatting a key is never part of a measured operation.
struct Fixture<S> {
    store: S,
    plain: ProjectName,
    ttl: ProjectName,
    keys: Vec<String>,
    /// Keys that are in neither project.
    misses: Vec<String>,
    /// Keeps the durable store's data directory alive.
    _dir: Option<tempfile::TempDir>,
}

fn fixture_keys() -> (Vec<String>, Vec<String>) {
    let keys = (0..KEYS).map(key).collect();
    // Same length and shape as the stored keys, never stored.
    let misses = (0..1 << 16).map(|i| format!("mis-{i:012}")).collect();
    (keys, misses)
}

/// The in-memory store, filled directly by `apply` (no transaction
/// evaluation: the fastest way to build it).
fn memory_fixture() -> Fixture<MemoryStore> {
    let started = Instant::now();
    let store = MemoryStore::new();
    let (keys, misses) = fixture_keys();
    let plain = ProjectName::parse("plain").unwrap();
    let ttl = ProjectName::parse("ttl").unwrap();
    let value = value_100_bytes();
    let deadline = SystemClock.now_ms() + TTL_MS;
    for (project, expires_at) in [(&plain, None), (&ttl, Deadline::at(deadline))] {
        for k in &keys {
            store.apply(
                project,
                Mutation::Set {
                    key: k.as_str().into(),
                    value: value.clone(),
                    expires_at,
                },
            );
        }
    }
    eprintln!("memory fixture: 2 x 1M keys in {:?}", started.elapsed());
    Fixture {
        store,
        plain,
        ttl,
        keys,
        misses,
        _dir: None,
    }
}

/// A transaction of many sets: one submission to the log writer each, so
/// filling a durable store (or giving it keys to expire) takes seconds,
/// not the minutes one write at a time would.
fn set_many(keys: impl Iterator<Item = String>, value: &[u8], ttl: Ttl) -> Txn {
    Txn {
        ops: keys
            .map(|k| Op::Set {
                key: k.into(),
                value: value.into(),
                ttl,
            })
            .collect(),
        ..Txn::op(Op::Clear)
    }
}

/// The same two projects in a durable store (fsync never: the point is
/// the engine, `log.rs` measures the policies).
fn durable_fixture(runtime: &tokio::runtime::Runtime) -> Fixture<DurableStore> {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let store = DurableStore::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let (keys, misses) = fixture_keys();
    let plain = ProjectName::parse("plain").unwrap();
    let ttl = ProjectName::parse("ttl").unwrap();
    let value = value_100_bytes();
    runtime.block_on(async {
        for (project, ttl) in [(&plain, Ttl::Never), (&ttl, Ttl::After(TTL_MS))] {
            for chunk in keys.chunks(1000) {
                let txn = set_many(chunk.iter().cloned(), &value, ttl);
                store.submit(project, txn).await.unwrap();
            }
        }
    });
    assert_eq!(store.memory().stored_entries() as u64, 2 * KEYS);
    eprintln!("durable fixture: 2 x 1M keys in {:?}", started.elapsed());
    Fixture {
        store,
        plain,
        ttl,
        keys,
        misses,
        _dir: Some(dir),
    }
}

fn variants<S>(fx: &Fixture<S>) -> [(&'static str, &ProjectName, Option<u64>); 2] {
    [("no_ttl", &fx.plain, None), ("ttl", &fx.ttl, Some(TTL_MS))]
}

/// Per-operation time of get, has and set of a random existing key, each
/// on the project without TTLs and the one with, through the `Backend`
/// calls the service makes. `reads` adds has and get_miss (the durable
/// store serves reads from the same memory, so they would repeat).
fn ops_on<B: Backend>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    fixture: &OnceLock<Fixture<B>>,
    build: impl Fn() -> Fixture<B>,
    reads: bool,
) {
    let fx = || fixture.get_or_init(&build);
    for variant in 0..2 {
        let name = ["no_ttl", "ttl"][variant];
        group.bench_function(BenchmarkId::new("get", name), |b| {
            let fx = fx();
            let (_, project, _) = variants(fx)[variant];
            let mut rng = fastrand::Rng::with_seed(1);
            b.to_async(runtime).iter(|| {
                let k = &fx.keys[rng.usize(..KEYS as usize)];
                async move {
                    let entry = fx.store.get(project, k).await.unwrap();
                    assert!(entry.is_some());
                    entry
                }
            });
        });
        if reads {
            group.bench_function(BenchmarkId::new("has", name), |b| {
                let fx = fx();
                let (_, project, _) = variants(fx)[variant];
                let mut rng = fastrand::Rng::with_seed(2);
                b.to_async(runtime).iter(|| {
                    let k = &fx.keys[rng.usize(..KEYS as usize)];
                    async move { assert!(fx.store.has(project, k).await.unwrap()) }
                });
            });
        }
        group.bench_function(BenchmarkId::new("set", name), |b| {
            let fx = fx();
            let (_, project, ttl_ms) = variants(fx)[variant];
            let value = value_100_bytes();
            let mut rng = fastrand::Rng::with_seed(3);
            b.to_async(runtime).iter(|| {
                // Overwrites an existing key (the map neither grows nor
                // shrinks over the run). The value copy stands for the
                // buffer a decoded request hands over.
                let k = &fx.keys[rng.usize(..KEYS as usize)];
                let value = value.clone();
                async move { fx.store.set(project, k, value, ttl_ms).await.unwrap() }
            });
        });
    }
    if reads {
        group.bench_function("get_miss", |b| {
            let fx = fx();
            let mut rng = fastrand::Rng::with_seed(4);
            b.to_async(runtime).iter(|| {
                let k = &fx.misses[rng.usize(..fx.misses.len())];
                async move { assert!(fx.store.get(&fx.plain, k).await.unwrap().is_none()) }
            });
        });
    }
}

/// `ops/*` on the in-memory store, then `contention/*` on the same store.
fn memory_ops(c: &mut Criterion) {
    let runtime = runtime();
    let fixture = OnceLock::new();
    let mut group = c.benchmark_group("ops");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    ops_on(&mut group, &runtime, &fixture, memory_fixture, true);
    group.finish();
    contention(c, &fixture);
}

/// `ops_durable/*`: the durable store holding the same data. Reads are
/// served by its memory (the figures should match `ops/get`); a set from
/// one caller goes through the log writer thread and back, one at a time.
fn durable_ops(c: &mut Criterion) {
    let runtime = runtime();
    let fixture = OnceLock::new();
    let mut group = c.benchmark_group("ops_durable");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    ops_on(
        &mut group,
        &runtime,
        &fixture,
        || durable_fixture(&runtime),
        false,
    );
    group.finish();
    if let Some(fx) = fixture.get() {
        runtime.block_on(fx.store.close()).unwrap();
    }
}

/// `threads` OS threads doing `iters` operations between them on the
/// no-TTL project, one write in `write_every` (0: reads only), either all
/// on one key or on random keys of the 1M. Returns the wall time from a
/// common start to the last thread's end, so criterion's per-iteration
/// figure is the inverse of the total throughput.
fn contend(
    fx: &Fixture<MemoryStore>,
    threads: usize,
    one_key: bool,
    write_every: u64,
    iters: u64,
) -> Duration {
    // Threads are spawned before the start line (the barrier), so their
    // start-up is not timed.
    let start_line = Barrier::new(threads + 1);
    let value = value_100_bytes();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (start_line, value) = (&start_line, &value);
            let ops = iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(100 + t as u64);
                start_line.wait();
                for _ in 0..ops {
                    let k = if one_key {
                        &fx.keys[0]
                    } else {
                        &fx.keys[rng.usize(..KEYS as usize)]
                    };
                    if write_every != 0 && rng.u64(..).is_multiple_of(write_every) {
                        // What `Backend::set` on the memory store does,
                        // without the async wrapper.
                        let set = Op::Set {
                            key: k.as_str().into(),
                            value: value.clone(),
                            ttl: Ttl::Never,
                        };
                        black_box(fx.store.write_now(&fx.plain, Txn::op(set)).unwrap());
                    } else {
                        black_box(fx.store.entry_now(&fx.plain, k).unwrap());
                    }
                }
            });
        }
        start_line.wait();
        let started = Instant::now();
        // Leaving the scope joins every thread.
        started
    })
    .elapsed()
}

/// `contention/{one_key,spread}/<threads>`: 90% gets, 10% sets from 1, 2
/// or 4 threads, on one hot key (one shard of the project's map) or spread
/// over the 1M keys; `contention_get_only/*` the same with reads alone.
/// Throughput is the total over all threads. The machine has 2 cores, so
/// 4 threads also measure oversubscription.
///
/// What the numbers hold besides the shard: every read and write looks the
/// project up in the store's project map and clones the project's `Arc`
/// (one shared cache line for all threads of a project), and every write
/// takes the store's write lock and the project's consistency lock, so
/// writes never run in parallel whatever their keys.
fn contention(c: &mut Criterion, fixture: &OnceLock<Fixture<MemoryStore>>) {
    for (group_name, write_every) in [("contention", 10), ("contention_get_only", 0)] {
        let mut group = c.benchmark_group(group_name);
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20)
            .throughput(Throughput::Elements(1));
        for (name, one_key) in [("one_key", true), ("spread", false)] {
            for threads in [1usize, 2, 4] {
                group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                    let fx = fixture.get_or_init(memory_fixture);
                    b.iter_custom(|iters| contend(fx, threads, one_key, write_every, iters));
                });
            }
        }
        group.finish();
    }
}

/// `expiry/sweep/<n>` and `expiry_durable/sweep/<n>`: the time for the
/// expiry path to reclaim `n` keys that are all due, called the way the
/// server's expiry task calls it (`Backend::expire_due` in steps of 1024
/// until a step comes back short). Criterion's time is per sweep; its
/// throughput (keys/s) gives the per-key cost. The store holds only the
/// keys being expired.
///
/// The clock is a `ManualClock`: each iteration sets `n` keys due 1 ms
/// later (untimed), moves the clock 1 ms, and times the sweep. In the
/// durable store every step is logged, versioned and applied by the log
/// writer (fsync never), so it costs what a real expiry does.
fn expiry(c: &mut Criterion) {
    const SIZES: [(&str, u64); 2] = [("10k", 10_000), ("100k", 100_000)];
    let runtime = runtime();
    let value = value_100_bytes();
    let project = ProjectName::parse("exp").unwrap();

    let mut group = c.benchmark_group("expiry");
    // Flat sampling: the same few sweeps per sample, since each one needs
    // an untimed refill as large as what it measures. For 100k, criterion
    // warns that 10 samples do not fit the target time: it runs them
    // anyway (one sweep each), and a longer target would only make the run
    // longer on a quiet machine.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = MemoryStore::with_clock(clock.clone());
    for (name, n) in SIZES {
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new("sweep", name), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let (store, clock, value, project) = (&store, &clock, &value, &project);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let due_at = clock.now_ms() + 1;
                        for i in 0..n {
                            store.apply(
                                project,
                                Mutation::Set {
                                    key: key(i).into(),
                                    value: value.clone(),
                                    expires_at: Deadline::at(due_at),
                                },
                            );
                        }
                        clock.advance(1);
                        let started = Instant::now();
                        while store.expire_due(EXPIRY_BATCH).await == EXPIRY_BATCH {}
                        total += started.elapsed();
                        assert_eq!(store.stored_entries(), 0);
                    }
                    total
                }
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("expiry_durable");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    // Opened lazily: nothing to open when the filter skips this group.
    let durable = OnceLock::new();
    let open = || DurableStore::open(dir.path(), options.clone(), clock.clone()).unwrap();
    for (name, n) in SIZES {
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new("sweep", name), |b| {
            let store: &DurableStore = durable.get_or_init(&open);
            b.to_async(&runtime).iter_custom(|iters| {
                let (clock, value, project) = (&clock, &value, &project);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for chunk in 0..n / 1000 {
                            let keys = (chunk * 1000..(chunk + 1) * 1000).map(key);
                            let txn = set_many(keys, value, Ttl::After(1));
                            store.submit(project, txn).await.unwrap();
                        }
                        clock.advance(1);
                        let started = Instant::now();
                        while store.expire_due(EXPIRY_BATCH).await == EXPIRY_BATCH {}
                        total += started.elapsed();
                        assert_eq!(store.memory().stored_entries(), 0);
                    }
                    total
                }
            });
        });
    }
    group.finish();
    if let Some(store) = durable.get() {
        runtime.block_on(store.close()).unwrap();
    }
}

/// A page of 1000 entries (values included, and keys only) from a project
/// of 1M keys, starting at a random point: the bound is 10 ms.
fn list(c: &mut Criterion) {
    // Built on first use, so a run filtered to other groups skips it.
    let store = OnceLock::new();
    let project = ProjectName::parse("big").unwrap();
    let build = || {
        let store = MemoryStore::new();
        let value = value_100_bytes();
        for i in 0..KEYS {
            store.apply(
                &project,
                Mutation::Set {
                    key: key(i).into(),
                    value: value.clone(),
                    expires_at: None,
                },
            );
        }
        store
    };
    let mut group = c.benchmark_group("list_page_1000_of_1m");
    group.throughput(Throughput::Elements(1000));
    for keys_only in [false, true] {
        let name = if keys_only { "keys_only" } else { "values" };
        let mut at = 0u64;
        group.bench_function(name, |b| {
            let store = store.get_or_init(build);
            b.iter(|| {
                // A different page each time (a stride through the key
                // space), so no page is served from a warm cache alone.
                at = (at + 7_919 * 1_000) % (KEYS - 1_000);
                let query = ListQuery {
                    start_after: key(at),
                    limit: 1000,
                    keys_only,
                    ..ListQuery::default()
                };
                let page = store.list_now(&project, &query);
                assert_eq!(page.entries.len(), 1000);
                page
            });
        });
    }
    group.finish();
}

/// Writes through the durable store (fsync never) from `tasks` concurrent
/// callers: plain sets against incrs of one hot key, the case the writer's
/// in-batch overlay exists for.
fn transactions(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let store = Arc::new(DurableStore::open(dir.path(), options, Arc::new(SystemClock)).unwrap());
    let project = ProjectName::parse("p").unwrap();
    let mut group = c.benchmark_group("txn_fsync_never");
    for tasks in [1usize, 64] {
        group.throughput(Throughput::Elements(1));
        for kind in ["set", "incr_hot_key"] {
            group.bench_with_input(BenchmarkId::new(kind, tasks), &tasks, |b, &tasks| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let store = Arc::clone(&store);
                    let project = project.clone();
                    async move {
                        let started = std::time::Instant::now();
                        let per_task = iters.div_ceil(tasks as u64);
                        let mut handles = Vec::new();
                        for t in 0..tasks as u64 {
                            let store = Arc::clone(&store);
                            let project = project.clone();
                            handles.push(tokio::spawn(async move {
                                for i in 0..per_task {
                                    let op = match kind {
                                        "set" => Op::Set {
                                            key: key(t * per_task + i).into(),
                                            value: value_100_bytes(),
                                            ttl: kv_engine::Ttl::Never,
                                        },
                                        _ => Op::Incr {
                                            key: "hot".into(),
                                            delta: 1.0,
                                            ttl_ms: None,
                                        },
                                    };
                                    store.submit(&project, Txn::op(op)).await.unwrap();
                                }
                            }));
                        }
                        for h in handles {
                            h.await.unwrap();
                        }
                        started.elapsed()
                    }
                });
            });
        }
    }
    group.finish();
    runtime.block_on(store.close()).unwrap();
}

criterion_group!(benches, list, transactions, memory_ops, durable_ops, expiry);
criterion_main!(benches);
