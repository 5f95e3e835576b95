//! Per-project quotas on the durable store: exact under concurrent
//! writers, refusals name the quota and the usage, reads, deletes and clears
//! always work, and usage stays exact across restart, expiry, delete and
//! clear.

use std::{sync::Arc, time::Duration};

use kv_client::Code;
use kv_engine::{ManualClock, Quota, memory::Usage, project::ProjectName, wal::LogOptions};
use kv_server::config::Config;
use kv_tests::{CLOCK_START_MS, InProcessDurable, Target};

fn config(max_keys: Option<u64>, max_bytes: Option<u64>) -> Config {
    Config {
        log: LogOptions {
            quota: Quota {
                max_keys,
                max_bytes,
                ..Quota::default()
            },
            ..LogOptions::default()
        },
        ..Config::default()
    }
}

fn usage(server: &InProcessDurable, project: &str) -> Usage {
    server
        .store
        .memory()
        .usage(&ProjectName::parse(project).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_writers_cannot_overshoot_the_key_quota() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let server = InProcessDurable::start_in(dir.path(), config(Some(100), None), clock).await;
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let kv = server.ctx().client.project("tenant");
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0, 0);
                for i in 0..10 {
                    match kv.set(&format!("w{w}-{i}"), &i).await {
                        Ok(()) => accepted += 1,
                        Err(e) => {
                            assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                            assert!(e.to_string().contains("quota of 100 keys"), "{e}");
                            refused += 1;
                        }
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let mut accepted = 0;
    for writer in writers {
        accepted += writer.await.unwrap().0;
    }
    assert_eq!(accepted, 100, "exactly the quota was admitted");
    assert_eq!(usage(&server, "tenant").keys, 100);
    // Another project is not affected by this one's quota use.
    server
        .ctx()
        .client
        .project("other")
        .set("k", &1)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_reads_overwrites_deletes_and_clears_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let server =
        InProcessDurable::start_in(dir.path(), config(Some(3), Some(400)), clock.clone()).await;
    let kv = server.ctx().client.project("p");
    for k in ["a", "b", "c"] {
        kv.set(k, &"x".repeat(50)).await.unwrap();
    }
    let err = kv.set("d", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.to_string().contains("quota of 3 keys (3 keys in use)"),
        "{err}"
    );
    assert!(!kv.has("d").await.unwrap());
    // Overwriting an existing key adds no key.
    kv.set("a", &"y".repeat(60)).await.unwrap();
    // Bytes: a write that would pass 400 bytes is refused, naming both.
    let err = kv.set("b", &"z".repeat(500)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.to_string().contains("over its quota of 400 bytes"),
        "{err}"
    );
    assert_eq!(
        kv.get::<String>("b").await.unwrap().map(|s| s.len()),
        Some(50)
    );
    // Deleting frees a slot.
    assert!(kv.delete("c").await.unwrap());
    kv.set("d", &1).await.unwrap();
    // Clear always works and resets the usage.
    assert_eq!(kv.clear().await.unwrap(), 3);
    assert_eq!(usage(&server, "p"), Usage::default());
    kv.set("e", &1).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_exact_across_restart_expiry_delete_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let quota = config(Some(10), None);
    let server = InProcessDurable::start_in(dir.path(), quota.clone(), clock.clone()).await;
    let kv = server.ctx().client.project("p");
    for i in 0..6 {
        kv.set(&format!("keep{i}"), &i).await.unwrap();
    }
    for i in 0..4 {
        kv.set_with_ttl(&format!("ttl{i}"), &i, Duration::from_millis(500))
            .await
            .unwrap();
    }
    let full = usage(&server, "p");
    assert_eq!(full.keys, 10);
    assert_eq!(
        kv.set("one-more", &1).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    server.stop().await;

    // Restart: same usage, same refusal.
    let server = InProcessDurable::start_in(dir.path(), quota.clone(), clock.clone()).await;
    let kv = server.ctx().client.project("p");
    assert_eq!(usage(&server, "p"), full);
    assert_eq!(
        kv.set("one-more", &1).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    // Expiry: once reclaimed, the expired keys no longer count.
    clock.advance(600);
    let reclaimed = async {
        while usage(&server, "p").keys != 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), reclaimed)
        .await
        .expect("expired keys reclaimed");
    for i in 0..4 {
        kv.set(&format!("new{i}"), &i).await.unwrap();
    }
    assert_eq!(
        kv.set("new4", &4).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    // Delete and clear.
    assert!(kv.delete("keep0").await.unwrap());
    assert_eq!(usage(&server, "p").keys, 9);
    assert_eq!(kv.clear().await.unwrap(), 9);
    assert_eq!(usage(&server, "p"), Usage::default());
    server.stop().await;

    // Restarted after all that: still exact.
    let server = InProcessDurable::start_in(dir.path(), quota, clock).await;
    assert_eq!(usage(&server, "p"), Usage::default());
    server.stop().await;
}
