//! List and Watch against the real server binary, through the SDK.
//!
//! List: live keys come back in byte order, exactly once, without expired
//! keys, whatever the page size, prefix or starting point, also while other
//! keys come and go; limits are enforced; a page's version is the
//! project's, at least every entry's, and a watch from it misses nothing
//! (a page plus the events after it is the project's later state);
//! projects never see each other's keys.
//!
//! Watch: every change (set, incr, merge, delete, expiry, clear) arrives
//! once, in contiguous version order, with the kind, key, value and version
//! the write reported; expiries arrive within about a second of their
//! deadline; a watch resumes from a version with exactly the missed
//! changes, or says OUT_OF_RANGE (too old) / INVALID_ARGUMENT (ahead); a
//! watcher that does not read is cut off with RESOURCE_EXHAUSTED while the
//! server stays healthy and bounded; projects never see each other's
//! changes; and versions and the history continue across a restart.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kv_client::{
    ClearOptions, Code, DeleteOptions, Event, EventKind, IncrOptions, ListEntry, ListOptions,
    MergeOptions, Project, SetManyOptions, SetOptions, Watch, WatchOptions,
};
use kv_tests::{BinaryServer, Rng};
use serde_json::{Value as Json, json};

const BINARY: &str = env!("CARGO_BIN_EXE_kv-server");

/// How long any one awaited event may take before the test fails.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The server binary on a fresh temporary directory, without fsync, with
/// `extra` flags.
fn start(extra: &[&str]) -> BinaryServer {
    let mut args = vec!["--fsync", "never"];
    args.extend_from_slice(extra);
    BinaryServer::start(BINARY, &args)
}

/// Wall-clock time in unix milliseconds: the server's clock too.
fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit u64")
}

/// The next event of `watch`, failing the test on an error, the end of the
/// stream or a wait over [`EVENT_WAIT`].
async fn next_event(watch: &mut Watch) -> Event {
    match tokio::time::timeout(EVENT_WAIT, watch.next_event()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no event within {EVENT_WAIT:?}"),
    }
}

/// The error a watch with `options` is refused with, whether the call
/// itself fails or the stream's first item is the error.
async fn watch_refusal(kv: &Project, options: WatchOptions) -> kv_client::Error {
    match kv.watch(options.clone()).await {
        Err(e) => e,
        Ok(mut watch) => match tokio::time::timeout(EVENT_WAIT, watch.next_event()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("watch {options:?} was accepted: {other:?}"),
        },
    }
}

/// `(kind, key, version)`: what identifies an event.
fn id(event: &Event) -> (EventKind, String, u64) {
    (event.kind, event.key.clone(), event.version)
}

/// Walks every page of a listing with page size `limit` and checks what
/// every page must satisfy: at most `limit` entries (100 for 0), keys under
/// `prefix`, after `start_after` and strictly increasing in byte order
/// within and across pages, a cursor that moves forward and is at least
/// the page's last key, page versions that never go back, and values
/// exactly when not `keys_only`. Returns the entries and the number of
/// pages. (That a page's version bounds its entries' versions is checked
/// by the callers that list a still project, and under concurrent writes by
/// its own test.)
async fn walk(
    kv: &Project,
    prefix: &str,
    start_after: &str,
    limit: u32,
    keys_only: bool,
) -> (Vec<ListEntry>, usize) {
    let page_size = if limit == 0 { 100 } else { limit as usize };
    let mut entries: Vec<ListEntry> = Vec::new();
    let mut cursor = start_after.to_owned();
    let mut last_version = 0;
    let mut pages = 0;
    loop {
        let mut options = ListOptions::new()
            .prefix(prefix)
            .start_after(cursor.clone())
            .limit(limit);
        if keys_only {
            options = options.keys_only();
        }
        let page = kv.list(options).await.expect("List succeeds");
        pages += 1;
        assert!(pages < 100_000, "listing {prefix:?} never ends");
        assert!(
            page.entries.len() <= page_size,
            "{} entries on a page of at most {page_size}",
            page.entries.len()
        );
        assert!(
            page.version >= last_version,
            "page version went back from {last_version} to {}",
            page.version
        );
        last_version = page.version;
        for entry in &page.entries {
            assert!(
                entry.key.starts_with(prefix),
                "{:?} is not under {prefix:?}",
                entry.key
            );
            assert!(
                entry.key.as_bytes() > cursor.as_bytes(),
                "{:?} is not after {cursor:?} (start_after {start_after:?}, previous {:?})",
                entry.key,
                entries.last().map(|e| &e.key)
            );
            if let Some(previous) = entries.last() {
                assert!(
                    entry.key.as_bytes() > previous.key.as_bytes(),
                    "{:?} follows {:?}: not strictly increasing",
                    entry.key,
                    previous.key
                );
            }
            assert_eq!(
                entry.value.is_none(),
                keys_only,
                "{:?}: value presence does not match keys_only = {keys_only}",
                entry.key
            );
            entries.push(entry.clone());
        }
        match page.next_start_after {
            None => return (entries, pages),
            Some(next) => {
                assert!(
                    next.as_bytes() > cursor.as_bytes(),
                    "cursor went from {cursor:?} to {next:?}, not forward"
                );
                if let Some(last) = page.entries.last() {
                    assert!(
                        next.as_bytes() >= last.key.as_bytes(),
                        "cursor {next:?} is before the page's last key {:?}",
                        last.key
                    );
                }
                cursor = next;
            }
        }
    }
}

