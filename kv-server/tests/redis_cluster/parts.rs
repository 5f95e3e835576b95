//! The sections of the cluster test, each on front-ends of its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kv_client::{Client, EventKind, IncrOptions, Quota, WatchOptions};
use kv_server::{auth::AdminToken, config::Config};
use kv_tests::{cluster::RedisCluster, redis::InProcessRedis};
use serde_json::{Value as Json, json};
use tonic::Code;

const ADMIN: &str = "cluster-admin-token-0123456789";

async fn fronts(
    seeds: &[String],
    namespace: &str,
    config: Config,
) -> (InProcessRedis, InProcessRedis) {
    let a = InProcessRedis::start(seeds.to_vec(), namespace, config.clone()).await;
    let b = InProcessRedis::start(seeds.to_vec(), namespace, config).await;
    (a, b)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `check` until it holds (5 s at most).
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 64 tasks × 1000 increments of one key, half through each front-end:
/// the results are exactly 1..=64000.
pub(crate) async fn increments_across_front_ends_are_exact(seeds: &[String]) {
    let (a, b) = fronts(seeds, "incr", Config::default()).await;
    let clients = [a.ctx().client.clone(), b.ctx().client.clone()];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let kv = clients[t % 2].project("counters");
        tasks.spawn(async move {
            let mut seen = Vec::with_capacity(1000);
            for _ in 0..1000 {
                seen.push(kv.incr("n", 1.0).await.expect("incr") as u64);
            }
            seen
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=64_000).collect::<Vec<u64>>());
    let total: Option<f64> = clients[1].project("counters").get("n").await.unwrap();
    assert_eq!(total, Some(64_000.0));
    a.stop().await;
    b.stop().await;
}

/// Compare-and-swap loops through both front-ends lose no update.
pub(crate) async fn compare_and_swap_across_front_ends(seeds: &[String]) {
    let (a, b) = fronts(seeds, "cas", Config::default()).await;
    let clients = [a.ctx().client.clone(), b.ctx().client.clone()];
    clients[0]
        .project("docs")
        .set("doc", &json!({"n": 0}))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let kv = clients[t % 2].project("docs");
        tasks.spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 25 {
                let entry = kv.get_entry::<Json>("doc").await.unwrap().expect("doc");
                let n = entry.value["n"].as_u64().unwrap();
                if kv
                    .compare_and_swap("doc", entry.version, &json!({"n": n + 1}))
                    .await
                    .unwrap()
                    .applied
                {
                    done += 1;
                } else {
                    conflicts += 1;
                }
            }
            conflicts
        });
    }
    let conflicts: u64 = tasks.join_all().await.into_iter().sum();
    let doc: Json = clients[1]
        .project("docs")
        .get("doc")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc["n"], json!(400), "{conflicts} conflicts along the way");
    a.stop().await;
    b.stop().await;
}

async fn next(watch: &mut kv_client::Watch) -> kv_client::Event {
    tokio::time::timeout(Duration::from_secs(10), watch.next_event())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("an event")
}

/// A watch on front-end B sees every write made through A, in version
/// order; when B goes away, the consumer resumes on A from the last
/// version it had, and misses and repeats nothing.
pub(crate) async fn watch_across_front_ends_and_resume(seeds: &[String]) {
    let (a, b) = fronts(seeds, "watch", Config::default()).await;
    let writer_kv = a.ctx().client.project("feed");
    let mut watch = b
        .ctx()
        .client
        .project("feed")
        .watch(WatchOptions::all())
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..300u64 {
            writer_kv.set(&format!("k{i:03}"), &i).await.unwrap();
        }
    });
    for i in 0..150u64 {
        let event = next(&mut watch).await;
        assert_eq!(
            (event.kind, event.key.as_str(), event.version),
            (EventKind::Set, format!("k{i:03}").as_str(), i + 1)
        );
    }
    let last = watch.last_version().expect("a version was seen");
    drop(watch);
    b.stop().await;
    let mut resumed = a
        .ctx()
        .client
        .project("feed")
        .watch(WatchOptions::all().from_version(last))
        .await
        .unwrap();
    for i in last..300 {
        let event = next(&mut resumed).await;
        assert_eq!(
            (event.key.as_str(), event.version),
            (format!("k{i:03}").as_str(), i + 1)
        );
    }
    writer.await.unwrap();
    a.stop().await;
}

async fn admin_client(front: &InProcessRedis, token: &str) -> Client {
    Client::builder(front.ctx().url.clone())
        .token(token)
        .connect()
        .await
        .unwrap()
}

