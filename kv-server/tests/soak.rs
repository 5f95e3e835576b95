//! The soak test: the real binary on a data directory, behind a proxy that
//! cuts, delays and stalls connections, restarted again and again (SIGTERM
//! and SIGKILL) while many tasks call every method of the SDK, each on its
//! own project with an exact model of it, and watchers follow some of the
//! projects. At the end, with the faults off, every key of every model is
//! read back and compared exactly, and each watcher's events replayed give
//! the final state of what it followed.
//!
//! `soak` is opt-in and runs `KV_SOAK_SECS` seconds (180 by default, at
//! most 3600):
//! `KV_SOAK_SECS=180 cargo test -p kv-server --release --test soak -- --ignored --nocapture`.
//! `soak_short` runs the same workload for 15 s with one SIGTERM and one
//! SIGKILL restart, with the other tests. `KV_TEST_SEED` replays a run's
//! random choices (the scheduling still varies).

#[path = "soak/bulk.rs"]
mod bulk;
#[path = "soak/model.rs"]
mod model;
#[path = "soak/watcher.rs"]
mod watcher;
#[path = "soak/workload.rs"]
mod workload;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kv_client::{ListOptions, RetryPolicy, SetOptions};
use kv_tests::{
    BinaryServer, Rng,
    proxy::{Proxy, ProxyConfig},
};
use model::{Read, same};
use watcher::{WatchReport, Watcher};
use workload::{Report, SHORT_TTL, Worker};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
/// Past its workload, a run has this long for its settling and checks.
const WIND_DOWN: Duration = Duration::from_secs(60);

fn start(dir: &Path, addr: Option<SocketAddr>) -> BinaryServer {
    let listen = addr.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    // `always` is the default; named because the test relies on every
    // acknowledged write surviving a SIGKILL (any policy promises that).
    BinaryServer::start_in(BIN, dir, &["--listen", &listen, "--fsync", "always"])
}

/// When the restarts come.
enum Restarts {
    /// Every 10-30 s, alternating SIGTERM and SIGKILL.
    Random,
    /// At these offsets from the start: (offset, SIGTERM rather than SIGKILL).
    At(Vec<(Duration, bool)>),
}

struct Plan {
    run: Duration,
    tasks: usize,
    restarts: Restarts,
}

/// What the restart driver did.
#[derive(Debug, Default)]
struct RestartReport {
    terms: u64,
    kills: u64,
    /// Exit statuses of SIGTERMed servers that were not a clean exit.
    unclean: Vec<String>,
}

/// Restarts the server on its data directory and port as `restarts` says,
/// until `end`; hands the running server back.
async fn drive_restarts(
    mut server: BinaryServer,
    dir: PathBuf,
    restarts: Restarts,
    started: Instant,
    end: Instant,
    seed: u64,
) -> (BinaryServer, RestartReport) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let addr = server.addr;
    let mut report = RestartReport::default();
    let mut schedule = match restarts {
        Restarts::At(at) => at,
        Restarts::Random => {
            let mut at = Vec::new();
            let mut offset = Duration::ZERO;
            let mut graceful = rng.bool();
            loop {
                offset += Duration::from_millis(rng.u64(10_000..30_000));
                if started + offset >= end {
                    break;
                }
                at.push((offset, graceful));
                graceful = !graceful;
            }
            at
        }
    };
    schedule.retain(|(offset, _)| started + *offset < end);
    for (offset, graceful) in schedule {
        tokio::time::sleep_until((started + offset).into()).await;
        let old = server;
        let unclean = tokio::task::spawn_blocking(move || {
            if graceful {
                let status = old.terminate();
                (!status.success()).then(|| format!("{status}"))
            } else {
                old.kill();
                None
            }
        })
        .await
        .expect("stopping the server");
        report.unclean.extend(unclean);
        if graceful {
            report.terms += 1;
        } else {
            report.kills += 1;
        }
        eprintln!(
            "soak: {} at {:?}",
            if graceful { "SIGTERM" } else { "SIGKILL" },
            started.elapsed()
        );
        // Down for a moment: calls meet refused connections meanwhile.
        tokio::time::sleep(Duration::from_millis(rng.u64(100..500))).await;
        let dir = dir.clone();
        server = tokio::task::spawn_blocking(move || start(&dir, Some(addr)))
            .await
            .expect("restarting the server");
    }
    (server, report)
}

/// The final state of one project, read at once.
async fn final_listing(kv: &kv_client::Project, prefix: &str) -> (BTreeMap<String, Read>, u64) {
    let options = ListOptions::new().prefix(prefix).limit(1000);
    let page = tokio::time::timeout(Duration::from_secs(30), kv.list(options))
        .await
        .expect("final list within 30 s")
        .expect("final list succeeds");
    assert!(
        page.next_start_after.is_none(),
        "a project of a few keys fits one page"
    );
    let entries = page
        .entries
        .into_iter()
        .map(|e| {
            let read = Read {
                value: e.value.expect("list gives values"),
                version: e.version,
                expires_at_ms: e.expires_at_ms,
            };
            (e.key, read)
        })
        .collect();
    (entries, page.version)
}

