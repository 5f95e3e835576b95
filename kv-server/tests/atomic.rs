//! Atomic operations of the real binary under contention and across
//! restarts: increments never lose or repeat a step (and make an exact
//! fixed-window rate limiter), merges never lose a field, compare-and-swap
//! loops never lose an update, batches are all or nothing and never seen
//! half applied, many-key calls keep order and limits, request ids apply a
//! write once and answer retries with the first outcome (after SIGTERM,
//! SIGKILL and snapshot restarts too), and restarts keep every value,
//! version and deadline while versions never go back.

use std::{
    collections::HashSet,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kv_client::{
    BatchOutcome, Code, Entry, IncrOptions, ListOptions, MergeOptions, OpResult, Page, Project,
    SetManyOptions, SetOptions, Versioned,
};
use kv_tests::{BinaryServer, Rng};
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
/// Every server of this file: no fsync (a process crash loses nothing
/// acknowledged; only an OS crash could).
const ARGS: &[&str] = &["--fsync", "never"];
/// The most any one phase of a test may take.
const PHASE_LIMIT: Duration = Duration::from_secs(60);
/// The server's default limit of keys, entries or ops per call.
const MAX_PER_CALL: usize = 1000;

/// Runs `fut`, failing the test if it takes longer than [`PHASE_LIMIT`].
async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    bounded_by(PHASE_LIMIT, what, fut).await
}

/// Runs `fut`, failing the test if it takes longer than `limit`.
async fn bounded_by<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// A new connection (its own HTTP/2 channel) to `server`.
async fn connect(server: &BinaryServer) -> kv_client::Client {
    kv_client::Client::connect(format!("http://{}", server.addr))
        .await
        .expect("SDK connects to the server")
}

/// `count` separate connections to `server`.
async fn connections(server: &BinaryServer, count: usize) -> Vec<kv_client::Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(connect(server).await);
    }
    clients
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Asserts `result` failed with `code`, and returns the error message.
fn expect_code<T: std::fmt::Debug>(result: Result<T, kv_client::Error>, code: Code) -> String {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(e) => {
            assert_eq!(e.code(), code, "{e}");
            e.to_string()
        }
    }
}

/// Starts the binary on `dir` (blocking start-up off the runtime threads).
async fn start_in(dir: &Path, args: &'static [&'static str]) -> BinaryServer {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || BinaryServer::start_in(BIN, &dir, args))
        .await
        .expect("server start did not panic")
}

/// SIGTERM, a clean exit, and a new server on the same data directory.
async fn restart_after_sigterm(
    server: BinaryServer,
    dir: &Path,
    args: &'static [&'static str],
) -> BinaryServer {
    let log = server.log();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate did not panic");
    assert!(status.success(), "exit status {status}; log: {log:?}");
    start_in(dir, args).await
}

/// SIGKILL (no shutdown at all) and a new server on the same directory.
async fn restart_after_sigkill(
    server: BinaryServer,
    dir: &Path,
    args: &'static [&'static str],
) -> BinaryServer {
    tokio::task::spawn_blocking(move || server.kill())
        .await
        .expect("kill did not panic");
    start_in(dir, args).await
}

/// Polls until `key` is gone (its TTL ran out), 5 s at most.
async fn wait_until_absent(kv: &Project, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while kv.has(key).await.unwrap() {
        assert!(Instant::now() < deadline, "{key} did not expire within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 64 tasks on four connections each add 1 a thousand times to one key:
/// the final value is exactly 64000 and the 64000 returned values are
/// exactly 1..=64000, so every increment saw a distinct state (none lost,
/// none applied twice); versions are distinct too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_each_see_a_distinct_state() {
    const TASKS: usize = 64;
    const EACH: usize = 1000;
    let server = BinaryServer::start(BIN, ARGS);
    let clients = connections(&server, 4).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let kv = clients[t % clients.len()].project("counters");
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(EACH);
                for _ in 0..EACH {
                    let step = kv.incr_with("hits", 1.0, IncrOptions::new()).await.unwrap();
                    seen.push(step);
                }
                seen
            })
        })
        .collect();
    // 64000 round trips take most of this file's time in a debug build.
    let results = bounded_by(3 * PHASE_LIMIT, "64 x 1000 increments", async {
        let mut all = Vec::with_capacity(TASKS * EACH);
        for task in tasks {
            all.extend(task.await.expect("increment task did not panic"));
        }
        all
    })
    .await;
    println!("{} increments in {:?}", results.len(), started.elapsed());

    let kv = clients[0].project("counters");
    assert_eq!(kv.get::<f64>("hits").await.unwrap(), Some(64000.0));
    let mut values: Vec<u64> = results
        .iter()
        .map(|r| {
            assert_eq!(r.value.fract(), 0.0, "{r:?}");
            r.value as u64
        })
        .collect();
    values.sort_unstable();
    assert!(
        values.iter().copied().eq(1..=(TASKS * EACH) as u64),
        "returned values are not exactly 1..=64000"
    );
    let versions: HashSet<u64> = results.iter().map(|r| r.version).collect();
    assert_eq!(
        versions.len(),
        TASKS * EACH,
        "every increment has its own version"
    );
    let last = results.iter().max_by_key(|r| r.version).unwrap();
    assert_eq!(last.value, 64000.0, "the latest version holds the total");
    let entry = kv.get_entry::<f64>("hits").await.unwrap().unwrap();
    assert_eq!(entry.version, last.version);
    assert_eq!(entry.expires_at_ms, None, "incr without a TTL sets none");
}

