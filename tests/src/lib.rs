//! The kv conformance suite and the harness to run it.
//!
//! Every backend must pass the same suite, unchanged: [`conformance`] holds
//! the cases, each an `async fn(&Ctx)` that talks to a server only through
//! the SDK and the raw gRPC client. [`conformance_suite!`] expands into one
//! `#[tokio::test]` per case for a type implementing [`Target`].
//!
//! # Layout
//!
//! - [`Ctx`]: what a case gets: the server URL, an SDK client, a raw client,
//!   and a way to let time pass ([`Ctx::advance`]).
//! - [`Target`]: how a test file starts and stops one server.
//! - [`InProcess`]: the server in this process on `127.0.0.1:0` with a
//!   manual clock; [`BinaryServer`]: the real binary as a child process.
//! - [`proxy::Proxy`]: a TCP proxy that cuts, delays and stalls
//!   connections, for tests of clients on a bad network.
//!
//! # Example
//!
//! ```no_run
//! // tests/conformance.rs
//! kv_tests::conformance_suite!(kv_tests::InProcess);
//! ```
//!
//! A server on the real clock runs `conformance_suite!(T, real_clock)`:
//! the cases that let time pass run exactly on the manual clock in
//! process instead of sleeping.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use futures_util::future::BoxFuture;
use kv_engine::{ManualClock, memory::MemoryStore, wal::DurableStore};
use kv_server::{config::Config, server::ServeError};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub mod cluster;
pub mod conformance;
pub mod counters;
mod ctx;
pub mod redis;
pub use ctx::{CLOCK_START_MS, Ctx, Time, next_event};
pub mod pki;
pub mod proxy;
mod rng;
pub use rng::Rng;

/// What a listed conformance case returns.
pub type CaseFuture<'a> = BoxFuture<'a, ()>;

/// A conformance case, as [`conformance_suite!`]`(list)` gives it.
pub type Case = for<'a> fn(&'a Ctx) -> CaseFuture<'a>;

/// A server the suite runs against.
pub trait Target: Sized {
    /// Starts a fresh, empty server.
    fn start() -> impl Future<Output = Self>;
    /// The context for cases against it.
    fn ctx(&self) -> &Ctx;
    /// Stops the server and checks it stopped cleanly.
    fn stop(self) -> impl Future<Output = ()>;
}

/// Expands into one `#[tokio::test]` per conformance case, against a fresh
/// server of type `$target` (a [`Target`]) for each.
///
/// `conformance_suite!(T)` runs every case; `conformance_suite!(T,
/// real_clock)` is for a server on the real clock (the binary): the cases
/// that let time pass would only sleep there, and they already run exactly
/// on the manual clock in process, so it runs the others and one real
/// expiry.
#[macro_export]
macro_rules! conformance_suite {
    // Every case as `(name, fn)`, for a test that runs them one after
    // the other against one expensive server (a Redis Cluster).
    (list) => {{
        let mut cases = $crate::conformance_suite!(@clockless @list);
        cases.extend($crate::conformance_suite!(@clocked @list));
        cases
    }};
    ($target:ty) => {
        $crate::conformance_suite!(@clockless @cases $target);
        $crate::conformance_suite!(@clocked @cases $target);
    };
    ($target:ty, real_clock) => {
        $crate::conformance_suite!(@clockless @cases $target);
        $crate::conformance_suite!(@cases $target; ttl_expires_key);
    };
    (@clockless $($then:tt)+) => {
        $crate::conformance_suite!($($then)+;
            missing_key_is_not_found,
            every_json_type_round_trips,
            null_is_found_and_distinct_from_missing,
            typed_values_round_trip,
            set_overwrites,
            unicode_keys_work,
            missing_value_is_invalid,
            non_finite_numbers_are_invalid,
            nesting_limit_is_enforced,
            key_limits_are_enforced,
            large_values_work_and_oversize_is_refused,
            unsafe_integers_are_refused_by_the_sdk,
            projects_are_isolated,
            default_project_when_header_absent,
            invalid_project_names_are_refused,
            concurrent_writers_lose_no_acknowledged_set,
            versions_count_up_per_project,
            incr_adds_and_refuses_what_is_not_a_number,
            merge_applies_json_merge_patch,
            batch_is_all_or_nothing,
            bulk_calls_read_and_write_many_keys,
            request_ids_make_retries_safe,
        );
    };
    // The cases that call `Ctx::advance`.
    (@clocked $($then:tt)+) => {
        $crate::conformance_suite!($($then)+;
            ttl_expires_key,
            ttl_deadline_is_exact,
            plain_set_removes_earlier_ttl,
            set_with_ttl_replaces_ttl,
            ttl_zero_and_over_max_are_invalid,
            delete_reports_whether_a_live_key_was_removed,
            clear_counts_live_keys_and_spares_other_projects,
            conditional_sets_compare_and_swap,
            incr_with_ttl_is_a_fixed_window,
            list_pages_in_key_order,
            watch_reports_changes_with_causes,
        );
    };
    (@list; $($case:ident),* $(,)?) => {
        vec![$({
            fn run(ctx: &$crate::Ctx) -> $crate::CaseFuture<'_> {
                Box::pin($crate::conformance::$case(ctx))
            }
            (stringify!($case), run as $crate::Case)
        }),*]
    };
    (@cases $target:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let target = <$target as $crate::Target>::start().await;
                $crate::conformance::$case($crate::Target::ctx(&target)).await;
                $crate::Target::stop(target).await;
            }
        )*
    };
}

