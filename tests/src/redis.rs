//! The server in this process on the Redis Cluster backend, for the
//! conformance suite and the scale-out tests.

use std::sync::Arc;

use kv_redis::{RedisBackend, RedisOptions};
use kv_server::config::Config;

use crate::{Ctx, Running, Target, Time};

/// A front-end in this process over a Redis Cluster: real time (the
/// cluster's clock), one namespace of key names.
pub struct InProcessRedis {
    running: Running,
    /// The backend the front-end serves.
    pub backend: Arc<RedisBackend>,
}

impl InProcessRedis {
    /// Starts a front-end over the cluster at `seeds`, its keys under
    /// `namespace`.
    ///
    /// # Panics
    ///
    /// When the cluster cannot be reached or loopback cannot be bound.
    pub async fn start(seeds: Vec<String>, namespace: &str, config: Config) -> Self {
        let options = RedisOptions {
            namespace: namespace.to_string(),
            settings: config.engine,
            default_quota: config.log.quota,
            ..RedisOptions::new(seeds)
        };
        let backend = Arc::new(
            RedisBackend::connect(options)
                .await
                .expect("the Redis Cluster backend connects"),
        );
        let served = Arc::clone(&backend);
        let running = Running::start(Time::Real, move |listener, shutdown| {
            kv_server::server::run_redis(config, served, listener, shutdown)
        })
        .await;
        Self { running, backend }
    }

    /// The context for cases against it.
    pub fn ctx(&self) -> &Ctx {
        &self.running.ctx
    }

    /// Stops the front-end and checks it stopped cleanly.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

impl Target for InProcessRedis {
    /// A front-end on the cluster named by `KV_TEST_REDIS_SEEDS`
    /// (comma-separated), in a namespace of its own.
    async fn start() -> Self {
        let seeds = std::env::var("KV_TEST_REDIS_SEEDS")
            .expect("KV_TEST_REDIS_SEEDS names the cluster")
            .split(',')
            .map(str::to_string)
            .collect();
        let namespace = format!("t{:x}", fastrand::u64(..));
        Self::start(seeds, &namespace, Config::default()).await
    }

    fn ctx(&self) -> &Ctx {
        InProcessRedis::ctx(self)
    }

    async fn stop(self) {
        InProcessRedis::stop(self).await;
    }
}