/// A fixed-window rate limiter: 32 tasks make 50 attempts each with
/// `incr_with(ttl = 60 s)`, admitted while the count is at most 100.
/// Exactly 100 are admitted; the TTL is set by the increment that created
/// the key (about now + 60 s) and kept by every later one, even one asking
/// for another TTL; once the window's key expires, the next increment opens
/// a new window at 1 with a new deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_with_ttl_is_an_exact_fixed_window_rate_limiter() {
    const TASKS: usize = 32;
    const ATTEMPTS: usize = 50;
    const LIMIT: f64 = 100.0;
    const WINDOW: Duration = Duration::from_secs(60);
    let server = BinaryServer::start(BIN, ARGS);
    let shared = connect(&server).await;
    let other = connect(&server).await;
    let window = IncrOptions::new().ttl(WINDOW);

    let before = now_ms();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let kv = if t % 2 == 0 { &shared } else { &other }.project("limits");
            let window = window.clone();
            tokio::spawn(async move {
                let mut admitted = 0;
                let mut values = Vec::with_capacity(ATTEMPTS);
                for _ in 0..ATTEMPTS {
                    let hit = kv
                        .incr_with("rate:client-9", 1.0, window.clone())
                        .await
                        .unwrap();
                    if hit.value <= LIMIT {
                        admitted += 1;
                    }
                    values.push(hit.value as u64);
                }
                (admitted, values)
            })
        })
        .collect();
    let (admitted, mut values) = bounded("rate limiter attempts", async {
        let (mut admitted, mut values) = (0, Vec::new());
        for task in tasks {
            let (a, v) = task.await.expect("limiter task did not panic");
            admitted += a;
            values.extend(v);
        }
        (admitted, values)
    })
    .await;
    let after = now_ms();
    assert_eq!(admitted, LIMIT as usize, "exactly the limit was admitted");
    values.sort_unstable();
    assert!(
        values.iter().copied().eq(1..=(TASKS * ATTEMPTS) as u64),
        "every attempt counted once"
    );

    let kv = shared.project("limits");
    let entry = kv.get_entry::<f64>("rate:client-9").await.unwrap().unwrap();
    assert_eq!(entry.value, (TASKS * ATTEMPTS) as f64);
    let deadline = entry.expires_at_ms.expect("the window has a deadline");
    let window_ms = WINDOW.as_millis() as u64;
    assert!(
        (before + window_ms..=after + window_ms).contains(&deadline),
        "deadline {deadline} not within [{}, {}]: set when the key was created",
        before + window_ms,
        after + window_ms
    );
    // Later increments, with the same or another TTL, keep the deadline.
    for ttl in [WINDOW, Duration::from_secs(5), Duration::from_secs(3600)] {
        kv.incr_with("rate:client-9", 1.0, IncrOptions::new().ttl(ttl))
            .await
            .unwrap();
    }
    kv.incr("rate:client-9", 1.0).await.unwrap();
    let later = kv.get_entry::<f64>("rate:client-9").await.unwrap().unwrap();
    assert_eq!(later.value, (TASKS * ATTEMPTS + 4) as f64);
    assert_eq!(
        later.expires_at_ms,
        Some(deadline),
        "an increment of an existing key keeps its deadline"
    );

    // A short window: once it expires the count starts again at 1.
    // (1 s: long enough that two increments in a row share the window even
    // on a loaded machine.)
    let short = IncrOptions::new().ttl(Duration::from_secs(1));
    let first = kv
        .incr_with("rate:short", 1.0, short.clone())
        .await
        .unwrap();
    assert_eq!(first.value, 1.0);
    let second = kv
        .incr_with("rate:short", 1.0, short.clone())
        .await
        .unwrap();
    assert_eq!(second.value, 2.0);
    let old_deadline = kv
        .get_entry::<f64>("rate:short")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms
        .unwrap();
    wait_until_absent(&kv, "rate:short").await;
    let reopened = kv.incr_with("rate:short", 1.0, short).await.unwrap();
    assert_eq!(reopened.value, 1.0, "a new window starts from 1");
    assert!(reopened.version > second.version);
    let new_deadline = kv
        .get_entry::<f64>("rate:short")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms
        .unwrap();
    assert!(
        new_deadline > old_deadline,
        "the new window has a new deadline"
    );
}

/// 32 concurrent merges, each adding its own top-level field and its own
/// field of a shared nested object, lose nothing; null members remove
/// fields at both levels; a non-object patch replaces the value and an
/// object patch on a non-object starts from `{}`; a merge keeps the
/// deadline unless it gives a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merges_lose_no_field() {
    const TASKS: usize = 32;
    let server = BinaryServer::start(BIN, ARGS);
    let clients = connections(&server, 4).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let kv = clients[i % clients.len()].project("docs");
            tokio::spawn(async move {
                let patch = json!({
                    format!("f{i}"): i,
                    "shared": { format!("f{i}"): true },
                });
                let merged: Versioned<Json> = kv
                    .merge_with("doc", &patch, MergeOptions::new())
                    .await
                    .unwrap();
                assert_eq!(merged.value[format!("f{i}")], json!(i), "{merged:?}");
                assert_eq!(merged.value["shared"][format!("f{i}")], json!(true));
                merged.version
            })
        })
        .collect();
    let versions: HashSet<u64> = bounded("32 merges", async {
        let mut versions = HashSet::new();
        for task in tasks {
            versions.insert(task.await.expect("merge task did not panic"));
        }
        versions
    })
    .await;
    assert_eq!(versions.len(), TASKS, "each merge has its own version");

    let kv = clients[0].project("docs");
    let doc = kv.get_entry::<Json>("doc").await.unwrap().unwrap();
    assert_eq!(doc.version, *versions.iter().max().unwrap());
    let mut expected = serde_json::Map::new();
    let mut shared = serde_json::Map::new();
    for i in 0..TASKS {
        expected.insert(format!("f{i}"), json!(i));
        shared.insert(format!("f{i}"), json!(true));
    }
    expected.insert("shared".into(), Json::Object(shared));
    assert_eq!(doc.value, Json::Object(expected.clone()));

    // Null members remove, at the top level and nested.
    let removed: Json = kv
        .merge(
            "doc",
            &json!({"f0": null, "shared": {"f1": null}, "new": [1, 2]}),
        )
        .await
        .unwrap();
    expected.remove("f0");
    expected["shared"].as_object_mut().unwrap().remove("f1");
    expected.insert("new".into(), json!([1, 2]));
    assert_eq!(removed, Json::Object(expected.clone()));
    assert_eq!(kv.get::<Json>("doc").await.unwrap(), Some(removed));

    // A non-object patch replaces; an object patch on a non-object starts
    // from {}.
    assert_eq!(
        kv.merge::<_, Json>("scalar", &json!(5)).await.unwrap(),
        json!(5)
    );
    assert_eq!(
        kv.merge::<_, Json>("scalar", &json!({"a": {"b": 1}, "gone": null}))
            .await
            .unwrap(),
        json!({"a": {"b": 1}})
    );

    // Deadlines: a merge with a TTL sets one, a merge without keeps it.
    let created = kv
        .merge_with::<_, Json>(
            "session",
            &json!({"cart": [7]}),
            MergeOptions::new().ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let deadline = kv
        .get_entry::<Json>("session")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms
        .expect("merge with a TTL sets a deadline");
    let kept = kv
        .merge_with::<_, Json>("session", &json!({"user": 3}), MergeOptions::new())
        .await
        .unwrap();
    assert!(kept.version > created.version);
    let entry = kv.get_entry::<Json>("session").await.unwrap().unwrap();
    assert_eq!(entry.value, json!({"cart": [7], "user": 3}));
    assert_eq!(
        entry.expires_at_ms,
        Some(deadline),
        "merge keeps the deadline"
    );
}