/// Projects and tokens made through one front-end work on the other at
/// once; a revocation or a deletion through one ends the open streams of
/// the other.
pub(crate) async fn catalog_across_front_ends(seeds: &[String]) {
    let config = Config {
        admin_token: Some(AdminToken::new(ADMIN).unwrap()),
        ..Config::default()
    };
    let (a, b) = fronts(seeds, "catalog", config).await;
    let admin_a = admin_client(&a, ADMIN).await;
    let admin_b = admin_client(&b, ADMIN).await;
    let created = admin_a
        .admin()
        .create_project("shop", Quota::default())
        .await
        .unwrap();
    let token = admin_a.admin().create_token("shop", false).await.unwrap();
    let tenant_b = admin_client(&b, &token.token).await;
    eventually("B admits the new token", || {
        let kv = tenant_b.project("shop");
        async move { kv.set("k", &1).await.is_ok() }
    })
    .await;
    // Tokens are stored hashed: listing shows ids, never secrets.
    let listed = admin_b.admin().list_tokens(Some("shop")).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [token.info.id.as_str()]
    );

    let mut tenant_watch = tenant_b
        .project("shop")
        .watch(WatchOptions::all())
        .await
        .unwrap();
    assert!(admin_a.admin().revoke_token(&token.info.id).await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(5), tenant_watch.next_event())
        .await
        .expect("the revoked token's watch ends within 5 s");
    match ended {
        Some(Err(e)) => assert_eq!(e.code(), Code::Unauthenticated, "{e}"),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    let refused = tenant_b.project("shop").get::<Json>("k").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    let mut admin_watch = admin_a
        .project("shop")
        .watch(WatchOptions::all())
        .await
        .unwrap();
    assert_eq!(admin_b.admin().delete_project("shop").await.unwrap(), 1);
    let ended = tokio::time::timeout(Duration::from_secs(5), admin_watch.next_event())
        .await
        .expect("the deleted project's watch ends within 5 s");
    match ended {
        Some(Err(e)) => assert_eq!(e.code(), Code::NotFound, "{e}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let again = admin_a
        .admin()
        .create_project("shop", Quota::default())
        .await
        .unwrap();
    assert!(
        again.incarnation > created.incarnation,
        "{again:?} after {created:?}"
    );
    let fresh: Option<Json> = admin_b.project("shop").get("k").await.unwrap();
    assert_eq!(fresh, None, "a recreated project starts empty");
    eventually("B lists the recreated project", || {
        let admin = admin_b.admin();
        async move {
            admin
                .list_projects()
                .await
                .unwrap()
                .iter()
                .any(|p| p.name == "shop" && p.incarnation == again.incarnation)
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A key quota holds exactly under concurrent writers on both front-ends.
pub(crate) async fn quota_is_exact_across_front_ends(seeds: &[String]) {
    let config = Config {
        admin_token: Some(AdminToken::new(ADMIN).unwrap()),
        ..Config::default()
    };
    let (a, b) = fronts(seeds, "quota", config).await;
    let clients = [admin_client(&a, ADMIN).await, admin_client(&b, ADMIN).await];
    let quota = Quota {
        max_keys: Some(100),
        max_bytes: None,
    };
    clients[0].admin().create_project("q", quota).await.unwrap();
    eventually("B knows the quota", || {
        let admin = clients[1].admin();
        async move {
            admin
                .get_project("q")
                .await
                .is_ok_and(|p| p.quota.max_keys == Some(100))
        }
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let kv = clients[t % 2].project("q");
        tasks.spawn(async move {
            let mut stored = 0u64;
            for i in 0..20 {
                match kv.set(&format!("t{t}-{i}"), &i).await {
                    Ok(()) => stored += 1,
                    Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e}"),
                }
            }
            stored
        });
    }
    let stored: u64 = tasks.join_all().await.into_iter().sum();
    assert_eq!(stored, 100);
    assert_eq!(clients[1].admin().get_project("q").await.unwrap().keys, 100);
    a.stop().await;
    b.stop().await;
}

/// 10 000 keys with deadlines spread over two seconds, with both
/// front-ends' expiry tasks sweeping: every key's EXPIRED event comes
/// exactly once, p99 within 1 s of its deadline.
pub(crate) async fn expiry_with_two_front_ends(seeds: &[String]) {
    let (a, b) = fronts(seeds, "expiry", Config::default()).await;
    let mut watch = a
        .ctx()
        .client
        .project("ttl")
        .watch(WatchOptions::all())
        .await
        .unwrap();
    let clients = [a.ctx().client.clone(), b.ctx().client.clone()];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32usize {
        let kv = clients[t % 2].project("ttl");
        tasks.spawn(async move {
            for i in (t..10_000).step_by(32) {
                let ttl = Duration::from_millis(1000 + (i as u64 * 7919) % 2000);
                kv.set_with_ttl(&format!("k{i:05}"), &i, ttl).await.unwrap();
            }
        });
    }
    let mut deadlines: BTreeMap<String, u64> = BTreeMap::new();
    let mut expired: BTreeSet<String> = BTreeSet::new();
    let mut lags: Vec<u64> = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while expired.len() < 10_000 {
        let left = until.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, watch.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} of 10000 keys expired within 60 s", expired.len()))
            .expect("the watch is open")
            .expect("an event");
        match event.kind {
            EventKind::Set => {
                deadlines.insert(event.key.clone(), event.expires_at_ms.expect("a deadline"));
            }
            EventKind::Expired => {
                let deadline = deadlines[&event.key];
                lags.push(unix_ms().saturating_sub(deadline));
                assert!(
                    expired.insert(event.key.clone()),
                    "{} expired twice",
                    event.key
                );
            }
            other => panic!("unexpected {other:?} event"),
        }
    }
    tasks.join_all().await;
    lags.sort_unstable();
    let p99 = lags[lags.len() * 99 / 100];
    println!(
        "  expiry lag: p50 {} ms, p99 {p99} ms, max {} ms",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(p99 <= 1000, "p99 expiry lag {p99} ms");
    // Nothing more: no key expires twice later either.
    let extra = tokio::time::timeout(Duration::from_millis(500), watch.next_event()).await;
    assert!(
        extra.is_err(),
        "an event after every key expired: {extra:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// Writers that retry each increment with its request id until it is
/// acknowledged: afterwards every counter equals its acknowledged count.
struct Writers {
    stop: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<(String, u64)>,
}

impl Writers {
    fn start(client: &Client, project: &str, n: usize, tag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let retries = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..n {
            let kv = client.project(project);
            let (stop, retries) = (Arc::clone(&stop), Arc::clone(&retries));
            let key = format!("{tag}-{t}");
            tasks.spawn(async move {
                let mut acked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{key}-{acked}");
                    let started = Instant::now();
                    loop {
                        match kv
                            .incr_with(&key, 1.0, IncrOptions::new().request_id(&id))
                            .await
                        {
                            Ok(_) => break,
                            Err(e) => {
                                assert!(
                                    matches!(
                                        e.code(),
                                        Code::Unavailable
                                            | Code::Aborted
                                            | Code::Unknown
                                            | Code::DeadlineExceeded
                                            | Code::Internal
                                    ),
                                    "{e}"
                                );
                                assert!(
                                    started.elapsed() < Duration::from_secs(60),
                                    "{key}: no answer for 60 s: {e}"
                                );
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    acked += 1;
                }
                (key, acked)
            });
        }
        Self {
            stop,
            retries,
            tasks,
        }
    }

    /// Stops them and checks every counter against what was acknowledged.
    async fn check(self, client: &Client, project: &str) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let kv = client.project(project);
        let mut total = 0;
        for (key, acked) in self.tasks.join_all().await {
            let stored: Option<f64> = kv.get(&key).await.unwrap();
            assert_eq!(
                stored.unwrap_or(0.0) as u64,
                acked,
                "{key}: acknowledged {acked}"
            );
            total += acked;
        }
        (total, self.retries.load(Ordering::Relaxed))
    }
}

/// The project's slot moves to another master while writers run: no
/// acknowledged write is lost, and none applies twice.
pub(crate) async fn resharding_under_load(cluster: &mut RedisCluster) {
    let front = InProcessRedis::start(cluster.seeds(), "reshard", Config::default()).await;
    let client = front.ctx().client.clone();
    let slot = RedisCluster::slot_of("{moving}");
    let writers = Writers::start(&client, "moving", 8, "c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = cluster.master_of_slot(slot);
    let to = *cluster.masters().iter().find(|&&m| m != from).unwrap();
    let moved = {
        let cluster = &*cluster;
        let started = Instant::now();
        std::thread::scope(|s| s.spawn(|| cluster.migrate_slot(slot, to)).join().unwrap());
        started.elapsed()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (total, retries) = writers.check(&client, "moving").await;
    assert_eq!(cluster.master_of_slot(slot), to);
    println!("  slot {slot} moved in {moved:?}; {total} increments, {retries} retried calls");
    front.stop().await;
}

/// A master is killed (once outright, once after its replica was paused)
/// while writers run: every acknowledged write is there afterwards, none
/// applied twice, and the front-end serves again by itself.
pub(crate) async fn failover_under_load(cluster: &mut RedisCluster) {
    let front = InProcessRedis::start(cluster.seeds(), "failover", Config::default()).await;
    let client = front.ctx().client.clone();
    for (round, pause_replica) in [(0, false), (1, true)] {
        let project = format!("f{round}");
        let slot = RedisCluster::slot_of(&format!("{{{project}}}"));
        tokio::task::block_in_place(|| cluster.wait_healthy());
        let writers = Writers::start(&client, &project, 8, "c");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let master = cluster.master_of_slot(slot);
        let replica = cluster
            .replica_of(master)
            .expect("the master has a replica");
        if pause_replica {
            cluster.pause_node(replica);
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.resume_node(replica);
        }
        cluster.kill_node(master);
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.wait_healthy());
        let promoted = killed.elapsed();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (total, retries) = writers.check(&client, &project).await;
        println!(
            "  round {round}: master {master} killed, replica {replica} serving after {promoted:?}; {total} increments, {retries} retried calls"
        );
        // The old master comes back as a replica, for the next round.
        cluster.restart_node(master);
        tokio::task::block_in_place(|| cluster.wait_healthy());
    }
    front.stop().await;
}
