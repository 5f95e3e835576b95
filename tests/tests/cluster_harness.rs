//! The Redis Cluster harness does what the tests built on it rely on: the
//! topology it reports is the real one, a migrated slot takes its keys
//! along, and a killed master is failed over without losing replicated
//! writes. A harness that lied about any of these would make every store
//! test on top of it meaningless.

use std::time::Instant;

use kv_tests::cluster::RedisCluster;

/// Keys in the slot range of `master`, for writing data that a failover of
/// that master must keep.
fn keys_on(cluster: &RedisCluster, master: u16, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{{k{i}}}v"))
        .filter(|key| cluster.master_of_slot(RedisCluster::slot_of(key)) == master)
        .take(count)
        .collect()
}

#[test]
fn cluster_migrates_slots_and_fails_over() {
    let began = Instant::now();
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    println!("cluster up in {:?}", began.elapsed());

    // Topology: six nodes, three masters with one replica each.
    assert_eq!(cluster.seeds().len(), 6);
    assert_eq!(cluster.ports().len(), 6);
    assert!(cluster.seeds()[0].starts_with("redis://127.0.0.1:"));
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    for &master in &masters {
        let replica = cluster.replica_of(master);
        assert!(replica.is_some(), "master {master} has no replica");
        assert!(!masters.contains(&replica.unwrap()));
    }
    let seed = masters[0];
    assert!(cluster.seed_url().starts_with("redis://127.0.0.1:"));

    // The local slot computation agrees with the server, hash tags included.
    for key in ["{p}x", "foo", "a{b}c", "{}x", "{{x}}", "x}y{z}", "héllo"] {
        let server: u16 = cluster
            .cli(seed, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT replies a number");
        assert_eq!(RedisCluster::slot_of(key), server, "slot of {key:?}");
    }

    // A write through the cluster lands on the master of its slot.
    assert_eq!(cluster.cli(seed, &["-c", "SET", "{p}x", "1"]).trim(), "OK");
    let slot = RedisCluster::slot_of("{p}x");
    let owner = cluster.master_of_slot(slot);
    assert_eq!(cluster.cli(owner, &["GET", "{p}x"]).trim(), "1");

    // Migrating the slot moves the key; the old owner redirects.
    let target = *masters.iter().find(|&&m| m != owner).unwrap();
    let moved_at = Instant::now();
    cluster.migrate_slot(slot, target);
    println!("slot {slot} migrated in {:?}", moved_at.elapsed());
    assert_eq!(cluster.master_of_slot(slot), target);
    assert_eq!(cluster.cli(target, &["GET", "{p}x"]).trim(), "1");
    let redirect = cluster.cli(owner, &["GET", "{p}x"]);
    assert!(
        redirect.contains(&format!("MOVED {slot} 127.0.0.1:{target}")),
        "old owner replied {redirect:?}"
    );
    assert_eq!(cluster.cli(seed, &["-c", "GET", "{p}x"]).trim(), "1");

    // A paused replica is left out of the health check and comes back.
    let paused = cluster.replica_of(target).unwrap();
    cluster.pause_node(paused);
    cluster.wait_healthy();
    cluster.resume_node(paused);
    cluster.wait_healthy();

    // Kill -9 a master holding other slots: its replica takes over, with
    // every write a replica acknowledged.
    let victim = *masters
        .iter()
        .find(|&&m| m != owner && m != target)
        .unwrap();
    let keys = keys_on(&cluster, victim, 5);
    for key in &keys {
        cluster.set_replicated(key, "kept");
    }
    let heir = cluster.replica_of(victim).unwrap();
    let killed_at = Instant::now();
    cluster.kill_node(victim);
    cluster.wait_healthy();
    println!("failover done in {:?}", killed_at.elapsed());
    assert!(cluster.masters().contains(&heir), "{heir} was not promoted");
    assert!(!cluster.masters().contains(&victim));
    for key in &keys {
        assert_eq!(cluster.master_of_slot(RedisCluster::slot_of(key)), heir);
        assert_eq!(cluster.cli(heir, &["GET", key]).trim(), "kept", "{key}");
        assert_eq!(
            cluster.cli(seed, &["-c", "GET", key]).trim(),
            "kept",
            "{key}"
        );
    }
    assert_eq!(cluster.cli(target, &["GET", "{p}x"]).trim(), "1");

    // The killed master comes back as a replica of its heir.
    cluster.restart_node(victim);
    cluster.wait_healthy();
    assert_eq!(cluster.replica_of(heir), Some(victim));
    assert_eq!(cluster.masters().len(), 3);

    println!("whole test took {:?}", began.elapsed());
}
