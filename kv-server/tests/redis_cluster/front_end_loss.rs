//! The SDK given two front-ends over the one cluster rides through the loss
//! of one: its own file, as `parts.rs` is already long.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use kv_client::{Client, RetryPolicy, WatchOptions};
use kv_tests::BinaryServer;

fn front_end(bin: &str, seeds: &[String], namespace: &str) -> BinaryServer {
    BinaryServer::start(
        bin,
        &[
            "--backend",
            "redis-cluster",
            "--redis-url",
            &seeds.join(","),
            "--redis-namespace",
            namespace,
        ],
    )
}

/// Two `kv-server` binaries over the cluster, both given to one SDK client;
/// 64 tasks increment counters while the one the client uses is SIGKILLed.
/// The client moves to the other, and every increment applies exactly
/// once: a retry of one the lost front-end applied meets its request id,
/// remembered in the cluster. A watch of the shared counter, opened on A
/// through the same client, resumes on B by itself and sees each of its
/// values exactly once, in order.
pub(crate) async fn sdk_fails_over_when_a_front_end_dies(seeds: &[String], bin: &str) {
    let (a, b) = (
        front_end(bin, seeds, "sdk-loss"),
        front_end(bin, seeds, "sdk-loss"),
    );
    let client = Client::builder(vec![
        format!("http://{}", a.addr),
        format!("http://{}", b.addr),
    ])
    .timeout(Duration::from_secs(30))
    .connect_timeout(Duration::from_secs(1))
    .retry(
        RetryPolicy::default()
            .max_attempts(1000)
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(100)),
    )
    .connect()
    .await
    .unwrap();
    let kv = client.project("loss");
    let mut watch = kv.watch(WatchOptions::key("shared")).await.unwrap();
    // Reads the counter's values until it has the last one (told once the
    // writers are done); any error fails the test.
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(0u64);
    let watcher = tokio::spawn(async move {
        let mut values = Vec::new();
        loop {
            let last = *last_rx.borrow();
            if last > 0 && values.last() == Some(&last) {
                return (values, watch.resumes());
            }
            tokio::select! {
                event = watch.next_event() => match event {
                    Some(Ok(event)) => {
                        let value = event.value_as::<f64>().unwrap().unwrap();
                        values.push(value as u64);
                    }
                    Some(Err(e)) => panic!("the watch failed after {} events: {e}", values.len()),
                    None => panic!("the watch ended after {} events", values.len()),
                },
                _ = last_rx.changed() => {}
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (kv, stop, done) = (kv.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut own = 0u64;
                let mut shared = Vec::new();
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

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = done.load(Ordering::Relaxed);
    assert!(before_kill > 0, "no write went through front-end A");
    tokio::task::spawn_blocking(move || a.kill()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    let mut all_shared = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    for (t, task) in tasks.into_iter().enumerate() {
        let (own, shared) = tokio::time::timeout_at(deadline, task)
            .await
            .unwrap_or_else(|_| panic!("task {t} still running 40 s after the kill"))
            .unwrap_or_else(|e| panic!("task {t} failed: {e}"));
        let stored: Option<f64> = kv.get(&format!("own{t}")).await.unwrap();
        assert_eq!(stored, Some(own as f64), "task {t}'s counter as stored");
        total += own;
        all_shared.extend(shared);
    }
    assert!(
        total > before_kill,
        "no write went through front-end B after A died"
    );
    all_shared.sort_unstable();
    assert!(
        all_shared == (1..=total).collect::<Vec<_>>(),
        "the shared counter's results are not exactly 1..={total}"
    );
    let stored: Option<f64> = kv.get("shared").await.unwrap();
    assert_eq!(stored, Some(total as f64));
    last_tx.send(total).unwrap();
    let (watched, resumes) = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the watch saw the last value within 30 s")
        .unwrap();
    assert!(
        watched == (1..=total).collect::<Vec<_>>(),
        "the watch did not see exactly 1..={total} in order ({} values)",
        watched.len()
    );
    assert!(resumes >= 1, "the watch moved to front-end B by itself");
    println!(
        "  {total} increments of each kind, {before_kill} before front-end A died; the watch resumed {resumes} time(s)"
    );
    let status = tokio::task::spawn_blocking(move || b.terminate())
        .await
        .unwrap();
    assert!(status.success(), "front-end B exit status {status}");
}
