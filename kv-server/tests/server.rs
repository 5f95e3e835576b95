//! The server library in-process: active expiry, health, graceful shutdown.

use std::{sync::Arc, time::Duration};

use kv_engine::{
    Backend, EngineError, Entry, ListPage, ListQuery, Txn, TxnOutcome, WatchError, WatchTarget,
    memory::MemoryStore, project::ProjectName, watch::Subscription,
};
use kv_server::config::Config;
use kv_tests::{InProcess, Target};
use tokio::{net::TcpListener, sync::oneshot};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn health_client(url: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// Polls `done` every 10 ms until it holds or `limit` passes; returns how
/// long it took.
async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_expiry_reclaims_memory_nobody_reads() {
    let server = InProcess::start().await;
    let kv = server.ctx().client.project("sessions");
    for i in 0..2000 {
        kv.set_with_ttl(&format!("s{i}"), &"x", Duration::from_millis(1000))
            .await
            .unwrap();
    }
    for i in 0..100 {
        kv.set(&format!("keep{i}"), &i).await.unwrap();
    }
    assert_eq!(server.store.stored_entries(), 2100);
    assert_eq!(server.store.pending_expiries(), 2000);
    server.clock.advance(999);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.store.stored_entries(), 2100, "nothing is due yet");
    server.clock.advance(1);
    let took = within(Duration::from_secs(3), || {
        server.store.stored_entries() == 100
    })
    .await;
    assert!(took.is_some(), "expired entries reclaimed without any read");
    assert_eq!(server.store.pending_expiries(), 0);
    assert!(kv.has("keep7").await.unwrap());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_expiry_on_the_real_clock_reclaims_unread_keys() {
    let store = Arc::new(MemoryStore::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(kv_server::server::run_memory(
        Config::default(),
        store.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let kv = kv_client::Client::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .project("p");
    for i in 0..500 {
        kv.set_with_ttl(&format!("k{i}"), &i, Duration::from_millis(200))
            .await
            .unwrap();
    }
    // Deadlines are at most 200 ms after the last set and the task runs
    // every 100 ms, so this takes about 0.3 s; the bound leaves room for a
    // loaded machine.
    let took = within(Duration::from_millis(2000), || store.stored_entries() == 0).await;
    assert!(
        took.is_some(),
        "{} entries left 2 s after the last set",
        store.stored_entries()
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_server_and_the_service() {
    let server = InProcess::start().await;
    let mut health = health_client(&server.ctx().url).await;
    for service in ["", "kv.v1.KvService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    drop(health);
    server.stop().await;
}

/// A backend whose sets take a while, to have requests in flight.
struct SlowSets {
    inner: MemoryStore,
    delay: Duration,
}

impl Backend for SlowSets {
    async fn get(&self, project: &ProjectName, key: &str) -> Result<Option<Entry>, EngineError> {
        self.inner.get(project, key).await
    }
    async fn get_many<K: AsRef<str> + Sync>(
        &self,
        project: &ProjectName,
        keys: &[K],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        self.inner.get_many(project, keys).await
    }
    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        self.inner.has(project, key).await
    }
    async fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        self.inner.list(project, query).await
    }
    fn submit(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> impl std::future::Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static
    {
        // Applied now, answered after the delay: a request stays in flight.
        let applied = self.inner.submit(project, txn);
        let delay = self.delay;
        async move {
            tokio::time::sleep(delay).await;
            applied.await
        }
    }
    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Subscription, WatchError>> + Send {
        self.inner.watch(project, target, from_version)
    }
    async fn expire_due(&self, limit: usize) -> usize {
        self.inner.expire_due(limit).await
    }
    fn incarnation(&self, project: &ProjectName) -> u64 {
        self.inner.incarnation(project)
    }
}

async fn start_slow(
    config: Config,
    delay: Duration,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), kv_server::server::ServeError>>,
) {
    let backend = Arc::new(SlowSets {
        inner: MemoryStore::new(),
        delay,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let auth = Arc::new(kv_server::auth::Auth::new(None, Default::default()));
        let no_admin = None::<kv_server::admin::AdminService<kv_engine::wal::DurableStore>>;
        kv_server::server::serve(&config, backend, auth, no_admin, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    (url, stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let (url, stop, server) = start_slow(Config::default(), Duration::from_millis(500)).await;
    let kv = kv_client::Client::connect(url).await.unwrap().project("p");
    let in_flight = {
        let kv = kv.clone();
        tokio::spawn(async move { kv.set("k", &"v").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    in_flight
        .await
        .unwrap()
        .expect("the request in flight at shutdown completes");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server returns after draining")
        .unwrap()
        .unwrap();
    // And it no longer accepts calls (the exact code depends on whether the
    // client saw the connection close before or while sending).
    let refused = kv.has("k").await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watchers_see_not_serving_and_do_not_hold_shutdown() {
    let config = Config {
        shutdown_grace: Duration::from_millis(500),
        ..Config::default()
    };
    let (url, stop, server) = start_slow(config, Duration::ZERO).await;
    let mut health = health_client(&url).await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "kv.v1.KvService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopped_at = tokio::time::Instant::now();
    stop.send(()).unwrap();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("an open watch does not keep the server alive past the grace period")
        .unwrap()
        .unwrap();
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(400),
        "the grace period was honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_slots_come_back() {
    let config = Config {
        max_connections: 2,
        ..Config::default()
    };
    let (url, stop, server) = start_slow(config, Duration::ZERO).await;
    let first = kv_client::Client::connect(url.clone()).await.unwrap();
    let second = kv_client::Client::connect(url.clone()).await.unwrap();
    first.project("p").set("a", &1).await.unwrap();
    second.project("p").set("b", &2).await.unwrap();

    // A third connection is accepted and closed at once.
    let addr = url.trim_start_matches("http://");
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await
    .expect("the refused connection is closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let refused = kv_client::Client::builder(url.clone())
        .connect_lazy()
        .unwrap()
        .project("p")
        .has("a")
        .await
        .unwrap_err();
    // Closed mid-handshake: depending on timing tonic reports UNAVAILABLE,
    // CANCELLED or UNKNOWN ("transport error").
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        "{refused}"
    );

    // Closing a connection frees its slot.
    drop(first);
    let within = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match kv_client::Client::connect(url.clone()).await {
            Ok(third) if third.project("p").has("a").await.is_ok() => break,
            _ => {
                assert!(
                    tokio::time::Instant::now() < within,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(second);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_but_idle_clients_stay() {
    let config = Config {
        // Generous ping timing, so a loaded machine does not make a live
        // client look dead.
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(1000),
        idle_timeout: Duration::from_millis(1500),
        ..Config::default()
    };
    let (url, stop, server) = start_slow(config, Duration::ZERO).await;
    let client = kv_client::Client::connect(url.clone()).await.unwrap();
    client.project("p").set("k", &1).await.unwrap();

    let mut silent = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        // The server may send its HTTP/2 preface first; then it must hang up.
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a silent connection was kept 5 s"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "cut before the idle timeout"
    );

    // The real client was idle as long, but answered pings: still connected.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(client.project("p").has("k").await.unwrap());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_capped_in_time_and_streams_per_connection() {
    let config = Config {
        max_request_time: Duration::from_millis(300),
        ..Config::default()
    };
    let (url, stop, server) = start_slow(config, Duration::from_secs(5)).await;
    let kv = kv_client::Client::connect(url.clone())
        .await
        .unwrap()
        .project("p");
    let started = tokio::time::Instant::now();
    let err = kv.set("k", &1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(
        err.to_string().contains("limit of 300 ms per request"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The same cap for a unary call.
    let unary = kv_client::Client::builder(url.clone())
        .auto_batching(false)
        .connect()
        .await
        .unwrap()
        .project("p");
    let started = tokio::time::Instant::now();
    let err = unary.set("k", &1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(
        err.to_string().contains("limit of 300 ms per request"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let config = Config {
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let (url, stop, server) = start_slow(config, Duration::from_millis(300)).await;
    // Unary calls: each its own HTTP/2 stream (auto-batching would carry
    // them all on one).
    let kv = kv_client::Client::builder(url)
        .auto_batching(false)
        .connect()
        .await
        .unwrap()
        .project("p");
    // One call first: the client learns the server's stream limit from its
    // SETTINGS and queues calls beyond it (streams opened before that are
    // refused, REFUSED_STREAM, which is safe to retry).
    kv.has("warm-up").await.unwrap();
    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.set(&format!("k{i}"), &i).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Six 300 ms calls, two at a time on the one connection.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
