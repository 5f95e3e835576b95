//! Which storage engine serves: the embedded default (a data directory),
//! or a Redis Cluster shared by any number of front-ends; and the flags of
//! the latter.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use kv_engine::{Quota, Settings};
use kv_redis::RedisOptions;

/// Prefix of every Redis key name unless `--redis-namespace` says
/// otherwise.
pub const DEFAULT_NAMESPACE: &str = "kv";

/// How long a write waits for its replicas unless
/// `--redis-wait-timeout-ms` says otherwise.
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 1000;

/// The `--backend` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BackendKind {
    /// In memory, made durable by the log in `--data-dir`.
    #[default]
    Embedded,
    /// A Redis Cluster (`--redis-url`), shared by stateless front-ends.
    RedisCluster,
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Storage {
    /// The embedded engine in `Config::data_dir`.
    #[default]
    Embedded,
    /// A Redis Cluster.
    RedisCluster(RedisConfig),
}

/// How to reach and use the Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Seed node URLs (`redis://host:port`; `rediss://` for TLS).
    pub urls: Vec<String>,
    /// ACL user.
    pub user: Option<String>,
    /// Password (of the ACL user, or `requirepass`).
    pub password: Option<String>,
    /// PEM file of the CA that signed the cluster's TLS certificates.
    pub tls_ca: Option<PathBuf>,
    /// Prefix of every key name.
    pub namespace: String,
    /// Replicas a write must reach before it is acknowledged (`None`: 1
    /// when the cluster has replicas).
    pub wait_replicas: Option<u32>,
    /// How long a write waits for them.
    pub wait_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    // The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("urls", &self.urls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("namespace", &self.namespace)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

impl RedisConfig {
    /// The backend's options, with the engine's settings and the server's
    /// default quota.
    ///
    /// ```
    /// use kv_server::storage::RedisConfig;
    /// let config = RedisConfig {
    ///     urls: vec!["redis://127.0.0.1:7000".into()],
    ///     user: None,
    ///     password: None,
    ///     tls_ca: None,
    ///     namespace: "kv".into(),
    ///     wait_replicas: Some(1),
    ///     wait_timeout: std::time::Duration::from_secs(1),
    /// };
    /// let options = config.options(kv_engine::Settings::DEFAULT, kv_engine::Quota::default()).unwrap();
    /// assert_eq!(options.seeds.len(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`StorageError::TlsCa`] when the CA file cannot be read.
    pub fn options(
        &self,
        settings: Settings,
        default_quota: Quota,
    ) -> Result<RedisOptions, StorageError> {
        let tls_ca = match &self.tls_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| StorageError::TlsCa {
                path: path.clone(),
                reason: e.kind(),
            })?),
            None => None,
        };
        Ok(RedisOptions {
            username: self.user.clone(),
            password: self.password.clone(),
            tls_ca,
            settings,
            default_quota,
            wait_replicas: self.wait_replicas,
            wait_timeout: self.wait_timeout,
            namespace: self.namespace.clone(),
            ..RedisOptions::new(self.urls.clone())
        })
    }
}

/// Flags of the storage choice.
#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Storage engine: `embedded` (memory plus the log in --data-dir) or
    /// `redis-cluster` (a Redis Cluster that many kv-servers share).
    #[arg(long, env = "KV_BACKEND", value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,

    /// Redis Cluster seed nodes, `redis://host:port` (`rediss://` for TLS);
    /// repeat the flag or separate with commas.
    #[arg(long = "redis-url", env = "KV_REDIS_URL", value_delimiter = ',')]
    pub redis_urls: Vec<String>,

    /// Redis ACL user.
    #[arg(long, env = "KV_REDIS_USER")]
    pub redis_user: Option<String>,

    /// Redis password (of the ACL user, or requirepass).
    #[arg(long, env = "KV_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// PEM file of the CA that signed the cluster's TLS certificates
    /// (rediss:// URLs); the system's roots otherwise.
    #[arg(long, env = "KV_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,

    /// Prefix of every Redis key name: deployments with different
    /// namespaces share a cluster without seeing each other.
    /// [default: kv]
    #[arg(long, env = "KV_REDIS_NAMESPACE")]
    pub redis_namespace: Option<String>,

    /// Replicas a write must reach (Redis WAIT) before it is acknowledged;
    /// default 1 when the cluster has replicas, else 0.
    #[arg(long, env = "KV_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,

    /// How long a write waits for those replicas before it is answered
    /// UNAVAILABLE (outcome unknown; a retry with the same request id is
    /// safe). [default: 1000]
    #[arg(long, env = "KV_REDIS_WAIT_TIMEOUT_MS")]
    pub redis_wait_timeout_ms: Option<u64>,
}

