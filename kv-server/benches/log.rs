//! Log benchmarks: durable set throughput per fsync policy and concurrency
//! (engine alone, and through gRPC with the SDK), restart time, and online
//! backup and restore.
//!
//! `cargo bench -p kv-server --bench log` (add a filter such as `append` to
//! run one group). Sizes follow the product's reference shape: 16-byte
//! keys, 100-byte values.

use std::{sync::Arc, time::Duration, time::Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kv_engine::{
    Backend, SystemClock,
    project::ProjectName,
    wal::{DurableStore, FsyncPolicy, LogOptions},
};
use kv_server::config::Config;
use prost::Message;
use prost_types::{Value, value::Kind};

const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];

fn value_100_bytes() -> Box<[u8]> {
    let v = Value {
        kind: Some(Kind::StringValue("v".repeat(98))),
    }
    .encode_to_vec();
    assert_eq!(v.len(), 100);
    v.into_boxed_slice()
}

fn key(i: u64) -> String {
    format!("key-{i:012}")
}

fn options(fsync: FsyncPolicy) -> LogOptions {
    LogOptions {
        fsync,
        ..LogOptions::default()
    }
}

fn policies() -> [(&'static str, FsyncPolicy); 3] {
    [
        ("always", FsyncPolicy::Always),
        (
            "interval-10ms",
            FsyncPolicy::Interval(Duration::from_millis(10)),
        ),
        ("never", FsyncPolicy::Never),
    ]
}

/// `iters` sets spread over `tasks` concurrent tasks; returns the elapsed time.
async fn concurrent_sets<F, Fut>(iters: u64, tasks: usize, set: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks as u64)
        .map(|t| {
            let set = set.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < iters {
                    set(i).await;
                    i += tasks as u64;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (name, policy) in policies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            DurableStore::open(dir.path(), options(policy), Arc::new(SystemClock)).unwrap(),
        );
        let project = ProjectName::parse("bench").unwrap();
        let value = value_100_bytes();
        for tasks in CONCURRENCY {
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let (store, project, value) = (store.clone(), project.clone(), value.clone());
                    concurrent_sets(iters, tasks, move |i| {
                        let (store, project, value) =
                            (store.clone(), project.clone(), value.clone());
                        async move {
                            store
                                .set(&project, &key(i % 100_000), value, None)
                                .await
                                .unwrap()
                        }
                    })
                });
            });
        }
        runtime.block_on(store.close()).unwrap();
    }
    group.finish();
}

fn grpc_set(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("grpc_set");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (name, policy) in policies() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            log: options(policy),
            ..Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (client, server) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let server = tokio::spawn(kv_server::server::run(config, listener, async {
                let _ = stopped.await;
            }));
            (kv_client::Client::connect(url).await.unwrap(), server)
        });
        let kv = client.project("bench");
        let value = "v".repeat(98);
        for tasks in CONCURRENCY {
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let (kv, value) = (kv.clone(), value.clone());
                    concurrent_sets(iters, tasks, move |i| {
                        let (kv, value) = (kv.clone(), value.clone());
                        async move { kv.set(&key(i % 100_000), &value).await.unwrap() }
                    })
                });
            });
        }
        drop(kv);
        drop(client);
        stop.send(()).unwrap();
        runtime.block_on(server).unwrap().unwrap();
    }
    group.finish();
}

/// A data directory holding `keys` entries, written once (overwritten
/// `passes` times so that a snapshot forms when `passes` > 2).
fn filled_dir(
    runtime: &tokio::runtime::Runtime,
    keys: u64,
    passes: u64,
    snapshots: bool,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        snapshot_min_log_bytes: if snapshots { 64 << 20 } else { u64::MAX },
        ..LogOptions::default()
    };
    let store = Arc::new(DurableStore::open(dir.path(), options, Arc::new(SystemClock)).unwrap());
    let project = ProjectName::parse("bench").unwrap();
    let value = value_100_bytes();
    let writer = store.clone();
    runtime.block_on(async {
        concurrent_sets(keys * passes, 256, move |i| {
            let (store, project, value) = (writer.clone(), project.clone(), value.clone());
            async move {
                store
                    .set(&project, &key(i % keys), value, None)
                    .await
                    .unwrap()
            }
        })
        .await;
        store.close().await.unwrap();
    });
    dir
}

fn restart(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("restart_1m");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    const KEYS: u64 = 1_000_000;
    for (name, passes, snapshots) in [("from_log", 1, false), ("from_snapshot", 3, true)] {
        let dir = filled_dir(&runtime, KEYS, passes, snapshots);
        group.bench_function(name, |b| {
            // Time the open (lock, load, replay) alone: closing and freeing
            // 1M entries is not part of a restart.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let store = DurableStore::open(
                        dir.path(),
                        options(FsyncPolicy::Always),
                        Arc::new(SystemClock),
                    )
                    .unwrap();
                    total += started.elapsed();
                    assert_eq!(store.memory().stored_entries() as u64, KEYS);
                    runtime.block_on(store.close()).unwrap();
                }
                total
            });
        });
    }
    group.finish();
}

/// Online backup and restore of 1M keys (a snapshot plus its log tail):
/// the backup's cut and stream into memory, and `restore` of that file
/// into a new data directory (checked twice, written, synced, opened).
fn backup(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("backup_1m");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    const KEYS: u64 = 1_000_000;
    let dir = filled_dir(&runtime, KEYS, 3, true);
    let store = DurableStore::open(
        dir.path(),
        options(FsyncPolicy::Never),
        Arc::new(SystemClock),
    )
    .unwrap();
    let take = || {
        let cut = runtime.block_on(store.backup_cut()).unwrap();
        let mut file = Vec::new();
        kv_server::backup::write_backup(&cut, 0, |chunk| {
            file.extend_from_slice(&chunk);
            true
        })
        .unwrap();
        file
    };
    let file = take();
    group.throughput(Throughput::Bytes(file.len() as u64));
    group.bench_function("backup", |b| b.iter(take));
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("kv.backup");
    std::fs::write(&path, &file).unwrap();
    group.bench_function("restore", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let target = work.path().join(format!("restored-{i}"));
                let started = Instant::now();
                runtime
                    .block_on(kv_server::backup::restore::restore(&path, &target))
                    .unwrap();
                total += started.elapsed();
                std::fs::remove_dir_all(&target).unwrap();
            }
            total
        });
    });
    group.finish();
    runtime.block_on(store.close()).unwrap();
}

criterion_group!(benches, append, grpc_set, restart, backup);
criterion_main!(benches);