/// 16 tasks on four connections each add 1 fifty times by reading the entry
/// and compare-and-swapping value + 1 at its version, retrying when the
/// swap is refused: no update is lost (exactly 800), every applied swap has
/// its own version, and a refused swap reports a different current
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_loops_lose_no_update() {
    const TASKS: usize = 16;
    const EACH: usize = 50;
    let server = BinaryServer::start(BIN, ARGS);
    let clients = connections(&server, 4).await;
    let kv = clients[0].project("cas");
    let start = kv.set_with("n", &0u64, SetOptions::new()).await.unwrap();
    assert!(start.applied);
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let kv = clients[t % clients.len()].project("cas");
            let failed = failed.clone();
            tokio::spawn(async move {
                let mut applied_versions = Vec::with_capacity(EACH);
                for _ in 0..EACH {
                    loop {
                        let entry = kv.get_entry::<u64>("n").await.unwrap().unwrap();
                        let swap = kv
                            .compare_and_swap("n", entry.version, &(entry.value + 1))
                            .await
                            .unwrap();
                        if swap.applied {
                            assert!(swap.version > entry.version);
                            applied_versions.push(swap.version);
                            break;
                        }
                        assert_ne!(
                            swap.version, entry.version,
                            "a refused swap reports the key's current version"
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                applied_versions
            })
        })
        .collect();
    let versions = bounded("16 x 50 CAS increments", async {
        let mut versions = Vec::new();
        for task in tasks {
            versions.extend(task.await.expect("CAS task did not panic"));
        }
        versions
    })
    .await;
    println!(
        "{} CAS increments, {} refused swaps retried",
        versions.len(),
        failed.load(Ordering::Relaxed)
    );
    let entry = kv.get_entry::<u64>("n").await.unwrap().unwrap();
    assert_eq!(entry.value, (TASKS * EACH) as u64, "no update was lost");
    let distinct: HashSet<u64> = versions.iter().copied().collect();
    assert_eq!(distinct.len(), TASKS * EACH);
    assert_eq!(entry.version, *versions.iter().max().unwrap());
    // A stale version is refused and changes nothing.
    let stale = kv
        .compare_and_swap("n", start.version, &0u64)
        .await
        .unwrap();
    assert!(!stale.applied);
    assert_eq!(stale.version, entry.version);
    assert_eq!(kv.get_entry::<u64>("n").await.unwrap(), Some(entry));
    // Version 0 is refused by the server.
    expect_code(
        kv.compare_and_swap("n", 0, &1u64).await,
        Code::InvalidArgument,
    );
    // A swap on an absent key is refused with version 0.
    let absent = kv.compare_and_swap("missing", 1, &1u64).await.unwrap();
    assert_eq!((absent.applied, absent.version), (false, 0));
    assert_eq!(kv.get::<u64>("missing").await.unwrap(), None);
}

/// Everything the idempotency test retries, with the first outcome of each.
struct FirstOutcomes {
    incr: Versioned<f64>,
    burst: Versioned<f64>,
    created: kv_client::SetOutcome,
    batch: BatchOutcome,
    refused_batch: BatchOutcome,
    after_error: Versioned<f64>,
}

fn batch_b1(kv: &Project) -> kv_client::Batch {
    kv.batch()
        .check_absent("acct")
        .set("acct", &json!({"balance": 10}))
        .incr("n2", 5.0)
        .merge("doc", &json!({"a": 1}))
        .delete("s")
        .request_id("b1")
}

fn batch_b2(kv: &Project) -> kv_client::Batch {
    kv.batch()
        .check_absent("later")
        .set("written-by-b2", &true)
        .request_id("b2")
}

/// Retries every remembered request and checks each answers its first
/// outcome and applies nothing again.
async fn retry_all(kv: &Project, first: &FirstOutcomes) {
    let r1 = IncrOptions::new().request_id("r1");
    assert_eq!(
        kv.incr_with("n", 1.0, r1.clone()).await.unwrap(),
        first.incr
    );
    let burst = IncrOptions::new().request_id("burst");
    assert_eq!(kv.incr_with("m", 5.0, burst).await.unwrap(), first.burst);
    let s1 = SetOptions::new().if_absent().request_id("s1");
    assert_eq!(
        kv.set_with("s", &"first", s1).await.unwrap(),
        first.created,
        "the if-absent set answers applied = true again"
    );
    assert_eq!(batch_b1(kv).commit().await.unwrap(), first.batch);
    assert_eq!(batch_b2(kv).commit().await.unwrap(), first.refused_batch);
    let e1 = IncrOptions::new().request_id("e1");
    assert_eq!(
        kv.incr_with("text", 1.0, e1).await.unwrap(),
        first.after_error
    );
    // Reusing an id for another request stays refused.
    expect_code(kv.incr_with("n", 2.0, r1).await, Code::FailedPrecondition);
    assert_eq!(kv.get::<f64>("m").await.unwrap(), Some(5.0));
    assert_eq!(kv.get::<f64>("n2").await.unwrap(), Some(5.0));
    assert_eq!(
        kv.get::<Json>("acct").await.unwrap(),
        Some(json!({"balance": 10}))
    );
    assert_eq!(kv.get::<Json>("written-by-b2").await.unwrap(), None);
    assert_eq!(kv.get::<f64>("text").await.unwrap(), Some(11.0));
}

/// Request ids: a retried incr answers its first outcome and applies once
/// (also 16 copies sent at once); a retried if-absent set answers
/// applied = true although the key now exists; retried batches answer their
/// first outcome, applied or not; an id reused for another request (other
/// delta, key or method) is FAILED_PRECONDITION; an error is not remembered;
/// ids are per project. All of it holds after a SIGTERM restart and after a
/// SIGKILL restart, including for writes made just before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_apply_once_and_replay_the_first_outcome_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_in(dir.path(), ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("idem");

    let r1 = IncrOptions::new().request_id("r1");
    let incr = kv.incr_with("n", 1.0, r1.clone()).await.unwrap();
    assert_eq!(incr.value, 1.0);
    assert_eq!(kv.incr_with("n", 1.0, r1.clone()).await.unwrap(), incr);
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(1.0));

    // 16 copies of one request at once, on two connections: applied once.
    let second = connect(&server).await;
    let copies: Vec<_> = (0..16)
        .map(|i| {
            let kv = if i % 2 == 0 { &client } else { &second }.project("idem");
            tokio::spawn(async move {
                kv.incr_with("m", 5.0, IncrOptions::new().request_id("burst"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut burst = Vec::new();
    for copy in copies {
        burst.push(copy.await.unwrap());
    }
    assert!(burst.iter().all(|b| *b == burst[0]), "{burst:?}");
    assert_eq!(burst[0].value, 5.0);
    assert_eq!(kv.get::<f64>("m").await.unwrap(), Some(5.0));

    let s1 = SetOptions::new().if_absent().request_id("s1");
    let created = kv.set_with("s", &"first", s1.clone()).await.unwrap();
    assert!(created.applied);
    assert_eq!(kv.set_with("s", &"first", s1).await.unwrap(), created);
    let plain = kv
        .set_with("s", &"first", SetOptions::new().if_absent())
        .await
        .unwrap();
    assert_eq!(
        (plain.applied, plain.version),
        (false, created.version),
        "without the id the key exists"
    );

    // Reused for another request: another delta, key or method.
    expect_code(
        kv.incr_with("n", 2.0, r1.clone()).await,
        Code::FailedPrecondition,
    );
    expect_code(
        kv.incr_with("other", 1.0, r1.clone()).await,
        Code::FailedPrecondition,
    );
    expect_code(
        kv.set_with("n", &5, SetOptions::new().request_id("r1"))
            .await,
        Code::FailedPrecondition,
    );
    expect_code(
        kv.batch().incr("n", 1.0).request_id("r1").commit().await,
        Code::FailedPrecondition,
    );
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(1.0));
    assert_eq!(kv.get::<f64>("other").await.unwrap(), None);

    // Batches: the retry answers the first outcome although its check no
    // longer holds.
    let batch = batch_b1(&kv).commit().await.unwrap();
    assert!(batch.applied);
    assert_eq!(batch.results.len(), 4);
    assert_eq!(batch_b1(&kv).commit().await.unwrap(), batch);
    assert_eq!(kv.get::<f64>("n2").await.unwrap(), Some(5.0));
    assert_eq!(kv.get::<Json>("s").await.unwrap(), None, "b1 deleted s");
    // A refused batch is an outcome too: its retry is refused again even
    // once the check would hold.
    kv.set("later", &1).await.unwrap();
    let refused_batch = batch_b2(&kv).commit().await.unwrap();
    assert!(!refused_batch.applied);
    assert_eq!(refused_batch.failed_check, Some(0));
    assert!(kv.delete("later").await.unwrap());
    assert_eq!(batch_b2(&kv).commit().await.unwrap(), refused_batch);
    assert_eq!(kv.get::<Json>("written-by-b2").await.unwrap(), None);

    // An error is not remembered: the retry runs afresh.
    kv.set("text", &"abc").await.unwrap();
    let e1 = IncrOptions::new().request_id("e1");
    expect_code(
        kv.incr_with("text", 1.0, e1.clone()).await,
        Code::FailedPrecondition,
    );
    kv.set("text", &10).await.unwrap();
    let after_error = kv.incr_with("text", 1.0, e1.clone()).await.unwrap();
    assert_eq!(after_error.value, 11.0);

    // Ids are per project: the same id elsewhere is a new request.
    let elsewhere = client.project("idem-other");
    let fresh = elsewhere.incr_with("n", 7.0, r1.clone()).await.unwrap();
    assert_eq!(fresh.value, 7.0);

    let first = FirstOutcomes {
        incr,
        burst: burst[0].clone(),
        created,
        batch,
        refused_batch,
        after_error,
    };
    retry_all(&kv, &first).await;
    // b1's delete of s ran after s1: s1's retry must not have written s.
    assert_eq!(kv.get::<Json>("s").await.unwrap(), None);

    // SIGTERM restart.
    drop((client, second, kv, elsewhere));
    let server = restart_after_sigterm(server, dir.path(), ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("idem");
    retry_all(&kv, &first).await;
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(1.0));
    assert_eq!(
        client
            .project("idem-other")
            .incr_with("n", 7.0, r1.clone())
            .await
            .unwrap(),
        fresh
    );

    // Writes right before a SIGKILL are remembered too.
    let r2 = IncrOptions::new().request_id("r2");
    let incr2 = kv.incr_with("n", 1.0, r2.clone()).await.unwrap();
    assert_eq!(incr2.value, 2.0);
    let b3 = || {
        kv.batch()
            .incr("n3", 1.0)
            .set("b3-mark", &"x")
            .request_id("b3")
    };
    let batch3 = b3().commit().await.unwrap();
    assert!(batch3.applied);
    drop(client);
    let server = restart_after_sigkill(server, dir.path(), ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("idem");
    retry_all(&kv, &first).await;
    assert_eq!(kv.incr_with("n", 1.0, r2).await.unwrap(), incr2);
    assert_eq!(kv.incr_with("n", 1.0, r1).await.unwrap(), first.incr);
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(2.0));
    let b3 = || {
        kv.batch()
            .incr("n3", 1.0)
            .set("b3-mark", &"x")
            .request_id("b3")
    };
    assert_eq!(b3().commit().await.unwrap(), batch3);
    assert_eq!(kv.get::<f64>("n3").await.unwrap(), Some(1.0));
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
}

const ACCOUNTS: usize = 8;
const START_BALANCE: i64 = 100;

fn account(i: usize) -> String {
    format!("acct:{i}")
}

/// One transfer task: `count` transfers between random accounts, each read
/// with GetMany and committed as a batch checking both versions, retried
/// until applied. Returns (applied commits, refused commits).
async fn transfers(kv: Project, seed: u64, count: usize) -> (u64, u64) {
    let mut rng = Rng::seeded(seed);
    let (mut applied, mut refused) = (0, 0);
    for _ in 0..count {
        let from = rng.below(ACCOUNTS as u64) as usize;
        let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
        let amount = 1 + rng.below(10) as i64;
        let (from, to) = (account(from), account(to));
        loop {
            let read = kv.get_many::<i64, _>([&from, &to]).await.unwrap();
            let (Some(f), Some(t)) = (&read[0], &read[1]) else {
                panic!("an account is missing: {read:?}")
            };
            let outcome = kv
                .batch()
                .check_version(&from, f.version)
                .check_version(&to, t.version)
                .set(&from, &(f.value - amount))
                .set(&to, &(t.value + amount))
                .incr("transfers", 1.0)
                .commit()
                .await
                .unwrap();
            if outcome.applied {
                let versions: Vec<u64> = outcome.results.iter().map(OpResult::version).collect();
                assert_eq!(versions.len(), 3);
                assert!(
                    versions.windows(2).all(|w| w[0] < w[1]),
                    "ops get increasing versions: {versions:?}"
                );
                applied += 1;
                break;
            }
            assert!(outcome.results.is_empty());
            let (index, checked) = match outcome.failed_check {
                Some(0) => (0, f.version),
                Some(1) => (1, t.version),
                other => panic!("failed_check {other:?}"),
            };
            assert_ne!(
                outcome.current_version, checked,
                "check {index} failed, so its key moved on"
            );
            refused += 1;
        }
    }
    (applied, refused)
}

/// Transfers between 8 accounts by 8 tasks (100 each), as batches checking
/// both versions, while a reader on its own connection GetMany's every
/// account: the total is exactly 800 in every read (a batch is never seen
/// half applied), and at the end; the transfer counter each batch bumps
/// equals the number of applied commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_all_or_nothing_under_contention() {
    const TASKS: usize = 8;
    const EACH: usize = 100;
    let total = START_BALANCE * ACCOUNTS as i64;
    let server = BinaryServer::start(BIN, ARGS);
    let writers = connections(&server, 2).await;
    let reader = connect(&server).await.project("bank");
    let kv = writers[0].project("bank");
    let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
    let balances = vec![START_BALANCE; ACCOUNTS];
    kv.set_many(keys.iter().zip(&balances)).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reads = {
        let done = done.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            let mut last_count = 0i64;
            let mut all_keys = keys.clone();
            all_keys.push("transfers".into());
            // One more read after the writers finish.
            let mut finished = false;
            while !finished {
                finished = done.load(Ordering::Acquire);
                let read = reader.get_many::<i64, _>(&all_keys).await.unwrap();
                let sum: i64 = read[..ACCOUNTS]
                    .iter()
                    .map(|e| e.as_ref().expect("accounts exist").value)
                    .sum();
                assert_eq!(
                    sum, total,
                    "read {reads} saw a half-applied batch: {read:?}"
                );
                let count = read[ACCOUNTS].as_ref().map_or(0, |e| e.value);
                assert!(count >= last_count, "the transfer count went back");
                last_count = count;
                reads += 1;
            }
            (reads, last_count)
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let kv = writers[t % writers.len()].project("bank");
            tokio::spawn(transfers(kv, 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1), EACH))
        })
        .collect();
    let (applied, refused) = bounded("800 transfers", async {
        let (mut applied, mut refused) = (0, 0);
        for task in tasks {
            let (a, r) = task.await.expect("transfer task did not panic");
            applied += a;
            refused += r;
        }
        (applied, refused)
    })
    .await;
    done.store(true, Ordering::Release);
    let (reads, last_count) = bounded("the reader", reads)
        .await
        .expect("reader did not panic");
    println!(
        "{applied} transfers applied, {refused} refused and retried, {reads} consistent reads"
    );
    assert_eq!(applied, (TASKS * EACH) as u64);
    assert_eq!(
        last_count, applied as i64,
        "the reader's last read is final"
    );
    let end = kv.get_many::<i64, _>(&keys).await.unwrap();
    let sum: i64 = end.iter().map(|e| e.as_ref().unwrap().value).sum();
    assert_eq!(sum, total);
    assert_eq!(
        kv.get::<f64>("transfers").await.unwrap(),
        Some(applied as f64),
        "one counter bump per applied commit, none from refused ones"
    );
}

/// A batch that fails on its third op (an incr of a string, or an incr
/// beyond 2^53) is FAILED_PRECONDITION and writes nothing, not even its
/// earlier sets, and uses no version; a batch whose check fails reports the
/// check's index and its key's current version (0 when absent) and changes
/// nothing; a batch with no checks and later ops seeing earlier ones
/// applies in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_change_nothing() {
    let server = BinaryServer::start(BIN, ARGS);
    let kv = server.project("failing").await;
    let text = kv
        .set_with("text", &"hello", SetOptions::new())
        .await
        .unwrap();
    let big = kv
        .set_with("big", &(kv_client::MAX_SAFE_INTEGER - 1), SetOptions::new())
        .await
        .unwrap();
    let before = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    assert_eq!(before.version, big.version);

    let err = expect_code(
        kv.batch()
            .set("x1", &1)
            .set("x2", &2)
            .incr("text", 1.0)
            .set("x3", &3)
            .commit()
            .await,
        Code::FailedPrecondition,
    );
    println!("not a number: {err}");
    // 2^53 - 1 + 1 is fine alone, but + 2 is beyond 2^53.
    expect_code(
        kv.batch()
            .set("x1", &1)
            .merge("x2", &json!({"a": 1}))
            .incr("big", 2.0)
            .commit()
            .await,
        Code::FailedPrecondition,
    );
    expect_code(kv.incr("big", 2.0).await, Code::FailedPrecondition);
    // An earlier op of the same batch makes a later one fail.
    expect_code(
        kv.batch()
            .set("x1", &1)
            .set("x4", &"now a string")
            .incr("x4", 1.0)
            .commit()
            .await,
        Code::FailedPrecondition,
    );
    let after = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    assert_eq!(after, before, "failed batches wrote nothing");
    assert_eq!(
        kv.get_many::<Json, _>(["x1", "x2", "x3", "x4"])
            .await
            .unwrap(),
        vec![None, None, None, None]
    );
    let probe = kv.set_with("probe", &1, SetOptions::new()).await.unwrap();
    assert_eq!(
        probe.version,
        before.version + 1,
        "failed batches used no version"
    );

    // A failed check: index, current version, nothing changed.
    let outcome = kv
        .batch()
        .check_version("text", text.version)
        .check_absent("big")
        .set("text", &"changed")
        .delete("big")
        .commit()
        .await
        .unwrap();
    assert!(!outcome.applied);
    assert_eq!(outcome.failed_check, Some(1));
    assert_eq!(outcome.current_version, big.version);
    assert!(outcome.results.is_empty());
    let outcome = kv
        .batch()
        .check_version("text", text.version)
        .check_version("missing", 3)
        .set("text", &"changed")
        .commit()
        .await
        .unwrap();
    assert_eq!(
        (
            outcome.applied,
            outcome.failed_check,
            outcome.current_version
        ),
        (false, Some(1), 0)
    );
    let outcome = kv
        .batch()
        .check_version("text", big.version)
        .set("text", &"changed")
        .commit()
        .await
        .unwrap();
    assert_eq!(
        (
            outcome.applied,
            outcome.failed_check,
            outcome.current_version
        ),
        (false, Some(0), text.version)
    );
    let unchanged = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    assert_eq!(
        unchanged.version, probe.version,
        "refused batches wrote nothing"
    );
    assert_eq!(
        kv.get_entry::<String>("text").await.unwrap(),
        Some(Entry {
            value: "hello".into(),
            version: text.version,
            expires_at_ms: None,
            incarnation: 0,
        })
    );

    // The bound itself: 2^53 is reachable, one more is refused unchanged.
    let top = kv.incr_with("big", 1.0, IncrOptions::new()).await.unwrap();
    assert_eq!(top.value, 9007199254740992.0);
    expect_code(kv.incr("big", 1.0).await, Code::FailedPrecondition);
    expect_code(kv.incr("big", 0.5).await, Code::FailedPrecondition);
    let neg = -((kv_client::MAX_SAFE_INTEGER - 1) as f64);
    assert_eq!(kv.incr("neg", neg).await.unwrap(), neg);
    expect_code(kv.incr("neg", -2.0).await, Code::FailedPrecondition);
    assert_eq!(kv.get::<f64>("neg").await.unwrap(), Some(neg));
    let probe = kv.set_with("probe", &2, SetOptions::new()).await.unwrap();
    assert_eq!(
        probe.version,
        top.version + 2,
        "refused increments used no version"
    );

    // Later ops see earlier ones.
    let outcome = kv
        .batch()
        .check_version("text", text.version)
        .set("y", &10)
        .incr("y", 5.0)
        .merge("z", &json!({"a": 1}))
        .merge("z", &json!({"b": 2}))
        .delete("y")
        .incr("y", 1.0)
        .commit()
        .await
        .unwrap();
    assert!(outcome.applied);
    let v = probe.version;
    assert_eq!(
        outcome.results,
        vec![
            OpResult::Set { version: v + 1 },
            OpResult::Incr {
                value: 15.0,
                version: v + 2
            },
            OpResult::Merge {
                value: json!({"a": 1}),
                version: v + 3
            },
            OpResult::Merge {
                value: json!({"a": 1, "b": 2}),
                version: v + 4
            },
            OpResult::Delete {
                deleted: true,
                version: v + 5
            },
            OpResult::Incr {
                value: 1.0,
                version: v + 6
            },
        ]
    );
}

