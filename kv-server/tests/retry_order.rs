//! Per-key order through a broken auto-batching stream, against the real
//! binary behind a TCP proxy on loopback that cuts every connection after
//! 10-60 ms. Many tasks each make waves of concurrent `set`s of increasing
//! values on their own key through one client (made in order, not awaited
//! one by one); when the stream breaks under a wave, the SDK must replay
//! the calls it carried in their order ahead of newer ones. A watch on a
//! direct connection then sees, for every key, each value exactly once
//! and in increasing order, and the key ends at the last value issued.
//! The same holds for `set_many`s of two keys each (one atomic write of
//! both, carried on the stream like a `set`).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::Poll,
    time::{Duration, Instant},
};

use kv_client::{RetryPolicy, WatchOptions};
use kv_tests::{
    BinaryServer,
    proxy::{Proxy, ProxyConfig},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const TASKS: usize = 32;
const WAVES: u64 = 30;
/// Concurrent sets per wave, on one key.
const WAVE: u64 = 16;
/// Bounds the whole test.
const LIMIT: Duration = Duration::from_secs(45);

/// Polls `futures` together, each first in the order given (which is the
/// order their calls are made), and returns their outputs in that order.
async fn join_in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_on_a_key_apply_in_order_through_stream_breaks() {
    writes_apply_in_order_through_stream_breaks(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_set_manys_apply_in_order_through_stream_breaks() {
    writes_apply_in_order_through_stream_breaks(true).await;
}

/// The keys task `t` writes: `k{t}`, and with `many` also `k{t}:b` in the
/// same SetMany.
fn task_keys(t: usize, many: bool) -> Vec<String> {
    let mut keys = vec![format!("k{t}")];
    if many {
        keys.push(format!("k{t}:b"));
    }
    keys
}

async fn writes_apply_in_order_through_stream_breaks(many: bool) {
    let keys_per_task = if many { 2 } else { 1 };
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
    let kv = client.project("order");
    // The project exists once written; the watch needs it first.
    kv.set("started", &true).await.unwrap();

    let direct = kv_client::Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let mut watch = direct
        .project("order")
        .watch(WatchOptions::prefix("k"))
        .await
        .unwrap();
    let watcher = tokio::spawn(async move {
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        let mut finished = 0;
        while finished < TASKS * keys_per_task {
            let event = match watch.next_event().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => panic!("the watch failed: {e}"),
                None => panic!("the watch ended"),
            };
            let value = event
                .value
                .as_ref()
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("{}: unexpected value {:?}", event.key, event.value));
            if value == WAVES * WAVE {
                finished += 1;
            }
            seen.entry(event.key).or_default().push(value);
        }
        seen
    });

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let keys = task_keys(t, many);
                for wave in 0..WAVES {
                    let sets = (1..=WAVE).map(|j| {
                        let (kv, keys) = (kv.clone(), keys.clone());
                        let value = wave * WAVE + j;
                        async move {
                            let outcome = if many {
                                kv.set_many(keys.iter().map(|k| (k, &value)))
                                    .await
                                    .map(drop)
                            } else {
                                kv.set(&keys[0], &value).await
                            };
                            (value, outcome)
                        }
                    });
                    for (value, outcome) in join_in_order(sets.collect()).await {
                        if let Err(e) = outcome {
                            panic!("{keys:?}: set to {value}: {e}");
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + LIMIT;
    for task in tasks {
        tokio::time::timeout_at(deadline, task)
            .await
            .unwrap_or_else(|_| panic!("writers still running after {LIMIT:?}"))
            .unwrap_or_else(|e| panic!("a writer failed: {e}"));
    }
    let cuts = proxy.stats().cuts;
    eprintln!(
        "{} writes in {:?}, {cuts} connections cut",
        TASKS as u64 * WAVES * WAVE,
        started.elapsed()
    );
    assert!(cuts >= 10, "the proxy cut only {cuts} connections");

    proxy.set_faults(false);
    let expected: Vec<u64> = (1..=WAVES * WAVE).collect();
    for t in 0..TASKS {
        let keys = task_keys(t, many);
        let last: Vec<Option<u64>> = kv
            .get_many::<u64, _>(&keys)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.map(|e| e.value))
            .collect();
        assert_eq!(
            last,
            vec![Some(WAVES * WAVE); keys.len()],
            "{keys:?} do not hold the last value set"
        );
    }
    let seen = tokio::time::timeout_at(deadline, watcher)
        .await
        .expect("the watch did not see every key's last value in time")
        .unwrap();
    for key in (0..TASKS).flat_map(|t| task_keys(t, many)) {
        let values = &seen[&key];
        // Each value once (no set applied twice) and in the order issued.
        let out_of_order = values.windows(2).position(|w| w[0] >= w[1]);
        assert!(
            out_of_order.is_none() && *values == expected,
            "{key}: values applied out of order or not exactly once, first disorder at {out_of_order:?}: {values:?}"
        );
    }
    drop(proxy);
    server.terminate();
}
