//! The Redis Cluster backend against a real local cluster (3 masters, 3
//! replicas, AOF on), started once for this file: one test walks through
//! the conformance suite (in process and through the binary), then the
//! scale-out properties with two front-ends, then resharding and failover
//! under load. One cluster, because starting one takes seconds: the
//! sections use namespaces of their own so they never see each other.

#[path = "redis_cluster/front_end_loss.rs"]
mod front_end_loss;
#[path = "redis_cluster/metrics.rs"]
mod metrics;
#[path = "redis_cluster/parts.rs"]
mod parts;

use std::time::Instant;

use kv_server::config::Config;
use kv_tests::{BinaryServer, Ctx, Time, cluster::RedisCluster, redis::InProcessRedis};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

async fn conformance_in_process(seeds: &[String]) {
    for (i, (name, case)) in kv_tests::conformance_suite!(list).into_iter().enumerate() {
        let front =
            InProcessRedis::start(seeds.to_vec(), &format!("c{i}"), Config::default()).await;
        case(front.ctx()).await;
        front.stop().await;
        println!("  in process: {name} ok");
    }
}

async fn conformance_through_the_binary(seeds: &[String]) {
    let urls = seeds.join(",");
    for (i, (name, case)) in kv_tests::conformance_suite!(list).into_iter().enumerate() {
        let namespace = format!("b{i}");
        let server = BinaryServer::start(
            BIN,
            &[
                "--backend",
                "redis-cluster",
                "--redis-url",
                &urls,
                "--redis-namespace",
                &namespace,
            ],
        );
        let ctx = Ctx::connect(server.addr, Time::Real).await;
        case(&ctx).await;
        drop(ctx);
        let log = server.log();
        let status = tokio::task::spawn_blocking(move || server.terminate())
            .await
            .unwrap();
        assert!(status.success(), "exit status {status}; log: {log:?}");
        println!("  binary: {name} ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_redis_cluster() {
    let Some(mut cluster) = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    let seeds = cluster.seeds();
    let section = |name: &str, started: Instant| {
        println!("{name}: ok in {:.1?}", started.elapsed());
    };

    let started = Instant::now();
    parts::an_incompatible_library_is_refused(&cluster, BIN);
    section("an incompatible library is refused", started);

    let started = Instant::now();
    conformance_in_process(&seeds).await;
    section("conformance in process", started);

    let started = Instant::now();
    conformance_through_the_binary(&seeds).await;
    section("conformance through the binary", started);

    let started = Instant::now();
    parts::increments_across_front_ends_are_exact(&seeds).await;
    section("increments across front-ends", started);

    let started = Instant::now();
    front_end_loss::sdk_fails_over_when_a_front_end_dies(&seeds, BIN).await;
    section("the SDK fails over when a front-end dies", started);

    let started = Instant::now();
    metrics::health_and_metrics_on_the_cluster_backend(&seeds, BIN).await;
    section("health and metrics on the cluster backend", started);

    let started = Instant::now();
    parts::compare_and_swap_across_front_ends(&seeds).await;
    section("compare-and-swap across front-ends", started);

    let started = Instant::now();
    parts::watch_across_front_ends_and_resume(&seeds).await;
    section("watch across front-ends", started);

    let started = Instant::now();
    parts::catalog_across_front_ends(&seeds).await;
    section("catalog across front-ends", started);

    let started = Instant::now();
    parts::quota_is_exact_across_front_ends(&seeds).await;
    section("quota across front-ends", started);

    let started = Instant::now();
    parts::expiry_with_two_front_ends(&seeds).await;
    section("expiry with two front-ends", started);

    let started = Instant::now();
    parts::history_is_the_trimmed_stream(&seeds).await;
    section("history and request ids as documented", started);

    let started = Instant::now();
    parts::big_clear_and_delete(&cluster).await;
    section("clear and delete of a million keys", started);

    let started = Instant::now();
    parts::resharding_under_load(&mut cluster).await;
    section("resharding under load", started);

    let started = Instant::now();
    parts::failover_under_load(&mut cluster).await;
    section("failover under load", started);

    let started = Instant::now();
    parts::health_follows_the_cluster(&mut cluster).await;
    section("health follows the cluster", started);
    drop(cluster);

    let started = Instant::now();
    parts::tls_and_password(BIN).await;
    section("a cluster with TLS and a password", started);
}
