//! Crash safety of the real binary: concurrent writers record every
//! acknowledged write while the server is SIGKILLed at random instants (and
//! right as snapshots start), under each fsync policy. After every restart
//! each key holds its last acknowledged state, or the state of the one
//! write that was in flight on it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kv_tests::{BinaryServer, Rng};
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const ROUNDS: usize = 12;
const TASKS: usize = 16;
const KEYS_PER_TASK: usize = 4;
const PRELOAD: usize = 2000;

/// What a key may hold after a crash.
#[derive(Debug, Clone, Default)]
struct KeyState {
    /// The state after the last acknowledged write (None = absent).
    acked: Option<Json>,
    /// The state the unacknowledged write in flight would leave, if any.
    in_flight: Option<Option<Json>>,
}

type States = Arc<Mutex<HashMap<String, KeyState>>>;

async fn connect(server: &BinaryServer) -> kv_client::Project {
    kv_client::Client::builder(format!("http://{}", server.addr))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connects to the restarted server")
        .project("crash")
}

/// Checks every key against its allowed states, then settles them.
async fn verify(kv: &kv_client::Project, states: &States, round: usize) {
    let keys: Vec<(String, KeyState)> = states
        .lock()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    for (key, state) in keys {
        let found: Option<Json> = kv.get(&key).await.expect("get after restart");
        let allowed = found == state.acked || state.in_flight.as_ref().is_some_and(|f| *f == found);
        assert!(
            allowed,
            "round {round}: key {key} holds {found:?}; acknowledged {:?}, in flight {:?}",
            state.acked, state.in_flight
        );
        states.lock().unwrap().insert(
            key,
            KeyState {
                acked: found,
                in_flight: None,
            },
        );
    }
}

async fn writer(
    kv: kv_client::Project,
    states: States,
    task: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let key = format!("t{task}-k{}", n % KEYS_PER_TASK as u64);
        let next = if n.is_multiple_of(7) {
            None
        } else {
            Some(json!({"task": task, "n": n, "pad": "p".repeat(1000)}))
        };
        states
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .in_flight = Some(next.clone());
        let result = match &next {
            Some(value) if n.is_multiple_of(3) => {
                kv.set_with_ttl(&key, value, Duration::from_secs(3600))
                    .await
            }
            Some(value) => kv.set(&key, value).await,
            None => kv.delete(&key).await.map(|_| ()),
        };
        match result {
            Ok(()) => {
                let mut states = states.lock().unwrap();
                let state = states.get_mut(&key).expect("recorded above");
                state.acked = next;
                state.in_flight = None;
            }
            // The server was killed: this write stays in flight.
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_write() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng::seeded(seed);
    let dir = tempfile::tempdir().unwrap();
    let states: States = Arc::default();
    let started = Instant::now();
    let mut killed_at_snapshot_start = 0;
    let mut unfinished_snapshots_found = 0;

    for round in 0..ROUNDS {
        let fsync = ["always", "interval:20", "never"][round % 3];
        let server = BinaryServer::start_in(
            BIN,
            dir.path(),
            &["--fsync", fsync, "--snapshot-min-log-bytes", "262144"],
        );
        let kv = connect(&server).await;
        verify(&kv, &states, round).await;
        if round == 0 {
            // Bulk data makes snapshots take long enough to be interrupted.
            let bulk = server.project("bulk").await;
            let loads = (0..32).map(|t| {
                let bulk = bulk.clone();
                tokio::spawn(async move {
                    for i in (t..PRELOAD).step_by(32) {
                        bulk.set(&format!("b{i}"), &"b".repeat(1000)).await.unwrap();
                    }
                })
            });
            for load in loads.collect::<Vec<_>>() {
                load.await.unwrap();
            }
        }

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..TASKS)
            .map(|task| tokio::spawn(writer(kv.clone(), states.clone(), task, stop.clone())))
            .collect();

        let log_lines_before = server.log().len();
        if round % 3 == 1 {
            // Kill the moment a snapshot starts.
            let wait_until = Instant::now() + Duration::from_secs(10);
            while !server.log()[log_lines_before..]
                .iter()
                .any(|l| l.contains("snapshot started"))
            {
                assert!(
                    Instant::now() < wait_until,
                    "round {round}: no snapshot started within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            killed_at_snapshot_start += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        }
        server.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let tmp = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        unfinished_snapshots_found += tmp;
    }

    let server = BinaryServer::start_in(BIN, dir.path(), &[]);
    let kv = connect(&server).await;
    verify(&kv, &states, ROUNDS).await;
    let bulk = server.project("bulk").await;
    for i in (0..PRELOAD).step_by(7) {
        assert_eq!(
            bulk.get::<String>(&format!("b{i}"))
                .await
                .unwrap()
                .map(|s| s.len()),
            Some(1000)
        );
    }
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
    println!(
        "{ROUNDS} kills in {:?}: {killed_at_snapshot_start} as a snapshot started, {unfinished_snapshots_found} unfinished snapshot file(s) left by kills and cleaned up",
        started.elapsed()
    );
}
