//! A real Redis Cluster on loopback, for tests.
//!
//! A store that talks to Redis Cluster has to be tested against the real
//! thing: `MOVED` and `ASK` redirections, slots changing owner while keys
//! are being read, a master dying and its replica taking over. A mock would
//! only replay what its author already expected, so this module runs six
//! real `redis-server` processes (three masters, three replicas) from the
//! Debian packages, joins them with `redis-cli --cluster create`, and gives
//! tests the levers to break them: kill, restart, pause, move a slot.
//!
//! Everything here blocks and uses only std (plus `tempfile`), so a test can
//! call it from sync code or from `tokio::task::spawn_blocking`. Every wait
//! is bounded and its panic names the node's port and shows the tail of its
//! log, because a hung or silent cluster test is the hardest kind to debug.
//!
//! The harness talks to the nodes it manages over a tiny RESP client of its
//! own (bounded by socket timeouts, byte-exact for keys), and offers
//! [`RedisCluster::cli`] so tests can poke nodes exactly as a person would.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// Three masters and one replica each.
const NODES: usize = 6;
/// How many hash slots a Redis Cluster has.
const SLOTS: usize = 16384;
/// The pause between two polls of a wait loop.
const POLL: Duration = Duration::from_millis(50);
/// How long a node may take to answer `PING` after it is spawned.
const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster may take to settle (join, failover, resync).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one question to one node may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one `redis-cli` invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `redis-cli --cluster create` may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many lines of a node's log a panic message shows.
const LOG_TAIL_LINES: usize = 30;

/// A running local Redis Cluster of three masters and three replicas.
///
/// Roles are not fixed: a failover turns a replica into a master, a
/// restarted old master rejoins as a replica. So nothing here caches roles
/// or slot owners; [`masters`](Self::masters), [`replica_of`](Self::replica_of)
/// and [`master_of_slot`](Self::master_of_slot) ask the live nodes every
/// time. Dropping it kills every process and removes their directories.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

/// One `redis-server` process and the directory holding its state.
struct Node {
    port: u16,
    /// `nodes.conf`, the append-only file and `redis.log`; kept across
    /// kill and restart so the node comes back as the same cluster member.
    dir: TempDir,
    /// `None` while the node is killed.
    child: Option<Child>,
    /// Set between `pause_node` and `resume_node` (SIGSTOP'd).
    paused: AtomicBool,
}

impl Node {
    /// A node is live when it runs and is not stopped: only those can be
    /// asked anything.
    fn is_live(&self) -> bool {
        self.child.is_some() && !self.paused.load(Ordering::SeqCst)
    }

    fn pid(&self) -> String {
        match &self.child {
            Some(child) => child.id().to_string(),
            None => panic!("redis node 127.0.0.1:{} is killed", self.port),
        }
    }
}

/// What a wait loop last saw wrong: which node (if one) and what.
struct Problem {
    port: Option<u16>,
    message: String,
}

impl Problem {
    fn at(port: u16, message: impl Into<String>) -> Self {
        Self {
            port: Some(port),
            message: message.into(),
        }
    }

    fn cluster(message: impl Into<String>) -> Self {
        Self {
            port: None,
            message: message.into(),
        }
    }
}