fn keys(entries: &[ListEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

/// Keys of `expected` under `prefix` and after `start_after`, in order.
fn expected_keys<'a>(
    expected: &'a BTreeMap<String, (Json, u64)>,
    prefix: &str,
    start_after: &str,
) -> Vec<&'a str> {
    expected
        .keys()
        .filter(|k| k.starts_with(prefix) && k.as_bytes() > start_after.as_bytes())
        .map(String::as_str)
        .collect()
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// 2500 keys written in random order (unicode, shared prefixes, a NUL
/// byte, non-padded numbers) come back in byte order, each exactly once,
/// with their values and versions, for page sizes 1000, 100 (default), 7
/// and through `list_all`; prefixes filter exactly; `start_after` anywhere
/// (a key, between keys, before the prefix, past the end) starts right
/// after it; keys-only pages carry no values; a page that holds exactly
/// the rest is the last; and expired keys are never listed, even while the
/// expiry task has not reclaimed them yet (it runs only once a minute
/// here), including a run of expired keys longer than a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_returns_live_keys_in_byte_order_across_pages_prefixes_and_cursors() {
    let server = start(&["--expiry-interval-ms", "60000"]);
    let kv = server.project("listing").await;
    let mut rng = Rng::from_env("list order");

    let mut live: Vec<String> = [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d",
        "ab",
        "a\u{0}",
        "a ",
        "a-",
        "A",
        "0",
        "b",
        "e",
        "é",
        "é/x",
        "ée",
        "z",
        "~",
        "\u{7f}",
        "\u{80}",
        "日本",
        "日本/東京",
        "😀",
        "😀/a",
        "\u{FFFF}",
        "\u{10FFFF}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 1..=7 {
        live.push(format!("p7/{i}"));
    }
    for i in 0..2440 {
        live.push(match i % 5 {
            0 => format!("k/{i}"),
            1 => format!("a/b/{i}"),
            2 => format!("é/{i:x}"),
            3 => format!("日本/{i}"),
            _ => format!("mix{}😀{i}", i % 13),
        });
    }
    live.push("a/b/renewed".into());
    let unique: BTreeSet<&String> = live.iter().collect();
    assert_eq!(unique.len(), live.len(), "the test's keys are distinct");
    assert!(live.len() >= 2470);
    // Short-lived keys: interleaved with live ones, and a run of 40 under
    // "a/b/c/" (longer than a page of 7).
    let mut doomed: Vec<String> = (0..40).map(|i| format!("k/{i}t")).collect();
    doomed.extend((0..40).map(|i| format!("a/b/c/t{i:02}")));
    doomed.push("a/b/renewed".into());

    let mut order = live.clone();
    rng.shuffle(&mut order);
    let mut expected: BTreeMap<String, (Json, u64)> = BTreeMap::new();
    let half = order.len() / 2;
    // Writes order[range] in SetMany chunks of random size, recording
    // what each key should hold.
    let mut write_run = async |range: std::ops::Range<usize>, rng: &mut Rng| {
        let mut offset = range.start;
        while offset < range.end {
            let end = (offset + 1 + rng.index(150)).min(range.end);
            let chunk = &order[offset..end];
            let values: Vec<Json> = chunk
                .iter()
                .map(|k| json!({ "key": k, "n": k.len() }))
                .collect();
            let versions = kv
                .set_many(chunk.iter().zip(&values).map(|(k, v)| (k.as_str(), v)))
                .await
                .unwrap();
            for ((key, value), version) in chunk.iter().zip(values).zip(versions) {
                expected.insert(key.clone(), (value, version));
            }
            offset = end;
        }
    };
    write_run(0..half, &mut rng).await;
    // The doomed keys go in the middle of the writes; "a/b/renewed" is
    // written again later without a TTL, so it stays.
    rng.shuffle(&mut doomed);
    let doomed_values: Vec<Json> = doomed.iter().map(|k| json!(k)).collect();
    kv.set_many_with(
        doomed
            .iter()
            .zip(&doomed_values)
            .map(|(k, v)| (k.as_str(), v)),
        SetManyOptions::new().ttl(Duration::from_millis(1000)),
    )
    .await
    .unwrap();
    let deadline = kv
        .get_entry::<Json>("a/b/c/t00")
        .await
        .unwrap()
        .expect("a doomed key is live before its deadline")
        .expires_at_ms
        .expect("a doomed key has a deadline");
    write_run(half..order.len(), &mut rng).await;
    // A renewal without TTL drops the deadline (unless the shuffle already
    // wrote it after the doomed batch, in which case this is a plain set).
    let renewed = kv
        .set_with(
            "a/b/renewed",
            &json!({ "key": "a/b/renewed", "n": 11 }),
            SetOptions::new(),
        )
        .await
        .unwrap();
    expected.insert(
        "a/b/renewed".into(),
        (json!({ "key": "a/b/renewed", "n": 11 }), renewed.version),
    );
    assert_eq!(expected.len(), live.len());

    // Before the deadline the doomed keys are listed, with their deadline.
    if now_ms() + 300 < deadline {
        let listed = kv.list_all("a/b/c/").await.unwrap();
        let tails: Vec<&ListEntry> = listed
            .iter()
            .filter(|e| e.key.starts_with("a/b/c/t"))
            .collect();
        assert_eq!(tails.len(), 40, "doomed keys before their deadline");
        assert!(tails.iter().all(|e| e.expires_at_ms.is_some()));
    }
    // Wait out the deadline (time has to pass; nothing to synchronise on).
    let wait = deadline.saturating_sub(now_ms()) + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    for key in ["k/0t", "a/b/c/t39"] {
        assert!(!kv.has(key).await.unwrap(), "{key} expired");
    }

    let all: Vec<&str> = expected.keys().map(String::as_str).collect();
    for limit in [1000, 0, 7] {
        let (entries, pages) = walk(&kv, "", "", limit, false).await;
        assert_eq!(keys(&entries), all, "full listing with limit {limit}");
        for entry in &entries {
            let (value, version) = &expected[&entry.key];
            assert_eq!(entry.value.as_ref(), Some(value), "{:?}", entry.key);
            assert_eq!(entry.version, *version, "{:?}", entry.key);
            assert_eq!(entry.expires_at_ms, None, "{:?}", entry.key);
        }
        let page_size = if limit == 0 { 100 } else { limit as usize };
        assert_eq!(
            pages,
            all.len().div_ceil(page_size),
            "every page but the last is full (limit {limit})"
        );
    }
    let sdk_all = kv.list_all("").await.unwrap();
    assert_eq!(keys(&sdk_all), all, "list_all");
    let (bare, _) = walk(&kv, "", "", 1000, true).await;
    assert_eq!(keys(&bare), all, "keys-only listing");
    for entry in &bare {
        assert_eq!(entry.version, expected[&entry.key].1, "{:?}", entry.key);
    }

    for prefix in [
        "a",
        "a/",
        "a/b",
        "a/b/",
        "a/b/c",
        "a/b/c/",
        "ab",
        "é",
        "é/",
        "日本/",
        "k/1",
        "😀",
        "mix1",
        "zzz",
        "\u{10FFFF}",
    ] {
        let want = expected_keys(&expected, prefix, "");
        let (entries, _) = walk(&kv, prefix, "", 7, false).await;
        assert_eq!(keys(&entries), want, "prefix {prefix:?} by 7");
        let sdk = kv.list_all(prefix).await.unwrap();
        assert_eq!(keys(&sdk), want, "prefix {prefix:?} through list_all");
    }
    // Exactly one full page left: it is the last.
    let page = kv
        .list(ListOptions::new().prefix("p7/").limit(7))
        .await
        .unwrap();
    assert_eq!(keys(&page.entries).len(), 7);
    assert_eq!(page.next_start_after, None, "7 keys on a page of 7");

    // Starting points.
    let middle = all[all.len() / 2];
    let between = format!("{middle}\u{1}");
    let last = *all.last().unwrap();
    let cases: Vec<(&str, &str)> = vec![
        ("", middle),
        ("", between.as_str()),
        ("a/b/", "a/b/1"),
        ("a/b/", "0"),
        ("a/b/", "a/b/c/t"),
        ("é/", "é/ff"),
        ("", last),
        ("a/b/c/", "a/b/c/d"),
    ];
    for (prefix, start_after) in cases {
        let want = expected_keys(&expected, prefix, start_after);
        for limit in [7, 1000] {
            let (entries, _) = walk(&kv, prefix, start_after, limit, limit == 7).await;
            assert_eq!(
                keys(&entries),
                want,
                "prefix {prefix:?} after {start_after:?} by {limit}"
            );
        }
    }
    let after_end = kv.list(ListOptions::new().start_after(last)).await.unwrap();
    assert!(after_end.entries.is_empty());
    assert_eq!(after_end.next_start_after, None);
}

