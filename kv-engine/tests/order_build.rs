//! The ordered key index after a restart: a large project's index is built
//! in the background once the store is open. Lists issued at once wait for
//! it and show exactly the project's keys at their page's version, while
//! sets, deletes and a clear go on; and gets and writes do not wait.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use kv_engine::{
    Backend, ListQuery, SystemClock,
    project::ProjectName,
    wal::{DurableStore, FsyncPolicy, LogOptions},
};

const KEYS: u64 = 100_000;

fn key(i: u64) -> String {
    format!("key-{i:08}")
}

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    }
}

fn value() -> Box<[u8]> {
    // A protobuf Value holding `true`.
    vec![0x20, 0x01].into_boxed_slice()
}

/// What one version changed.
enum Op {
    Insert(String),
    Remove(String),
    Clear,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_right_after_a_restart_see_exactly_the_keys_of_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let project = ProjectName::parse("big").unwrap();
    {
        let store =
            Arc::new(DurableStore::open(dir.path(), options(), Arc::new(SystemClock)).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16 {
            let (store, project) = (Arc::clone(&store), project.clone());
            tasks.push(tokio::spawn(async move {
                for i in (t..KEYS).step_by(16) {
                    // Even keys only: odd ones are inserted after the restart.
                    store
                        .set(&project, &key(i * 2), value(), None)
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        store.close().await.unwrap();
    }

    let store = Arc::new(DurableStore::open(dir.path(), options(), Arc::new(SystemClock)).unwrap());
    assert_eq!(store.recovered().index_deferred_keys, KEYS);
    let loaded_version = store.memory().version(&project);
    let done = Arc::new(AtomicBool::new(false));
    let lister = {
        let (store, project, done) = (Arc::clone(&store), project.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let query = ListQuery {
                limit: 10_000_000,
                keys_only: true,
                ..ListQuery::default()
            };
            let mut pages = Vec::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = store.list(&project, &query).await.unwrap();
                assert!(!page.more);
                let keys: Vec<String> = page.entries.iter().map(|(k, _)| k.to_string()).collect();
                pages.push((page.version, keys));
                if finished {
                    return pages;
                }
            }
        })
    };

    // One writer, so the version after each write is that write's.
    let mut ops = Vec::new();
    for i in 0..3_000u64 {
        let (target, op) = match i % 3 {
            0 => (key(i * 2 + 1), "insert"),
            1 => (key(i * 7 % (KEYS * 2)), "delete"),
            _ => (key(i * 2), "get"),
        };
        match op {
            "insert" => {
                store.set(&project, &target, value(), None).await.unwrap();
                ops.push((store.memory().version(&project), Op::Insert(target)));
            }
            "delete" => {
                store.delete(&project, &target).await.unwrap();
                ops.push((store.memory().version(&project), Op::Remove(target)));
            }
            _ => {
                let _ = store.get(&project, &target).await.unwrap();
            }
        }
        if i == 2_000 {
            store.clear(&project).await.unwrap();
            ops.push((store.memory().version(&project), Op::Clear));
        }
    }
    done.store(true, Ordering::Release);
    let pages = lister.await.unwrap();

    let mut model: BTreeSet<String> = (0..KEYS).map(|i| key(i * 2)).collect();
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
    store.close().await.unwrap();
}