impl RedisCluster {
    /// Starts a fresh six-node cluster and waits until it is fully healthy:
    /// every slot served, every replica in sync. Tests that need Redis
    /// Cluster call this and skip when it returns `None`, so machines
    /// without Redis still run the rest of the suite.
    ///
    /// Returns `None` (after printing `SKIPPED: ...`) when `redis-server` or
    /// `redis-cli` is not on `PATH`.
    ///
    /// # Panics
    ///
    /// When the tools are missing and `KV_TEST_REQUIRE_ALL=1` (see
    /// [`crate::require_all`]), or when the cluster does not come up in
    /// time; the message names the node and shows the tail of its log.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use kv_tests::cluster::RedisCluster;
    ///
    /// let Some(cluster) = RedisCluster::start() else {
    ///     return; // skipped: no Redis on this machine
    /// };
    /// let seed = cluster.seeds()[0].clone(); // "redis://127.0.0.1:<port>"
    /// let slot = RedisCluster::slot_of("{user:1}:name");
    /// let master = cluster.master_of_slot(slot);
    /// cluster.cli(master, &["SET", "{user:1}:name", "ada"]);
    /// # let _ = seed;
    /// ```
    pub fn start() -> Option<Self> {
        let tools = crate::tool_available("redis-server", "--version")
            && crate::tool_available("redis-cli", "--version");
        if !tools {
            println!("SKIPPED: redis-server/redis-cli not found on PATH");
            return None;
        }
        // Built before the nodes so that a panic half-way still kills the
        // processes already started (through `Drop`).
        let mut cluster = Self { nodes: Vec::new() };
        for _ in 0..NODES {
            cluster.add_node();
        }
        cluster.create();
        cluster.wait_healthy();
        cluster.wait_until("three masters with one replica each", HEALTH_TIMEOUT, |c| {
            let roles = c.live_roles()?;
            let masters: Vec<&NodeLine> = roles.iter().filter(|n| n.is_master()).collect();
            if masters.len() != NODES / 2 {
                return Err(Problem::cluster(format!(
                    "{} masters: {:?}",
                    masters.len(),
                    masters.iter().map(|m| m.port).collect::<Vec<_>>()
                )));
            }
            for master in masters {
                if !roles
                    .iter()
                    .any(|n| n.master_id.as_deref() == Some(&master.id))
                {
                    return Err(Problem::at(master.port, "master has no replica"));
                }
            }
            Ok(())
        });
        Some(cluster)
    }