/// A server task in this process and the context connected to it.
struct Running {
    ctx: Ctx,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Binds `127.0.0.1:0`, spawns `serve(listener, shutdown)` and connects.
    async fn start<F>(
        time: Time,
        serve: impl FnOnce(TcpListener, BoxFuture<'static, ()>) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        let handle = tokio::spawn(serve(listener, shutdown));
        let ctx = Ctx::connect(addr, time).await;
        Self { ctx, stop, handle }
    }

    /// Signals shutdown and checks the server stopped cleanly in time.
    async fn stop(self) {
        let _ = self.stop.send(());
        // Drop our clients so the server's drain is not waiting on them.
        drop(self.ctx);
        let served = tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server stops within 10 s")
            .expect("server task did not panic");
        served.expect("server ran and shut down without error");
    }
}

/// The server running inside the test process, on a manual clock.
pub struct InProcess {
    running: Running,
    /// The store behind the server, for white-box checks (memory reclaim).
    pub store: Arc<MemoryStore>,
    /// The clock the server reads.
    pub clock: Arc<ManualClock>,
}

impl InProcess {
    /// Starts a server with `config` (its `listen` is ignored: the server
    /// binds `127.0.0.1:0`).
    ///
    /// # Panics
    ///
    /// When it cannot bind loopback.
    pub async fn start_with(config: Config) -> Self {
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let served = store.clone();
        let running = Running::start(Time::Manual(clock.clone()), move |listener, shutdown| {
            kv_server::server::run_memory(config, served, listener, shutdown)
        })
        .await;
        Self {
            running,
            store,
            clock,
        }
    }
}

impl Target for InProcess {
    async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    fn ctx(&self) -> &Ctx {
        &self.running.ctx
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// The durable store in this process, in a data directory, on a manual
/// clock: the embedded default as the binary runs it.
pub struct InProcessDurable {
    running: Running,
    /// The store behind the server.
    pub store: Arc<DurableStore>,
    /// The clock the server reads.
    pub clock: Arc<ManualClock>,
    _temp_dir: Option<tempfile::TempDir>,
}

impl InProcessDurable {
    /// Starts a server on the data directory `dir` (its `data_dir` is
    /// ignored) with `clock`, recovering whatever `dir` holds.
    ///
    /// # Panics
    ///
    /// When the directory cannot be opened or loopback cannot be bound.
    pub async fn start_in(dir: &std::path::Path, config: Config, clock: Arc<ManualClock>) -> Self {
        let config = Config {
            data_dir: dir.to_path_buf(),
            ..config
        };
        let store = kv_server::server::open_store(&config, clock.clone())
            .await
            .expect("data directory opens");
        let served = store.clone();
        let running = Running::start(Time::Manual(clock.clone()), move |listener, shutdown| {
            kv_server::server::run_durable(config, served, listener, shutdown)
        })
        .await;
        Self {
            running,
            store,
            clock,
            _temp_dir: None,
        }
    }
}

impl Target for InProcessDurable {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let mut server = Self::start_in(dir.path(), Config::default(), clock).await;
        server._temp_dir = Some(dir);
        server
    }

    fn ctx(&self) -> &Ctx {
        &self.running.ctx
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// The real `kv-server` binary, run as a child process on a free port.
/// Killed on drop, so a failing test leaves no process behind.
pub struct BinaryServer {
    child: Child,
    /// The data directory it runs on.
    pub data_dir: std::path::PathBuf,
    /// Owns a temporary data directory when the test did not give one.
    _temp_dir: Option<tempfile::TempDir>,
    /// The address it listens on.
    pub addr: SocketAddr,
    log: Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BinaryServer {
    /// Starts `binary` with `args` plus `--listen 127.0.0.1:0` (unless
    /// `args` has a `--listen`), and waits for
    /// its "listening on" log line (10 s at most).
    ///
    /// # Panics
    ///
    /// When the binary does not start or never reports its address.
    pub fn start(binary: &str, args: &[&str]) -> Self {
        Self::start_with_env(binary, args, &[])
    }

    /// [`BinaryServer::start`] on the data directory `dir` (kept after the
    /// server stops, for restart tests).
    ///
    /// # Panics
    ///
    /// As [`BinaryServer::start`].
    pub fn start_in(binary: &str, dir: &std::path::Path, args: &[&str]) -> Self {
        Self::spawn(binary, Some(dir), args, &[])
    }

    /// [`BinaryServer::start_in`] with extra environment variables (a
    /// restart test that also injects faults).
    ///
    /// # Panics
    ///
    /// As [`BinaryServer::start`].
    pub fn start_in_with_env(
        binary: &str,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(binary, Some(dir), args, env)
    }

    /// [`BinaryServer::start`] with extra environment variables.
    ///
    /// # Panics
    ///
    /// As [`BinaryServer::start`].
    pub fn start_with_env(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(binary, None, args, env)
    }

    fn spawn(
        binary: &str,
        dir: Option<&std::path::Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let temp_dir = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("temporary data directory")),
        };
        let data_dir = dir
            .map(std::path::Path::to_path_buf)
            .or_else(|| temp_dir.as_ref().map(|t| t.path().to_path_buf()))
            .expect("a data directory");
        // A test that restarts a server on its old port gives `--listen`.
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(binary)
            .args(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        // Keep draining stderr for the life of the child so it never blocks
        // on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    // A JSON log line goes on after the address.
                    let addr = addr.split('"').next().unwrap_or_default();
                    let _ = addr_tx.send(addr.trim().to_string());
                }
                log_writer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => addr.parse().expect("address in the log line"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{binary} did not report its address; log: {:?}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        Self {
            child,
            data_dir,
            _temp_dir: temp_dir,
            addr,
            log,
            reader: Some(reader),
        }
    }

    /// A handle on project `name` through a new SDK connection.
    ///
    /// # Panics
    ///
    /// When the server does not accept the connection.
    pub async fn project(&self, name: &str) -> kv_client::Project {
        kv_client::Client::connect(format!("http://{}", self.addr))
            .await
            .expect("SDK connects to the server")
            .project(name)
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and waits.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Lines the server has written to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`BinaryServer::terminate`], then everything the server logged (its
    /// stderr is read to the end).
    ///
    /// # Panics
    ///
    /// As [`BinaryServer::terminate`].
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let log = Arc::clone(&self.log);
        let reader = self.reader.take();
        let status = self.terminate();
        if let Some(reader) = reader {
            let _ = reader.join();
        }
        let lines = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (status, lines)
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit status.
    ///
    /// # Panics
    ///
    /// When the process does not exit in time.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server, gracefully (SIGTERM, which must end it cleanly)
    /// or not (SIGKILL), leaves it down for `down`, and returns what
    /// `start` starts in its place (on the same data directory and port,
    /// for a client that must ride through a restart). Blocking work runs
    /// off the async runtime.
    ///
    /// # Panics
    ///
    /// When a SIGTERM does not end the server cleanly.
    pub async fn bounce(
        self,
        graceful: bool,
        down: Duration,
        start: impl FnOnce() -> BinaryServer + Send + 'static,
    ) -> BinaryServer {
        tokio::task::spawn_blocking(move || {
            if graceful {
                let status = self.terminate();
                assert!(
                    status.success(),
                    "SIGTERM ends the server cleanly: {status}"
                );
            } else {
                self.kill();
            }
        })
        .await
        .expect("the stop ran");
        tokio::time::sleep(down).await;
        tokio::task::spawn_blocking(start)
            .await
            .expect("the restart ran")
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` to completion on `data_dir` with `listen` and `args`, as a
/// start-up that is expected to stop by itself (a refused configuration):
/// returns its exit code and its stderr.
///
/// # Panics
///
/// When the binary cannot be run.
pub fn run_to_exit(
    binary: &str,
    listen: &str,
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let out = Command::new(binary)
        .args(["--listen", listen])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether tests must fail, not skip, when an external tool is missing.
pub fn require_all() -> bool {
    std::env::var("KV_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips (returns false after printing why) or fails when a tool is absent.
///
/// # Panics
///
/// When `KV_TEST_REQUIRE_ALL=1` and the tool is missing.
pub fn tool_available(tool: &str, version_arg: &str) -> bool {
    let found = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            !require_all(),
            "{tool} is required (KV_TEST_REQUIRE_ALL=1) but was not found on PATH"
        );
        println!("SKIPPED: {tool} not found on PATH (set KV_TEST_REQUIRE_ALL=1 to fail instead)");
    }
    found
}

#[cfg(test)]
mod tests {
    /// A case written in `conformance.rs` but missing from the macro would
    /// silently never run.
    #[test]
    fn every_case_is_in_the_suite_macro() {
        let cases = include_str!("conformance.rs");
        let suite = include_str!("lib.rs");
        let macro_body = &suite[suite.find("macro_rules! conformance_suite").unwrap()..];
        let mut count = 0;
        for line in cases.lines() {
            if let Some(rest) = line.strip_prefix("pub async fn ") {
                let name = &rest[..rest.find('(').unwrap()];
                assert!(
                    macro_body.contains(&format!("            {name},\n")),
                    "conformance case {name} is not listed in conformance_suite!"
                );
                count += 1;
            }
        }
        assert!(count >= 20, "found only {count} cases");
    }

    /// A case that lets time pass must be in the clocked list, or the real
    /// clock target would run it with sleeps (or wrongly skip exactness).
    #[test]
    fn every_case_that_lets_time_pass_is_clocked() {
        let cases = include_str!("conformance.rs");
        let suite = include_str!("lib.rs");
        let clocked = &suite[suite.find("(@clocked $($then:tt)+) => {").unwrap()..];
        let clocked = &clocked[..clocked.find("    };").unwrap()];
        let mut current = None;
        let mut advancing = std::collections::BTreeSet::new();
        for line in cases.lines() {
            if let Some(rest) = line.strip_prefix("pub async fn ") {
                current = Some(&rest[..rest.find('(').unwrap()]);
            }
            if line.contains("ctx.advance(") {
                advancing.insert(current.expect("advance inside a case"));
            }
        }
        assert!(!advancing.is_empty());
        for name in advancing {
            assert!(
                clocked.contains(&format!("            {name},\n")),
                "conformance case {name} lets time pass but is not in the clocked list"
            );
        }
    }
}
