//! The change feed across restarts of the real binary: a watch resumed
//! after a restart from a version still in the history gets exactly the
//! changes it missed (sets with their values and deadlines, an incr, a
//! delete, an expiry, a clear), with their versions, then live ones with
//! the next versions, whether the server stopped with SIGTERM or was
//! killed with SIGKILL, and also when a snapshot replaced the segments
//! that logged those changes. A resume from before the history's start is
//! OUT_OF_RANGE, as before a restart.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use kv_client::{Code, Event, EventKind, Project, Watch, WatchOptions};
use kv_tests::BinaryServer;
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_kv-server");

/// How long any one awaited event may take before the test fails.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Everything that identifies an event, value and deadline included.
type Seen = (
    EventKind,
    String,
    Option<serde_json::Value>,
    u64,
    Option<u64>,
);

fn seen(event: &Event) -> Seen {
    (
        event.kind,
        event.key.clone(),
        event.value.clone(),
        event.version,
        event.expires_at_ms,
    )
}

async fn next_event(watch: &mut Watch) -> Event {
    match tokio::time::timeout(EVENT_WAIT, watch.next_event()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no event within {EVENT_WAIT:?}"),
    }
}

/// The error a watch with `options` is refused with.
async fn watch_refusal(kv: &Project, options: WatchOptions) -> kv_client::Error {
    match kv.watch(options.clone()).await {
        Err(e) => e,
        Ok(mut watch) => match tokio::time::timeout(EVENT_WAIT, watch.next_event()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("watch {options:?} was accepted: {other:?}"),
        },
    }
}

/// Makes every kind of change to `kv` (`rounds` rounds of sets padded
/// with `pad` bytes, sets with a TTL, an incr, a delete, a logged expiry,
/// a clear) and returns them as a watcher from the start saw them live.
async fn changes(kv: &Project, rounds: usize, pad: usize) -> Vec<Seen> {
    let mut live = kv.watch(WatchOptions::all().from_version(0)).await.unwrap();
    let filler = "p".repeat(pad);
    let mut made = 0;
    for round in 0..rounds {
        for k in 0..4 {
            let value = json!({"round": round, "k": k, "pad": filler});
            if k == 3 {
                kv.set_with_ttl(&format!("k{k}"), &value, Duration::from_secs(3600))
                    .await
                    .unwrap();
            } else {
                kv.set(&format!("k{k}"), &value).await.unwrap();
            }
            made += 1;
        }
    }
    kv.incr("counter", 2.5).await.unwrap();
    assert!(kv.delete("k1").await.unwrap());
    // Expires while the server runs: its expiry is logged and published.
    kv.set_with_ttl("short", &"brief", Duration::from_millis(200))
        .await
        .unwrap();
    made += 3;
    let mut events = Vec::new();
    while events.len() < made + 1 {
        events.push(seen(&next_event(&mut live).await));
    }
    let expired = events.last().unwrap();
    assert_eq!(
        (expired.0, expired.1.as_str()),
        (EventKind::Expired, "short")
    );
    assert_eq!(kv.clear().await.unwrap(), 4, "k0, k2, k3 and counter");
    kv.set("after-clear", &true).await.unwrap();
    for _ in 0..2 {
        events.push(seen(&next_event(&mut live).await));
    }
    let versions: Vec<u64> = events.iter().map(|e| e.3).collect();
    let contiguous: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(versions, contiguous, "the live feed is contiguous");
    events
}

/// After a restart: resuming from each of `froms` gives exactly the
/// events after it, then the next write with the next version.
async fn resume_exactly(kv: &Project, events: &[Seen], froms: &[u64], what: &str) {
    let last = events.last().unwrap().3;
    let mut watches = Vec::new();
    for &from in froms {
        let mut watch = kv
            .watch(WatchOptions::all().from_version(from))
            .await
            .unwrap_or_else(|e| panic!("{what}: resume from {from}: {e}"));
        let want: Vec<&Seen> = events.iter().filter(|e| e.3 > from).collect();
        for want in want {
            assert_eq!(
                &seen(&next_event(&mut watch).await),
                want,
                "{what}: from {from}"
            );
        }
        watches.push((from, watch));
    }
    let next = kv
        .set_with("new", &"live", kv_client::SetOptions::new())
        .await
        .unwrap();
    assert_eq!(next.version, last + 1, "{what}: versions continue");
    for (from, watch) in &mut watches {
        let event = next_event(watch).await;
        assert_eq!(
            (event.kind, event.key.as_str(), event.version),
            (EventKind::Set, "new", last + 1),
            "{what}: the first live event after resuming from {from}"
        );
    }
}

fn segment_zero_gone(dir: &Path) -> bool {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.iter().any(|n| n.ends_with(".snap"))
        && !names.iter().any(|n| n == "00000000000000000000.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_exactly_after_a_sigterm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--fsync", "never", "--expiry-interval-ms", "50"];
    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    let events = changes(&kv, 5, 10).await;
    assert!(server.terminate().success(), "graceful shutdown");

    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    let last = events.last().unwrap().3;
    resume_exactly(&kv, &events, &[0, 7, last - 3, last], "after SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_exactly_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--fsync", "always", "--expiry-interval-ms", "50"];
    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    let events = changes(&kv, 5, 10).await;
    server.kill();

    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    let last = events.last().unwrap().3;
    resume_exactly(&kv, &events, &[0, 1, last - 1], "after SIGKILL").await;
}

/// The log outgrows the live data, so the server snapshots and removes
/// the segments that logged the changes; a SIGKILL and a restart later
/// the history still holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_exactly_across_a_snapshot_and_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--fsync",
        "always",
        "--expiry-interval-ms",
        "50",
        "--snapshot-min-log-bytes",
        "16384",
    ];
    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    // 160 sets of 1 KB over 4 keys: the log is far over twice the data.
    let events = changes(&kv, 40, 1000).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !segment_zero_gone(dir.path()) {
        assert!(
            Instant::now() < deadline,
            "no snapshot replaced the first segment"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    let last = events.last().unwrap().3;
    resume_exactly(&kv, &events, &[0, 2, 100, last - 2], "after a snapshot").await;
}

/// With `--watch-history-events 20`, the rebuilt history holds the 20
/// newest changes: from the version just before them the resume is
/// exact; from one older it is OUT_OF_RANGE, naming where history starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_before_the_rebuilt_window_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--fsync",
        "never",
        "--expiry-interval-ms",
        "50",
        "--watch-history-events",
        "20",
    ];
    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    for i in 0..50 {
        kv.set(&format!("k{}", i % 7), &i).await.unwrap();
    }
    assert!(server.terminate().success(), "graceful shutdown");

    let server = BinaryServer::start_in(BINARY, dir.path(), &args);
    let kv = server.project("feed").await;
    for from in [0, 1, 29] {
        let err = watch_refusal(&kv, WatchOptions::all().from_version(from)).await;
        assert_eq!(err.code(), Code::OutOfRange, "from {from}: {err}");
        assert!(
            err.to_string().contains("after version 30"),
            "from {from}: {err}"
        );
    }
    let mut watch = kv
        .watch(WatchOptions::all().from_version(30))
        .await
        .unwrap();
    for i in 30..50 {
        let event = next_event(&mut watch).await;
        let want = (EventKind::Set, format!("k{}", i % 7), Some(json!(i)));
        assert_eq!((event.kind, event.key, event.value), want);
        assert_eq!(event.version, i + 1);
    }
    kv.set("next", &50).await.unwrap();
    assert_eq!(next_event(&mut watch).await.version, 51);
}
