//! Serving: the tonic server with health, reflection and the kv service on
//! a listener the caller bound, until a shutdown future resolves.

use std::{future::Future, sync::Arc};

use kv_proto::{
    v1::admin_service_server::AdminServiceServer, wire::kv_service_server::KvServiceServer,
};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig, server::TcpIncoming};
use tonic_health::ServingStatus;

use kv_engine::{
    Backend, Clock, SystemClock,
    memory::{ExpiryTask, MemoryStore},
    wal::{DurableStore, OpenError},
};

use kv_redis::{ConnectError, RedisBackend, RedisOptions};

use crate::{
    admin::{AdminService, AdminStore},
    auth::Auth,
    config::{Config, ConfigError, TlsFiles},
    inflight::{InflightBudget, InflightLayer},
    limits::{RequestLimitsLayer, guard_connections},
    metrics::{
        exposition::{Sources, StorageFigures},
        layer::MetricsLayer,
    },
    rate::RateLimits,
    service::KvService,
};

/// Why the server could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The reflection service could not be built from the descriptors.
    #[error("could not build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}: {source}", path = .path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Redis Cluster could not be used.
    #[error(transparent)]
    Redis(#[from] ConnectError),
    /// The data directory could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {addr} (--metrics-listen): {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The final flush and fsync of the log failed: writes acknowledged
    /// under an interval or never policy may not be on stable storage.
    #[error("final log flush failed: {0}")]
    Close(#[source] std::io::Error),
}

/// Runs the server on the embedded default, the durable store in
/// `config.data_dir`, until `shutdown` resolves; then drains in-flight
/// requests, stops the expiry task, and flushes and fsyncs the log.
///
/// ```no_run
/// # async fn demo() -> Result<(), kv_server::server::ServeError> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(kv_server::server::run(
///     kv_server::config::Config::default(),
///     listener,
///     async { let _ = stopped.await; },
/// ));
/// // ... talk to it ...
/// let _ = stop.send(());
/// server.await.unwrap()
/// # }
/// ```
///
/// # Errors
///
/// [`ServeError`] when the configuration is invalid, the data directory
/// cannot be opened, or the transport fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_store(&config, Arc::new(SystemClock)).await?;
    run_durable(config, store, listener, shutdown).await
}

/// Opens the durable store of `config` (lock, snapshot, log replay) off
/// the async threads.
///
/// # Errors
///
/// [`ServeError::Config`] or [`ServeError::Open`].
pub async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<DurableStore>, ServeError> {
    config.validate()?;
    let settings = crate::memory::cap_history(config.engine, config.max_memory);
    let (dir, options) = (config.data_dir.clone(), config.log.clone());
    let opened = tokio::task::spawn_blocking(move || {
        DurableStore::open_with(&dir, options, clock, settings)
    })
    .await
    .map_err(|e| OpenError::Io {
        context: "recovery stopped unexpectedly".into(),
        source: std::io::Error::other(e),
    })??;
    Ok(Arc::new(opened))
}

/// How often the server looks whether the log writer has stopped writes
/// (a failed fsync): health turns NOT_SERVING within this of the failure,
/// and SERVING again within this of the log being re-verified.
const WRITES_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs the server on an opened durable store until `shutdown` resolves,
/// then drains, stops the expiry task, and closes the log. Health is
/// NOT_SERVING while writes are stopped after a failed fsync (reads are
/// still served).
///
/// # Errors
///
/// As [`run`], and [`ServeError::Close`] when the final fsync fails.
pub async fn run_durable(
    config: Config,
    store: Arc<DurableStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (report, healthy) = tokio::sync::watch::channel(true);
    let checked = Arc::clone(&store);
    let checker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(WRITES_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            // The writer logs why and when writes stop and resume.
            report.send_if_modified(|ok| {
                let now = checked.writes_stopped().is_none();
                std::mem::replace(ok, now) != now
            });
        }
    });
    let figures = durable_figures(&store);
    let served = run_cataloged(
        &config,
        Arc::clone(&store),
        Some(healthy),
        figures,
        listener,
        shutdown,
    )
    .await;
    checker.abort();
    let closed = store.close().await.map_err(ServeError::Close);
    served.and(closed)
}