/// A reader paging by 10 through a prefix while two tasks keep setting and
/// deleting other keys interleaved with the stable ones: each full pass
/// returns every stable key exactly once (with its value), keys strictly
/// increase within and across pages, and nothing that was never written
/// shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_exact_for_stable_keys_while_other_keys_churn() {
    let server = start(&[]);
    let kv = server.project("churn").await;
    // Stable: c/00000, c/00003, ...; churn: the numbers between, and a
    // child of each stable key (c/00003/x sorts right after c/00003).
    let stable: Vec<String> = (0..1500).step_by(3).map(|n| format!("c/{n:05}")).collect();
    let mut churn: Vec<String> = (0..1500)
        .filter(|n: &u32| !n.is_multiple_of(3))
        .map(|n| format!("c/{n:05}"))
        .collect();
    churn.extend(stable.iter().map(|k| format!("{k}/x")));
    let stable_set: BTreeSet<&str> = stable.iter().map(String::as_str).collect();
    let universe: BTreeSet<String> = stable.iter().chain(&churn).cloned().collect();

    for chunk in stable.chunks(500) {
        let values: Vec<Json> = chunk.iter().map(|k| json!({ "stable": k })).collect();
        kv.set_many(chunk.iter().zip(&values).map(|(k, v)| (k.as_str(), v)))
            .await
            .unwrap();
    }
    let every_other: Vec<&String> = churn.iter().step_by(2).collect();
    for chunk in every_other.chunks(500) {
        kv.set_many(chunk.iter().map(|k| (k.as_str(), &0)))
            .await
            .unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn = Arc::new(churn);
    let mut rng = Rng::from_env("churn");
    let churners: Vec<_> = (0..2)
        .map(|task| {
            let (kv, stop, churned, churn) =
                (kv.clone(), stop.clone(), churned.clone(), churn.clone());
            let mut rng = Rng::seeded(rng.next_u64() + task);
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = &churn[rng.index(churn.len())];
                    match rng.index(5) {
                        0 | 1 => kv.set(key, &i).await.unwrap(),
                        2 | 3 => {
                            kv.delete(key).await.unwrap();
                        }
                        _ => {
                            let many: Vec<&str> = (0..20)
                                .map(|_| churn[rng.index(churn.len())].as_str())
                                .collect();
                            if i.is_multiple_of(2) {
                                kv.delete_many(&many).await.unwrap();
                            } else {
                                let unique: BTreeSet<&str> = many.into_iter().collect();
                                kv.set_many(unique.into_iter().map(|k| (k, &i)))
                                    .await
                                    .unwrap();
                            }
                        }
                    }
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for pass in 0..4 {
        let before = churned.load(Ordering::Relaxed);
        let keys_only = pass % 2 == 1;
        let prefix = if pass == 3 { "" } else { "c/" };
        let (entries, pages) = walk(&kv, prefix, "", 10, keys_only).await;
        let during = churned.load(Ordering::Relaxed) - before;
        assert!(pages > 50, "pass {pass}: only {pages} pages");
        assert!(
            during >= 20,
            "pass {pass}: only {during} churn writes ran while paging"
        );
        let mut seen_stable = 0;
        for entry in &entries {
            assert!(
                universe.contains(&entry.key),
                "pass {pass}: {:?} was never written",
                entry.key
            );
            if stable_set.contains(entry.key.as_str()) {
                seen_stable += 1;
                if !keys_only {
                    assert_eq!(
                        entry.value,
                        Some(json!({ "stable": entry.key })),
                        "pass {pass}"
                    );
                }
            }
        }
        // Keys strictly increase (checked by walk), so each stable key
        // appears at most once; the count says every one appeared.
        assert_eq!(
            seen_stable,
            stable.len(),
            "pass {pass}: every stable key exactly once"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.await.unwrap();
    }
}

/// A limit over 1000 is INVALID_ARGUMENT naming 1000; 0 means 100; 1 and
/// 1000 are honoured; a page's version is the project's current version:
/// the last change, even one (a delete) that touched no listed key, at
/// least every entry's version, unchanged by writes that did not apply,
/// and 0 for a project that never changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limits_and_page_versions() {
    let server = start(&[]);
    let kv = server.project("limits").await;
    let empty = kv.list(ListOptions::new()).await.unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(empty.next_start_after, None);
    assert_eq!(
        empty.version, 0,
        "a project without changes is at version 0"
    );

    let keys: Vec<String> = (0..1200).map(|i| format!("l/{i:04}")).collect();
    let mut last = 0;
    for chunk in keys.chunks(1000) {
        let versions = kv
            .set_many(chunk.iter().map(|k| (k.as_str(), &1)))
            .await
            .unwrap();
        last = *versions.iter().max().unwrap();
    }
    assert_eq!(last, 1200, "versions count changes from 1");

    for limit in [1001, 5000, u32::MAX] {
        let err = kv
            .list(ListOptions::new().limit(limit))
            .await
            .expect_err("a limit over 1000 is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "limit {limit}: {err}");
        assert!(err.to_string().contains("1000"), "limit {limit}: {err}");
    }

    let page = kv.list(ListOptions::new()).await.unwrap();
    assert_eq!(page.entries.len(), 100, "limit 0 means 100");
    assert_eq!(keys_of(&page.entries), &keys[..100]);
    assert_eq!(page.next_start_after.as_deref(), Some("l/0099"));
    assert_eq!(page.version, last);

    let one = kv.list(ListOptions::new().limit(1)).await.unwrap();
    assert_eq!(keys_of(&one.entries), ["l/0000"]);
    assert_eq!(one.next_start_after.as_deref(), Some("l/0000"));

    let big = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    assert_eq!(keys_of(&big.entries), &keys[..1000]);
    let rest = kv
        .list(
            ListOptions::new()
                .limit(1000)
                .start_after(big.next_start_after.clone().expect("more pages")),
        )
        .await
        .unwrap();
    assert_eq!(keys_of(&rest.entries), &keys[1000..]);
    assert_eq!(rest.next_start_after, None);

    // A delete outside the page still moves the page's version.
    let deleted = kv
        .delete_with("l/1199", DeleteOptions::new())
        .await
        .unwrap();
    assert!(deleted.deleted);
    assert_eq!(deleted.version, last + 1);
    let page = kv.list(ListOptions::new().limit(10)).await.unwrap();
    assert_eq!(page.version, last + 1);
    // Rewriting a listed key: its entry and the page carry the new version.
    let rewritten = kv.set_with("l/0003", &2, SetOptions::new()).await.unwrap();
    assert_eq!(rewritten.version, last + 2);
    let page = kv.list(ListOptions::new().limit(10)).await.unwrap();
    assert_eq!(page.version, last + 2);
    assert_eq!(page.entries[3].key, "l/0003");
    assert_eq!(page.entries[3].version, last + 2);
    assert_eq!(page.entries[3].value, Some(json!(2)));
    assert!(page.entries.iter().all(|e| e.version <= page.version));
    // Writes that do not apply change nothing, the version included.
    let refused = kv.set_if_absent("l/0000", &3).await.unwrap();
    assert!(!refused.applied);
    assert!(!kv.delete("l/absent").await.unwrap());
    let cas = kv.compare_and_swap("l/0001", 1, &3).await.unwrap();
    assert!(!cas.applied);
    let page = kv.list(ListOptions::new().limit(10)).await.unwrap();
    assert_eq!(page.version, last + 2);
}

fn keys_of(entries: &[ListEntry]) -> Vec<String> {
    entries.iter().map(|e| e.key.clone()).collect()
}

/// Two projects with the same key names: each lists only its own keys and
/// values, a clear of one leaves the other's listing whole, and each has
/// its own version counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_never_crosses_projects() {
    let server = start(&[]);
    let a = server.project("tenant-a").await;
    let b = server.project("tenant-b").await;
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for i in 0..50 {
        let key = format!("shared/{i:02}");
        a.set(&key, &json!({ "owner": "a", "i": i })).await.unwrap();
        b.set(&key, &json!({ "owner": "b", "i": i })).await.unwrap();
        want_a.push((key.clone(), json!({ "owner": "a", "i": i })));
        want_b.push((key, json!({ "owner": "b", "i": i })));
    }
    for i in 0..30 {
        let key = format!("only-a/{i:02}");
        a.set(&key, &i).await.unwrap();
        want_a.push((key, json!(i)));
        let key = format!("only-b/{i:02}");
        b.set(&key, &i).await.unwrap();
        want_b.push((key, json!(i)));
    }
    want_a.sort_by(|x, y| x.0.cmp(&y.0));
    want_b.sort_by(|x, y| x.0.cmp(&y.0));
    let pairs = |entries: Vec<ListEntry>| -> Vec<(String, Json)> {
        entries
            .into_iter()
            .map(|e| (e.key, e.value.expect("with values")))
            .collect()
    };
    for limit in [7, 1000] {
        let (listed, _) = walk(&a, "", "", limit, false).await;
        assert_eq!(pairs(listed), want_a, "project a by {limit}");
        let (listed, _) = walk(&b, "", "", limit, false).await;
        assert_eq!(pairs(listed), want_b, "project b by {limit}");
    }
    assert!(a.list_all("only-b/").await.unwrap().is_empty());
    assert!(b.list_all("only-a/").await.unwrap().is_empty());
    assert_eq!(
        a.list(ListOptions::new()).await.unwrap().version,
        80,
        "project a counts only its own 80 changes"
    );
    assert_eq!(b.list(ListOptions::new()).await.unwrap().version, 80);
    assert_eq!(b.clear().await.unwrap(), 80);
    assert!(b.list_all("").await.unwrap().is_empty());
    assert_eq!(pairs(a.list_all("").await.unwrap()), want_a);
    assert_eq!(a.list(ListOptions::new()).await.unwrap().version, 80);
    let never = server.project("tenant-c").await;
    let page = never.list(ListOptions::new()).await.unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.version, 0);
}

/// A prefix watch, a key watch and a watch of everything, all from now, see
/// set, incr, merge, delete, an expiry and a clear in order: contiguous
/// versions equal to what each write returned, the right kinds, keys and
/// values (a SET carries the value after the write, and its deadline when
/// it has one), nothing outside the prefix or key, nothing for writes that
/// did not apply, and one CLEARED event with an empty key for a clear of
/// several keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_kind_of_change_in_version_order() {
    let server = start(&[]);
    let kv = server.project("feeds").await;
    let mut prefix = kv.watch(WatchOptions::prefix("w/")).await.unwrap();
    let mut counter = kv.watch(WatchOptions::key("w/count")).await.unwrap();
    let mut all = kv.watch(WatchOptions::all()).await.unwrap();

    let v1 = kv
        .set_with("w/a", &json!({ "n": 1 }), SetOptions::new())
        .await
        .unwrap();
    let v2 = kv
        .set_with("x/outside", &1, SetOptions::new())
        .await
        .unwrap();
    let v3 = kv
        .set_with("w", &"no slash", SetOptions::new())
        .await
        .unwrap();
    let v4 = kv
        .incr_with("w/count", 5.0, IncrOptions::new())
        .await
        .unwrap();
    let v5 = kv
        .incr_with("w/count", -2.5, IncrOptions::new())
        .await
        .unwrap();
    let v6 = kv
        .merge_with::<_, Json>(
            "w/a",
            &json!({ "m": [1, 2], "n": null }),
            MergeOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(v6.value, json!({ "m": [1, 2] }));
    let v7 = kv.delete_with("w/a", DeleteOptions::new()).await.unwrap();
    assert!(v7.deleted);
    // Writes that do not apply are not changes.
    assert!(!kv.delete("w/absent").await.unwrap());
    assert!(
        !kv.compare_and_swap("w/a", v1.version, &0)
            .await
            .unwrap()
            .applied
    );
    assert!(!kv.set_if_absent("w/count", &0).await.unwrap().applied);
    let v8 = kv
        .set_with(
            "w/ttl",
            &"brief",
            SetOptions::new().ttl(Duration::from_millis(400)),
        )
        .await
        .unwrap();
    let ttl_deadline = kv
        .get_entry::<String>("w/ttl")
        .await
        .unwrap()
        .and_then(|e| e.expires_at_ms);
    let versions = [
        v1.version, v2.version, v3.version, v4.version, v5.version, v6.version, v7.version,
        v8.version,
    ];
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8], "contiguous versions");
    assert_eq!((v4.value, v5.value), (5.0, 2.5));

    let expect = |event: &Event, kind, key: &str, version, value: Option<Json>| {
        assert_eq!(
            (event.kind, event.key.as_str(), event.version, &event.value),
            (kind, key, version, &value),
            "{event:?}"
        );
    };
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/a", 1, Some(json!({ "n": 1 })));
    assert_eq!(e.expires_at_ms, None);
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/count", 4, Some(json!(5)));
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/count", 5, Some(json!(2.5)));
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/a", 6, Some(json!({ "m": [1, 2] })));
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Deleted, "w/a", 7, None);
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/ttl", 8, Some(json!("brief")));
    assert!(e.expires_at_ms.is_some(), "a SET with a TTL has a deadline");
    if ttl_deadline.is_some() {
        assert_eq!(e.expires_at_ms, ttl_deadline, "the deadline Get reports");
    }
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Expired, "w/ttl", 9, None);
    let expired_at = now_ms();
    let deadline = ttl_deadline.unwrap_or(expired_at);
    assert!(
        expired_at >= deadline && expired_at <= deadline + 1500,
        "expiry event at {expired_at} for a deadline of {deadline}"
    );

    kv.set("w/b", &true).await.unwrap(); // 10
    kv.set("w/c", &Json::Null).await.unwrap(); // 11
    let cleared = kv.clear_with(ClearOptions::new()).await.unwrap();
    assert_eq!(
        (cleared.deleted, cleared.version),
        (5, 12),
        "w, w/b, w/c, w/count and x/outside cleared at version 12"
    );
    let after = kv
        .set_with("w/after", &"end", SetOptions::new())
        .await
        .unwrap();
    assert_eq!(after.version, 13);
    kv.set("w/count", &1).await.unwrap(); // 14

    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/b", 10, Some(json!(true)));
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/c", 11, Some(Json::Null));
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Cleared, "", 12, None);
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/after", 13, Some(json!("end")));
    let e = next_event(&mut prefix).await;
    expect(&e, EventKind::Set, "w/count", 14, Some(json!(1)));

    let seen: Vec<_> = [
        next_event(&mut counter).await,
        next_event(&mut counter).await,
        next_event(&mut counter).await,
        next_event(&mut counter).await,
    ]
    .iter()
    .map(id)
    .collect();
    assert_eq!(
        seen,
        [
            (EventKind::Set, "w/count".into(), 4),
            (EventKind::Set, "w/count".into(), 5),
            (EventKind::Cleared, String::new(), 12),
            (EventKind::Set, "w/count".into(), 14),
        ],
        "a key watch sees its key's changes and the clear"
    );

    let mut everything = Vec::new();
    for _ in 0..14 {
        everything.push(id(&next_event(&mut all).await));
    }
    let want: Vec<(EventKind, String, u64)> = [
        (EventKind::Set, "w/a"),
        (EventKind::Set, "x/outside"),
        (EventKind::Set, "w"),
        (EventKind::Set, "w/count"),
        (EventKind::Set, "w/count"),
        (EventKind::Set, "w/a"),
        (EventKind::Deleted, "w/a"),
        (EventKind::Set, "w/ttl"),
        (EventKind::Expired, "w/ttl"),
        (EventKind::Set, "w/b"),
        (EventKind::Set, "w/c"),
        (EventKind::Cleared, ""),
        (EventKind::Set, "w/after"),
        (EventKind::Set, "w/count"),
    ]
    .iter()
    .zip(1..)
    .map(|(&(kind, key), version)| (kind, key.to_owned(), version))
    .collect();
    assert_eq!(everything, want, "a watch of everything sees every change");

    // Nothing more is pending on any of them: the next event is a new write.
    let sentinel = kv.set_with("w/z", &0, SetOptions::new()).await.unwrap();
    assert_eq!(next_event(&mut prefix).await.version, sentinel.version);
    assert_eq!(next_event(&mut all).await.version, sentinel.version);
    kv.set("w/count", &2).await.unwrap();
    assert_eq!(next_event(&mut counter).await.version, sentinel.version + 1);
}

