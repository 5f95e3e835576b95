//! Engine benchmarks for the calls beyond get/set: a List page from a big
//! project, and transactions evaluated by the writer (incr on one hot key,
//! compare-and-swap, batches).
//!
//! `cargo bench -p kv-server --bench engine` (add a filter such as `list`
//! to run one group). Keys are 16 bytes, values 100 bytes.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kv_server::{
    engine::{
        Backend, ListQuery, Mutation, Op, SystemClock, Txn,
        log::{DurableStore, FsyncPolicy, LogOptions},
        memory::MemoryStore,
    },
    project::ProjectName,
};
use prost::Message;
use prost_types::{Value, value::Kind};

fn value_100_bytes() -> Box<[u8]> {
    let v = Value {
        kind: Some(Kind::StringValue("v".repeat(98))),
    }
    .encode_to_vec();
    v.into_boxed_slice()
}

fn key(i: u64) -> String {
    format!("key-{i:012}")
}

/// A page of 1000 entries (values included, and keys only) from a project
/// of 1M keys, starting at a random point: the bound is 10 ms.
fn list(c: &mut Criterion) {
    const KEYS: u64 = 1_000_000;
    let store = MemoryStore::new();
    let project = ProjectName::parse("big").unwrap();
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
    let mut group = c.benchmark_group("list_page_1000_of_1m");
    group.throughput(Throughput::Elements(1000));
    for keys_only in [false, true] {
        let name = if keys_only { "keys_only" } else { "values" };
        let mut at = 0u64;
        group.bench_function(name, |b| {
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
                                            ttl: kv_server::engine::Ttl::Never,
                                        },
                                        _ => Op::Incr {
                                            key: "hot".into(),
                                            delta: 1.0,
                                            ttl_ms: None,
                                        },
                                    };
                                    store.write(&project, Txn::op(op)).await.unwrap();
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

criterion_group!(benches, list, transactions);
criterion_main!(benches);
