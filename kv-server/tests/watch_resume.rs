//! A watch rides through restarts of the real binary by itself: while
//! writers write, the server is stopped with SIGTERM (it ends open watches
//! with UNAVAILABLE naming the version to resume after) and later killed
//! with SIGKILL (the connection just breaks), each time started again on
//! its data directory and port. The watcher, following a prefix, sees
//! every acknowledged write to it exactly once, in version order, and no
//! error; it reopened its stream at least once per restart.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kv_client::{Client, Event, EventKind, RetryPolicy, SetOptions, WatchOptions};
use kv_tests::BinaryServer;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const WRITERS: usize = 4;
/// The whole test, restarts included, stays within this.
const LIMIT: Duration = Duration::from_secs(60);

fn start(dir: &std::path::Path, addr: Option<SocketAddr>) -> BinaryServer {
    let listen = addr.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    BinaryServer::start_in(BIN, dir, &["--listen", &listen, "--fsync", "always"])
}

/// A client patient enough to wait out a restart: its calls (and the
/// watch's reopening) retry every 10-100 ms for up to 30 s.
async fn client(addr: SocketAddr) -> Client {
    Client::builder(format!("http://{addr}"))
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(1))
        .retry(
            RetryPolicy::default()
                .max_attempts(300)
                .initial_backoff(Duration::from_millis(10))
                .max_backoff(Duration::from_millis(100)),
        )
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_acknowledged_write_once_across_sigterm_and_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), None);
    let addr = server.addr;
    let writer = client(addr).await.project("feed");
    // Its own connection: the writers' do not carry it.
    let watcher = client(addr).await.project("feed");
    let mut watch = watcher.watch(WatchOptions::prefix("w:")).await.unwrap();

    // Reads until the `w:done` event; any error fails the test.
    let reader = tokio::spawn(async move {
        let mut events: Vec<Event> = Vec::new();
        loop {
            match watch.next_event().await {
                Some(Ok(event)) => {
                    let done = event.key == "w:done";
                    events.push(event);
                    if done {
                        return (events, watch.resumes());
                    }
                }
                Some(Err(e)) => panic!(
                    "the watch surfaced an error after {} events: {e}",
                    events.len()
                ),
                None => panic!("the watch ended after {} events", events.len()),
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (kv, stop, acknowledged) = (writer.clone(), stop.clone(), acknowledged.clone());
            tokio::spawn(async move {
                // (version, key, value) of each acknowledged write under
                // the prefix.
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let key = format!("w:{t}:{}", i % 16);
                    let value = json!({"t": t, "i": i});
                    let outcome = kv
                        .set_with(&key, &value, SetOptions::new())
                        .await
                        .unwrap_or_else(|e| panic!("writer {t}, write {i}: {e}"));
                    assert!(outcome.applied);
                    acked.push((outcome.version, key, value));
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    // Changes outside the prefix: versions the watcher
                    // never sees, on both sides of each restart.
                    kv.set(&format!("other:{t}"), &i)
                        .await
                        .unwrap_or_else(|e| panic!("writer {t}, other write {i}: {e}"));
                }
                acked
            })
        })
        .collect();

    for graceful in [true, false] {
        let before = acknowledged.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            acknowledged.load(Ordering::Relaxed) > before,
            "no write went through before the restart (graceful: {graceful})"
        );
        // Down for a moment: the watcher's reopening meets a refused
        // connection meanwhile.
        let dir = dir.path().to_path_buf();
        server = server
            .bounce(graceful, Duration::from_millis(200), move || {
                start(&dir, Some(addr))
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut acked = BTreeMap::new();
    for (t, task) in writers.into_iter().enumerate() {
        let left = LIMIT.saturating_sub(started.elapsed());
        let writes = tokio::time::timeout(left, task)
            .await
            .unwrap_or_else(|_| panic!("writer {t} still running at {LIMIT:?}"))
            .unwrap();
        for (version, key, value) in writes {
            assert!(
                acked.insert(version, (key, value)).is_none(),
                "version {version} acknowledged twice"
            );
        }
    }
    let done = writer
        .set_with("w:done", &true, SetOptions::new())
        .await
        .unwrap();
    let left = LIMIT.saturating_sub(started.elapsed());
    let (events, resumes) = tokio::time::timeout(left, reader)
        .await
        .unwrap_or_else(|_| panic!("the watcher did not see w:done within {LIMIT:?}"))
        .unwrap();

    let (last, rest) = events.split_last().unwrap();
    assert_eq!((last.key.as_str(), last.version), ("w:done", done.version));
    let versions: Vec<u64> = rest.iter().map(|e| e.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "events out of order or repeated"
    );
    let seen: BTreeMap<u64, (String, serde_json::Value)> = rest
        .iter()
        .map(|e| {
            assert_eq!(e.kind, EventKind::Set, "{e:?}");
            (e.version, (e.key.clone(), e.value.clone().unwrap()))
        })
        .collect();
    let missing: Vec<_> = acked.keys().filter(|v| !seen.contains_key(v)).collect();
    let unasked: Vec<_> = seen.keys().filter(|v| !acked.contains_key(v)).collect();
    assert!(
        missing.is_empty() && unasked.is_empty(),
        "{} acknowledged writes not seen (first {:?}), {} events for no acknowledged write (first {:?})",
        missing.len(),
        missing.first(),
        unasked.len(),
        unasked.first()
    );
    assert_eq!(seen, acked, "every event carries its write's key and value");
    assert!(
        resumes >= 2,
        "the watch reopened {resumes} times across two restarts"
    );
    eprintln!(
        "{} writes seen once each across SIGTERM and SIGKILL, {resumes} resumes, in {:?}",
        acked.len(),
        started.elapsed()
    );
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
}