/// SetMany of 500 keys answers 500 consecutive versions, in order;
/// GetMany answers in request order with missing keys as None (duplicates
/// too), as of one moment even while SetMany rewrites the keys;
/// DeleteMany counts only live keys; a SetMany with one bad entry writes
/// nothing; over 1000 keys is RESOURCE_EXHAUSTED naming the limit, while
/// exactly 1000 works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_key_calls_keep_order_atomicity_and_limits() {
    let server = BinaryServer::start(BIN, ARGS);
    let client = connect(&server).await;
    let kv = client.project("many");
    let keys: Vec<String> = (0..500).map(|i| format!("k{i:03}")).collect();
    let values: Vec<Json> = (0..500).map(|i| json!({"i": i})).collect();
    let versions = kv.set_many(keys.iter().zip(&values)).await.unwrap();
    assert_eq!(versions.len(), 500);
    assert!(
        versions
            .iter()
            .enumerate()
            .all(|(i, v)| *v == versions[0] + i as u64),
        "consecutive versions in request order: {versions:?}"
    );

    let asked = [
        "k499",
        "missing-a",
        "k000",
        "k250",
        "k250",
        "missing-b",
        "k001",
    ];
    let got = kv.get_many::<Json, _>(asked).await.unwrap();
    let expected: Vec<Option<Entry<Json>>> = asked
        .iter()
        .map(|key| {
            let i: usize = key.strip_prefix('k')?.parse().ok()?;
            Some(Entry {
                value: json!({"i": i}),
                version: versions[i],
                expires_at_ms: None,
                incarnation: 0,
            })
        })
        .collect();
    assert_eq!(got, expected);
    let reversed: Vec<&String> = keys.iter().rev().collect();
    let all = kv.get_many::<Json, _>(&reversed).await.unwrap();
    for (entry, i) in all.iter().zip((0..500).rev()) {
        let entry = entry.as_ref().unwrap();
        assert_eq!((&entry.value, entry.version), (&values[i], versions[i]));
    }

    // GetMany is one moment while SetMany rewrites 100 keys per round.
    let group: Vec<String> = (0..100).map(|i| format!("g{i:02}")).collect();
    let writer = {
        let kv = kv.clone();
        let group = group.clone();
        tokio::spawn(async move {
            for round in 0..150u32 {
                kv.set_many(group.iter().map(|k| (k, &round)))
                    .await
                    .unwrap();
            }
        })
    };
    let reader = connect(&server).await.project("many");
    let mut reads = 0;
    bounded("SetMany rounds", async {
        while !writer.is_finished() {
            let read = reader.get_many::<u32, _>(&group).await.unwrap();
            let rounds: HashSet<Option<u32>> =
                read.iter().map(|e| e.as_ref().map(|e| e.value)).collect();
            assert_eq!(
                rounds.len(),
                1,
                "a SetMany was seen half applied: {rounds:?}"
            );
            reads += 1;
        }
        writer.await.unwrap();
    })
    .await;
    println!("{reads} GetMany reads during 150 SetMany rounds");

    // DeleteMany counts live keys only.
    let mut doomed: Vec<String> = keys[..100].to_vec();
    doomed.extend((0..20).map(|i| format!("never-{i}")));
    doomed.push(keys[0].clone());
    assert_eq!(kv.delete_many(&doomed).await.unwrap(), 100);
    assert_eq!(kv.delete_many(&doomed).await.unwrap(), 0);
    assert!(
        kv.get_many::<Json, _>(&keys[..100])
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    kv.set_many_with(
        [("brief", &1)],
        SetManyOptions::new().ttl(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    wait_until_absent(&kv, "brief").await;
    assert_eq!(kv.delete_many(["brief", "k100", "k100"]).await.unwrap(), 1);

    // One bad entry: nothing is written.
    let long_key = "x".repeat(5000);
    let mut bad: Vec<(String, Json)> = (0..10).map(|i| (format!("bad{i}"), json!(i))).collect();
    bad.push((long_key, json!(0)));
    let err = kv
        .set_many(bad.iter().map(|(k, v)| (k, v)))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::ResourceExhausted),
        "{err}"
    );
    assert!(
        kv.get_many::<Json, _>(bad[..10].iter().map(|(k, _)| k))
            .await
            .unwrap()
            .iter()
            .all(Option::is_none),
        "a refused SetMany wrote nothing"
    );

    // Limits: 1001 refused naming 1000, 1000 accepted.
    let over: Vec<String> = (0..=MAX_PER_CALL).map(|i| format!("big{i:04}")).collect();
    let one = json!(1);
    for err in [
        expect_code(
            kv.set_many(over.iter().map(|k| (k, &one))).await,
            Code::ResourceExhausted,
        ),
        expect_code(kv.get_many::<Json, _>(&over).await, Code::ResourceExhausted),
        expect_code(kv.delete_many(&over).await, Code::ResourceExhausted),
    ] {
        assert!(err.contains("1001") && err.contains("1000"), "{err}");
    }
    let mut too_big = kv.batch();
    for k in &over {
        too_big = too_big.delete(k);
    }
    let err = expect_code(too_big.commit().await, Code::ResourceExhausted);
    assert!(err.contains("1000"), "{err}");
    assert!(
        kv.get_many::<Json, _>(&over[..MAX_PER_CALL])
            .await
            .unwrap()
            .iter()
            .all(Option::is_none),
        "the refused SetMany wrote nothing"
    );
    let limit = &over[..MAX_PER_CALL];
    let written = kv.set_many(limit.iter().map(|k| (k, &one))).await.unwrap();
    assert_eq!(written.len(), MAX_PER_CALL);
    let read = kv.get_many::<u32, _>(limit).await.unwrap();
    assert!(
        read.iter()
            .all(|e| e.as_ref().is_some_and(|e| e.value == 1))
    );
    assert_eq!(kv.delete_many(limit).await.unwrap(), MAX_PER_CALL as u64);
}

