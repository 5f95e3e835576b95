//! The write queue through the whole store: one project filling its share
//! of the queue with large batches does not hold back another project's
//! single writes, and each project's writes are logged in submit order.

use std::sync::Arc;

use super::{
    DurableStore, LogOptions,
    codec::{self, FrameReader, Record},
};
use crate::{
    Backend, EngineError, Mutation, Op, QueueFull, SystemClock, Ttl, Txn, project::ProjectName,
};

/// A `google.protobuf.Value` string of `len` bytes, encoded.
fn string_value(len: usize) -> Box<[u8]> {
    let mut out = vec![0x1a];
    let mut n = len;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.resize(out.len() + len, b'x');
    out.into()
}

fn set(key: &str, len: usize) -> Txn {
    Txn::op(Op::Set {
        key: key.into(),
        value: string_value(len),
        ttl: Ttl::Never,
    })
}

/// Every logged set, as (project, key), in log order.
fn logged_sets(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut sets = Vec::new();
    for path in segments {
        let file = std::fs::File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let mut frames =
            FrameReader::open(std::io::BufReader::new(file), len, codec::LOG_MAGIC).unwrap();
        let mut payload = Vec::new();
        while frames.next_into(&mut payload).unwrap() {
            if let Record::Txn {
                project, mutations, ..
            } = codec::decode_payload(&payload).unwrap()
            {
                for m in mutations {
                    if let Mutation::Set { key, .. } = m.mutation {
                        sets.push((project.as_str().to_string(), key.to_string()));
                    }
                }
            }
        }
    }
    sets
}

#[tokio::test]
async fn a_full_queue_share_of_large_batches_does_not_hold_back_other_projects() {
    const VALUE: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        // One project may queue 2 MiB: ten writes of 200 KB.
        max_queued_bytes: 4 << 20,
        snapshot_min_log_bytes: u64::MAX,
        ..LogOptions::default()
    };
    let store = DurableStore::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let (a, b) = (
        ProjectName::parse("a").unwrap(),
        ProjectName::parse("b").unwrap(),
    );

    // The writer is held while the queue fills, so what it finds is known.
    store.queue.pause(true);
    let mut a_writes = Vec::new();
    for i in 0..10 {
        a_writes.push(store.submit(&a, set(&format!("a{i:02}"), VALUE)));
    }
    let refused = store.submit(&a, set("a-refused", VALUE)).await.unwrap_err();
    assert!(
        matches!(
            &refused,
            EngineError::QueueFull(QueueFull::ProjectBytes { limit, .. }) if *limit == 2 << 20
        ),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("its share is at most 2097152 bytes")
    );
    assert_eq!(store.write_queue().writes, 10);
    assert!(store.write_queue().bytes >= 10 * VALUE);

    // b is admitted although a holds its whole share.
    let b_writes: Vec<_> = (0..3)
        .map(|i| store.submit(&b, set(&format!("b{i}"), 10)))
        .collect();
    store.queue.pause(false);
    for write in a_writes.into_iter().chain(b_writes) {
        write.await.unwrap();
    }
    assert_eq!(store.write_queue(), super::QueueStats::default());
    store.close().await.unwrap();

    let sets = logged_sets(dir.path());
    let order: Vec<&str> = sets.iter().map(|(_, k)| k.as_str()).collect();
    // a's first batch, then b's three writes (one turn), then the rest of a:
    // in arrival order b would have come after all ten of a's.
    assert_eq!(
        &order[..5],
        ["a00", "b0", "b1", "b2", "a01"],
        "log order: {order:?}"
    );
    let a_keys: Vec<_> = sets
        .iter()
        .filter(|(p, _)| p == "a")
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(
        a_keys,
        (0..10).map(|i| format!("a{i:02}")).collect::<Vec<_>>(),
        "a's writes are logged in submit order"
    );
    assert!(!order.contains(&"a-refused"));
}

/// A client write to the project of a mass expiry waits behind the few
/// expiry steps in flight, not behind the whole expiry: it is answered
/// while most of the 100 000 due keys are still there.
#[tokio::test]
async fn a_client_write_is_answered_during_a_mass_expiry() {
    const KEYS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: super::FsyncPolicy::Never,
        snapshot_min_log_bytes: u64::MAX,
        ..LogOptions::default()
    };
    let clock = Arc::new(crate::ManualClock::new(1_000));
    let store = Arc::new(DurableStore::open(dir.path(), options, clock.clone()).unwrap());
    let p = ProjectName::parse("p").unwrap();
    for chunk in 0..KEYS / 1000 {
        let ops = (0..1000)
            .map(|i| Op::Set {
                key: format!("k{:06}", chunk * 1000 + i).into(),
                value: string_value(8),
                ttl: Ttl::After(10),
            })
            .collect();
        let txn = Txn {
            ops,
            ..Txn::op(Op::Clear)
        };
        store.submit(&p, txn).await.unwrap();
    }
    assert_eq!(store.memory().stored_entries(), KEYS);
    clock.advance(20);

    let task =
        crate::memory::ExpiryTask::spawn(Arc::clone(&store), std::time::Duration::from_millis(1));
    let started = std::time::Instant::now();
    while store.memory().stored_entries() == KEYS {
        assert!(started.elapsed().as_secs() < 30, "the expiry never began");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.submit(&p, set("client", 8)),
    )
    .await
    .expect("the client write is answered")
    .unwrap();
    let left = store.memory().stored_entries();
    assert!(
        left > KEYS / 2,
        "the client write waited for the expiry: {left} entries left"
    );
    while store.memory().stored_entries() > 1 {
        assert!(started.elapsed().as_secs() < 120, "the expiry never ended");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    task.stop().await;
    assert!(store.has(&p, "client").await.unwrap());
    assert_eq!(store.memory().stored_entries(), 1);
    store.close().await.unwrap();
}