/// 2000 keys with a 500 ms TTL, written in two SetMany calls while a watch
/// is open: each SET event carries the deadline Get reports (now + 500 ms),
/// and every key gets exactly one EXPIRED event, never before its deadline
/// and at most 1.5 s after it, in contiguous version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_events_arrive_within_a_second_and_a_half_of_the_deadline() {
    const KEYS: usize = 2000;
    let server = start(&[]);
    let kv = server.project("ttl").await;
    let mut watch = kv.watch(WatchOptions::all()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut expired = 0;
        while expired < KEYS {
            let event = next_event(&mut watch).await;
            expired += usize::from(event.kind == EventKind::Expired);
            received.push((event, now_ms()));
        }
        received
    });

    let keys: Vec<String> = (0..KEYS).map(|i| format!("t/{i:04}")).collect();
    let ttl = SetManyOptions::new().ttl(Duration::from_millis(500));
    let before = now_ms();
    for chunk in keys.chunks(1000) {
        kv.set_many_with(chunk.iter().map(|k| (k.as_str(), &true)), ttl.clone())
            .await
            .unwrap();
    }
    let after = now_ms();
    // What Get says about a sample, while still live.
    let sample: Vec<&String> = keys.iter().step_by(40).collect();
    let got = kv.get_many::<bool, _>(&sample).await.unwrap();

    let received = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("every expiry within 30 s")
        .unwrap();
    assert_eq!(received.len(), 2 * KEYS, "one SET and one EXPIRED per key");
    let mut deadlines: HashMap<&str, u64> = HashMap::new();
    let mut expired: HashMap<&str, u64> = HashMap::new();
    let mut worst = 0;
    for (i, (event, at)) in received.iter().enumerate() {
        assert_eq!(event.version, i as u64 + 1, "contiguous versions");
        match event.kind {
            EventKind::Set => {
                let deadline = event
                    .expires_at_ms
                    .expect("a SET with a TTL has a deadline");
                assert!(
                    deadline >= before + 500 && deadline <= after + 500,
                    "deadline {deadline} of {} not 500 ms after the write ({before}..{after})",
                    event.key
                );
                assert!(deadlines.insert(&event.key, deadline).is_none());
            }
            EventKind::Expired => {
                let deadline = *deadlines
                    .get(event.key.as_str())
                    .unwrap_or_else(|| panic!("{} expired before it was set", event.key));
                assert!(
                    *at >= deadline,
                    "{} expired at {at}, before its deadline {deadline}",
                    event.key
                );
                assert!(
                    *at <= deadline + 1500,
                    "{} expired {} ms after its deadline",
                    event.key,
                    at - deadline
                );
                worst = worst.max(at - deadline);
                assert!(
                    expired.insert(&event.key, event.version).is_none(),
                    "{} expired twice",
                    event.key
                );
            }
            other => panic!("unexpected {other:?} event {event:?}"),
        }
    }
    assert_eq!(expired.len(), KEYS, "every key expired");
    println!("latest expiry event: {worst} ms after its deadline");
    for (key, entry) in sample.iter().zip(got) {
        if let Some(entry) = entry {
            assert_eq!(
                entry.expires_at_ms,
                Some(deadlines[key.as_str()]),
                "Get and the SET event agree on {key}'s deadline"
            );
        }
    }
    assert!(kv.list_all("t/").await.unwrap().is_empty());
}

