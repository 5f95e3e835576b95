//! What the backend is given: where the cluster is, and why connecting
//! failed.

use kv_engine::{Quota, Settings};

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Seed nodes (`redis://host:port`); any reachable one finds the rest.
    pub seeds: Vec<String>,
    /// ACL user, if the cluster requires one.
    pub username: Option<String>,
    /// Password, if the cluster requires one.
    pub password: Option<String>,
    /// The PEM certificate of the CA that signed the cluster's TLS
    /// certificates (`rediss://` seeds); `None` trusts the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    /// The engine's tunables (history length, request-id window).
    pub settings: Settings,
    /// The quota of projects without their own (fields unset: no limit).
    pub default_quota: Quota,
    /// Replicas a write must reach (Redis `WAIT`) before it is
    /// acknowledged; `None`: 1 when the cluster has replicas, else 0.
    pub wait_replicas: Option<u32>,
    /// How long a write waits for those replicas before it is answered
    /// UNAVAILABLE (outcome unknown; a retry with its request id is safe).
    pub wait_timeout: std::time::Duration,
    /// The first part of every key name: deployments (or test runs) with
    /// different namespaces share a cluster without seeing each other.
    pub namespace: String,
}

impl RedisOptions {
    /// Options for `seeds` with the engine's defaults.
    ///
    /// ```
    /// let options = kv_redis::RedisOptions::new(vec!["redis://127.0.0.1:7000".into()]);
    /// assert_eq!(options.seeds.len(), 1);
    /// ```
    pub fn new(seeds: Vec<String>) -> Self {
        Self {
            seeds,
            username: None,
            password: None,
            tls_ca: None,
            settings: Settings::DEFAULT,
            default_quota: Quota::default(),
            wait_replicas: None,
            wait_timeout: std::time::Duration::from_millis(1000),
            namespace: "kv".into(),
        }
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No seed was given.
    #[error("no Redis seed URL given (--redis-url)")]
    NoSeeds,
    /// The client failed.
    #[error("redis cluster: {0}")]
    Redis(#[source] redis::RedisError),
    /// The catalog could not be read.
    #[error("reading the catalog: {0}")]
    Catalog(#[source] kv_engine::EngineError),
    /// The namespace is not a valid name.
    #[error("redis namespace: {0}")]
    Namespace(String),
    /// The cluster does not serve all slots.
    #[error("the redis cluster is not healthy ({state}); kv needs every slot served")]
    Unhealthy {
        /// What the cluster said.
        state: String,
    },
    /// A master runs a library of another major version.
    #[error(
        "redis node {node} runs kv function library {found}, which this kv-server (library {ours}) cannot use: upgrade or roll back the front-ends so that all speak one major version"
    )]
    IncompatibleLibrary {
        /// The node.
        node: String,
        /// Its library's version.
        found: String,
        /// This build's library version.
        ours: &'static str,
    },
}

impl ConnectError {
    /// Whether trying again may help: the cluster is unreachable or not
    /// yet serving. A refused password, a bad configuration or a library
    /// of another major version will not change by waiting.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Redis(e) => {
                // The cluster client reports a refused login while it
                // discovers the nodes as a connection failure: look at what
                // the server said.
                let said = e.to_string();
                let refused = ["WRONGPASS", "NOAUTH", "NOPERM", "AuthenticationFailed"]
                    .iter()
                    .any(|word| said.contains(word));
                !refused
                    && (e.is_io_error()
                        || e.is_timeout()
                        || e.is_connection_refusal()
                        || e.is_connection_dropped()
                        || e.is_cluster_error())
            }
            ConnectError::Unhealthy { .. } | ConnectError::Catalog(_) => true,
            ConnectError::NoSeeds
            | ConnectError::Namespace(_)
            | ConnectError::IncompatibleLibrary { .. } => false,
        }
    }
}