/// [`run`] on a store the caller made (with an injected clock, say).
///
/// # Errors
///
/// As [`run`].
pub async fn run_memory(
    config: Config,
    store: Arc<MemoryStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let figures = memory_figures(Arc::clone(&store), None);
    run_backend_figured(config, store, figures, listener, shutdown).await
}

/// Runs the server on any `backend` (the memory store, the Redis Cluster
/// backend) with its expiry task, without the admin service: tokens come
/// from a catalog, which only the durable store has so far.
///
/// # Errors
///
/// As [`run`].
pub async fn run_backend<B: Backend>(
    config: Config,
    backend: Arc<B>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_backend_figured(config, backend, no_figures(), listener, shutdown).await
}

async fn run_backend_figured<B: Backend>(
    config: Config,
    backend: Arc<B>,
    figures: StorageSource,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let expiry = ExpiryTask::spawn(Arc::clone(&backend), config.expiry_interval);
    // Without a catalog there are no tokens: only the admin token, if any.
    let auth = Arc::new(Auth::new(config.admin_token.clone(), Default::default()));
    let served = serve_figured(
        &config,
        backend,
        auth,
        None::<AdminService<DurableStore>>,
        None,
        figures,
        listener,
        shutdown,
    )
    .await;
    expiry.stop().await;
    served
}

/// How long a front-end keeps trying to reach its Redis Cluster at start
/// before it gives up.
const CLUSTER_CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to the Redis Cluster of `options`: checks that it serves every
/// slot and installs the function library. A cluster that is unreachable
/// or not yet serving is tried again for up to 30 s; a refused password or
/// a library of another major version is refused at once.
///
/// # Errors
///
/// [`ServeError::Redis`] naming what is wrong.
pub async fn connect_cluster(options: RedisOptions) -> Result<Arc<RedisBackend>, ServeError> {
    let started = std::time::Instant::now();
    loop {
        match RedisBackend::connect(options.clone()).await {
            Ok(backend) => {
                tracing::info!(
                    seeds = ?options.seeds.iter().map(|s| crate::config_file::redact_userinfo(s)).collect::<Vec<_>>(),
                    namespace = %options.namespace,
                    wait_replicas = backend.wait_replicas(),
                    "serving from the redis cluster"
                );
                return Ok(Arc::new(backend));
            }
            Err(e) if e.is_transient() && started.elapsed() < CLUSTER_CONNECT_PATIENCE => {
                tracing::warn!("{e}; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(ServeError::Redis(e)),
        }
    }
}

/// How often a front-end on a Redis Cluster checks that the cluster
/// serves: health turns NOT_SERVING within this of an outage, and SERVING
/// again within this of the recovery.
const CLUSTER_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a front-end on a Redis Cluster (connected, its function library
/// installed) until `shutdown` resolves: the kv service, the admin service
/// on the cluster's catalog, the expiry task, and health that follows the
/// cluster's (NOT_SERVING while it does not serve every slot).
///
/// # Errors
///
/// As [`run`].
pub async fn run_redis(
    config: Config,
    backend: Arc<RedisBackend>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (report, healthy) = tokio::sync::watch::channel(true);
    let checked = Arc::clone(&backend);
    let checker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CLUSTER_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let ok = checked.healthy().await;
            if *report.borrow() != ok {
                if ok {
                    tracing::info!("the redis cluster serves again: SERVING");
                } else {
                    tracing::warn!("the redis cluster does not serve every slot: NOT_SERVING");
                }
                report.send_replace(ok);
            }
        }
    });
    // The cluster keeps its own figures (see the README's Metrics section).
    let served = run_cataloged(
        &config,
        backend,
        Some(healthy),
        no_figures(),
        listener,
        shutdown,
    )
    .await;
    checker.abort();
    served
}

