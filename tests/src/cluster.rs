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
//!
//! [`RedisCluster::start_with`] can also protect the cluster the way a
//! production one is ([`ClusterOptions`]): a password on every node, and TLS
//! on every connection (clients, replication, cluster bus) with a CA made
//! for the test. In TLS mode the harness has no TLS library to speak with,
//! so it asks the nodes through `redis-cli --tls` instead (one process per
//! question, arguments hex-escaped on its stdin so keys stay byte-exact):
//! slower, but every wait is bounded the same way.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read, Write},
    iter::Peekable,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
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

/// How a cluster started by [`RedisCluster::start_with`] is protected.
///
/// The default is what [`RedisCluster::start`] runs: no password, no TLS.
///
/// # Example
///
/// ```no_run
/// use kv_tests::cluster::{ClusterOptions, RedisCluster};
///
/// let options = ClusterOptions {
///     password: Some("s3cret".to_owned()),
///     tls: true,
/// };
/// let Some(cluster) = RedisCluster::start_with(options) else {
///     return; // skipped: no Redis, or no TLS in it
/// };
/// let seed = cluster.seeds()[0].clone(); // "rediss://127.0.0.1:<port>"
/// let ca = cluster.ca_pem_path().unwrap(); // the CA to trust
/// # let _ = (seed, ca);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// When set, every node requires it (`requirepass`), replicas use it
    /// to reach their master (`masterauth`), and the harness sends it
    /// (`AUTH`, `redis-cli -a`) everywhere it talks to a node.
    pub password: Option<String>,
    /// When set, the nodes accept only TLS connections (no plain port),
    /// replicate and gossip over TLS too, with a server certificate for
    /// `127.0.0.1`/`localhost` signed by a fresh CA
    /// ([`RedisCluster::ca_pem_path`]); clients need no certificate.
    pub tls: bool,
}

/// A running local Redis Cluster of three masters and three replicas.
///
/// Roles are not fixed: a failover turns a replica into a master, a
/// restarted old master rejoins as a replica. So nothing here caches roles
/// or slot owners; [`masters`](Self::masters), [`replica_of`](Self::replica_of)
/// and [`master_of_slot`](Self::master_of_slot) ask the live nodes every
/// time. Dropping it kills every process and removes their directories.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// How the harness reaches a node (password, TLS).
    access: Access,
    /// The certificates, in TLS mode.
    tls: Option<TlsFiles>,
}

/// The PEM files of a TLS cluster, in a directory of their own that goes
/// with the cluster.
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    _dir: TempDir,
}

