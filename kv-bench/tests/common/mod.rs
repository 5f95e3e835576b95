//! What the kv-bench tests share: running the binary with a time bound,
//! servers on free loopback ports (killed on drop), checks of a result.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The kv-bench binary under test.
pub fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_kv-bench")
}

/// The kv-server binary of the same build: `cargo test --workspace` builds
/// it into the same directory.
pub fn kv_server() -> String {
    let path = Path::new(bench()).with_file_name("kv-server");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p kv-server` (cargo test --workspace does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// What a finished kv-bench run printed.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs kv-bench with `args`, killing it after `limit`.
pub fn run_bench(args: &[&str], limit: Duration) -> Outcome {
    let mut child = Command::new(bench())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kv-bench starts");
    // Drain both pipes while waiting, so a chatty child never blocks.
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kv-bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kv-bench {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs kv-bench `subcommand` with `args` plus `--json FILE`, expects
/// success, and returns what it printed on stdout and the file's text.
pub fn subcommand_json(subcommand: &str, args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("result.json");
    let mut argv = vec![subcommand];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--json", path.to_str().expect("UTF-8 path")]);
    let outcome = run_bench(&argv, Duration::from_secs(60));
    assert_eq!(
        outcome.code,
        Some(0),
        "kv-bench {argv:?} failed:\n{}\n{}",
        outcome.stdout,
        outcome.stderr
    );
    let text = std::fs::read_to_string(&path).expect("the result file was written");
    (outcome.stdout, text)
}

/// Runs kv-bench `run` with `args` plus `--json FILE`, expects success and
/// returns the JSON result.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let (stdout, text) = subcommand_json("run", args);
    assert!(
        stdout.starts_with("target"),
        "the table is on stdout: {stdout}"
    );
    serde_json::from_str(&text).expect("the result is JSON")
}

/// A result with operations, no errors, and ordered percentiles.
pub fn assert_clean(result: &serde_json::Value, target: &str, workload: &str) {
    assert_eq!(result["target"], target, "{result:#}");
    assert_eq!(result["workload"], workload, "{result:#}");
    assert!(
        result["ops"].as_u64().unwrap() > 0,
        "no operations: {result:#}"
    );
    assert!(result["ops_per_sec"].as_f64().unwrap() > 0.0, "{result:#}");
    assert_eq!(result["errors"], 0, "errors: {result:#}");
    let latency = &result["latency_us"];
    let p = |name: &str| latency[name].as_u64().unwrap();
    assert!(p("p50") >= 1, "{result:#}");
    assert!(
        p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max"),
        "percentiles out of order: {latency}"
    );
    let mean = latency["mean"].as_f64().unwrap();
    assert!(mean >= 1.0 && mean <= p("max") as f64, "{latency}");
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// A child process killed (and reaped) on drop, so a failing test leaves
/// nothing running.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `kv-bench reference-server` on a free port (read from its log).
    pub fn reference() -> Self {
        let mut child = Command::new(bench())
            .args([
                "reference-server",
                "--addr",
                "127.0.0.1:0",
                "--workers",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the reference server starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => addr.parse().expect("an address in the log line"),
            Err(_) => {
                let _ = child.kill();
                panic!("the reference server did not report its address");
            }
        };
        Self {
            child,
            addr,
            _dir: None,
        }
    }

    /// A throwaway in-memory `redis-server` on a free port.
    pub fn redis() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_pings(server.addr) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// A single-member etcd on free ports, in a temporary data directory.
    /// Ready when its client port accepts connections; callers retry their
    /// first call until the member has elected itself.
    pub fn etcd() -> Self {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        let server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], client)),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(server.addr).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `host:port`.
    pub fn addr_arg(&self) -> String {
        self.addr.to_string()
    }

    /// The etcd log, for failure messages.
    pub fn log_path(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("etcd.log"))
    }
}

fn redis_pings(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
