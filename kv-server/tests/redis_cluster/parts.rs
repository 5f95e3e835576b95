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
use kv_tests::{cluster::RedisCluster, next_event, redis::InProcessRedis};
use serde_json::{Value as Json, json};
use tonic::Code;

const ADMIN: &str = "cluster-admin-token-0123456789";

/// A front-end's configuration that requires the admin token.
fn with_admin() -> Config {
    Config {
        admin_token: Some(AdminToken::new(ADMIN).unwrap()),
        ..Config::default()
    }
}

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
    // The cluster has replicas: by default every write waits for one.
    assert_eq!(
        (a.backend.wait_replicas(), b.backend.wait_replicas()),
        (1, 1)
    );
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
        let event = next_event(&mut watch).await;
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
        let event = next_event(&mut resumed).await;
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
    let config = with_admin();
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
    let config = with_admin();
    let (a, b) = fronts(seeds, "quota", config).await;
    let clients = [admin_client(&a, ADMIN).await, admin_client(&b, ADMIN).await];
    let quota = Quota {
        max_keys: Some(100),
        max_bytes: None,
        ..Quota::default()
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

    // Keys past their deadline do not count against the quota, even
    // before any expiry task has swept them (this front-end's sweeps
    // are a minute apart, the longest allowed).
    let config = Config {
        expiry_interval: Duration::from_secs(60),
        ..with_admin()
    };
    let front = InProcessRedis::start(seeds.to_vec(), "quota-dead", config).await;
    let admin = admin_client(&front, ADMIN).await;
    let quota = Quota {
        max_keys: Some(10),
        max_bytes: None,
        ..Quota::default()
    };
    admin.admin().create_project("d", quota).await.unwrap();
    let kv = admin.project("d");
    for i in 0..10 {
        kv.set_with_ttl(&format!("old{i}"), &i, Duration::from_millis(200))
            .await
            .unwrap();
    }
    let full = kv.set("one-too-many", &0).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        kv.set(&format!("new{i}"), &i).await.unwrap();
    }
    assert_eq!(admin.admin().get_project("d").await.unwrap().keys, 10);
    front.stop().await;
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

/// A master running a `kv` library of another major version: a front-end
/// refuses to start, naming the node and both versions; with the library
/// gone it installs its own.
pub(crate) fn an_incompatible_library_is_refused(cluster: &RedisCluster, bin: &str) {
    let stub = "#!lua name=kv\nlocal VERSION = '9.0'\nredis.register_function('kv_version', function() return VERSION end)";
    for master in cluster.masters() {
        cluster.cli(master, &["FUNCTION", "LOAD", "REPLACE", stub]);
    }
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.seeds().join(",");
    let (code, stderr) = kv_tests::run_to_exit(
        bin,
        "127.0.0.1:0",
        dir.path(),
        &["--backend", "redis-cluster", "--redis-url", &urls],
        &[],
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("kv function library 9.0") && stderr.contains(kv_redis::LIBRARY_VERSION),
        "{stderr}"
    );
    for master in cluster.masters() {
        cluster.cli(master, &["FUNCTION", "DELETE", "kv"]);
    }
}