/// Only the deadline a key holds now produces an EXPIRED event: a key
/// given a later deadline expires once, at the later one; a key rewritten
/// without a TTL, deleted, or cleared before its deadline never expires;
/// an incr keeps the deadline (its SET event says so) and the key expires
/// at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_current_deadline_of_a_key_expires_it() {
    let server = start(&[]);
    let kv = server.project("renewals").await;
    let mut watch = kv.watch(WatchOptions::prefix("r/")).await.unwrap();
    let short = || SetOptions::new().ttl(Duration::from_millis(300));

    kv.set_with("r/later", &1, short()).await.unwrap(); // 1
    let later = kv
        .set_with(
            "r/later",
            &2,
            SetOptions::new().ttl(Duration::from_millis(1200)),
        )
        .await
        .unwrap(); // 2
    kv.set_with("r/forever", &1, short()).await.unwrap(); // 3
    kv.set_with("r/forever", &2, SetOptions::new())
        .await
        .unwrap(); // 4
    kv.set_with("r/deleted", &1, short()).await.unwrap(); // 5
    kv.delete("r/deleted").await.unwrap(); // 6
    let counter = kv
        .incr_with(
            "r/counter",
            1.0,
            IncrOptions::new().ttl(Duration::from_millis(300)),
        )
        .await
        .unwrap(); // 7
    kv.incr("r/counter", 1.0).await.unwrap(); // 8
    let later_deadline = kv
        .get_entry::<u32>("r/later")
        .await
        .unwrap()
        .and_then(|e| e.expires_at_ms)
        .expect("r/later has a deadline");
    assert_eq!((later.version, counter.version), (2, 7));

    let mut events = Vec::new();
    for _ in 0..8 {
        events.push(next_event(&mut watch).await);
    }
    assert_eq!(events[1].expires_at_ms, Some(later_deadline));
    assert_eq!(events[3].expires_at_ms, None, "a plain set drops the TTL");
    let counter_deadline = events[6].expires_at_ms.expect("incr created it with a TTL");
    assert_eq!(
        events[7].expires_at_ms,
        Some(counter_deadline),
        "an incr keeps the deadline"
    );
    assert_eq!(events[7].value, Some(json!(2)));

    let expired = next_event(&mut watch).await;
    assert_eq!(id(&expired), (EventKind::Expired, "r/counter".into(), 9));
    assert!(now_ms() >= counter_deadline);
    let expired = next_event(&mut watch).await;
    let at = now_ms();
    assert_eq!(
        id(&expired),
        (EventKind::Expired, "r/later".into(), 10),
        "nothing expired at the first deadlines of r/later, r/forever or r/deleted"
    );
    assert!(
        at >= later_deadline && at <= later_deadline + 1500,
        "r/later expired at {at}, deadline {later_deadline}"
    );
    assert_eq!(kv.get::<u32>("r/forever").await.unwrap(), Some(2));

    // A clear before the deadline: the key is gone, and never expires.
    kv.set_with("r/cleared", &1, short()).await.unwrap(); // 11
    let cleared = kv.clear_with(ClearOptions::new()).await.unwrap();
    assert_eq!((cleared.deleted, cleared.version), (2, 12));
    let after = kv
        .get_entry::<u32>("r/cleared")
        .await
        .unwrap()
        .map(|e| e.version);
    assert_eq!(after, None);
    // A key that expires later than r/cleared would have: its EXPIRED event
    // comes next, so nothing came for r/cleared in between.
    kv.set_with(
        "r/marker",
        &1,
        SetOptions::new().ttl(Duration::from_millis(600)),
    )
    .await
    .unwrap(); // 13
    let seen: Vec<_> = [
        next_event(&mut watch).await,
        next_event(&mut watch).await,
        next_event(&mut watch).await,
        next_event(&mut watch).await,
    ]
    .iter()
    .map(id)
    .collect();
    assert_eq!(
        seen,
        [
            (EventKind::Set, "r/cleared".into(), 11),
            (EventKind::Cleared, String::new(), 12),
            (EventKind::Set, "r/marker".into(), 13),
            (EventKind::Expired, "r/marker".into(), 14),
        ]
    );
}

