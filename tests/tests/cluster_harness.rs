//! The Redis Cluster harness does what the tests built on it rely on: the
//! topology it reports is the real one, a migrated slot takes its keys
//! along, and a killed master is failed over without losing replicated
//! writes. A harness that lied about any of these would make every store
//! test on top of it meaningless. A cluster started with a password and TLS
//! must really demand both.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use kv_tests::cluster::{ClusterOptions, RedisCluster};

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
    assert_eq!(cluster.ca_pem_path(), None);
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

/// `redis-cli PING` on `port` without the password (with the CA in TLS
/// mode): what the node answered.
fn ping_without_password(port: u16, ca: Option<&std::path::Path>) -> String {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = ca {
        command.args(["--tls", "--cacert"]).arg(ca);
    }
    let out = command.arg("PING").output().expect("run redis-cli");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A key with bytes that a careless client would mangle: a quote, a
/// newline, a backslash, a space, non-ASCII.
const AWKWARD_KEY: &str = "{t}a\"b\nc\\d é";

#[test]
fn cluster_with_password_demands_it() {
    const PASSWORD: &str = "pw \"with\" quotes";
    let began = Instant::now();
    let options = ClusterOptions {
        password: Some(PASSWORD.to_owned()),
        tls: false,
    };
    let Some(cluster) = RedisCluster::start_with(options) else {
        return;
    };
    println!("password cluster up in {:?}", began.elapsed());
    assert_eq!(cluster.ca_pem_path(), None);
    assert!(cluster.seeds()[0].starts_with("redis://127.0.0.1:"));
    let seed = cluster.masters()[0];

    let info = cluster.cli(seed, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "CLUSTER INFO: {info}");
    assert_eq!(cluster.cli(seed, &["-c", "SET", "{p}k", "v"]).trim(), "OK");
    assert_eq!(cluster.cli(seed, &["-c", "GET", "{p}k"]).trim(), "v");
    let reply = ping_without_password(seed, None);
    assert!(reply.contains("NOAUTH"), "PING without password: {reply:?}");

    // The harness's own client authenticates; MIGRATE passes the password.
    cluster.set_replicated(AWKWARD_KEY, "w");
    let slot = RedisCluster::slot_of(AWKWARD_KEY);
    let owner = cluster.master_of_slot(slot);
    let target = *cluster.masters().iter().find(|&&m| m != owner).unwrap();
    cluster.migrate_slot(slot, target);
    assert_eq!(cluster.master_of_slot(slot), target);
    assert_eq!(cluster.cli(target, &["GET", AWKWARD_KEY]).trim(), "w");
    cluster.wait_healthy();

    println!("whole password test took {:?}", began.elapsed());
}

#[test]
fn cluster_with_password_and_tls_demands_both() {
    const PASSWORD: &str = "s3cret pass";
    let began = Instant::now();
    let options = ClusterOptions {
        password: Some(PASSWORD.to_owned()),
        tls: true,
    };
    let Some(mut cluster) = RedisCluster::start_with(options) else {
        return;
    };
    println!("TLS + password cluster up in {:?}", began.elapsed());

    let ca = cluster.ca_pem_path().expect("a CA in TLS mode");
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let seeds = cluster.seeds();
    assert_eq!(seeds.len(), 6);
    for (seed, port) in seeds.iter().zip(cluster.ports()) {
        assert_eq!(seed, &format!("rediss://127.0.0.1:{port}"));
    }
    assert!(cluster.seed_url().starts_with("rediss://127.0.0.1:"));
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    let seed = masters[0];

    // `cli` passes the CA and the password: the cluster is whole and
    // serves reads and writes, over TLS, with replicas in sync over TLS.
    let info = cluster.cli(seed, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "CLUSTER INFO: {info}");
    assert_eq!(cluster.cli(seed, &["-c", "SET", "{t}k", "v"]).trim(), "OK");
    assert_eq!(cluster.cli(seed, &["-c", "GET", "{t}k"]).trim(), "v");
    let owner = cluster.master_of_slot(RedisCluster::slot_of("{t}k"));
    assert_eq!(cluster.cli(owner, &["GET", "{t}k"]).trim(), "v");

    // Without the password, TLS connects but every command is refused.
    let reply = ping_without_password(seed, Some(&ca));
    assert!(reply.contains("NOAUTH"), "PING without password: {reply:?}");

    // Without TLS, the port does not speak plain RESP.
    let mut plain = TcpStream::connect(("127.0.0.1", seed)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = plain.write_all(b"*1\r\n$4\r\nPING\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("PONG") && !answer.starts_with(b"-"),
        "a plain connection got {:?}",
        String::from_utf8_lossy(&answer)
    );

    // The harness's own client works over TLS, keys byte-exact: a write
    // acknowledged by a replica, a slot migrated (MIGRATE over TLS, with the
    // password), a failover.
    cluster.set_replicated(AWKWARD_KEY, "w");
    let slot = RedisCluster::slot_of(AWKWARD_KEY);
    let from = cluster.master_of_slot(slot);
    let target = *masters.iter().find(|&&m| m != from).unwrap();
    cluster.migrate_slot(slot, target);
    assert_eq!(cluster.master_of_slot(slot), target);
    assert_eq!(cluster.cli(target, &["GET", AWKWARD_KEY]).trim(), "w");
    let heir = cluster.replica_of(target).expect("a replica");
    let killed_at = Instant::now();
    cluster.kill_node(target);
    cluster.wait_healthy();
    println!("TLS failover done in {:?}", killed_at.elapsed());
    assert_eq!(cluster.master_of_slot(slot), heir);
    assert_eq!(cluster.cli(heir, &["GET", AWKWARD_KEY]).trim(), "w");
    cluster.restart_node(target);
    cluster.wait_healthy();
    assert_eq!(cluster.replica_of(heir), Some(target));

    println!("whole TLS test took {:?}", began.elapsed());
}
