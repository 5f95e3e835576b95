//! The SDK's retries against the real binary through a faulty network: a
//! TCP proxy on loopback cuts every connection after a few tens of
//! milliseconds, delays and stalls the bytes in between. Many tasks write
//! through it; every call must succeed (its deadline leaves room for the
//! retries) and every write must apply exactly once: the automatic request
//! ids make the server answer a retry with the first outcome.

use std::time::{Duration, Instant};

use kv_client::{OpResult, RetryPolicy};
use kv_tests::{
    BinaryServer,
    proxy::{Proxy, ProxyConfig},
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const TASKS: usize = 64;
/// Bounds every part: all its tasks must be done by then.
const PART_LIMIT: Duration = Duration::from_secs(40);

/// A server, the proxy in front of it (its default faults: connections cut
/// after 10-60 ms, some chunks delayed 1-5 ms, a few stalled 30-100 ms) and
/// a client through the proxy whose calls may retry for up to 30 s.
async fn setup() -> (BinaryServer, Proxy, kv_client::Client) {
    let server = BinaryServer::start(BIN, &["--fsync", "never"]);
    let proxy = Proxy::start(server.addr, ProxyConfig::default()).await;
    let client = kv_client::Client::builder(proxy.url())
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(1))
        .retry(
            RetryPolicy::default()
                .max_attempts(1000)
                .initial_backoff(Duration::from_millis(2))
                .max_backoff(Duration::from_millis(50)),
        )
        .connect_lazy()
        .unwrap();
    (server, proxy, client)
}

