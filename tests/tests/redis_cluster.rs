//! The Redis Cluster backend against a real local cluster (3 masters, 3
//! replicas), started once for this file: the whole conformance suite,
//! then the scale-out properties.

use kv_server::config::Config;
use kv_tests::{cluster::RedisCluster, redis::InProcessRedis};

/// Every conformance case, each on a fresh front-end in a namespace of its
/// own, against one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_a_real_cluster() {
    let Some(cluster) = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
    else {
        return;
    };
    let seeds = cluster.seeds();
    for (i, (name, case)) in kv_tests::conformance_suite!(list).into_iter().enumerate() {
        let started = std::time::Instant::now();
        let front = InProcessRedis::start(seeds.clone(), &format!("c{i}"), Config::default()).await;
        case(front.ctx()).await;
        front.stop().await;
        println!("{name}: ok in {:?}", started.elapsed());
    }
    drop(cluster);
}