/// The whole state of a project: one page (every test project here holds
/// fewer than 1000 keys) with the project's version.
async fn state(kv: &Project) -> Page {
    let page = kv.list(ListOptions::new().limit(1000)).await.unwrap();
    assert_eq!(page.next_start_after, None, "the project fits one page");
    page
}

/// Tracks the highest version any write answered.
#[derive(Default)]
struct Seen(u64);

impl Seen {
    fn saw(&mut self, version: u64) -> u64 {
        self.0 = self.0.max(version);
        version
    }

    fn batch(&mut self, outcome: &BatchOutcome) {
        assert!(outcome.applied, "{outcome:?}");
        for result in &outcome.results {
            self.saw(result.version());
        }
    }
}

/// A mix of every kind of write on project `durable`, round `round`.
async fn mixed_writes(kv: &Project, round: u32, seen: &mut Seen) {
    let hour = Duration::from_secs(3600);
    for _ in 0..5 {
        seen.saw(
            kv.incr_with("counter", 1.0, IncrOptions::new())
                .await
                .unwrap()
                .version,
        );
    }
    for _ in 0..3 {
        let window = IncrOptions::new().ttl(hour);
        seen.saw(kv.incr_with("window", 1.0, window).await.unwrap().version);
    }
    for patch in [
        json!({"a": round, "nested": {"x": round}}),
        json!({"b": [round], "nested": {"y": true}}),
        json!({"a": null, "nested": {"x": null}}),
    ] {
        let merged: Versioned<Json> = kv
            .merge_with("doc", &patch, MergeOptions::new())
            .await
            .unwrap();
        seen.saw(merged.version);
    }
    let session = MergeOptions::new().ttl(hour);
    let merged: Versioned<Json> = kv
        .merge_with("session", &json!({"round": round}), session)
        .await
        .unwrap();
    seen.saw(merged.version);

    let mut cas = kv.get_entry::<u32>("cas").await.unwrap();
    if cas.is_none() {
        let created = kv.set_if_absent("cas", &0u32).await.unwrap();
        assert!(created.applied);
        cas = kv.get_entry::<u32>("cas").await.unwrap();
    }
    let mut cas = cas.unwrap();
    for _ in 0..3 {
        let swap = kv
            .compare_and_swap("cas", cas.version, &(cas.value + 1))
            .await
            .unwrap();
        assert!(swap.applied);
        cas = Entry {
            value: cas.value + 1,
            version: seen.saw(swap.version),
            expires_at_ms: None,
            incarnation: 0,
        };
    }
    assert!(!kv.compare_and_swap("cas", 1, &0u32).await.unwrap().applied);

    let kept = SetOptions::new().ttl(hour);
    seen.saw(kv.set_with("kept", &round, kept).await.unwrap().version);
    let keep = SetOptions::new().keep_ttl();
    seen.saw(
        kv.set_with("kept", &(round + 1), keep)
            .await
            .unwrap()
            .version,
    );

    let order = format!("order:{round}");
    let outcome = kv
        .batch()
        .check_absent(&order)
        .set(&order, &json!({"round": round}))
        .incr("counter", 10.0)
        .merge("doc", &json!({"batch": round}))
        .delete("item:03")
        .set_with_ttl("batch-ttl", &round, hour)
        .commit()
        .await
        .unwrap();
    seen.batch(&outcome);

    let items: Vec<(String, Json)> = (0..40)
        .map(|i| (format!("item:{i:02}"), json!({"i": i, "round": round})))
        .collect();
    for v in kv
        .set_many(items.iter().map(|(k, v)| (k, v)))
        .await
        .unwrap()
    {
        seen.saw(v);
    }
    let cached: Vec<String> = (0..5).map(|i| format!("cache:{i}")).collect();
    let options = SetManyOptions::new().ttl(hour);
    for v in kv
        .set_many_with(cached.iter().map(|k| (k, &round)), options)
        .await
        .unwrap()
    {
        seen.saw(v);
    }
    let removed = kv
        .delete_many((30..40).map(|i| format!("item:{i:02}")))
        .await
        .unwrap();
    assert_eq!(removed, 10);
}