/// The promise of a page's version: list a project while three writers
/// change it (sets, deletes, incr, merge, SetMany, a clear), watch
/// everything from the page's version, apply the events to the page, and
/// the result is exactly the final listing, with versions contiguous from
/// the page's version to the final page's. Done from four pages taken at
/// different moments. (Another watcher is open throughout; see the next
/// test for a project nobody watches.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_plus_a_watch_from_its_version_misses_nothing() {
    let server = start(&[]);
    let kv = server.project("mirror").await;
    let _keeper = kv.watch(WatchOptions::all()).await.unwrap();
    let (signal, mut moments) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut rng = Rng::from_env("mirror");
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let kv = kv.clone();
            let signal = signal.clone();
            let mut rng = Rng::seeded(rng.next_u64() + w);
            tokio::spawn(async move {
                for i in 0..400u64 {
                    let key = format!("m/{}", rng.index(200));
                    match rng.index(10) {
                        0..=4 => kv.set(&key, &json!({ "w": w, "i": i })).await.unwrap(),
                        5 | 6 => {
                            kv.delete(&key).await.unwrap();
                        }
                        7 => {
                            kv.incr(&format!("n/{}", rng.index(20)), 1.0).await.unwrap();
                        }
                        8 => {
                            kv.merge::<_, Json>(&key, &json!({ "merged": i }))
                                .await
                                .unwrap();
                        }
                        _ => {
                            let many: BTreeSet<String> =
                                (0..5).map(|_| format!("m/{}", rng.index(200))).collect();
                            kv.set_many(many.iter().map(|k| (k.as_str(), &i)))
                                .await
                                .unwrap();
                        }
                    }
                    if w == 0 && i == 200 {
                        kv.clear().await.unwrap();
                    }
                    if w == 0 && i % 100 == 50 {
                        let _ = signal.send(());
                    }
                }
            })
        })
        .collect();
    drop(signal);

    let mut mirrors = Vec::new();
    while let Some(()) = moments.recv().await {
        let page = kv.list(ListOptions::new().limit(1000)).await.unwrap();
        assert_eq!(page.next_start_after, None, "one page holds the project");
        let watch = kv
            .watch(WatchOptions::all().from_version(page.version))
            .await
            .unwrap();
        let state: BTreeMap<String, Json> = page
            .entries
            .into_iter()
            .map(|e| (e.key, e.value.expect("with values")))
            .collect();
        mirrors.push((page.version, state, watch));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(mirrors.len(), 4);
    let last = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    let want: BTreeMap<String, Json> = last
        .entries
        .into_iter()
        .map(|e| (e.key, e.value.expect("with values")))
        .collect();
    for (from, mut state, mut watch) in mirrors {
        for version in from + 1..=last.version {
            let event = next_event(&mut watch).await;
            assert_eq!(event.version, version, "contiguous after {from}");
            match event.kind {
                EventKind::Set => {
                    state.insert(event.key, event.value.expect("SET has a value"));
                }
                EventKind::Deleted => {
                    // Not asserted present: a page may already show changes
                    // made while it was read (the promise is that it misses
                    // none up to its version).
                    state.remove(&event.key);
                }
                EventKind::Cleared => state.clear(),
                EventKind::Expired => panic!("nothing here has a TTL: {event:?}"),
            }
        }
        assert_eq!(
            state, want,
            "page of version {from} plus events up to {} is the final listing",
            last.version
        );
    }
}

/// While two writers keep setting keys one call at a time, every List
/// page's version (the project's version when the page was read) is at
/// least the version of every entry on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_version_is_at_least_every_entry_version_under_concurrent_writes() {
    let server = start(&[]);
    let kv = server.project("bound").await;
    let keys: Vec<String> = (0..300).map(|i| format!("b/{i:03}")).collect();
    kv.set_many(keys.iter().map(|k| (k.as_str(), &0)))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::from_env("bound");
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (kv, stop) = (kv.clone(), stop.clone());
            let mut rng = Rng::seeded(rng.next_u64() + w);
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    kv.set(&format!("b/{:03}", rng.index(300)), &i)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut violations = Vec::new();
    let mut pages = 0;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while pages < 2000 && std::time::Instant::now() < until {
        let page = kv
            .list(ListOptions::new().limit(1000).keys_only())
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page.entries.len(), 300);
        for entry in &page.entries {
            if entry.version > page.version {
                violations.push((entry.key.clone(), entry.version, page.version));
            }
        }
        if violations.len() > 20 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(
        violations.is_empty(),
        "{} entries (in {pages} pages) newer than their page, e.g. (key, entry version, page version): {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

/// The documented way to follow a project (ListResponse.version: "the
/// page reflects every change up to it, so a Watch from here misses
/// nothing"; the SDK's `Project::watch` example "list, then watch from the
/// listing's version") on a project nobody watches yet, with one change by
/// someone else between the List and the Watch: the watch must start and
/// deliver that change, not fail with OUT_OF_RANGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_listing_of_an_unwatched_project_is_accepted() {
    let server = start(&[]);
    let kv = server.project("follow").await;
    let other = server.project("follow").await;
    for i in 0..10 {
        kv.set(&format!("f/{i}"), &i).await.unwrap();
    }
    let page = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    assert_eq!((page.entries.len(), page.version), (10, 10));
    // Someone else writes between the List and the Watch.
    let change = other
        .set_with("f/new", &1, SetOptions::new())
        .await
        .unwrap();
    assert_eq!(change.version, 11);
    let mut watch = match kv
        .watch(WatchOptions::all().from_version(page.version))
        .await
    {
        Ok(watch) => watch,
        Err(e) => panic!(
            "watching from the version of a page read just before (10, now 11) was refused: {e}"
        ),
    };
    let event = next_event(&mut watch).await;
    assert_eq!(id(&event), (EventKind::Set, "f/new".into(), 11));
}