    /// The URL of every node, dead or alive, in start order: what a cluster
    /// client gets as its seed list, so it can still find the cluster while
    /// some node is down.
    pub fn seeds(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// One URL for a client that takes a single seed: the first node, in
    /// start order, that is currently a live master (so it survives a
    /// failover of the original first master).
    ///
    /// # Panics
    ///
    /// When the nodes cannot be asked for their roles in time.
    pub fn seed_url(&self) -> String {
        let masters = self.masters();
        let port = self
            .ports()
            .into_iter()
            .find(|port| masters.contains(port))
            .unwrap_or_else(|| panic!("no live master in the cluster"));
        format!("redis://127.0.0.1:{port}")
    }

    /// The client port of every node, dead or alive, in start order; the
    /// ports never change, even across [`restart_node`](Self::restart_node).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The ports of the live nodes that are masters right now, ascending,
    /// each as the node itself reports its role (the most up-to-date view
    /// there is during a failover).
    ///
    /// # Panics
    ///
    /// When the live nodes cannot be asked in time.
    pub fn masters(&self) -> Vec<u16> {
        let roles = self.wait_until("read the nodes' roles", IO_TIMEOUT * 5, Self::live_roles);
        let mut masters: Vec<u16> = roles
            .iter()
            .filter(|n| n.is_master())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The live replica (the lowest port, if several) that replicates
    /// `master_port` right now, as the replica itself reports; `None` when
    /// the master has none (say, a freshly promoted one whose old master is
    /// dead) or `master_port` is not a live master.
    ///
    /// # Panics
    ///
    /// When the live nodes cannot be asked in time.
    pub fn replica_of(&self, master_port: u16) -> Option<u16> {
        let roles = self.wait_until("read the nodes' roles", IO_TIMEOUT * 5, Self::live_roles);
        let master = roles
            .iter()
            .find(|n| n.port == master_port && n.is_master())?;
        roles
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(&master.id))
            .map(|n| n.port)
            .min()
    }

    /// The hash slot of `key`, as Redis computes it (CRC16/XMODEM of the key,
    /// or of its first non-empty `{...}` hash tag, modulo 16384), so a test
    /// can pick keys that land on a given node without asking the cluster.
    pub fn slot_of(key: &str) -> u16 {
        let key = key.as_bytes();
        let hashed = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                let len = rest.iter().position(|&b| b == b'}')?;
                (len > 0).then(|| &rest[..len])
            })
            .unwrap_or(key);
        crc16(hashed) & 0x3FFF
    }

    /// The port of the live master that serves `slot` right now: the one
    /// live master claiming it in its own `CLUSTER NODES` line. Waits while
    /// no live master, or more than one, claims it (a failover or migration
    /// in flight).
    ///
    /// # Panics
    ///
    /// When `slot` is out of range, or no single live master claims it
    /// within 10 s.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        assert!(usize::from(slot) < SLOTS, "slot {slot} is out of range");
        let what = format!("find the one live master of slot {slot}");
        self.wait_until(&what, Duration::from_secs(10), |c| {
            let roles = c.live_roles()?;
            let owners: Vec<u16> = roles
                .iter()
                .filter(|n| n.is_master() && n.owns(slot))
                .map(|n| n.port)
                .collect();
            match owners[..] {
                [port] => Ok(port),
                _ => Err(Problem::cluster(format!(
                    "live masters claiming slot {slot}: {owners:?}"
                ))),
            }
        })
    }

    /// Runs `redis-cli -h 127.0.0.1 -p <port> <args...>` and returns its
    /// stdout, so a test can do what a person at a terminal would (including
    /// `-c` to follow redirections). The arguments go straight to the
    /// process, no shell. Redis error replies are returned as text (stdout
    /// is not a terminal, so redis-cli prints raw replies, e.g. `MOVED 42
    /// 127.0.0.1:7001`), so tests can assert on them.
    ///
    /// # Panics
    ///
    /// When redis-cli fails (exit status, e.g. no connection) or takes more
    /// than 10 s; the message has its stderr and the node's log tail.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args);
        let what = format!("redis-cli -p {port} {args:?}");
        let out = run_bounded(&mut command, CLI_TIMEOUT, &what, self.log_dir(port));
        if !out.status.success() {
            panic!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail_of(port)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `key = value` on the master of its slot and waits (`WAIT 1`,
    /// on the same connection) until a replica has acknowledged it, so a
    /// test can kill the master afterwards and still expect the value.
    ///
    /// # Panics
    ///
    /// When the write fails or no replica acknowledges it within 5 s.
    pub fn set_replicated(&self, key: &str, value: &str) {
        let master = self.master_of_slot(Self::slot_of(key));
        let fail = |message: String| -> ! {
            panic!(
                "SET {key:?} + WAIT on 127.0.0.1:{master}: {message}{}",
                self.log_tail_of(master)
            )
        };
        let mut conn = Conn::open(master, Duration::from_secs(10)).unwrap_or_else(|e| fail(e));
        match conn.call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
            Ok(Reply::Status(ok)) if ok == "OK" => {}
            other => fail(format!("SET replied {other:?}")),
        }
        match conn.call(&[b"WAIT", b"1", b"5000"]) {
            Ok(Reply::Int(n)) if n >= 1 => {}
            other => fail(format!("WAIT 1 5000 replied {other:?}")),
        }
    }

    /// Kills the node with SIGKILL (no shutdown, no final fsync: a crash)
    /// and waits for it, so tests can check that the cluster fails over and
    /// that what the store acknowledged survives.
    ///
    /// # Panics
    ///
    /// When `port` is not a node of this cluster or is already killed.
    pub fn kill_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        let child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("redis node 127.0.0.1:{port} is already killed"));
        kill_process(child);
        node.paused.store(false, Ordering::SeqCst);
    }

    /// Starts a killed node again on the same port with the same directory,
    /// so it reloads its `nodes.conf` and append-only file and rejoins the
    /// cluster as the same member (as a replica if it lost its slots to a
    /// failover). Waits until it answers `PING`, not until the cluster is
    /// healthy: call [`wait_healthy`](Self::wait_healthy) for that.
    ///
    /// # Panics
    ///
    /// When `port` is not a killed node of this cluster, or the node does
    /// not come up within 10 s.
    pub fn restart_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        assert!(
            node.child.is_none(),
            "redis node 127.0.0.1:{port} is running; kill it before restarting it"
        );
        node.child = Some(spawn_server(port, node.dir.path()));
        if let Err(message) = self.wait_up(port) {
            panic!(
                "redis node 127.0.0.1:{port} did not restart: {message}{}",
                self.log_tail_of(port)
            );
        }
    }

    /// Stops the node with SIGSTOP: it keeps its sockets open but answers
    /// nothing, like a node stuck in a long GC pause or a partitioned host,
    /// which a client must tell apart from a refused connection. Paused
    /// nodes count as not live for the waits here.
    ///
    /// # Panics
    ///
    /// When `port` is not a running node of this cluster, or `kill` fails.
    pub fn pause_node(&self, port: u16) {
        let node = self.node(port);
        signal(&node.pid(), "-STOP");
        node.paused.store(true, Ordering::SeqCst);
    }

    /// Resumes a node stopped by [`pause_node`](Self::pause_node) with
    /// SIGCONT; it may find that it was failed over meanwhile and step down.
    ///
    /// # Panics
    ///
    /// When `port` is not a running node of this cluster, or `kill` fails.
    pub fn resume_node(&self, port: u16) {
        let node = self.node(port);
        signal(&node.pid(), "-CONT");
        node.paused.store(false, Ordering::SeqCst);
    }

    /// Waits until the cluster has settled, so a test checks its store
    /// against a stable cluster rather than racing a failover:
    ///
    /// - every live node says `cluster_state:ok` with all 16384 slots
    ///   assigned and ok;
    /// - every slot is claimed by exactly one live master, and every live
    ///   node's view agrees on who that is;
    /// - every live replica replicates a live master with
    ///   `master_link_status:up`.
    ///
    /// Killed and paused nodes are left out; a killed master's slots count
    /// only once its replica has been promoted (about 3 s with the 2 s node
    /// timeout used here).
    ///
    /// # Panics
    ///
    /// When that does not happen within 30 s; the message says what was
    /// last wrong, and where, with the node's log tail.
    pub fn wait_healthy(&self) {
        self.wait_until("wait for a healthy cluster", HEALTH_TIMEOUT, Self::health);
    }

    /// Moves one slot, with its keys, from its current master to
    /// `to_master`, online, the way `redis-cli --cluster reshard` does but
    /// for exactly this slot: mark it importing on the target and migrating
    /// on the source, `MIGRATE` its keys in batches (clients meanwhile get
    /// `ASK` redirections), then assign it to the target on every master.
    /// Returns once every live node agrees on the new owner. Does nothing if
    /// `to_master` already serves the slot.
    ///
    /// # Panics
    ///
    /// When `to_master` is not a live master, a step is refused, or the move
    /// does not finish within 30 s.
    pub fn migrate_slot(&self, slot: u16, to_master: u16) {
        let from = self.master_of_slot(slot);
        if from == to_master {
            return;
        }
        let roles = self.wait_until("read the nodes' roles", IO_TIMEOUT * 5, Self::live_roles);
        let id_of = |port: u16| -> String {
            roles
                .iter()
                .find(|n| n.port == port && n.is_master())
                .map(|n| n.id.clone())
                .unwrap_or_else(|| panic!("127.0.0.1:{port} is not a live master"))
        };
        let (from_id, to_id) = (id_of(from), id_of(to_master));
        let slot_arg = slot.to_string();
        let setslot = |port: u16, state: &str, id: &str| {
            self.must_ok(
                port,
                &[
                    b"CLUSTER",
                    b"SETSLOT",
                    slot_arg.as_bytes(),
                    state.as_bytes(),
                    id.as_bytes(),
                ],
            );
        };
        setslot(to_master, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);

        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let to_port = to_master.to_string();
        loop {
            let keys = match self.must(
                from,
                &[b"CLUSTER", b"GETKEYSINSLOT", slot_arg.as_bytes(), b"100"],
            ) {
                Reply::Array(Some(keys)) => keys,
                other => panic!("CLUSTER GETKEYSINSLOT on 127.0.0.1:{from} replied {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "migrating slot {slot} from 127.0.0.1:{from} to 127.0.0.1:{to_master} \
                 did not finish within {HEALTH_TIMEOUT:?}{}",
                self.log_tail_of(from)
            );
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                to_port.as_bytes(),
                b"",
                b"0",
                b"5000",
                b"KEYS",
            ];
            for key in &keys {
                match key {
                    Reply::Bulk(Some(key)) => args.push(key),
                    other => panic!("CLUSTER GETKEYSINSLOT on 127.0.0.1:{from} gave key {other:?}"),
                }
            }
            // MIGRATE itself may wait 5 s for the target: give it more.
            match query(from, &args, Duration::from_secs(15)) {
                Ok(Reply::Status(s)) if s == "OK" || s == "NOKEY" => {}
                other => panic!(
                    "MIGRATE of {} keys of slot {slot} from 127.0.0.1:{from} to \
                     127.0.0.1:{to_master} replied {other:?}{}",
                    keys.len(),
                    self.log_tail_of(from)
                ),
            }
        }

        // The target first, so the slot is never without an owner; then the
        // source, which stops redirecting with ASK; then every other master.
        setslot(to_master, "NODE", &to_id);
        setslot(from, "NODE", &to_id);
        for master in roles.iter().filter(|n| n.is_master()) {
            if master.port != from && master.port != to_master {
                setslot(master.port, "NODE", &to_id);
            }
        }

        let what = format!("every live node to see slot {slot} on 127.0.0.1:{to_master}");
        self.wait_until(&what, HEALTH_TIMEOUT, |c| {
            for port in c.live_ports() {
                let view = cluster_nodes(port)?;
                let owner = view.iter().find(|n| n.owns(slot)).map(|n| n.id.as_str());
                if owner != Some(to_id.as_str()) {
                    return Err(Problem::at(
                        port,
                        format!("sees slot {slot} on node {owner:?}, not {to_id}"),
                    ));
                }
            }
            Ok(())
        });
    }

    /// Starts one more node on a free port, retrying with another port when
    /// something else took the chosen one (its client or bus port) between
    /// the check and the bind.
    fn add_node(&mut self) {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let port = self.free_port();
            let dir = tempfile::Builder::new()
                .prefix("kv-redis-node-")
                .tempdir()
                .expect("create a temp dir for a redis node");
            let child = spawn_server(port, dir.path());
            self.nodes.push(Node {
                port,
                dir,
                child: Some(child),
                paused: AtomicBool::new(false),
            });
            let Err(message) = self.wait_up(port) else {
                return;
            };
            let tail = self.log_tail_of(port);
            let mut node = self.nodes.pop().expect("the node just pushed");
            if let Some(child) = node.child.take() {
                kill_process(child);
            }
            let port_taken = tail.contains("Address already in use");
            if !port_taken || attempt == ATTEMPTS {
                panic!("redis node 127.0.0.1:{port} did not start: {message}{tail}");
            }
        }
    }

    /// A loopback port that is free now, with its cluster bus port
    /// (`port + 10000`) free too, and not used by another node here.
    fn free_port(&self) -> u16 {
        for _ in 0..1000 {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            let port = listener.local_addr().expect("bound address").port();
            let Some(bus) = port.checked_add(10000) else {
                continue;
            };
            let taken = self.nodes.iter().any(|n| {
                n.port == port || n.port.checked_add(10000) == Some(port) || n.port == bus
            });
            if taken || TcpListener::bind(("127.0.0.1", bus)).is_err() {
                continue;
            }
            return port;
        }
        panic!("found no free loopback port pair (port, port + 10000)");
    }

    /// Waits until the node answers `PONG` (not `-LOADING`). `Err` when the
    /// process exited first, so the caller can tell a taken port from a hang.
    fn wait_up(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            let child = self
                .node_mut(port)
                .child
                .as_mut()
                .expect("a node being started has a process");
            if let Some(status) = child.try_wait().expect("poll a redis-server process") {
                return Err(format!("redis-server exited ({status})"));
            }
            let last = match query(port, &[b"PING"], IO_TIMEOUT) {
                Ok(Reply::Status(pong)) if pong == "PONG" => return Ok(()),
                Ok(other) => format!("PING replied {other:?}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "redis node 127.0.0.1:{port} did not answer PING within {UP_TIMEOUT:?}: \
                     {last}{}",
                    self.log_tail_of(port)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Joins the six fresh nodes into one cluster, the first three as
    /// masters (redis-cli's choice for nodes given in this order).
    fn create(&self) {
        let mut command = Command::new("redis-cli");
        command.args(["--cluster", "create"]);
        command.args(self.ports().iter().map(|port| format!("127.0.0.1:{port}")));
        command.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let what = "redis-cli --cluster create";
        let out = run_bounded(&mut command, CREATE_TIMEOUT, what, None);
        if !out.status.success() {
            panic!(
                "{what} failed ({}):\n{}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail_of(self.nodes[0].port)
            );
        }
    }

    /// What is wrong with the cluster right now, if anything; see
    /// [`wait_healthy`](Self::wait_healthy).
    fn health(&self) -> Result<(), Problem> {
        let live = self.live_ports();
        if live.is_empty() {
            return Err(Problem::cluster("no live node"));
        }
        for &port in &live {
            let info = text(query(port, &[b"CLUSTER", b"INFO"], IO_TIMEOUT), port)?;
            let field = |name: &str| info_field(&info, name).unwrap_or("<missing>");
            let slots = SLOTS.to_string();
            if field("cluster_state") != "ok"
                || field("cluster_slots_assigned") != slots
                || field("cluster_slots_ok") != slots
            {
                return Err(Problem::at(
                    port,
                    format!(
                        "cluster_state:{} cluster_slots_assigned:{} cluster_slots_ok:{} \
                         cluster_slots_pfail:{} cluster_slots_fail:{}",
                        field("cluster_state"),
                        field("cluster_slots_assigned"),
                        field("cluster_slots_ok"),
                        field("cluster_slots_pfail"),
                        field("cluster_slots_fail"),
                    ),
                ));
            }
        }

        let roles = self.live_roles()?;
        let mut owner: Vec<Option<&str>> = vec![None; SLOTS];
        for master in roles.iter().filter(|n| n.is_master()) {
            for &(first, last) in &master.slots {
                for slot in first..=last {
                    let slot = usize::from(slot);
                    if let Some(other) = owner[slot] {
                        return Err(Problem::at(
                            master.port,
                            format!("claims slot {slot}, as does node {other}"),
                        ));
                    }
                    owner[slot] = Some(&master.id);
                }
            }
        }
        if let Some(slot) = owner.iter().position(Option::is_none) {
            return Err(Problem::cluster(format!(
                "slot {slot} (and maybe more) is claimed by no live master"
            )));
        }

        for &port in &live {
            let view = cluster_nodes(port)?;
            let mut seen: Vec<Option<&str>> = vec![None; SLOTS];
            for node in &view {
                for &(first, last) in &node.slots {
                    for slot in first..=last {
                        seen[usize::from(slot)] = Some(&node.id);
                    }
                }
            }
            if let Some(slot) = (0..SLOTS).find(|&s| seen[s] != owner[s]) {
                return Err(Problem::at(
                    port,
                    format!(
                        "sees slot {slot} on node {:?}, but live node {:?} claims it",
                        seen[slot], owner[slot]
                    ),
                ));
            }
        }

        for replica in roles.iter().filter(|n| !n.is_master()) {
            let Some(master_id) = &replica.master_id else {
                return Err(Problem::at(replica.port, "neither master nor replica"));
            };
            if !roles.iter().any(|n| n.is_master() && &n.id == master_id) {
                return Err(Problem::at(
                    replica.port,
                    format!("replicates node {master_id}, which is not a live master"),
                ));
            }
            let info = text(
                query(replica.port, &[b"INFO", b"replication"], IO_TIMEOUT),
                replica.port,
            )?;
            let link = info_field(&info, "master_link_status").unwrap_or("<missing>");
            if link != "up" {
                return Err(Problem::at(
                    replica.port,
                    format!("replica has master_link_status:{link}"),
                ));
            }
        }
        Ok(())
    }

    /// Every live node's own line of `CLUSTER NODES`: its id, its role as
    /// it knows it, and the slots it claims.
    fn live_roles(&self) -> Result<Vec<NodeLine>, Problem> {
        self.live_ports()
            .into_iter()
            .map(|port| {
                cluster_nodes(port)?
                    .into_iter()
                    .find(|n| n.flags.iter().any(|f| f == "myself"))
                    .map(|mut line| {
                        // A node may not know its own announced port yet.
                        line.port = port;
                        line
                    })
                    .ok_or_else(|| Problem::at(port, "CLUSTER NODES has no `myself` line"))
            })
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_live())
            .map(|n| n.port)
            .collect()
    }

    /// Polls `check` every [`POLL`] until it succeeds or `timeout` passes;
    /// then panics with `what`, the last problem and the log tail of the
    /// node it names.
    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<T, Problem>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match check(self) {
                Ok(value) => return value,
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                let (node, tail) = match problem.port {
                    Some(port) => (format!("127.0.0.1:{port}: "), self.log_tail_of(port)),
                    None => (String::new(), String::new()),
                };
                panic!(
                    "{what}: not done after {timeout:?}; last problem: {node}{}{tail}",
                    problem.message
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Sends one command and returns the reply; panics on an I/O failure or
    /// an error reply, naming the node.
    fn must(&self, port: u16, args: &[&[u8]]) -> Reply {
        match query(port, args, IO_TIMEOUT) {
            Ok(Reply::Error(e)) | Err(e) => panic!(
                "{} on 127.0.0.1:{port} failed: {e}{}",
                show_command(args),
                self.log_tail_of(port)
            ),
            Ok(reply) => reply,
        }
    }

    /// [`must`](Self::must), expecting `+OK`.
    fn must_ok(&self, port: u16, args: &[&[u8]]) {
        match self.must(port, args) {
            Reply::Status(ok) if ok == "OK" => {}
            other => panic!(
                "{} on 127.0.0.1:{port} replied {other:?}",
                show_command(args)
            ),
        }
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("127.0.0.1:{port} is not a node of this cluster"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("127.0.0.1:{port} is not a node of this cluster"))
    }

    fn log_dir(&self, port: u16) -> Option<&Path> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.dir.path())
    }

    /// The last lines of the node's log, formatted to end a panic message.
    fn log_tail_of(&self, port: u16) -> String {
        self.log_dir(port).map(log_tail).unwrap_or_default()
    }
}

impl Drop for RedisCluster {
    /// Kills every process (SIGKILL, which also ends paused ones) and waits
    /// for it; the temp dirs go when the nodes are dropped right after.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.take() {
                kill_process(child);
            }
        }
    }
}