/// Checks every key of `worker`'s model against the project as listed and
/// as read key by key.
async fn check_final(worker: &mut Worker) {
    let task = worker.task;
    let start = Instant::now();
    let (mut listed, _) = final_listing(&worker.kv, "").await;
    let end = Instant::now();
    for key in listed.keys() {
        assert!(
            !key.starts_with('s'),
            "task {task}: short-TTL key {key} outlived its TTL"
        );
    }
    let mut keys: Vec<String> = listed.keys().cloned().collect();
    keys.extend(worker.model.keys.keys().cloned());
    keys.sort();
    keys.dedup();
    for key in &keys {
        let read = listed.remove(key);
        if let Err(e) = worker.model.check_read(key, read, start, end) {
            panic!("task {task}: final listing: {e}");
        }
    }
    let all = Worker::all_keys();
    let start = Instant::now();
    let entries = tokio::time::timeout(
        Duration::from_secs(30),
        worker.kv.get_many::<serde_json::Value, _>(&all),
    )
    .await
    .expect("final get_many within 30 s")
    .expect("final get_many succeeds");
    let end = Instant::now();
    for (key, entry) in all.iter().zip(entries) {
        let read = entry.map(|e| Read {
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        });
        if let Err(e) = worker.model.check_read(key, read, start, end) {
            panic!("task {task}: final get_many: {e}");
        }
    }
}

/// Compares what a watcher's events add up to with the project now.
async fn check_watcher(kv: &kv_client::Project, prefix: &str, report: &WatchReport) {
    let (listed, version) = final_listing(kv, prefix).await;
    assert!(
        report.last_version <= version,
        "watcher of {kv:?} {prefix:?} saw version {} past the project's {version}",
        report.last_version
    );
    let only_replayed: Vec<_> = report
        .state
        .iter()
        .filter(|(key, _)| !listed.contains_key(*key))
        .collect();
    let only_listed: Vec<_> = listed
        .iter()
        .filter(|(key, _)| !report.state.contains_key(*key))
        .collect();
    assert!(
        only_replayed.is_empty() && only_listed.is_empty(),
        "watcher of {kv:?} {prefix:?} (last version {}, project at {version}, {} events, \
         {} resumes, {} OUT_OF_RANGE): only in the replay {only_replayed:?}, only in the \
         project {only_listed:?}",
        report.last_version,
        report.events,
        report.resumes,
        report.out_of_range
    );
    for (key, read) in &listed {
        let (value, deadline) = &report.state[key];
        assert!(
            same(value, &read.value) && *deadline == read.expires_at_ms,
            "watcher of {kv:?} {prefix:?}: {key} replays as {value} (deadline {deadline:?}), is {read:?}"
        );
    }
}

