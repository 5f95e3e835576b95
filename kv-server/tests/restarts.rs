//! The SDK rides through restarts of the real binary: while 64 tasks
//! increment counters, the server is stopped (SIGTERM, then SIGKILL) and
//! started again on its data directory and port. Every call succeeds in
//! the end, and every increment applies exactly once: a retry of one the
//! old process applied finds its request id in the log the new process
//! replayed, and gets the first outcome back.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use kv_client::RetryPolicy;
use kv_tests::{BinaryServer, counters::Counters};

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

    let counters = Counters::start(&kv, TASKS);

    // Two graceful stops and two kills, each while the tasks write.
    let started = Instant::now();
    for (round, graceful) in [true, false, true, false].into_iter().enumerate() {
        let before = counters.done();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            counters.done() > before,
            "round {round}: no write went through before the restart"
        );
        // Down for a moment: calls meet a refused connection meanwhile.
        let dir = dir.path().to_path_buf();
        server = server
            .bounce(graceful, Duration::from_millis(150), move || {
                start(&dir, Some(addr))
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let total = counters.finish(&kv, Duration::from_secs(40)).await;
    eprintln!(
        "{total} increments of each kind across 4 restarts in {:?}",
        started.elapsed()
    );
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
}