/// A watch dropped after some events and reopened from the last version it
/// saw gets exactly the changes it missed (also through a prefix or key
/// filter, and from version 0 while the whole history is retained), then
/// new ones, nothing twice. With `--watch-history-events 50` after 500
/// changes: resuming from the oldest retained point works and from one
/// before it is OUT_OF_RANGE; from a version ahead of the project's is
/// INVALID_ARGUMENT. `--watch-history-bytes` bounds history too. A project
/// nobody watched keeps its history all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_version_with_exactly_the_missed_changes() {
    let server = start(&[]);
    let kv = server.project("resume").await;
    let mut watch = kv.watch(WatchOptions::all()).await.unwrap();
    let mut log: Vec<(EventKind, String, u64)> = Vec::new();
    for i in 0..10 {
        let key = format!("r/{i}");
        let v = kv.set_with(&key, &i, SetOptions::new()).await.unwrap();
        log.push((EventKind::Set, key, v.version));
    }
    for want in &log[..4] {
        assert_eq!(&id(&next_event(&mut watch).await), want);
    }
    assert_eq!(watch.last_version(), Some(4));
    drop(watch);

    // Missed while nobody watches.
    for i in 10..20 {
        let key = format!("r/{i}");
        let v = kv.set_with(&key, &i, SetOptions::new()).await.unwrap();
        log.push((EventKind::Set, key, v.version));
    }
    let gone = kv.delete_with("r/0", DeleteOptions::new()).await.unwrap();
    log.push((EventKind::Deleted, "r/0".into(), gone.version));
    let bump = kv.incr_with("r/1", 10.0, IncrOptions::new()).await.unwrap();
    log.push((EventKind::Set, "r/1".into(), bump.version));
    assert_eq!(bump.version, 22);

    let mut resumed = kv.watch(WatchOptions::all().from_version(4)).await.unwrap();
    let mut tens = kv
        .watch(WatchOptions::prefix("r/1").from_version(4))
        .await
        .unwrap();
    let mut first = kv
        .watch(WatchOptions::key("r/0").from_version(0))
        .await
        .unwrap();
    for want in &log[4..] {
        let event = next_event(&mut resumed).await;
        assert_eq!(&id(&event), want, "resumed from 4");
        if event.kind == EventKind::Set {
            let i: u64 = want.1[2..].parse().unwrap();
            let value = if want.1 == "r/1" { i + 10 } else { i };
            assert_eq!(event.value, Some(json!(value)), "{want:?}");
        }
    }
    let want_tens: Vec<_> = log[4..]
        .iter()
        .filter(|(_, key, _)| key.starts_with("r/1"))
        .cloned()
        .collect();
    assert_eq!(want_tens.len(), 11, "r/10..r/19 and the incr of r/1");
    for want in &want_tens {
        assert_eq!(&id(&next_event(&mut tens).await), want, "prefix r/1 from 4");
    }
    assert_eq!(
        id(&next_event(&mut first).await),
        (EventKind::Set, "r/0".into(), 1)
    );
    assert_eq!(
        id(&next_event(&mut first).await),
        (EventKind::Deleted, "r/0".into(), 21)
    );
    // Nothing twice, nothing extra: the next event is a new change.
    let sentinel = kv
        .set_with("r/0", &"again", SetOptions::new())
        .await
        .unwrap();
    assert_eq!(sentinel.version, 23);
    for watch in [&mut resumed, &mut first] {
        assert_eq!(
            id(&next_event(watch).await),
            (EventKind::Set, "r/0".into(), 23)
        );
    }
    kv.set("r/1x", &0).await.unwrap();
    assert_eq!(
        id(&next_event(&mut tens).await),
        (EventKind::Set, "r/1x".into(), 24)
    );
    // Resuming at the current version: only what comes next.
    let mut current = kv
        .watch(WatchOptions::all().from_version(24))
        .await
        .unwrap();
    kv.set("r/next", &0).await.unwrap();
    assert_eq!(next_event(&mut current).await.version, 25);

    // A bounded history.
    let server = start(&["--watch-history-events", "50"]);
    let kv = server.project("short").await;
    let _holder = kv.watch(WatchOptions::all()).await.unwrap();
    for round in 0..5 {
        let keys: Vec<String> = (0..100).map(|i| format!("h/{i}")).collect();
        kv.set_many(keys.iter().map(|k| (k.as_str(), &round)))
            .await
            .unwrap();
    }
    assert_eq!(kv.list(ListOptions::new()).await.unwrap().version, 500);
    for from in [0, 1, 250, 449] {
        let err = watch_refusal(&kv, WatchOptions::all().from_version(from)).await;
        assert_eq!(err.code(), Code::OutOfRange, "from {from}: {err}");
    }
    let err = watch_refusal(&kv, WatchOptions::key("h/99").from_version(449)).await;
    assert_eq!(err.code(), Code::OutOfRange, "filtered, from 449: {err}");
    let mut oldest = kv
        .watch(WatchOptions::all().from_version(450))
        .await
        .unwrap();
    for version in 451..=500 {
        let event = next_event(&mut oldest).await;
        assert_eq!(
            (event.kind, event.version, event.value),
            (EventKind::Set, version, Some(json!(4))),
            "from 450"
        );
    }
    for from in [501, 10_000, u64::MAX] {
        let err = watch_refusal(&kv, WatchOptions::all().from_version(from)).await;
        assert_eq!(err.code(), Code::InvalidArgument, "from {from}: {err}");
    }
    let mut now = kv
        .watch(WatchOptions::all().from_version(500))
        .await
        .unwrap();
    kv.set("h/new", &0).await.unwrap();
    assert_eq!(next_event(&mut oldest).await.version, 501);
    assert_eq!(next_event(&mut now).await.version, 501);

    // History bounded by bytes: ~1 KiB changes, 64 KiB of history.
    let server = start(&["--watch-history-bytes", "65536"]);
    let kv = server.project("bytes").await;
    let _holder = kv.watch(WatchOptions::all()).await.unwrap();
    let big = "b".repeat(1000);
    for i in 0..200 {
        kv.set(&format!("b/{}", i % 10), &big).await.unwrap();
    }
    let err = watch_refusal(&kv, WatchOptions::all().from_version(100)).await;
    assert_eq!(err.code(), Code::OutOfRange, "bytes bound: {err}");
    let mut recent = kv
        .watch(WatchOptions::all().from_version(180))
        .await
        .unwrap();
    for version in 181..=200 {
        assert_eq!(next_event(&mut recent).await.version, version);
    }

    // A project nobody watched keeps its history too: resuming works.
    let cold = server.project("cold").await;
    for i in 0..10 {
        cold.set(&format!("c/{i}"), &i).await.unwrap();
    }
    let mut missed = cold
        .watch(WatchOptions::all().from_version(5))
        .await
        .unwrap();
    for version in 6..=10 {
        assert_eq!(next_event(&mut missed).await.version, version);
    }
    drop(missed);
    let err = watch_refusal(&cold, WatchOptions::all().from_version(11)).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let mut present = cold
        .watch(WatchOptions::all().from_version(10))
        .await
        .unwrap();
    cold.set("c/next", &0).await.unwrap();
    assert_eq!(
        id(&next_event(&mut present).await),
        (EventKind::Set, "c/next".into(), 11)
    );
    // A project without any change yet: from 0 is now, from 1 is ahead.
    let fresh = server.project("fresh").await;
    let err = watch_refusal(&fresh, WatchOptions::all().from_version(1)).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let mut start = fresh
        .watch(WatchOptions::prefix("f/").from_version(0))
        .await
        .unwrap();
    fresh.set("f/1", &1).await.unwrap();
    assert_eq!(
        id(&next_event(&mut start).await),
        (EventKind::Set, "f/1".into(), 1)
    );
}

