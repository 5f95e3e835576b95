//! Snapshots in key order: each project's entries are written sorted, so a
//! load builds the ordered index from them without sorting; the log
//! replayed after the snapshot is applied over it, and a snapshot of an
//! older build (keys in hash order) still loads a correct index.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use super::{
    DurableStore, FsyncPolicy, LogOptions,
    codec::{self, FrameReader, Record},
    dir::{Kind, parse_name, snapshot_name},
    frame::{FILE_HEADER_LEN, SNAPSHOT_MAGIC, frame},
};
use crate::{Backend, ManualClock, Mutation, Quota, project::ProjectName, wal::AdminChange};

fn open(dir: &Path, clock: &Arc<ManualClock>) -> DurableStore {
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    DurableStore::open(dir, options, clock.clone()).expect("opens")
}

fn value(i: u64) -> Box<[u8]> {
    // A protobuf Value holding the number `i`.
    let mut v = vec![0x11];
    v.extend_from_slice(&(i as f64).to_le_bytes());
    v.into_boxed_slice()
}

fn snapshot_path(dir: &Path) -> std::path::PathBuf {
    let seqs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_name(e.unwrap().file_name().to_str()?))
        .filter(|(_, k)| *k == Kind::Snapshot)
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(seqs.len(), 1, "one snapshot");
    dir.join(snapshot_name(seqs[0]))
}

/// The entry records of the snapshot in `dir`, as (project, key) in file
/// order, and the file's frames.
fn snapshot_entries(dir: &Path) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let bytes = std::fs::read(snapshot_path(dir)).unwrap();
    let mut reader = FrameReader::open(&bytes[..], bytes.len() as u64, SNAPSHOT_MAGIC).unwrap();
    let (mut entries, mut payloads) = (Vec::new(), Vec::new());
    let mut payload = Vec::new();
    while reader.next_into(&mut payload).unwrap() {
        if let Record::Txn {
            project, mutations, ..
        } = codec::decode_payload(&payload).unwrap()
            && let [m] = &mutations[..]
            && let Mutation::Set { key, .. } = &m.mutation
        {
            entries.push((project.to_string(), key.to_string()));
        }
        payloads.push(payload.clone());
    }
    (entries, payloads)
}

/// Writes `big` (3000 keys, in an order unrelated to theirs) and `small`
/// (5 keys), deletes a project (which writes a snapshot at once), then,
/// reopened, changes `big` in the log after the snapshot; returns the expected keys
/// of `big` with their values' numbers.
async fn snapshot_then_log(dir: &Path, clock: &Arc<ManualClock>) -> BTreeMap<String, u64> {
    let (big, small) = (
        ProjectName::parse("big").unwrap(),
        ProjectName::parse("small").unwrap(),
    );
    let store = open(dir, clock);
    let mut expected = BTreeMap::new();
    // A multiplicative walk over 0..3000: keys arrive far from their order.
    for i in 0..3000u64 {
        let n = i * 1543 % 3000;
        let key = format!("k{n:05}");
        store.set(&big, &key, value(n), None).await.unwrap();
        expected.insert(key, n);
    }
    for n in [4u64, 1, 3, 0, 2] {
        store
            .set(&small, &format!("s{n}"), value(n), None)
            .await
            .unwrap();
    }
    let gone = ProjectName::parse("gone").unwrap();
    let create = AdminChange::CreateProject {
        project: gone.clone(),
        quota: Quota::default(),
    };
    store.admin(create).await.unwrap();
    store
        .admin(AdminChange::DeleteProject { project: gone })
        .await
        .unwrap();
    // Closing waits for the snapshot: what follows is in the log only.
    store.close().await.unwrap();
    drop(store);
    let store = open(dir, clock);
    assert_eq!(store.recovered().snapshot_entries, 3005);
    // After the snapshot: new keys, overwrites and deletions in the log.
    for n in (0..3000u64).step_by(7) {
        let key = format!("k{n:05}");
        store.delete(&big, &key).await.unwrap();
        expected.remove(&key);
    }
    for n in (1..3000u64).step_by(11) {
        let key = format!("k{n:05}");
        store
            .set(&big, &key, value(n + 10_000), None)
            .await
            .unwrap();
        expected.insert(key, n + 10_000);
    }
    for n in 3000..3100u64 {
        let key = format!("k{n:05}");
        store.set(&big, &key, value(n), None).await.unwrap();
        expected.insert(key, n);
    }
    store.close().await.unwrap();
    expected
}