/// Runs `TASKS` copies of `task` (given its index), all bounded by
/// `PART_LIMIT`, and gathers their outputs.
async fn run_tasks<T, F, Fut>(part: &str, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..TASKS).map(|t| tokio::spawn(task(t))).collect();
    let mut outputs = Vec::new();
    let deadline = tokio::time::Instant::now() + PART_LIMIT;
    for handle in handles {
        let output = tokio::time::timeout_at(deadline, handle)
            .await
            .unwrap_or_else(|_| panic!("{part}: tasks still running after {PART_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{part}: a task failed: {e}"));
        outputs.push(output);
    }
    eprintln!("{part}: {:?}", started.elapsed());
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_cutting_proxy_apply_exactly_once() {
    let (server, proxy, client) = setup().await;

    // 64 tasks x 1000 increments of one counter: the results are every
    // number from 1 to 64000, each once.
    const INCRS: usize = 1000;
    let kv = client.project("incr");
    let results = run_tasks("incr", |t| {
        let kv = kv.clone();
        async move {
            let mut seen = Vec::with_capacity(INCRS);
            for i in 0..INCRS {
                let value = kv
                    .incr("counter", 1.0)
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, incr {i}: {e}"));
                seen.push(value as u64);
            }
            seen
        }
    })
    .await;
    let mut all: Vec<u64> = results.into_iter().flatten().collect();
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(TASKS * INCRS) as u64).collect();
    assert!(all == expected, "incr results are not exactly 1..=64000");
    let cuts_after_incr = proxy.stats().cuts;
    assert!(
        cuts_after_incr >= 10,
        "the proxy cut only {cuts_after_incr} connections"
    );

    // Merges adding distinct fields, eight tasks per document: each merge
    // is one change of the project, so the versions handed back are
    // exactly 1..=N, and every field is there.
    const MERGES: usize = 60;
    let kv = client.project("merge");
    let results = run_tasks("merge", |t| {
        let kv = kv.clone();
        async move {
            let mut versions = Vec::new();
            for i in 0..MERGES {
                let field = format!("t{t}-{i}");
                let merged = kv
                    .merge_with::<_, Value>(
                        &format!("doc{}", t % 8),
                        &json!({ field.clone(): i }),
                        kv_client::MergeOptions::new(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, merge {i}: {e}"));
                assert_eq!(merged.value[&field], json!(i));
                versions.push(merged.version);
            }
            versions
        }
    })
    .await;
    let mut versions: Vec<u64> = results.into_iter().flatten().collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=(TASKS * MERGES) as u64).collect::<Vec<_>>());
    for d in 0..8 {
        let doc: Value = kv.get(&format!("doc{d}")).await.unwrap().unwrap();
        let fields = doc.as_object().unwrap();
        assert_eq!(fields.len(), TASKS / 8 * MERGES, "doc{d}");
        for t in (d..TASKS).step_by(8) {
            for i in 0..MERGES {
                assert_eq!(fields[&format!("t{t}-{i}")], json!(i));
            }
        }
    }

    // SetMany of distinct keys: each key keeps the version its call got
    // back (a second application would have moved it), and the project
    // never went past one version per entry written.
    const SET_MANYS: usize = 40;
    let kv = client.project("setmany");
    let results = run_tasks("set_many", |t| {
        let kv = kv.clone();
        async move {
            let mut written = Vec::new();
            for i in 0..SET_MANYS {
                let keys: Vec<String> = (0..3).map(|j| format!("t{t}-{i}-{j}")).collect();
                let value = json!({"t": t, "i": i});
                let versions = kv
                    .set_many(keys.iter().map(|k| (k.as_str(), &value)))
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, set_many {i}: {e}"));
                written.extend(keys.into_iter().zip(versions));
            }
            written
        }
    })
    .await;
    let written: Vec<(String, u64)> = results.into_iter().flatten().collect();
    assert_eq!(written.len(), TASKS * SET_MANYS * 3);
    let (keys, versions): (Vec<_>, Vec<_>) = written.iter().cloned().unzip();
    for chunk in keys.chunks(500).zip(versions.chunks(500)) {
        let entries = kv.get_many::<Value, _>(chunk.0).await.unwrap();
        for ((key, version), entry) in chunk.0.iter().zip(chunk.1).zip(entries) {
            let entry = entry.unwrap_or_else(|| panic!("{key} is missing"));
            assert_eq!(entry.version, *version, "{key} was written again");
        }
    }
    let highest = *versions.iter().max().unwrap();
    assert!(
        highest <= (TASKS * SET_MANYS * 3) as u64,
        "versions up to {highest}: some set_many applied twice"
    );

    // Batches incrementing a shared counter and the task's own: the shared
    // results are exactly 1..=N and each task's counter ends at its count.
    const BATCHES: usize = 60;
    let kv = client.project("batch");
    let results = run_tasks("batch", |t| {
        let kv = kv.clone();
        async move {
            let mut shared = Vec::new();
            for i in 0..BATCHES {
                let outcome = kv
                    .batch()
                    .incr("shared", 1.0)
                    .incr(&format!("own{t}"), 1.0)
                    .commit()
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, batch {i}: {e}"));
                assert!(outcome.applied);
                match (&outcome.results[0], &outcome.results[1]) {
                    (OpResult::Incr { value, .. }, OpResult::Incr { value: own, .. }) => {
                        assert_eq!(*own, (i + 1) as f64, "task {t}'s own counter");
                        shared.push(*value as u64);
                    }
                    other => panic!("unexpected results {other:?}"),
                }
            }
            shared
        }
    })
    .await;
    let mut shared: Vec<u64> = results.into_iter().flatten().collect();
    shared.sort_unstable();
    assert_eq!(shared, (1..=(TASKS * BATCHES) as u64).collect::<Vec<_>>());
    for t in 0..TASKS {
        let own: Option<f64> = kv.get(&format!("own{t}")).await.unwrap();
        assert_eq!(own, Some(BATCHES as f64), "own{t}");
    }

    proxy.set_faults(false);
    let incr: Option<f64> = client.project("incr").get("counter").await.unwrap();
    assert_eq!(incr, Some((TASKS * INCRS) as f64));
    eprintln!(
        "connections cut: {} ({cuts_after_incr} during the increments)",
        proxy.stats().cuts
    );
    drop(proxy);
    server.terminate();
}