async fn health_of(url: &str) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.check(tonic_health::pb::HealthCheckRequest {
            service: "kv.v1.KvService".into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    Some(reply.into_inner().status)
}

/// A shard down (its master and its replica): health turns NOT_SERVING;
/// both back: SERVING again, with nobody restarting the front-end, and
/// the data written before is there.
pub(crate) async fn health_follows_the_cluster(cluster: &mut RedisCluster) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let front = InProcessRedis::start(cluster.seeds(), "health", Config::default()).await;
    let url = front.ctx().url.clone();
    let kv = front.ctx().client.project("h");
    kv.set("before", &1).await.unwrap();
    let wait_for = |want: ServingStatus| {
        let url = url.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if health_of(&url).await == Some(want as i32) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "health is not {want:?} within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(ServingStatus::Serving).await;
    let master = cluster.masters()[0];
    let replica = cluster.replica_of(master).expect("a replica");
    cluster.kill_node(replica);
    cluster.kill_node(master);
    wait_for(ServingStatus::NotServing).await;
    cluster.restart_node(master);
    cluster.restart_node(replica);
    tokio::task::block_in_place(|| cluster.wait_healthy());
    wait_for(ServingStatus::Serving).await;
    assert_eq!(kv.get::<u64>("before").await.unwrap(), Some(1));
    front.stop().await;
}

/// Fills `project` (namespace `ns`) with `n` entries written straight in
/// the library's layout: a million through the API would take minutes.
async fn fill(seeds: &[String], ns: &str, project: &str, n: usize) {
    let client = redis::cluster::ClusterClient::new(seeds.to_vec()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let tag = format!("{ns}:{{{project}}}:");
    // A JSON number: tag 0x11 and 8 bytes.
    let value = [0x11, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f];
    let mut bytes = 0u64;
    for chunk in 0..n.div_ceil(1000) {
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{tag}h"));
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(format!("{tag}i"));
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            let key = format!("k{i:07}");
            let mut entry = 1u64.to_le_bytes().to_vec();
            entry.extend_from_slice(&0u64.to_le_bytes());
            entry.extend_from_slice(&value);
            bytes += (key.len() + value.len()) as u64;
            hset.arg(&key).arg(entry);
            zadd.arg(0).arg(&key);
        }
        let _: () = redis::pipe()
            .add_command(hset)
            .ignore()
            .add_command(zadd)
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg(format!("{tag}m"))
        .arg("v")
        .arg(1)
        .arg("inc")
        .arg(0)
        .arg("k")
        .arg(n)
        .arg("b")
        .arg(bytes)
        .arg("cv")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The longest a function ran on `port` since its slow log was reset
/// (everything is logged: the threshold is 0), in microseconds.
fn longest_call(cluster: &RedisCluster, port: u16, function: &str) -> u64 {
    let log = cluster.cli(port, &["SLOWLOG", "GET", "1000"]);
    // redis-cli prints each entry's fields on lines: id, time, duration,
    // then the arguments; the duration precedes the command's first word.
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let mut longest = 0;
    for (i, line) in lines.iter().enumerate() {
        if *line == "FCALL"
            && lines.get(i + 1) == Some(&function)
            && let Some(us) = lines[..i]
                .iter()
                .rev()
                .find_map(|l| l.parse::<u64>().ok().filter(|&n| n < 10_000_000_000))
        {
            longest = longest.max(us);
        }
    }
    longest
}

/// Clear and DeleteProject of a project of a million keys: the master runs
/// each for a few milliseconds at most (the memory is freed in Redis's
/// background thread), and answers other clients meanwhile.
pub(crate) async fn big_clear_and_delete(cluster: &RedisCluster) {
    const N: usize = 1_000_000;
    let config = with_admin();
    let front = InProcessRedis::start(cluster.seeds(), "big", config).await;
    let admin = admin_client(&front, ADMIN).await;
    admin
        .admin()
        .create_project("huge", Quota::default())
        .await
        .unwrap();
    let master = cluster.master_of_slot(RedisCluster::slot_of("{huge}"));
    let mut figures = Vec::new();
    for delete in [false, true] {
        let filled = Instant::now();
        fill(&cluster.seeds(), "big", "huge", N).await;
        let fill_took = filled.elapsed();
        cluster.cli(master, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
        cluster.cli(master, &["CONFIG", "SET", "slowlog-max-len", "1000"]);
        cluster.cli(master, &["SLOWLOG", "RESET"]);
        let started = Instant::now();
        let removed = if delete {
            admin.admin().delete_project("huge").await.unwrap()
        } else {
            admin.project("huge").clear().await.unwrap()
        };
        let call = started.elapsed();
        assert_eq!(removed, N as u64);
        let function = if delete { "kv_drop" } else { "kv_apply" };
        let longest = longest_call(cluster, master, function);
        cluster.cli(
            master,
            &["CONFIG", "SET", "slowlog-log-slower-than", "10000"],
        );
        figures.push(format!(
            "{}: filled in {fill_took:.1?}; the call took {call:.1?}, {function} ran {longest} µs on the master",
            if delete { "DeleteProject" } else { "Clear" }
        ));
        assert!(longest > 0, "{function} was not in the slow log");
        assert!(
            longest < 50_000,
            "{function} held the master for {longest} µs"
        );
        if delete {
            assert_eq!(
                admin.admin().get_project("huge").await.unwrap_err().code(),
                Code::NotFound
            );
        } else {
            assert_eq!(
                admin.project("huge").get::<Json>("k0000000").await.unwrap(),
                None
            );
        }
    }
    for line in figures {
        println!("  {line}");
    }
    front.stop().await;
}

/// A cluster that requires a password and speaks only TLS: front-ends with
/// both serve (reads, writes, watches and expiry over TLS); one without
/// the password refuses to start, saying why.
pub(crate) async fn tls_and_password(bin: &str) {
    let options = kv_tests::cluster::ClusterOptions {
        password: Some("cluster-secret-0123".into()),
        tls: true,
    };
    let Some(cluster) = tokio::task::spawn_blocking(move || RedisCluster::start_with(options))
        .await
        .unwrap()
    else {
        return;
    };
    let urls = cluster.seeds().join(",");
    assert!(urls.starts_with("rediss://"), "{urls}");
    let ca = cluster.ca_pem_path().expect("a CA in TLS mode");
    let ca = ca.to_str().unwrap();
    let server = kv_tests::BinaryServer::start_with_env(
        bin,
        &[
            "--backend",
            "redis-cluster",
            "--redis-url",
            &urls,
            "--redis-tls-ca",
            ca,
        ],
        &[("KV_REDIS_PASSWORD", "cluster-secret-0123")],
    );
    let ctx = kv_tests::Ctx::connect(server.addr, kv_tests::Time::Real).await;
    for (name, case) in kv_tests::conformance_suite!(list) {
        if matches!(
            name,
            "every_json_type_round_trips" | "ttl_expires_key" | "watch_reports_changes_with_causes"
        ) {
            case(&ctx).await;
            println!("  over TLS: {name} ok");
        }
    }
    drop(ctx);
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    let dir = tempfile::tempdir().unwrap();
    let refused = Instant::now();
    let (code, stderr) = kv_tests::run_to_exit(
        bin,
        "127.0.0.1:0",
        dir.path(),
        &[
            "--backend",
            "redis-cluster",
            "--redis-url",
            &urls,
            "--redis-tls-ca",
            ca,
        ],
        &[("KV_REDIS_PASSWORD", "wrong-password")],
    );
    println!(
        "  a wrong password: refused in {:.1?}: {}",
        refused.elapsed(),
        stderr.lines().last().unwrap_or("")
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("WRONGPASS")
            || stderr.contains("NOAUTH")
            || stderr.contains("uthentication"),
        "{stderr}"
    );
}

/// Where the cluster differs: the watch history is the project's stream,
/// trimmed by Redis to about `--watch-history-events` changes (at least
/// that many are kept); a resume point older than what is kept is refused
/// with OUT_OF_RANGE, never answered with a gap. The history's byte budget
/// and the count of remembered request ids do not apply there.
pub(crate) async fn history_is_the_trimmed_stream(seeds: &[String]) {
    let mut config = Config::default();
    config.engine.watch_history_events = 100;
    let front = InProcessRedis::start(seeds.to_vec(), "history", config).await;
    let kv = front.ctx().client.project("h");
    for i in 0..1000u64 {
        kv.set("k", &i).await.unwrap();
    }
    let refused = kv
        .watch(WatchOptions::all().from_version(1))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused}");
    // At least the last 100 are kept: a watcher 100 behind resumes exactly.
    let mut resumed = kv
        .watch(WatchOptions::all().from_version(900))
        .await
        .unwrap();
    for version in 901..=1000 {
        assert_eq!(next_event(&mut resumed).await.version, version);
    }
    front.stop().await;

    // The byte budget of the history and the count of remembered request
    // ids do not apply: the stream keeps changes by count, request ids
    // live out their window as keys.
    let mut config = Config::default();
    config.engine.watch_history_bytes = 1024;
    config.engine.idempotency_max_ids = 1;
    let front = InProcessRedis::start(seeds.to_vec(), "budgets", config).await;
    let kv = front.ctx().client.project("b");
    let big = "x".repeat(200);
    for i in 0..20 {
        kv.set(&format!("k{i}"), &big).await.unwrap();
    }
    let mut all = kv.watch(WatchOptions::all().from_version(0)).await.unwrap();
    for version in 1..=20 {
        assert_eq!(next_event(&mut all).await.version, version);
    }
    let once = |id: &'static str| IncrOptions::new().request_id(id);
    let first = kv.incr_with("n", 1.0, once("r1")).await.unwrap();
    kv.incr_with("n", 1.0, once("r2")).await.unwrap();
    let retried = kv.incr_with("n", 1.0, once("r1")).await.unwrap();
    assert_eq!(
        (retried.value, retried.version),
        (first.value, first.version)
    );
    assert_eq!(kv.get::<f64>("n").await.unwrap(), Some(2.0));
    front.stop().await;
}