/// Kills a node's process with SIGKILL, then whatever it had forked (an
/// append-only file rewrite, a transfer to a replica) so that no orphan
/// keeps writing into its directory, and reaps it. SIGKILL also ends a
/// stopped (paused) process.
fn kill_process(mut child: Child) {
    let pid = child.id();
    // Best effort: Linux lists a thread's children here; Redis forks from
    // its main thread, whose id is the process id.
    let forks =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let _ = child.kill();
    for fork in forks.split_whitespace() {
        let _ = Command::new("kill")
            .args(["-KILL", fork])
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.wait();
}

/// Spawns `redis-server` for one cluster node keeping its state in `dir`.
fn spawn_server(port: u16, dir: &Path) -> Child {
    let dir_arg = dir.to_str().expect("temp dir path is UTF-8");
    let log = dir.join("redis.log");
    let log_arg = log.to_str().expect("temp dir path is UTF-8");
    let port_arg = port.to_string();
    Command::new("redis-server")
        .current_dir(dir)
        .args([
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
        ])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "2000"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ])
        // Start a replica's full sync at once instead of waiting 5 s for
        // more replicas to join the same transfer.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--enable-debug-command", "yes"])
        .args(["--daemonize", "no", "--dir", dir_arg, "--logfile", log_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn redis-server for 127.0.0.1:{port}: {e}"))
}

/// Sends `signal` (`-STOP`, `-CONT`) to a process with `kill(1)`.
fn signal(pid: &str, signal: &str) {
    let status = Command::new("kill").args([signal, pid]).status();
    assert!(
        status.as_ref().is_ok_and(ExitStatus::success),
        "kill {signal} {pid} failed: {status:?}"
    );
}

/// Runs `command` to completion, killing it after `timeout`, with stdin
/// closed and stdout and stderr captured.
fn run_bounded(command: &mut Command, timeout: Duration, what: &str, log: Option<&Path>) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll a child process") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = stdout.join().unwrap_or_default();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{what}: still running after {timeout:?}; stdout: {}; stderr: {}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr),
                log.map(log_tail).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The last lines of `dir/redis.log`, formatted to end a panic message.
fn log_tail(dir: &Path) -> String {
    let path = dir.join("redis.log");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            format!("\n--- last lines of redis.log ---\n{tail}\n---")
        }
        Err(e) => format!("\n(no redis.log: {e})"),
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), Redis Cluster's key
/// hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The master's id, for a replica.
    master_id: Option<String>,
    /// Inclusive slot ranges it serves (not the `[slot->-id]` migrations).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// `CLUSTER NODES` as `port` sees it.
fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>, Problem> {
    let text = text(query(port, &[b"CLUSTER", b"NODES"], IO_TIMEOUT), port)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_node_line(line).map_err(|e| Problem::at(port, e)))
        .collect()
}

/// Parses `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> <slot>...`.
fn parse_node_line(line: &str) -> Result<NodeLine, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return Err(format!("short CLUSTER NODES line: {line:?}"));
    }
    let address = fields[1].split('@').next().unwrap_or_default();
    let port = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in CLUSTER NODES line: {line:?}"))?;
    let master_id = (fields[3] != "-").then(|| fields[3].to_owned());
    let mut slots = Vec::new();
    for range in fields[8..].iter().filter(|f| !f.starts_with('[')) {
        let bad = || format!("bad slot range {range:?} in CLUSTER NODES line: {line:?}");
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        slots.push((
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        ));
    }
    Ok(NodeLine {
        id: fields[0].to_owned(),
        port,
        flags: fields[2].split(',').map(str::to_owned).collect(),
        master_id,
        slots,
    })
}

/// The value of `name:value` in an `INFO`-style reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// A reply that should be text (bulk or status), as text; anything else is
/// a problem at `port`.
fn text(reply: Result<Reply, String>, port: u16) -> Result<String, Problem> {
    match reply {
        Ok(Reply::Bulk(Some(bytes))) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(Reply::Status(s)) => Ok(s),
        Ok(other) => Err(Problem::at(port, format!("unexpected reply {other:?}"))),
        Err(e) => Err(Problem::at(port, e)),
    }
}