impl TlsFiles {
    fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kv-redis-tls-")
            .tempdir()
            .expect("create a temp dir for the cluster's certificates");
        let files = crate::pki::TestPki::generate().write_to(dir.path());
        Self {
            ca: files.ca,
            cert: files.server_cert,
            key: files.server_key,
            _dir: dir,
        }
    }
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
        Self::start_with(ClusterOptions::default())
    }

    /// [`start`](Self::start), with a password and/or TLS on every node
    /// (see [`ClusterOptions`]). The harness itself, [`cli`](Self::cli) and
    /// the levers all use them, so everything else works the same.
    ///
    /// Returns `None` (after printing `SKIPPED: ...`) when `redis-server`
    /// or `redis-cli` is not on `PATH`, or TLS is asked for and either was
    /// built without it.
    ///
    /// # Panics
    ///
    /// When something is missing and `KV_TEST_REQUIRE_ALL=1` (see
    /// [`crate::require_all`]), or when the cluster does not come up in
    /// time; the message names the node and shows the tail of its log.
    pub fn start_with(options: ClusterOptions) -> Option<Self> {
        let tools = crate::tool_available("redis-server", "--version")
            && crate::tool_available("redis-cli", "--version");
        if !tools {
            println!("SKIPPED: redis-server/redis-cli not found on PATH");
            return None;
        }
        if options.tls && !tls_supported() {
            assert!(
                !crate::require_all(),
                "redis-server/redis-cli with TLS is required (KV_TEST_REQUIRE_ALL=1), \
                 but they were built without it"
            );
            println!("SKIPPED: redis-server built without TLS");
            return None;
        }
        let tls = options.tls.then(TlsFiles::generate);
        let access = Access {
            password: options.password,
            ca: tls.as_ref().map(|files| files.ca.clone()),
        };
        // Built before the nodes so that a panic half-way still kills the
        // processes already started (through `Drop`).
        let mut cluster = Self {
            nodes: Vec::new(),
            access,
            tls,
        };
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
    /// some node is down. `rediss://` in TLS mode, `redis://` otherwise;
    /// the password is not in them.
    pub fn seeds(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|port| self.url(port))
            .collect()
    }

    /// The CA certificate (PEM file) that signed every node's certificate,
    /// for a client to trust, in TLS mode; `None` otherwise.
    pub fn ca_pem_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|files| files.ca.clone())
    }

    fn url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// One URL for a client that takes a single seed: the first node, in
    /// start order, that is currently a live master (so it survives a
    /// failover of the original first master). Same scheme as
    /// [`seeds`](Self::seeds).
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
        self.url(port)
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
    /// `-c` to follow redirections). With a password it also passes `-a
    /// <password> --no-auth-warning`, in TLS mode `--tls --cacert <CA>`.
    /// The arguments go straight to the process, no shell. Redis error
    /// replies are returned as text (stdout is not a terminal, so redis-cli
    /// prints raw replies, e.g. `MOVED 42 127.0.0.1:7001`), so tests can
    /// assert on them.
    ///
    /// # Panics
    ///
    /// When redis-cli fails (exit status, e.g. no connection) or takes more
    /// than 10 s; the message has its stderr and the node's log tail.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(self.access.cli_args())
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
        // One connection for both: WAIT waits for that connection's writes.
        let replies = self
            .access
            .session(
                master,
                &[
                    &[b"SET", key.as_bytes(), value.as_bytes()],
                    &[b"WAIT", b"1", b"5000"],
                ],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| fail(e));
        match &replies[0] {
            Reply::Status(ok) if ok == "OK" => {}
            other => fail(format!("SET replied {other:?}")),
        }
        match &replies[1] {
            Reply::Int(n) if *n >= 1 => {}
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
        let args = self.server_args(port);
        let node = self.node_mut(port);
        assert!(
            node.child.is_none(),
            "redis node 127.0.0.1:{port} is running; kill it before restarting it"
        );
        node.child = Some(spawn_server(port, node.dir.path(), &args));
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
            ];
            if let Some(password) = &self.access.password {
                args.extend([b"AUTH".as_slice(), password.as_bytes()]);
            }
            args.push(b"KEYS");
            for key in &keys {
                match key {
                    Reply::Bulk(Some(key)) => args.push(key),
                    other => panic!("CLUSTER GETKEYSINSLOT on 127.0.0.1:{from} gave key {other:?}"),
                }
            }
            // MIGRATE itself may wait 5 s for the target: give it more.
            match self.access.query(from, &args, Duration::from_secs(15)) {
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
                let view = c.cluster_nodes(port)?;
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
            let child = spawn_server(port, dir.path(), &self.server_args(port));
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
            let last = match self.access.query(port, &[b"PING"], IO_TIMEOUT) {
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
        command.args(self.access.cli_args());
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
            let info = text(
                self.access.query(port, &[b"CLUSTER", b"INFO"], IO_TIMEOUT),
                port,
            )?;
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
            let view = self.cluster_nodes(port)?;
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
                self.access
                    .query(replica.port, &[b"INFO", b"replication"], IO_TIMEOUT),
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
                self.cluster_nodes(port)?
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

    /// `CLUSTER NODES` as `port` sees it.
    fn cluster_nodes(&self, port: u16) -> Result<Vec<NodeLine>, Problem> {
        let text = text(
            self.access.query(port, &[b"CLUSTER", b"NODES"], IO_TIMEOUT),
            port,
        )?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| parse_node_line(line).map_err(|e| Problem::at(port, e)))
            .collect()
    }

    /// The `redis-server` arguments that depend on the options: where the
    /// node listens (a plain port, or only a TLS one, with its
    /// certificates), and its password.
    fn server_args(&self, port: u16) -> Vec<OsString> {
        let port = OsString::from(port.to_string());
        let mut args: Vec<OsString> = Vec::new();
        match &self.tls {
            None => args.extend(["--port".into(), port]),
            Some(files) => {
                args.extend(["--port".into(), "0".into(), "--tls-port".into(), port]);
                args.extend(["--tls-cert-file".into(), files.cert.clone().into()]);
                args.extend(["--tls-key-file".into(), files.key.clone().into()]);
                args.extend(["--tls-ca-cert-file".into(), files.ca.clone().into()]);
                for option in ["--tls-cluster", "--tls-replication"] {
                    args.extend([option.into(), "yes".into()]);
                }
                args.extend(["--tls-auth-clients".into(), "no".into()]);
            }
        }
        if let Some(password) = &self.access.password {
            args.extend(["--requirepass".into(), password.into()]);
            args.extend(["--masterauth".into(), password.into()]);
        }
        args
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
        match self.access.query(port, args, IO_TIMEOUT) {
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

/// Spawns `redis-server` for one cluster node keeping its state in `dir`,
/// listening (and authenticating) as `args` say (see
/// [`RedisCluster::server_args`]).
fn spawn_server(port: u16, dir: &Path, args: &[OsString]) -> Child {
    let dir_arg = dir.to_str().expect("temp dir path is UTF-8");
    let log = dir.join("redis.log");
    let log_arg = log.to_str().expect("temp dir path is UTF-8");
    Command::new("redis-server")
        .current_dir(dir)
        .args(args)
        .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
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
    run_for(command, &[], timeout)
        .unwrap_or_else(|e| panic!("{what}: {e}{}", log.map(log_tail).unwrap_or_default()))
}

/// Runs `command` to completion with `input` on its stdin (closed at once
/// when empty) and its stdout and stderr captured. `Err` when it cannot be
/// run, or is still running after `timeout` (it is killed then, and the
/// message has what it printed).
fn run_for(command: &mut Command, input: &[u8], timeout: Duration) -> Result<Output, String> {
    let stdin = if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    let mut child = command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        // From a thread, so that a child not reading its stdin cannot
        // block us; dropping the pipe closes it.
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
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
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            waited => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = stdout.join().unwrap_or_default();
                let stderr = stderr.join().unwrap_or_default();
                let why = match waited {
                    Err(e) => format!("cannot wait for it: {e}"),
                    Ok(_) => format!("still running after {timeout:?}"),
                };
                return Err(format!(
                    "{why}; stdout: {}; stderr: {}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr),
                ));
            }
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Whether `redis-server` and `redis-cli` were built with TLS: redis-cli
/// lists `--tls` in its help, and redis-server, told to use a certificate
/// that does not exist (and no port, so it binds nothing), fails to load
/// it; one built without TLS would ignore the options or not know them.
fn tls_supported() -> bool {
    let help = run_for(Command::new("redis-cli").arg("--help"), &[], CLI_TIMEOUT);
    let cli = help.is_ok_and(|out| {
        [out.stdout, out.stderr]
            .iter()
            .any(|text| String::from_utf8_lossy(text).contains("--tls"))
    });
    if !cli {
        return false;
    }
    let dir = tempfile::tempdir().expect("create a temp dir for a TLS probe");
    let missing = dir.path().join("missing.pem");
    let mut probe = Command::new("redis-server");
    probe
        .current_dir(dir.path())
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .args(["--logfile", "", "--tls-replication", "yes"]);
    for option in ["--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"] {
        probe.arg(option).arg(&missing);
    }
    run_for(&mut probe, &[], Duration::from_secs(3)).is_ok_and(|out| {
        let log = String::from_utf8_lossy(&out.stdout);
        log.contains("Failed to load certificate") || log.contains("Failed to configure TLS")
    })
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

/// How the harness reaches a node: the password to send, and the CA to
/// trust when the nodes speak only TLS.
struct Access {
    password: Option<String>,
    /// The CA file, in TLS mode.
    ca: Option<PathBuf>,
}

impl Access {
    /// The `redis-cli` options for these: `--tls --cacert <CA>`, `-a
    /// <password> --no-auth-warning`.
    fn cli_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(ca) = &self.ca {
            args.extend(["--tls".into(), "--cacert".into(), ca.into()]);
        }
        if let Some(password) = &self.password {
            args.extend(["-a".into(), password.into(), "--no-auth-warning".into()]);
        }
        args
    }

    /// Opens a connection to `127.0.0.1:port`, sends one command, returns
    /// its reply; every step bounded by `timeout`, so a paused node is an
    /// error, not a hang.
    fn query(&self, port: u16, args: &[&[u8]], timeout: Duration) -> Result<Reply, String> {
        let mut replies = self.session(port, &[args], timeout)?;
        Ok(replies.remove(0))
    }

    /// Opens one connection to `127.0.0.1:port` (authenticated, with a
    /// password) and sends `commands` on it in order; one reply per
    /// command, or `Err`. Bounded by `timeout` (per step on a plain
    /// connection, in all through `redis-cli` in TLS mode).
    fn session(
        &self,
        port: u16,
        commands: &[&[&[u8]]],
        timeout: Duration,
    ) -> Result<Vec<Reply>, String> {
        if self.ca.is_some() {
            return self.cli_session(port, commands, timeout);
        }
        let mut conn = Conn::open(port, timeout)?;
        if let Some(password) = &self.password {
            match conn.call(&[b"AUTH", password.as_bytes()])? {
                Reply::Status(ok) if ok == "OK" => {}
                other => return Err(format!("AUTH replied {other:?}")),
            }
        }
        commands.iter().map(|args| conn.call(args)).collect()
    }

    /// [`session`](Self::session) through one `redis-cli --no-raw`
    /// process, the commands on its stdin, one a line, every argument
    /// quoted and hex-escaped (`"\x6b\x00"`) so any byte goes through; its
    /// replies are read back from the formatted output, where bulk strings
    /// are quoted and escaped too.
    ///
    /// Commands that redis-cli always prints raw (`INFO`, `CLUSTER NODES`,
    /// ...) are sent alone, as arguments with `-e`, and come back as the
    /// bulk string they print, or `Err` with the error it printed.
    fn cli_session(
        &self,
        port: u16,
        commands: &[&[&[u8]]],
        timeout: Duration,
    ) -> Result<Vec<Reply>, String> {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--no-raw"])
            .args(self.cli_args());
        let printed = |out: &Output| {
            format!(
                "redis-cli -p {port} exited {}, printed {:?}, stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim(),
            )
        };
        if let [args] = commands
            && cli_prints_raw(args)
        {
            command.arg("-e");
            for arg in *args {
                let arg = std::str::from_utf8(arg)
                    .map_err(|_| format!("{} has a non-UTF-8 argument", show_command(args)))?;
                command.arg(arg);
            }
            let out = run_for(&mut command, &[], timeout)
                .map_err(|e| format!("redis-cli -p {port}: {e}"))?;
            return if out.status.success() && !out.stdout.is_empty() {
                Ok(vec![Reply::Bulk(Some(out.stdout))])
            } else {
                Err(printed(&out))
            };
        }
        assert!(
            !commands.iter().any(|args| cli_prints_raw(args)),
            "redis-cli prints some of {commands:?} raw: send them alone"
        );
        let mut input = Vec::new();
        for args in commands {
            for (i, arg) in args.iter().enumerate() {
                input.extend_from_slice(if i == 0 { b"\"" } else { b" \"" });
                for byte in *arg {
                    input.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
                }
                input.push(b'"');
            }
            input.push(b'\n');
        }
        let out = run_for(&mut command, &input, timeout)
            .map_err(|e| format!("redis-cli -p {port}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().peekable();
        commands
            .iter()
            .map(|args| {
                parse_cli_reply(&mut lines)
                    .map_err(|e| format!("reply to {}: {e}; {}", show_command(args), printed(&out)))
            })
            .collect()
    }
}

/// Whether `redis-cli` prints the reply to `args` raw even when told
/// `--no-raw` (its list, as of Redis 7), so that it cannot be told apart
/// from other replies in a stream.
fn cli_prints_raw(args: &[&[u8]]) -> bool {
    let is = |i: usize, word: &str| {
        args.get(i)
            .is_some_and(|arg| arg.eq_ignore_ascii_case(word.as_bytes()))
    };
    is(0, "info")
        || is(0, "lolwut")
        || (args.len() == 2 && is(0, "cluster") && (is(1, "nodes") || is(1, "info")))
        || (is(0, "client") && (is(1, "list") || is(1, "info")))
        || (is(0, "memory") && (is(1, "malloc-stats") || is(1, "doctor")))
        || (is(0, "latency") && (is(1, "graph") || is(1, "doctor")))
        || (is(0, "debug") && (is(1, "htstats") || is(1, "htstats-key")))
        || (is(0, "debug") && is(1, "client-eviction"))
        || (is(0, "proxy") && is(1, "info"))
}

/// Reads one reply that `redis-cli --no-raw` printed: `OK` (a status),
/// `"text"` (a bulk string, escaped), `(nil)`, `(integer) 5`, `(error)
/// ERR ...`, `(empty array)`, or a flat array, one `N) item` a line.
fn parse_cli_reply<'a>(
    lines: &mut Peekable<impl Iterator<Item = &'a str>>,
) -> Result<Reply, String> {
    let line = lines.next().ok_or("no reply printed")?;
    let Some(first) = cli_array_item(line, 1) else {
        return parse_cli_item(line);
    };
    let mut items = vec![parse_cli_item(first)?];
    while let Some(item) = lines
        .peek()
        .and_then(|&line| cli_array_item(line, items.len() + 1))
    {
        items.push(parse_cli_item(item)?);
        lines.next();
    }
    Ok(Reply::Array(Some(items)))
}

/// The item of a printed array line (`" 9) item"`) at `index`.
fn cli_array_item(line: &str, index: usize) -> Option<&str> {
    line.trim_start().strip_prefix(&format!("{index}) "))
}

fn parse_cli_item(item: &str) -> Result<Reply, String> {
    if cli_array_item(item, 1).is_some() {
        return Err(format!("nested arrays are not supported: {item:?}"));
    }
    if let Some(quoted) = item.strip_prefix('"') {
        return unquote_cli(quoted).map(|bytes| Reply::Bulk(Some(bytes)));
    }
    if let Some(number) = item.strip_prefix("(integer) ") {
        return number
            .parse()
            .map(Reply::Int)
            .map_err(|_| format!("bad integer {item:?}"));
    }
    if let Some(error) = item.strip_prefix("(error) ") {
        return Ok(Reply::Error(error.to_owned()));
    }
    Ok(match item {
        "(nil)" => Reply::Bulk(None),
        "(empty array)" | "(empty list or set)" => Reply::Array(Some(Vec::new())),
        status => Reply::Status(status.to_owned()),
    })
}

/// The bytes of a string as redis-cli quotes it (`sdscatrepr`), given what
/// follows the opening quote: `\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b` and
/// `\xHH` escapes, up to the closing quote, which must end the line.
fn unquote_cli(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("bad quoted string \"{text}");
    let mut bytes = text.bytes();
    let mut out = Vec::new();
    loop {
        match bytes.next().ok_or_else(bad)? {
            b'"' if bytes.next().is_none() => return Ok(out),
            b'"' => return Err(bad()),
            b'\\' => out.push(match bytes.next().ok_or_else(bad)? {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'a' => 0x07,
                b'b' => 0x08,
                b'x' => {
                    let hex = [bytes.next(), bytes.next()];
                    let [Some(high), Some(low)] = hex else {
                        return Err(bad());
                    };
                    let hex = [high, low];
                    let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                    u8::from_str_radix(hex, 16).map_err(|_| bad())?
                }
                other => other,
            }),
            byte => out.push(byte),
        }
    }
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
    use super::{RedisCluster, Reply, crc16, parse_cli_reply, parse_node_line};

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

    #[test]
    fn cli_output_parses_back() {
        // As `redis-cli --no-raw` prints SET, GET of a binary value, WAIT,
        // GET of nothing, an error, CLUSTER GETKEYSINSLOT with 10 keys.
        let mut text = String::from(
            "OK\n\"\\x00a\\\"b\\nc\\\\\\xc3\\xa9\"\n(integer) 1\n(nil)\n\
             (error) NOAUTH Authentication required.\n(empty array)\n",
        );
        for i in 1..=10 {
            text.push_str(&format!("{i:>2}) \"k{i}\"\n"));
        }
        let mut lines = text.lines().peekable();
        let mut next = || parse_cli_reply(&mut lines).unwrap();
        assert!(matches!(next(), Reply::Status(s) if s == "OK"));
        assert!(
            matches!(next(), Reply::Bulk(Some(b)) if b == b"\0a\"b\nc\\\xc3\xa9"),
            "binary bulk"
        );
        assert!(matches!(next(), Reply::Int(1)));
        assert!(matches!(next(), Reply::Bulk(None)));
        assert!(matches!(next(), Reply::Error(e) if e.starts_with("NOAUTH")));
        assert!(matches!(next(), Reply::Array(Some(items)) if items.is_empty()));
        let Reply::Array(Some(keys)) = next() else {
            panic!("not an array")
        };
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .map(|k| match k {
                Reply::Bulk(Some(k)) => k,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(keys.len(), 10);
        assert_eq!(keys[9], b"k10");
        assert!(parse_cli_reply(&mut lines).is_err(), "no more replies");
        let mut bad = "\"unterminated".lines().peekable();
        assert!(parse_cli_reply(&mut bad).is_err());
    }
}