/// A watcher that never reads while 20000 changes of ~1 KiB go by, in
/// small batches (10 per call, well within a history of 100), is cut off,
/// while a watcher reading alongside it gets every change: so the cut is
/// about not reading, once the connection buffers and the history are full.
/// The slow one first gets the events that were already on their way
/// (contiguous from the first), then its stream ends with
/// RESOURCE_EXHAUSTED saying it fell behind and naming the last version it
/// got; resuming from there is OUT_OF_RANGE. The server stays responsive
/// and its memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_is_cut_off_and_the_server_stays_healthy() {
    const CHANGES: u64 = 20_000;
    let server = start(&["--watch-history-events", "100"]);
    let kv = server.project("slow").await;
    let rss_before = rss_kib(server.pid());
    let mut slow = kv.watch(WatchOptions::all()).await.unwrap();
    let mut fast = kv.watch(WatchOptions::all()).await.unwrap();
    let reader = tokio::spawn(async move {
        for version in 1..=CHANGES {
            let event = next_event(&mut fast).await;
            assert_eq!(
                event.version, version,
                "the reading watcher gets everything"
            );
        }
    });

    let filler = "x".repeat(1000);
    let mut peak = rss_before;
    let mut last = 0;
    for round in 0..CHANGES / 10 {
        let keys: Vec<String> = (0..10)
            .map(|i| format!("s/{}", round % 100 * 10 + i))
            .collect();
        let values: Vec<Json> = (0..10)
            .map(|i| json!(format!("{round}:{i}:{filler}")))
            .collect();
        let versions = kv
            .set_many(keys.iter().map(String::as_str).zip(&values))
            .await
            .unwrap();
        last = *versions.last().unwrap();
        if round % 200 == 199 {
            peak = peak.max(rss_kib(server.pid()));
        }
    }
    assert_eq!(last, CHANGES);
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reading watcher keeps up")
        .unwrap();

    let mut received = 0u64;
    let err = loop {
        match tokio::time::timeout(EVENT_WAIT, slow.next_event()).await {
            Ok(Some(Ok(event))) => {
                received += 1;
                assert_eq!(event.version, received, "contiguous until the cut");
            }
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("the stream ended without an error after {received} events"),
            Err(_) => panic!("no event and no error within {EVENT_WAIT:?}"),
        }
    };
    println!("a watcher that did not read got {received} events before the cut");
    assert!(received < CHANGES, "the watcher cannot have got everything");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("fell behind"), "{err}");
    assert!(
        err.to_string().contains(&format!("version {received}")),
        "the error names the version to resume from ({received}): {err}"
    );
    let end = tokio::time::timeout(EVENT_WAIT, slow.next_event()).await;
    assert!(
        matches!(end, Ok(None)),
        "the stream ends after the error: {end:?}"
    );
    let err = watch_refusal(&kv, WatchOptions::all().from_version(received)).await;
    assert_eq!(err.code(), Code::OutOfRange, "{err}");

    // Still healthy: reads, writes and new watches work.
    let value: Option<String> = kv.get("s/0").await.unwrap();
    assert!(value.unwrap().starts_with("1900:0:"));
    let mut fresh = kv.watch(WatchOptions::all()).await.unwrap();
    let v = kv
        .set_with("s/0", &"after", SetOptions::new())
        .await
        .unwrap();
    assert_eq!(v.version, 20_001);
    assert_eq!(next_event(&mut fresh).await.version, 20_001);
    peak = peak.max(rss_kib(server.pid()));
    println!("server RSS: {rss_before} KiB before, {peak} KiB at most");
    assert!(
        peak < 300 * 1024,
        "server RSS reached {peak} KiB (from {rss_before} KiB)"
    );
}

/// A project's watchers see nothing of another project's changes (sets,
/// deletes, incr, merge, clear and an expiry there, with the same key
/// names): the first event they get is their own project's sentinel, at
/// its own version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_never_cross_projects() {
    let server = start(&[]);
    let a = server.project("iso-a").await;
    let b = server.project("iso-b").await;
    let mut a_all = a.watch(WatchOptions::all()).await.unwrap();
    let mut a_prefix = a.watch(WatchOptions::prefix("k")).await.unwrap();
    let mut a_key = a.watch(WatchOptions::key("k/1")).await.unwrap();
    let mut b_all = b.watch(WatchOptions::all()).await.unwrap();

    let first = b.set_with("k/1", &1, SetOptions::new()).await.unwrap();
    assert_eq!(first.version, 1, "b counts its own versions");
    for i in 2..50 {
        b.set(&format!("k/{i}"), &i).await.unwrap();
    }
    b.delete("k/2").await.unwrap();
    b.incr("k/1", 1.0).await.unwrap();
    b.merge::<_, Json>("k/m", &json!({ "x": 1 })).await.unwrap();
    b.set_with_ttl("k/ttl", &0, Duration::from_millis(200))
        .await
        .unwrap();
    // b's own watcher sees all of it, the expiry included, before a writes.
    let mut kinds = Vec::new();
    loop {
        let event = next_event(&mut b_all).await;
        kinds.push(event.kind);
        if event.kind == EventKind::Expired {
            break;
        }
    }
    assert_eq!(kinds.len(), 54, "{kinds:?}");
    assert_eq!(b.clear().await.unwrap(), 49);
    assert_eq!(next_event(&mut b_all).await.kind, EventKind::Cleared);

    let sentinel = a.set_with("k/1", &"a", SetOptions::new()).await.unwrap();
    assert_eq!(sentinel.version, 1, "a's first change");
    for watch in [&mut a_all, &mut a_prefix, &mut a_key] {
        let event = next_event(watch).await;
        assert_eq!(
            (id(&event), event.value),
            ((EventKind::Set, "k/1".into(), 1), Some(json!("a"))),
            "the first event a sees is its own"
        );
    }
}

/// Across a graceful restart (with snapshots enabled, and a project that
/// was emptied by deletes and a clear): entries keep their versions, new
/// changes continue above every pre-restart version, a watch from a
/// pre-restart version still in the history (rebuilt at start-up) gets the
/// changes after it, from the current version it delivers the next change,
/// and from beyond it is INVALID_ARGUMENT. (kv-server/tests/watch_restart.rs
/// checks the rebuilt history in detail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_history_continue_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--fsync", "never", "--snapshot-min-log-bytes", "4096"];
    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("restart").await;
    let empty = server.project("emptied").await;
    let mut watch = kv.watch(WatchOptions::all()).await.unwrap();
    let filler = "y".repeat(100);
    for i in 0..300 {
        kv.set(&format!("k/{}", i % 10), &format!("{i}:{filler}"))
            .await
            .unwrap();
    }
    let kept = kv.set_with("keep", &"me", SetOptions::new()).await.unwrap();
    assert_eq!(kept.version, 301);
    let gone = kv.delete_with("k/0", DeleteOptions::new()).await.unwrap();
    assert_eq!(gone.version, 302);
    for version in 1..=302 {
        assert_eq!(next_event(&mut watch).await.version, version);
    }
    drop(watch);
    for i in 0..20 {
        empty.set(&format!("e/{i}"), &i).await.unwrap();
    }
    empty.delete("e/0").await.unwrap();
    let cleared = empty.clear_with(ClearOptions::new()).await.unwrap();
    assert_eq!((cleared.deleted, cleared.version), (19, 22));
    assert!(server.terminate().success(), "graceful shutdown");

    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("restart").await;
    let empty = server.project("emptied").await;
    let entry = kv.get_entry::<String>("keep").await.unwrap().unwrap();
    assert_eq!((entry.value.as_str(), entry.version), ("me", 301));
    assert_eq!(kv.list(ListOptions::new()).await.unwrap().version, 302);
    assert_eq!(empty.list(ListOptions::new()).await.unwrap().version, 22);
    let mut old = kv
        .watch(WatchOptions::all().from_version(300))
        .await
        .unwrap();
    assert_eq!(
        id(&next_event(&mut old).await),
        (EventKind::Set, "keep".into(), 301)
    );
    assert_eq!(
        id(&next_event(&mut old).await),
        (EventKind::Deleted, "k/0".into(), 302)
    );
    let err = watch_refusal(&kv, WatchOptions::all().from_version(303)).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let mut resumed = kv
        .watch(WatchOptions::all().from_version(302))
        .await
        .unwrap();
    let next = kv.set_with("after", &1, SetOptions::new()).await.unwrap();
    assert_eq!(next.version, 303, "versions continue after the restart");
    let event = next_event(&mut resumed).await;
    assert_eq!(id(&event), (EventKind::Set, "after".into(), 303));
    assert_eq!(
        id(&next_event(&mut old).await),
        id(&event),
        "no gap, no repeat"
    );
    let next = empty
        .set_with("e/new", &1, SetOptions::new())
        .await
        .unwrap();
    assert_eq!(
        next.version, 23,
        "an emptied project's versions continue after the restart"
    );
}