fn show_command(args: &[&[u8]]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Opens a connection to `127.0.0.1:port`, sends one command, returns its
/// reply; every step bounded by `timeout`, so a paused node is an error,
/// not a hang.
fn query(port: u16, args: &[&[u8]], timeout: Duration) -> Result<Reply, String> {
    Conn::open(port, timeout)?.call(args)
}

/// A minimal RESP2 connection: commands as arrays of bulk strings, so keys
/// may hold any bytes.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16, timeout: Duration) -> Result<Self, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("configure socket to {addr}: {e}"))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.stream
            .get_mut()
            .write_all(&request)
            .map_err(|e| format!("send {}: {e}", show_command(args)))?;
        self.read_reply()
            .map_err(|e| format!("reply to {}: {e}", show_command(args)))
    }

    fn read_reply(&mut self) -> Result<Reply, String> {
        let mut line = Vec::new();
        self.stream
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if !line.ends_with(b"\r\n") {
            return Err(format!(
                "connection closed mid-reply: {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let number = || -> Result<i64, String> {
            body.parse()
                .map_err(|_| format!("bad number in reply line {body:?}"))
        };
        match line[0] {
            b'+' => Ok(Reply::Status(body)),
            b'-' => Ok(Reply::Error(body)),
            b':' => Ok(Reply::Int(number()?)),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Ok(Reply::Bulk(None)),
                Ok(len) => {
                    let mut bytes = vec![0; len + 2];
                    self.stream
                        .read_exact(&mut bytes)
                        .map_err(|e| e.to_string())?;
                    bytes.truncate(len);
                    Ok(Reply::Bulk(Some(bytes)))
                }
            },
            b'*' => match usize::try_from(number()?) {
                Err(_) => Ok(Reply::Array(None)),
                Ok(len) => (0..len)
                    .map(|_| self.read_reply())
                    .collect::<Result<_, _>>()
                    .map(|items| Reply::Array(Some(items))),
            },
            other => Err(format!("unknown reply type {:?}", char::from(other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RedisCluster, crc16, parse_node_line};

    #[test]
    fn crc16_is_xmodem() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_follow_hash_tags() {
        assert_eq!(RedisCluster::slot_of("foo"), 12182);
        assert_eq!(RedisCluster::slot_of("{user1000}.following"), 3443);
        assert_eq!(
            RedisCluster::slot_of("{user1000}.followers"),
            RedisCluster::slot_of("user1000")
        );
        // An empty tag hashes the whole key; only the first tag counts.
        assert_eq!(RedisCluster::slot_of("{}x"), crc16(b"{}x") & 0x3FFF);
        assert_eq!(RedisCluster::slot_of("a{b}{c}"), RedisCluster::slot_of("b"));
    }

    #[test]
    fn node_lines_parse() {
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host \
                    slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 \
                    connected";
        let node = parse_node_line(line).unwrap();
        assert_eq!(node.port, 30004);
        assert!(!node.is_master());
        assert_eq!(
            node.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        let line = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 \
                    myself,master - 0 0 1 connected 0-5460 7000 [5461->-292f8b36]";
        let node = parse_node_line(line).unwrap();
        assert!(node.is_master());
        assert_eq!(node.slots, [(0, 5460), (7000, 7000)]);
        assert!(node.owns(7000) && !node.owns(5461));
    }
}
