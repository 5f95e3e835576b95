//! The SDK rides through restarts of the real binary: while 64 tasks
//! increment counters, the server is stopped (SIGTERM, then SIGKILL) and
//! started again on its data directory and port. Every call succeeds in
//! the end, and every increment applies exactly once: a retry of one the
//! old process applied finds its request id in the log the new process
//! replayed, and gets the first outcome back.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kv_client::RetryPolicy;
use kv_tests::BinaryServer;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const TASKS: usize = 64;

fn start(dir: &std::path::Path, addr: Option<SocketAddr>) -> BinaryServer {
    let listen = addr.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    BinaryServer::start_in(BIN, dir, &["--listen", &listen, "--fsync", "never"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_ride_through_restarts_and_apply_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), None);
    let addr = server.addr;
    let client = kv_client::Client::builder(format!("http://{addr}"))
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(1))
        .retry(
            RetryPolicy::default()
                .max_attempts(10_000)
                .initial_backoff(Duration::from_millis(10))
                .max_backoff(Duration::from_millis(100)),
        )
        .connect()
        .await
        .unwrap();
    let kv = client.project("restarts");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (kv, stop, done) = (kv.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                // Each task's own counter must count 1, 2, 3... with no
                // gap and no repeat; the shared one's results are kept.
                let mut shared = Vec::new();
                let mut own = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    own += 1;
                    let got = kv
                        .incr(&format!("own{t}"), 1.0)
                        .await
                        .unwrap_or_else(|e| panic!("task {t}, own incr {own}: {e}"));
                    assert_eq!(got, own as f64, "task {t}'s counter");
                    let got = kv
                        .incr("shared", 1.0)
                        .await
                        .unwrap_or_else(|e| panic!("task {t}, shared incr: {e}"));
                    shared.push(got as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (own, shared)
            })
        })
        .collect();

    // Two graceful stops and two kills, each while the tasks write.
    let started = Instant::now();
    for (round, graceful) in [true, false, true, false].into_iter().enumerate() {
        let before = done.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            done.load(Ordering::Relaxed) > before,
            "round {round}: no write went through before the restart"
        );
        let old = server;
        tokio::task::spawn_blocking(move || {
            if graceful {
                old.terminate();
            } else {
                old.kill();
            }
        })
        .await
        .unwrap();
        // Down for a moment: calls meet a refused connection meanwhile.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let dir = dir.path().to_path_buf();
        server = tokio::task::spawn_blocking(move || start(&dir, Some(addr)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    let mut all_shared = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    for (t, task) in tasks.into_iter().enumerate() {
        let (own, shared) = tokio::time::timeout_at(deadline, task)
            .await
            .unwrap_or_else(|_| panic!("task {t} still running 40 s after the last restart"))
            .unwrap_or_else(|e| panic!("task {t} failed: {e}"));
        let stored: Option<f64> = kv.get(&format!("own{t}")).await.unwrap();
        assert_eq!(stored, Some(own as f64), "task {t}'s counter as stored");
        total += own;
        all_shared.extend(shared);
    }
    all_shared.sort_unstable();
    assert!(
        all_shared == (1..=total).collect::<Vec<_>>(),
        "the shared counter's results are not exactly 1..={total}"
    );
    let stored: Option<f64> = kv.get("shared").await.unwrap();
    assert_eq!(stored, Some(total as f64));
    eprintln!(
        "{total} increments of each kind across 4 restarts in {:?}",
        started.elapsed()
    );
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
}