/// Checks `kv` holds exactly `before` (values, versions, deadlines, project
/// version) and that a new write's version is above everything seen.
async fn check_same_state(kv: &Project, before: &Page, seen: &mut Seen, when: &str) {
    let after = state(kv).await;
    assert_eq!(after.entries, before.entries, "{when}: entries changed");
    assert_eq!(
        after.version, before.version,
        "{when}: the project's version changed"
    );
    let keys: Vec<&str> = before.entries.iter().map(|e| e.key.as_str()).collect();
    let entries = kv.get_many::<Json, _>(&keys).await.unwrap();
    for (entry, listed) in entries.iter().zip(&before.entries) {
        let entry = entry
            .as_ref()
            .unwrap_or_else(|| panic!("{when}: {} lost", listed.key));
        assert_eq!(
            (Some(&entry.value), entry.version, entry.expires_at_ms),
            (listed.value.as_ref(), listed.version, listed.expires_at_ms),
            "{when}: {}",
            listed.key
        );
    }
    let probe = kv
        .set_with("probe", &when, SetOptions::new())
        .await
        .unwrap();
    assert!(
        probe.version > seen.0 && probe.version > before.version,
        "{when}: version {} is not above {} seen before: versions went back",
        probe.version,
        seen.0.max(before.version)
    );
    seen.saw(probe.version);
}

