//! A fault-injecting TCP proxy on loopback, for tests of clients that must
//! ride through a bad network.
//!
//! [`Proxy`] forwards every connection it accepts to an upstream address.
//! While its faults are on it cuts each connection after a random lifetime
//! and delays or stalls some of the chunks it forwards, as
//! [`ProxyConfig`] says. Faults can be switched off (so a test ends in a
//! calm phase and its final checks see a clean network), the upstream can
//! be re-pointed (a server restarted on another port), and counters tell
//! how much harm was done.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use kv_tests::proxy::{Proxy, ProxyConfig};
//!
//! # async fn demo(server: kv_tests::BinaryServer) -> Result<(), kv_client::Error> {
//! let config = ProxyConfig::default().cut_after(Duration::from_millis(100)..Duration::from_millis(500));
//! let proxy = Proxy::start(server.addr, config).await;
//! let client = kv_client::Client::builder(proxy.url())
//!     .timeout(Duration::from_secs(20))
//!     .connect_lazy()?;
//! client.project("p").set("k", &1).await?;
//! proxy.set_faults(false);
//! assert_eq!(client.project("p").get::<u32>("k").await?, Some(1));
//! println!("{} connections cut", proxy.stats().cuts);
//! # Ok(())
//! # }
//! ```

use std::{
    net::SocketAddr,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
    task::JoinHandle,
};

/// What a [`Proxy`] does to connections while its faults are on.
///
/// The default is harsh: each connection lives 10–60 ms, 9.5 % of chunks
/// wait 1–5 ms and 0.5 % stall for 30–100 ms.
///
/// ```
/// use std::time::Duration;
/// let calm_ish = kv_tests::proxy::ProxyConfig::default()
///     .cut_after(Duration::from_millis(200)..Duration::from_secs(2))
///     .stall(0.001, Duration::from_millis(50)..Duration::from_millis(300));
/// # let _ = calm_ish;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    cut_after: Range<Duration>,
    delay_probability: f64,
    delay: Range<Duration>,
    stall_probability: f64,
    stall: Range<Duration>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            cut_after: Duration::from_millis(10)..Duration::from_millis(60),
            delay_probability: 0.095,
            delay: Duration::from_millis(1)..Duration::from_millis(5),
            stall_probability: 0.005,
            stall: Duration::from_millis(30)..Duration::from_millis(100),
        }
    }
}

impl ProxyConfig {
    /// Each connection is cut after a lifetime drawn from `range` (an
    /// empty range means exactly its start).
    pub fn cut_after(mut self, range: Range<Duration>) -> Self {
        self.cut_after = range;
        self
    }

    /// Each forwarded chunk waits, with probability `probability`, for a
    /// time drawn from `range`.
    pub fn delay(mut self, probability: f64, range: Range<Duration>) -> Self {
        self.delay_probability = probability;
        self.delay = range;
        self
    }

    /// Each forwarded chunk stalls, with probability `probability`, for a
    /// time drawn from `range` (drawn before, and instead of, a delay).
    pub fn stall(mut self, probability: f64, range: Range<Duration>) -> Self {
        self.stall_probability = probability;
        self.stall = range;
        self
    }
}

/// What a [`Proxy`] has done so far; from [`Proxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections whose upstream could not be reached (dropped at once).
    pub refused: u64,
    /// Connections cut on purpose (their lifetime ran out, or
    /// [`Proxy::cut_all`]).
    pub cuts: u64,
    /// Chunks delayed.
    pub delays: u64,
    /// Chunks stalled.
    pub stalls: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
    delays: AtomicU64,
    stalls: AtomicU64,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    config: Mutex<ProxyConfig>,
    faults: AtomicBool,
    counters: Counters,
    /// Bumped by [`Proxy::cut_all`]: every connection open then ends.
    epoch: watch::Sender<u64>,
}

impl Shared {
    fn config(&self) -> ProxyConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn faults(&self) -> bool {
        self.faults.load(Ordering::SeqCst)
    }
}

/// A TCP proxy on `127.0.0.1` that injects faults; see the
/// [module documentation](self). Faults are on from the start. Dropping it
/// stops accepting; open connections end with their lifetime or their
/// peers.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    ///
    /// # Panics
    ///
    /// When loopback cannot be bound.
    pub async fn start(upstream: SocketAddr, config: ProxyConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            config: Mutex::new(config),
            faults: AtomicBool::new(true),
            counters: Counters::default(),
            epoch: watch::Sender::new(0),
        });
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepting.counters.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, accepting.clone()));
            }
        });
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and [`addr`](Self::addr), for the SDK.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Turns the faults on or off. Off, connections live until a peer
    /// closes them and bytes pass without delay (a stall already begun
    /// runs out).
    pub fn set_faults(&self, on: bool) {
        self.shared.faults.store(on, Ordering::SeqCst);
    }

    /// Whether the faults are on.
    pub fn faults(&self) -> bool {
        self.shared.faults()
    }

    /// Replaces the fault settings; connections read them as they go.
    pub fn set_config(&self, config: ProxyConfig) {
        *self.shared.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Sends new connections to `upstream`; open ones keep theirs (use
    /// [`cut_all`](Self::cut_all) to end them).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    /// The address new connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts every connection open now, faults on or off.
    pub fn cut_all(&self) {
        self.shared.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            delays: c.delays.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn draw(range: &Range<Duration>) -> Duration {
    if range.is_empty() {
        return range.start;
    }
    let (low, high) = (range.start.as_micros() as u64, range.end.as_micros() as u64);
    Duration::from_micros(fastrand::u64(low..high))
}

/// Forwards one connection both ways until either side closes or, with
/// faults on, its random lifetime ends; then drops both sockets.
async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    let upstream = *shared.upstream.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(server) = TcpStream::connect(upstream).await else {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // A lifetime that ends while faults are off is followed by another, so
    // switching faults back on brings the cuts back.
    let lifetime = async {
        loop {
            tokio::time::sleep(draw(&shared.config().cut_after)).await;
            if shared.faults() {
                return;
            }
        }
    };
    tokio::select! {
        _ = pump(client_read, server_write, &shared) => {}
        _ = pump(server_read, client_write, &shared) => {}
        _ = lifetime => {
            shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
        }
        _ = epoch.changed() => {
            shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Copies `from` to `to`; with faults on, some chunks wait or stall.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if shared.faults() {
            let config = shared.config();
            let roll = fastrand::f64();
            if roll < config.stall_probability {
                shared.counters.stalls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(draw(&config.stall)).await;
            } else if roll < config.stall_probability + config.delay_probability {
                shared.counters.delays.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(draw(&config.delay)).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