/// Serves a store that has a catalog (tokens, the admin API) with its
/// expiry task, until `shutdown` resolves; health follows `healthy` when
/// given.
async fn run_cataloged<S: Backend + AdminStore>(
    config: &Config,
    store: Arc<S>,
    healthy: Option<tokio::sync::watch::Receiver<bool>>,
    figures: StorageSource,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let expiry = ExpiryTask::spawn(Arc::clone(&store), config.expiry_interval);
    let auth = Arc::new(Auth::new(
        config.admin_token.clone(),
        Arc::clone(store.catalog()),
    ));
    let admin = AdminService::new(Arc::clone(&store), Arc::clone(&auth));
    let served = serve_figured(
        config,
        store,
        auth,
        Some(admin),
        healthy,
        figures,
        listener,
        shutdown,
    )
    .await;
    expiry.stop().await;
    served
}

/// Serves `backend` on `listener` until `shutdown` resolves. On shutdown the
/// health status turns NOT_SERVING, the listener stops accepting, and the
/// call returns once in-flight requests have finished, or after
/// [`Config::shutdown_grace`], whichever comes first.
///
/// # Errors
///
/// [`ServeError`] when reflection cannot be built or the transport fails.
pub async fn serve<B: Backend, A: AdminStore>(
    config: &Config,
    backend: Arc<B>,
    auth: Arc<Auth>,
    admin: Option<AdminService<A>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(config, backend, auth, admin, None, listener, shutdown).await
}

/// [`serve`], with health following `healthy` (NOT_SERVING while false)
/// when given.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_with<B: Backend, A: AdminStore>(
    config: &Config,
    backend: Arc<B>,
    auth: Arc<Auth>,
    admin: Option<AdminService<A>>,
    healthy: Option<tokio::sync::watch::Receiver<bool>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_figured(
        config,
        backend,
        auth,
        admin,
        healthy,
        no_figures(),
        listener,
        shutdown,
    )
    .await
}