async fn soak(plan: Plan) {
    let started = Instant::now();
    let run_end = started + plan.run;
    let mut rng = Rng::from_env("soak");
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None);
    let config = ProxyConfig::default()
        .cut_after(Duration::from_millis(100)..Duration::from_millis(1000))
        .stall(0.002, Duration::from_millis(30)..Duration::from_millis(300));
    let proxy = Proxy::start(server.addr, config).await;
    let client = kv_client::Client::builder(proxy.url())
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(1))
        .retry(
            RetryPolicy::default()
                .max_attempts(100_000)
                .initial_backoff(Duration::from_millis(5))
                .max_backoff(Duration::from_millis(200)),
        )
        .connect_lazy()
        .unwrap();

    let watch_deadline =
        tokio::time::Instant::now() + plan.run + WIND_DOWN - Duration::from_secs(10);
    let mut watchers = Vec::new();
    for t in (0..plan.tasks).filter(|t| t % 4 == 0 || t % 4 == 2) {
        let prefix = if t % 4 == 0 { "" } else { "d" };
        let until = Arc::new(AtomicU64::new(0));
        let watcher = Watcher {
            kv: client.project(&format!("soak-{t}")),
            prefix: prefix.to_string(),
            until: until.clone(),
            deadline: watch_deadline,
        };
        watchers.push((t, prefix, until, tokio::spawn(watcher.run())));
    }

    let workers: Vec<_> = (0..plan.tasks)
        .map(|t| {
            let mut worker = Worker::new(t, client.project(&format!("soak-{t}")), rng.next_u64());
            tokio::spawn(async move {
                while Instant::now() < run_end {
                    worker.step().await?;
                }
                Ok::<_, String>(worker)
            })
        })
        .collect();
    let driver = tokio::spawn(drive_restarts(
        server,
        dir.path().to_path_buf(),
        plan.restarts,
        started,
        run_end,
        rng.next_u64(),
    ));

    let join_by = tokio::time::Instant::now() + plan.run + Duration::from_secs(45);
    let mut finished = Vec::new();
    for (t, handle) in workers.into_iter().enumerate() {
        let worker = tokio::time::timeout_at(join_by, handle)
            .await
            .unwrap_or_else(|_| panic!("task {t} still running 45 s after the run"))
            .unwrap_or_else(|e| panic!("task {t} panicked: {e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        finished.push(worker);
    }
    let (server, restarts) = tokio::time::timeout_at(join_by, driver)
        .await
        .expect("the restart driver ends with the run")
        .expect("the restart driver did not panic");

    // Calm: no more faults, and every short TTL has run out.
    proxy.set_faults(false);
    tokio::time::sleep(SHORT_TTL + Duration::from_secs(1)).await;
    let mut calls: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for worker in &mut finished {
        check_final(worker).await;
        let Report {
            calls: c,
            failures: f,
        } = std::mem::take(&mut worker.report);
        for (method, n) in c {
            *calls.entry(method).or_default() += n;
        }
        failures.extend(f);
    }

    // A last write in every watched project tells its watcher where the
    // run ends; then what it replayed must be what is there.
    let (mut events, mut resumes, mut out_of_range, mut watch_errors) = (0, 0, 0, 0);
    for (t, prefix, until, handle) in watchers {
        let kv = client.project(&format!("soak-{t}"));
        let end = kv
            .set_with("d~end", &true, SetOptions::new())
            .await
            .expect("the last write succeeds");
        until.store(end.version, Ordering::SeqCst);
        let report = tokio::time::timeout_at(watch_deadline + Duration::from_secs(5), handle)
            .await
            .unwrap_or_else(|_| panic!("watcher of project {t} did not finish"))
            .unwrap_or_else(|e| panic!("watcher of project {t} panicked: {e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        check_watcher(&kv, prefix, &report).await;
        events += report.events;
        resumes += report.resumes;
        out_of_range += report.out_of_range;
        watch_errors += report.errors.len();
        for e in report.errors.iter().take(3) {
            eprintln!("soak: watcher of project {t}: {e}");
        }
    }

    let stats = proxy.stats();
    let total: u64 = calls.values().sum();
    eprintln!(
        "soak summary after {:?}: {} tasks, {total} calls, {} failed",
        started.elapsed(),
        plan.tasks,
        failures.len()
    );
    for (method, n) in &calls {
        eprintln!("  {method:>18}: {n}");
    }
    eprintln!(
        "  restarts: {} SIGTERM, {} SIGKILL; proxy: {} connections, {} cut, {} refused, {} delays, {} stalls",
        restarts.terms,
        restarts.kills,
        stats.accepted,
        stats.cuts,
        stats.refused,
        stats.delays,
        stats.stalls
    );
    eprintln!(
        "  watch: {events} events, {resumes} resumes, {out_of_range} OUT_OF_RANGE rereads, {watch_errors} errors opening or rereading"
    );
    assert!(
        failures.is_empty(),
        "{} calls failed: {failures:#?}",
        failures.len()
    );
    assert!(
        restarts.unclean.is_empty(),
        "SIGTERM exits: {:?}",
        restarts.unclean
    );
    assert!(stats.cuts > 0, "the proxy cut no connection");
    assert!(events > 0, "the watchers saw no event");
    for method in [
        "get",
        "get_entry",
        "has",
        "set",
        "set_with_ttl",
        "set_with(ttl)",
        "set_if_absent",
        "compare_and_swap",
        "delete",
        "delete_if_version",
        "clear",
        "incr_with",
        "merge",
        "set_many",
        "delete_many",
        "get_many",
        "batch",
        "list",
        "list_all",
    ] {
        assert!(
            calls.get(method).is_some_and(|n| *n > 0),
            "{method} was never called"
        );
    }
    drop(proxy);
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "the last server exited with {status}");
}

/// The run's length from `KV_SOAK_SECS`, bounded.
fn soak_secs() -> Duration {
    let secs = std::env::var("KV_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(180);
    Duration::from_secs(secs.clamp(5, 3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long soak; run with KV_SOAK_SECS=<seconds> and --ignored"]
async fn soak_long() {
    let run = soak_secs();
    let plan = Plan {
        run,
        tasks: 32,
        restarts: Restarts::Random,
    };
    tokio::time::timeout(run + WIND_DOWN, soak(plan))
        .await
        .expect("the soak ends within its time plus a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    let run = Duration::from_secs(15);
    let plan = Plan {
        run,
        tasks: 16,
        restarts: Restarts::At(vec![
            (Duration::from_secs(5), true),
            (Duration::from_secs(10), false),
        ]),
    };
    tokio::time::timeout(run + WIND_DOWN, soak(plan))
        .await
        .expect("the soak ends within its time plus a minute");
}