/// Storage flags that do not go together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    /// The cluster backend without a seed.
    #[error("--backend redis-cluster needs at least one --redis-url (or KV_REDIS_URL)")]
    NoRedisUrl,
    /// Redis flags with the embedded backend (they would be ignored).
    #[error("--redis-url and the other --redis-* flags need --backend redis-cluster")]
    RedisFlagsWithoutCluster,
    /// A seed that is not a Redis URL.
    #[error("--redis-url {0:?} is not a redis:// or rediss:// URL")]
    BadUrl(String),
    /// The CA file cannot be read.
    #[error("--redis-tls-ca {path}: {reason}", path = .path.display())]
    TlsCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::ErrorKind,
    },
}

impl StorageArgs {
    /// The storage the flags describe.
    ///
    /// # Errors
    ///
    /// [`StorageError`] naming the flag at fault.
    pub fn storage(&self) -> Result<Storage, StorageError> {
        match self.backend {
            BackendKind::Embedded => {
                if !self.redis_urls.is_empty()
                    || self.redis_user.is_some()
                    || self.redis_password.is_some()
                    || self.redis_tls_ca.is_some()
                    || self.redis_wait_replicas.is_some()
                    || self.redis_wait_timeout_ms.is_some()
                    || self.redis_namespace.is_some()
                {
                    return Err(StorageError::RedisFlagsWithoutCluster);
                }
                Ok(Storage::Embedded)
            }
            BackendKind::RedisCluster => {
                let urls: Vec<String> = self
                    .redis_urls
                    .iter()
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect();
                if urls.is_empty() {
                    return Err(StorageError::NoRedisUrl);
                }
                if let Some(bad) = urls
                    .iter()
                    .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
                {
                    return Err(StorageError::BadUrl(bad.clone()));
                }
                Ok(Storage::RedisCluster(RedisConfig {
                    urls,
                    user: self.redis_user.clone(),
                    password: self.redis_password.clone(),
                    tls_ca: self.redis_tls_ca.clone(),
                    namespace: self
                        .redis_namespace
                        .clone()
                        .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
                    wait_replicas: self.redis_wait_replicas,
                    wait_timeout: Duration::from_millis(
                        self.redis_wait_timeout_ms
                            .unwrap_or(DEFAULT_WAIT_TIMEOUT_MS),
                    ),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, ConfigError};

    fn parse(args: &[&str]) -> Result<crate::config::Config, ConfigError> {
        let mut all = vec!["kv-server"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().into_config()
    }

    #[test]
    fn the_cluster_backend_takes_its_seeds_and_defaults() {
        let config = parse(&[
            "--backend",
            "redis-cluster",
            "--redis-url",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ])
        .unwrap();
        let Storage::RedisCluster(redis) = config.storage else {
            panic!("expected the cluster backend");
        };
        assert_eq!(redis.urls.len(), 2);
        assert_eq!(redis.namespace, DEFAULT_NAMESPACE);
        assert_eq!(
            redis.wait_timeout,
            Duration::from_millis(DEFAULT_WAIT_TIMEOUT_MS)
        );
        assert_eq!(redis.wait_replicas, None);
    }

    #[test]
    fn flags_that_do_not_go_together_are_refused_by_name() {
        let cases: [(&[&str], &str); 4] = [
            (&["--backend", "redis-cluster"], "--redis-url"),
            (
                &["--redis-url", "redis://127.0.0.1:7000"],
                "--backend redis-cluster",
            ),
            (&["--redis-namespace", "x"], "--backend redis-cluster"),
            (
                &[
                    "--backend",
                    "redis-cluster",
                    "--redis-url",
                    "http://127.0.0.1:7000",
                ],
                "not a redis:// or rediss:// URL",
            ),
        ];
        for (args, says) in cases {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let config = parse(&[
            "--backend",
            "redis-cluster",
            "--redis-url",
            "redis://127.0.0.1:7000",
            "--redis-password",
            "hunter2-secret",
        ])
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