/// After increments, merges, CAS sets, keep-TTL sets, batches, SetMany and
/// DeleteMany (with TTLs), each restart — SIGTERM, SIGKILL, and SIGKILL
/// after a snapshot compacted the log — keeps every value, version and
/// deadline and the project's version, even when the last change was a
/// delete or a clear whose version no entry carries; the next write's
/// version is above every version seen before; a key whose TTL ran out
/// stays gone; request ids survive the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_atomic_write_survives_restarts_and_versions_never_go_back() {
    const SNAPSHOTTING: &[&str] = &["--fsync", "never", "--snapshot-min-log-bytes", "4096"];
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let server = start_in(dir, ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("durable");
    let mut seen = Seen::default();

    mixed_writes(&kv, 1, &mut seen).await;
    let brief = client.project("brief");
    brief
        .set_with_ttl("short", &1, Duration::from_millis(1))
        .await
        .unwrap();
    // The last change is a delete: only the project's version records it.
    let deleted = kv
        .delete_with("item:00", kv_client::DeleteOptions::new())
        .await
        .unwrap();
    assert!(deleted.deleted);
    seen.saw(deleted.version);
    let before = state(&kv).await;
    assert_eq!(before.version, deleted.version);
    drop(client);

    let server = restart_after_sigterm(server, dir, ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("durable");
    check_same_state(&kv, &before, &mut seen, "after SIGTERM").await;
    assert_eq!(
        client.project("brief").get::<i32>("short").await.unwrap(),
        None
    );

    mixed_writes(&kv, 2, &mut seen).await;
    // The last changes are a DeleteMany, which answers no version.
    assert_eq!(
        kv.delete_many(["item:01", "item:02", "cache:0"])
            .await
            .unwrap(),
        3
    );
    let before = state(&kv).await;
    assert!(before.version >= seen.0 + 3);
    drop(client);

    let server = restart_after_sigkill(server, dir, ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("durable");
    check_same_state(&kv, &before, &mut seen, "after SIGKILL").await;
    drop(client);

    // Snapshot: a clear and a remembered request id before it, a few writes
    // after it, then SIGKILL.
    let server = restart_after_sigterm(server, dir, SNAPSHOTTING).await;
    let client = connect(&server).await;
    let kv = client.project("durable");
    let remembered = IncrOptions::new().request_id("before-snapshot");
    let first = kv
        .incr_with("counter", 1.0, remembered.clone())
        .await
        .unwrap();
    seen.saw(first.version);
    let cleared_project = client.project("cleared");
    cleared_project.set("a", &1).await.unwrap();
    cleared_project.set("b", &2).await.unwrap();
    let cleared = cleared_project
        .clear_with(kv_client::ClearOptions::new())
        .await
        .unwrap();
    assert_eq!(cleared.deleted, 2);
    let log_from = server.log().len();
    let snapshot = bounded("a snapshot", async {
        let mut n = 0u32;
        loop {
            n += 1;
            seen.saw(
                kv.set_with(
                    "pad",
                    &"p".repeat(200 + (n % 7) as usize),
                    SetOptions::new(),
                )
                .await
                .unwrap()
                .version,
            );
            // The second snapshot after the writes above surely covers
            // them: it starts only once the first one has finished.
            let written = server.log()[log_from..]
                .iter()
                .filter(|l| l.contains("snapshot written"))
                .count();
            if written >= 2 {
                return n;
            }
        }
    })
    .await;
    println!("two snapshots written within {snapshot} overwrites");
    mixed_writes(&kv, 3, &mut seen).await;
    let before = state(&kv).await;
    drop((client, kv, cleared_project));

    let server = restart_after_sigkill(server, dir, ARGS).await;
    let client = connect(&server).await;
    let kv = client.project("durable");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("recovered") && l.contains("snapshot=Some")),
        "recovery read the snapshot: {:?}",
        server.log()
    );
    check_same_state(&kv, &before, &mut seen, "after snapshot and SIGKILL").await;
    let retried = kv.incr_with("counter", 1.0, remembered).await.unwrap();
    assert_eq!(retried, first, "the request id survived the snapshot");
    let cleared_project = client.project("cleared");
    assert_eq!(state(&cleared_project).await.entries, vec![]);
    let after_clear = cleared_project
        .set_with("c", &3, SetOptions::new())
        .await
        .unwrap();
    assert!(
        after_clear.version > cleared.version,
        "version {} after a clear at {}: versions went back",
        after_clear.version,
        cleared.version
    );
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
}
