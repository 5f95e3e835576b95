//! What an idle project costs the store: heap bytes per project of one
//! small key, counted by the server's own counting allocator (requested
//! bytes, before the allocator's size classes), with and without the one
//! change event its history keeps.
//!
//! Run with `--nocapture` for the figures (BENCHMARKS.md, "Memory per
//! project and many small projects").

use std::{alloc::System, sync::Arc};

use kv_alloc::Counting;
use kv_engine::{Mutation, Settings, SystemClock, memory::MemoryStore, project::ProjectName};

#[global_allocator]
static ALLOCATOR: Counting<System> = Counting::new(System);

const PROJECTS: usize = 20_000;

/// A 16-byte key.
const KEY: &str = "k000000000000001";

/// The string "abcdef" as an encoded google.protobuf.Value: 8 bytes.
const VALUE: [u8; 8] = [0x1a, 0x06, b'a', b'b', b'c', b'd', b'e', b'f'];

fn set(store: &MemoryStore, project: usize, key: &str) {
    // Parsed per call, as the server parses each request's project: the
    // store keeps the first one it sees.
    let project = ProjectName::parse(&format!("bench-{project}")).unwrap();
    let set = Mutation::Set {
        key: key.into(),
        value: VALUE.to_vec().into(),
        expires_at: None,
    };
    store.apply(&project, set);
}

/// Heap bytes per project: of creating `PROJECTS` projects of one key,
/// then of a second key in each.
fn per_project(settings: Settings) -> (usize, usize) {
    let store = MemoryStore::with_settings(Arc::new(SystemClock), settings);
    // The first project sizes what every project shares (the expiry
    // index, the projects map's first table).
    set(&store, PROJECTS, KEY);
    let start = ALLOCATOR.allocated();
    for p in 0..PROJECTS {
        set(&store, p, KEY);
    }
    let one = ALLOCATOR.allocated();
    for p in 0..PROJECTS {
        set(&store, p, "k000000000000002");
    }
    let two = ALLOCATOR.allocated();
    assert_eq!(store.stored_entries(), 2 * PROJECTS + 1);
    ((one - start) / PROJECTS, (two - one) / PROJECTS)
}

/// Heap bytes one value made by `make` holds (of a thousand kept).
fn allocated_by<T>(make: impl Fn() -> T) -> usize {
    let mut kept = Vec::with_capacity(1000);
    let start = ALLOCATOR.allocated();
    for _ in 0..1000 {
        kept.push(make());
    }
    (ALLOCATOR.allocated() - start) / 1000
}

#[test]
fn an_idle_project_of_one_small_key_costs_a_few_hundred_bytes() {
    let (with_history, second_key) = per_project(Settings::default());
    // A shared history budget of nothing: every ring drops its event at
    // once, leaving what the project costs without it.
    let quiet = Settings {
        watch_history_total_bytes: 0,
        ..Settings::default()
    };
    let (without_history, _) = per_project(quiet);
    eprintln!(
        "heap per project of one key: {with_history} B ({without_history} B without its history \
         event); a second key in each: {second_key} B"
    );
    eprintln!(
        "for reference: a watch channel {} B, an empty sharded map {} B",
        allocated_by(|| tokio::sync::watch::Sender::new(0u64)),
        allocated_by(dashmap::DashMap::<Arc<str>, u64>::new),
    );
    // Before namespaces started small, a sharded map (a cache-line-padded
    // lock per shard and a table), two watch channels, an ordered-index
    // node and an empty request table came with every project (2,804 B).
    // Then (600 B) the history was a separate allocation, the project name
    // another, and the index, its build flag and the request table were
    // inline. Now (502 B: 256 namespace with its inline history, 104
    // history event, 48 list slot, 40 key and value, about 54 the
    // projects map's slot with the name inline) only what is used is made.
    assert!(
        with_history <= 540,
        "an idle project costs {with_history} B of heap"
    );
    assert!(without_history < with_history);
}