/// Reopens `dir` and checks `big`'s index and values against `expected`;
/// returns what the recovery found.
async fn reopen_and_check(
    dir: &Path,
    clock: &Arc<ManualClock>,
    expected: &BTreeMap<String, u64>,
) -> super::Recovered {
    let big = ProjectName::parse("big").unwrap();
    let store = open(dir, clock);
    let recovered = store.recovered().clone();
    assert_eq!(recovered.snapshot_entries, 3005);
    let keys = store.memory().index_keys(&big);
    let want: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(keys, want);
    for (key, &n) in expected {
        let got = store.get(&big, key).await.unwrap().map(|e| e.value);
        assert_eq!(got.as_deref(), Some(&*value(n)), "{key}");
    }
    let small = ProjectName::parse("small").unwrap();
    assert_eq!(
        store.memory().index_keys(&small),
        ["s0", "s1", "s2", "s3", "s4"]
    );
    store.close().await.unwrap();
    recovered
}

#[tokio::test]
async fn a_snapshot_lists_each_project_in_key_order_and_its_load_needs_no_sort() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let expected = snapshot_then_log(dir.path(), &clock).await;

    let (entries, _) = snapshot_entries(dir.path());
    assert_eq!(entries.len(), 3005);
    let mut projects: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    projects.dedup();
    assert_eq!(projects.len(), 2, "each project's entries together");
    for pair in entries.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(pair[0].1 < pair[1].1, "out of order: {pair:?}");
        }
    }

    let recovered = reopen_and_check(dir.path(), &clock, &expected).await;
    assert_eq!(
        recovered.index_presorted_keys, 3000,
        "the large project's index came from the snapshot's order"
    );
}

#[tokio::test]
async fn a_snapshot_in_hash_order_still_loads_a_sorted_index() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let expected = snapshot_then_log(dir.path(), &clock).await;

    // Rewrite the snapshot as an older build wrote it: each project's
    // entries in an order unrelated to their keys' (here: reversed, then
    // interleaved), with every other record where it was.
    let path = snapshot_path(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let (_, payloads) = snapshot_entries(dir.path());
    let is_entry = |p: &[u8]| {
        matches!(codec::decode_payload(p).unwrap(), Record::Txn { ref mutations, at: 0, .. }
            if mutations.len() == 1 && matches!(mutations[0].mutation, Mutation::Set { .. }))
    };
    let first = payloads.iter().position(|p| is_entry(p)).unwrap();
    let count = payloads[first..].iter().take_while(|p| is_entry(p)).count();
    let mut shuffled: Vec<&Vec<u8>> = payloads[first..first + count].iter().rev().collect();
    let half = shuffled.len() / 2;
    let (a, b) = shuffled.split_at_mut(half);
    for (x, y) in a.iter_mut().zip(b.iter_mut()).step_by(2) {
        std::mem::swap(x, y);
    }
    let mut out = bytes[..FILE_HEADER_LEN].to_vec();
    let records = payloads[..first]
        .iter()
        .chain(shuffled)
        .chain(&payloads[first + count..]);
    for payload in records {
        frame(&mut out, |p| p.extend_from_slice(payload));
    }
    std::fs::write(&path, out).unwrap();

    reopen_and_check(dir.path(), &clock, &expected).await;
}
