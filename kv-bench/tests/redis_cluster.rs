//! kv-bench `--target redis-cluster` against a real three-master Redis
//! Cluster on loopback (skipped when redis-server or redis-cli is not
//! installed, unless KV_TEST_REQUIRE_ALL=1).

mod common;

use std::{
    io::Read,
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{assert_clean, run_json};

/// Masters of the test cluster (no replicas: nothing here fails over).
const MASTERS: usize = 3;
/// The pause between two polls of a wait loop.
const POLL: Duration = Duration::from_millis(50);
/// How long a node may take to answer `PING` after it is spawned.
const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `redis-cli --cluster create` may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every node may take to say `cluster_state:ok` after that.
const OK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one other `redis-cli` call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Both tools, or a skip (a failure with KV_TEST_REQUIRE_ALL=1).
fn tools_available() -> bool {
    kv_tests::tool_available("redis-server", "--version")
        && kv_tests::tool_available("redis-cli", "--version")
}

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    child: Child,
}

/// A throwaway Redis Cluster of three masters, each in its own temporary
/// directory; every process is killed (and reaped) on drop.
struct Cluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

impl Cluster {
    fn start() -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        while cluster.nodes.len() < MASTERS {
            cluster.start_node();
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        create.args(
            cluster
                .ports()
                .iter()
                .map(|port| format!("127.0.0.1:{port}")),
        );
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = run_bounded(&mut create, CREATE_TIMEOUT);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// Spawns one node on a free port and waits for its `PONG`; a node that
    /// exits first (its port was taken meanwhile) is retried elsewhere.
    fn start_node(&mut self) {
        for _ in 0..5 {
            let port = self.free_port();
            let dir = self.dir.path().join(port.to_string());
            std::fs::create_dir(&dir).expect("node directory");
            let mut child = Command::new("redis-server")
                .current_dir(&dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--logfile", "redis.log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let deadline = Instant::now() + UP_TIMEOUT;
            loop {
                if child.try_wait().expect("poll redis-server").is_some() {
                    break;
                }
                if cli(port, &["PING"]) == "PONG" {
                    self.nodes.push(Node { port, child });
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server on port {port} did not answer PING");
                }
                std::thread::sleep(POLL);
            }
        }
        panic!("no redis-server stayed up on a free port");
    }

    /// A loopback port free now whose cluster bus port (`port + 10000`) is
    /// free too, and that no node here uses either way.
    fn free_port(&self) -> u16 {
        for _ in 0..1000 {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let port = listener.local_addr().expect("bound address").port();
            let Some(bus) = port.checked_add(10000) else {
                continue;
            };
            let used = self.nodes.iter().any(|n| {
                [n.port, n.port + 10000]
                    .iter()
                    .any(|p| *p == port || *p == bus)
            });
            if !used && TcpListener::bind(("127.0.0.1", bus)).is_ok() {
                return port;
            }
        }
        panic!("found no free loopback port pair (port, port + 10000)");
    }

    /// Waits until every node says `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = Instant::now() + OK_TIMEOUT;
        for port in self.ports() {
            loop {
                let info = cli(port, &["CLUSTER", "INFO"]);
                if info.lines().any(|line| line.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {port} is not ok within {OK_TIMEOUT:?}:\n{info}"
                );
                std::thread::sleep(POLL);
            }
        }
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Every node, as kv-bench's `--url`: `127.0.0.1:P1,127.0.0.1:P2,...`.
    fn seeds(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        seeds.join(",")
    }

    /// `redis-cli -c` (following redirections) against the first node.
    fn cli_c(&self, args: &[&str]) -> String {
        let mut argv = vec!["-c"];
        argv.extend_from_slice(args);
        cli(self.nodes[0].port, &argv)
    }
}

/// `redis-cli -p PORT ARGS`: what it printed on stdout, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    command.args(args);
    let out = run_bounded(&mut command, CLI_TIMEOUT);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command to its end, killing it (and failing) after `limit`.
fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn args<'a>(seeds: &'a str, workload: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["--target", "redis-cluster", "--url", seeds];
    argv.extend_from_slice(&["--workload", workload, "--concurrency", "8"]);
    argv.extend_from_slice(&["--duration", "1s", "--warmup", "200ms"]);
    argv.extend_from_slice(extra);
    argv
}

/// The first of keys `0..limit` (16-byte names after `tag`) that holds a
/// value, with the value.
fn first_stored(cluster: &Cluster, tag: &str, limit: u64) -> Option<(String, String)> {
    (0..limit).find_map(|n| {
        let key = format!("{tag}k{n:015}");
        let value = cluster.cli_c(&["GET", &key]);
        (!value.is_empty()).then_some((key, value))
    })
}

/// One cluster for every run (starting one takes seconds): single-key
/// workloads under the usual names on every master, then batches under
/// their task's hash tag.
#[test]
fn drives_a_three_master_cluster() {
    if !tools_available() {
        return;
    }
    let cluster = Cluster::start();
    let seeds = cluster.seeds();

    let result = run_json(&args(
        &seeds,
        "set",
        &["--keys", "1000", "--value-bytes", "200"],
    ));
    assert_clean(&result, "redis-cluster", "set");
    assert_eq!(result["connections"], 1, "{result:#}");
    assert!(result["redis_mode"].is_null(), "{result:#}");
    // Written under the usual 16-byte names, raw values of the asked size.
    let (key, value) = first_stored(&cluster, "", 100).expect("the run wrote a key");
    assert_eq!(key.len(), 16);
    assert_eq!(value.len(), 200, "{key} holds {value:?}");
    // The keys are spread over the slots, so every master holds some.
    for port in cluster.ports() {
        let keys: u64 = cli(port, &["DBSIZE"]).parse().expect("DBSIZE");
        assert!(keys > 0, "master {port} holds no key");
    }

    let result = run_json(&args(&seeds, "get", &["--keys", "1000", "--preload"]));
    assert_clean(&result, "redis-cluster", "get");
    assert_eq!(result["misses"], 0, "{result:#}");
    assert!(result["preload_s"].as_f64().unwrap() > 0.0);

    // EXISTS and DEL too.
    let mix = ["--keys", "1000", "--mix", "get=25,set=25,has=25,delete=25"];
    let result = run_json(&args(&seeds, "mixed", &mix));
    assert_clean(&result, "redis-cluster", "mixed");

    // Batches: 50 keys under each task's tag, written with a TTL.
    let batch = ["--keys", "50", "--batch", "16"];
    let mut extra = batch.to_vec();
    extra.extend_from_slice(&["--ttl-share", "1", "--ttl-ms", "600000"]);
    let result = run_json(&args(&seeds, "set-many", &extra));
    assert_clean(&result, "redis-cluster", "set-many");
    let ops = result["ops_per_sec"].as_f64().unwrap();
    assert_eq!(result["keys_per_sec"].as_f64().unwrap(), ops * 16.0);
    for task in [0, 7] {
        let tag = format!("{{b{task}}}");
        let (key, value) = first_stored(&cluster, &tag, 50).expect("a tagged key");
        assert_eq!(value.len(), 100, "{key} holds {value:?}");
        let ttl: i64 = cluster.cli_c(&["PTTL", &key]).parse().expect("PTTL");
        assert!((1..=600_000).contains(&ttl), "{key}: PTTL {ttl}");
    }

    // The same tags are read back: every key of the 50 was written by now.
    let result = run_json(&args(&seeds, "get-many", &batch));
    assert_clean(&result, "redis-cluster", "get-many");
    assert_eq!(result["batch"], 16);
    assert_eq!(result["misses"], 0, "{result:#}");
}