/// [`serve_with`], with `/metrics` reporting the storage's `figures`.
#[allow(clippy::too_many_arguments)]
async fn serve_figured<B: Backend, A: AdminStore>(
    config: &Config,
    backend: Arc<B>,
    auth: Arc<Auth>,
    admin: Option<AdminService<A>>,
    healthy: Option<tokio::sync::watch::Receiver<bool>>,
    figures: StorageSource,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let max_message = config.limits.max_message_bytes();
    let memory = crate::memory::MemoryBudget::new(config.max_memory);
    tracing::info!(
        "memory limit {} (--max-memory), measured as {}; {} in use now",
        crate::memory::human(memory.limit()),
        memory.describe(),
        crate::memory::human(memory.in_use()),
    );
    let metrics_task = match config.metrics.listen {
        Some(addr) => {
            let measured = memory.clone();
            let sources = Sources {
                storage: Box::new(move || figures()),
                memory: Box::new(move || (measured.in_use(), measured.limit())),
                top_projects: config.metrics.top_projects,
            };
            let (_, task) = crate::metrics::exposition::start(addr, sources)
                .await
                .map_err(|source| ServeError::MetricsListen { addr, source })?;
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let (stop_watches, stopping) = tokio::sync::watch::channel(false);
    let rate = RateLimits::new(auth.catalog().clone(), config.log.quota, backend.clock());
    let kv = KvService::new(backend, config.limits.clone(), auth)
        .with_rate_limits(Arc::new(rate))
        .with_stopping(stopping)
        .with_max_call_time(config.max_request_time)
        .with_memory(memory.clone());
    let kv = KvServiceServer::new(kv)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(kv_proto::SERVICE_NAME, ServingStatus::Serving)
        .await;
    let (stopping_health, mut health_stopping) = tokio::sync::watch::channel(false);
    let follower = healthy.map(|mut healthy| {
        let health = health.clone();
        tokio::spawn(async move {
            loop {
                let status = if *healthy.borrow_and_update() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in ["", kv_proto::SERVICE_NAME] {
                    health.set_service_status(service, status).await;
                }
                tokio::select! {
                    changed = healthy.changed() => if changed.is_err() { return },
                    _ = health_stopping.changed() => return,
                }
            }
        })
    });

    // tonic ignores the builder's TCP options for a listener passed in, so
    // TCP_NODELAY goes on the incoming stream itself. Without it a serial
    // client waits on delayed ACKs (~40 ms a call).
    let incoming = guard_connections(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        config.max_connections,
        config.idle_timeout,
    );

    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled.send(());
        stop_watches.send_replace(true);
        // The cluster's health no longer decides: the server is stopping.
        stopping_health.send_replace(true);
        if let Some(follower) = follower {
            let _ = follower.await;
        }
        tracing::info!("shutting down: not serving, draining in-flight requests");
        for service in ["", kv_proto::SERVICE_NAME] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    };

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(server_tls(tls)?)?;
    }
    // HTTP/2 buffers up to a window of request data per connection that
    // no handler has read yet, outside the in-flight budget: set
    // explicitly so the bound is ours, not a dependency's default.
    let window = crate::inflight::CONNECTION_WINDOW;
    let inflight = Arc::new(InflightBudget::new(memory.clone(), max_message));
    let serving = builder
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_connection_window_size(window)
        .initial_stream_window_size(window)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(MetricsLayer)
        .layer(crate::logging::RequestLogLayer::new(config.slow_request))
        .layer(RequestLimitsLayer::new(
            config.limits.clone(),
            config.max_request_time,
        ))
        .layer(InflightLayer::new(inflight))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(kv)
        .add_optional_service(admin.map(AdminServiceServer::new))
        .serve_with_incoming_shutdown(incoming, shutdown);

    // tonic's drain waits for every open stream, and a health watch never
    // ends by itself: bound the drain so a signal always stops the server.
    let grace = config.shutdown_grace;
    let grace_over = async move {
        match on_signal.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serving => served?,
        () = grace_over => {
            tracing::warn!("requests still open {grace:?} after the shutdown signal; closing their connections");
        }
    }
    drop(metrics_task);
    Ok(())
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Reads the storage's figures for `/metrics` at scrape time.
type StorageSource = Arc<dyn Fn() -> StorageFigures + Send + Sync>;

/// A storage without figures of its own (a custom backend, the cluster).
fn no_figures() -> StorageSource {
    Arc::new(StorageFigures::default)
}

/// The in-memory state's figures, with the log's when `durable` is given.
fn memory_figures(memory: Arc<MemoryStore>, durable: Option<Arc<DurableStore>>) -> StorageSource {
    Arc::new(move || {
        let projects = memory
            .project_usages()
            .into_iter()
            .map(|(project, usage)| (project.to_string(), usage.keys, usage.bytes))
            .collect();
        let mut figures = StorageFigures {
            projects: Some(projects),
            entries: Some((memory.stored_entries() as u64, memory.data_bytes())),
            expiry: Some((memory.expired_keys(), memory.expiry_lag_ms())),
            ..StorageFigures::default()
        };
        if let Some(store) = &durable {
            figures.log = Some(Arc::clone(store.log_stats()));
            let queue = store.write_queue();
            figures.write_queue = Some((queue.writes as u64, queue.bytes as u64));
            figures.recovery_seconds = Some(store.recovered().took.as_secs_f64());
        }
        figures
    })
}

fn durable_figures(store: &Arc<DurableStore>) -> StorageSource {
    memory_figures(Arc::clone(store.memory()), Some(Arc::clone(store)))
}

/// Aborts the task when dropped, so the metrics listener stops with the
/// server whichever way serving ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
