//! What the kvctl tests share: a kv-server with an admin token, and the
//! kvctl binary run against it with a time bound.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::{
    io::{Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kv_tests::BinaryServer;

/// The admin token the test servers run with.
pub const ADMIN: &str = "kvctl-test-admin-token-0123456789";

/// The kvctl binary under test.
pub fn kvctl() -> &'static str {
    env!("CARGO_BIN_EXE_kvctl")
}

/// The kv-server binary of the same build (`cargo build -p kv-server`, or
/// any workspace build, puts it beside kvctl).
pub fn kv_server() -> String {
    let path = Path::new(kvctl()).with_file_name("kv-server");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p kv-server` (cargo test --workspace does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A fresh server on a free loopback port, requiring the admin token.
pub fn server() -> BinaryServer {
    BinaryServer::start_with_env(&kv_server(), &[], &[("KV_ADMIN_TOKEN", ADMIN)])
}

/// What a finished kvctl run printed.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// How kvctl is pointed at a server: URL, token, project.
#[derive(Clone)]
pub struct Kv {
    pub url: String,
    pub token: Option<String>,
    pub project: Option<String>,
}

impl Kv {
    /// kvctl on `server` with the admin token and no project.
    pub fn admin(server: &BinaryServer) -> Self {
        Self {
            url: format!("http://{}", server.addr),
            token: Some(ADMIN.into()),
            project: None,
        }
    }

    /// The same with `KV_PROJECT` set.
    pub fn in_project(&self, project: &str) -> Self {
        Self {
            project: Some(project.into()),
            ..self.clone()
        }
    }

    /// The same with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// The command, its environment set from this (and nothing inherited).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(kvctl());
        command.args(args);
        for var in [
            "KV_URL",
            "KV_TOKEN",
            "KV_PROJECT",
            "KV_TLS_CA",
            "KV_TIMEOUT",
        ] {
            command.env_remove(var);
        }
        command.env("KV_URL", &self.url);
        if let Some(token) = &self.token {
            command.env("KV_TOKEN", token);
        }
        if let Some(project) = &self.project {
            command.env("KV_PROJECT", project);
        }
        command
    }

    /// Runs kvctl with `args` and `stdin` (closed when `None`).
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Outcome {
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvctl starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        wait(child, args, Duration::from_secs(60))
    }

    /// Runs kvctl with `args` and a closed stdin.
    pub fn run(&self, args: &[&str]) -> Outcome {
        self.run_with_stdin(args, None)
    }

    /// Runs kvctl, expects exit code `code`, returns what it printed.
    pub fn expect(&self, code: i32, args: &[&str]) -> Outcome {
        let outcome = self.run(args);
        assert_eq!(outcome.code, Some(code), "kvctl {args:?}: {outcome:?}");
        outcome
    }
}

/// Waits for `child`, draining its pipes; kills it after `limit`.
pub fn wait(mut child: Child, args: &[&str], limit: Duration) -> Outcome {
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kvctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvctl {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
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
