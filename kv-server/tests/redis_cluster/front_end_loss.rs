//! The SDK given two front-ends over the one cluster rides through the loss
//! of one: its own file, as `parts.rs` is already long.

use std::time::Duration;

use kv_client::{Client, RetryPolicy, WatchOptions};
use kv_tests::{BinaryServer, counters::Counters};

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
    let counters = Counters::start(&kv, 64);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = counters.done();
    assert!(before_kill > 0, "no write went through front-end A");
    tokio::task::spawn_blocking(move || a.kill()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let total = counters.finish(&kv, Duration::from_secs(40)).await;
    assert!(
        total > before_kill,
        "no write went through front-end B after A died"
    );
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
