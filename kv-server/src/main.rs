//! The `kv-server` binary: parse flags, start logging, bind, serve until
//! SIGINT or SIGTERM, drain, exit 0.

use std::{process::ExitCode, sync::Arc};

use kv_engine::SystemClock;
use kv_server::{config_file::ParseError, logging::LogArgs, storage::Storage};

// Every request and every logged write allocates a few small buffers; with
// glibc's malloc a fifth of the server's time under load went to malloc
// and free. mimalloc: 50 concurrent SDK sets 48.2k -> 67.0k/s (medians of 3
// alternating runs, fsync never, 1 worker thread), memory per entry
// unchanged (314 B at 1M keys).
//
// Counted, so the memory limit (--max-memory) is checked against the exact
// live heap: one uncontended atomic add per allocation and per free, on a
// counter of the thread's own (kv-alloc).
#[global_allocator]
static ALLOCATOR: kv_server::memory::CountingAllocator<mimalloc::MiMalloc> =
    kv_server::memory::counting(mimalloc::MiMalloc);

fn main() -> ExitCode {
    kv_server::memory::install_allocator_meter(&ALLOCATOR, Some(kv_alloc::return_free_memory));
    // A subcommand, not a flag: the server's own flags and config file stay
    // as they are. It logs as text at info (or as RUST_LOG says).
    if std::env::args_os().nth(1).is_some_and(|a| a == "restore") {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        return kv_server::backup::restore::run(std::env::args_os().skip(1));
    }

    let parsed =
        match kv_server::config_file::parse::<kv_server::config::Cli, _, _>(std::env::args_os()) {
            Ok(parsed) => parsed,
            Err(ParseError::Clap(e)) => e.exit(),
            Err(ParseError::File(e, log)) => {
                start_logging(&log);
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        };
    if !start_logging(&parsed.cli.log) {
        return ExitCode::from(2);
    }
    let description = parsed.cli.file.print_config.then(|| parsed.describe());
    let explain = |e: &dyn std::fmt::Display| parsed.explain(&e.to_string());
    let config = match parsed.cli.clone().into_config() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{}", explain(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(description) = description {
        print!("{description}");
        return ExitCode::SUCCESS;
    }
    if let Some(file) = parsed.file() {
        tracing::info!(file = %file.display(), "settings read from the config file");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs logging as `log` says; false (after saying why on stderr)
/// when RUST_LOG is not a valid filter.
fn start_logging(log: &LogArgs) -> bool {
    match kv_server::logging::init(log) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// The storage, opened before the server listens.
enum Opened {
    Embedded(Arc<kv_engine::wal::DurableStore>),
    Redis(Arc<kv_redis::RedisBackend>),
}

async fn serve(config: kv_server::config::Config) -> ExitCode {
    let shutdown = shutdown_signal();
    let store = match &config.storage {
        Storage::Embedded => {
            // Recover before listening: a client that can connect can read
            // everything acknowledged before the restart.
            match kv_server::server::open_store(&config, Arc::new(SystemClock)).await {
                Ok(store) => Opened::Embedded(store),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Storage::RedisCluster(redis) => {
            let options = match redis.options(config.engine, config.log.quota) {
                Ok(options) => options,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(2);
                }
            };
            match kv_server::server::connect_cluster(options).await {
                Ok(backend) => Opened::Redis(backend),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    if config.admin_token.is_none() {
        tracing::warn!(
            "open mode: no authentication; any client that can connect reads and writes every project (x-kv-project picks it)"
        );
    }
    match listener.local_addr() {
        // Tests and scripts read the port from this line when they ask for port 0.
        Ok(addr) => tracing::info!("listening on {addr}"),
        Err(e) => tracing::warn!("listening, address unknown: {e}"),
    }
    let served = match store {
        Opened::Embedded(store) => {
            kv_server::server::run_durable(config, store, listener, shutdown).await
        }
        Opened::Redis(backend) => {
            kv_server::server::run_redis(config, backend, listener, shutdown).await
        }
    };
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Registers SIGINT and SIGTERM handlers now, so a signal that arrives
/// during start-up is not lost (or fatal), and returns the future that
/// resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                    _ = interrupt.recv() => tracing::info!("SIGINT received"),
                    _ = terminate.recv() => tracing::info!("SIGTERM received"),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(
                        "cannot listen for SIGINT/SIGTERM ({e}); stop the server with SIGKILL"
                    );
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
