//! What every part of the backend shares: the cluster connection, the
//! options, and the incarnations seen.

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use kv_engine::{EngineError, catalog::Catalog, project::ProjectName};
use redis::{Value, aio::MultiplexedConnection, cluster_async::ClusterConnection};

use crate::{keys, options::RedisOptions, queues::Queues};

/// Longest blocking read (XREAD BLOCK) on a dedicated connection.
pub(crate) const BLOCKING_READ: Duration = Duration::from_millis(1000);

pub(crate) struct Inner {
    pub(crate) conn: ClusterConnection,
    pub(crate) options: RedisOptions,
    pub(crate) names: keys::Names,
    /// The incarnation each project had in the newest answer about it.
    pub(crate) incarnations: DashMap<ProjectName, u64>,
    pub(crate) writes: Queues,
    /// The catalog as of the newest change this front-end has seen.
    pub(crate) catalog: Arc<Catalog>,
    /// Replicas every write waits for.
    pub(crate) wait_replicas: u32,
    /// The creation (random id) of each registered project.
    pub(crate) generations: DashMap<ProjectName, String>,
}

impl Inner {
    pub(crate) fn saw_incarnation(&self, project: &ProjectName, incarnation: u64) {
        let mut seen = self
            .incarnations
            .entry(project.clone())
            .or_insert(incarnation);
        *seen = (*seen).max(incarnation);
    }

    /// `FCALL function` on `project`'s keys (and `extra` keys of its
    /// slot), with the arguments `args` adds.
    pub(crate) fn command(
        &self,
        function: &str,
        project: &ProjectName,
        extra: &[String],
        args: impl FnOnce(&mut redis::Cmd),
    ) -> redis::Cmd {
        let keys = self.names.project_keys(project);
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(keys.len() + extra.len());
        for key in keys.iter().chain(extra) {
            cmd.arg(key);
        }
        args(&mut cmd);
        cmd
    }

    pub(crate) async fn call(
        &self,
        function: &str,
        project: &ProjectName,
        args: impl FnOnce(&mut redis::Cmd),
    ) -> Result<Value, redis::RedisError> {
        let cmd = self.command(function, project, &[], args);
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await
    }
}

pub(crate) fn unreachable(
    context: impl Into<String>,
) -> impl FnOnce(redis::RedisError) -> EngineError {
    let context = context.into();
    move |e| EngineError::Unreachable {
        context,
        source: Box::new(e),
    }
}

/// A connection of its own to `addr` (a node's "host:port"), or to the
/// first seed: a read there answers MOVED with the node that serves the
/// slot.
pub(crate) async fn dedicated(
    inner: &Inner,
    addr: Option<String>,
) -> Result<MultiplexedConnection, String> {
    let url = match addr {
        // The seeds' scheme (redis or rediss) for every node.
        Some(addr) => {
            let scheme = inner
                .options
                .seeds
                .first()
                .and_then(|s| s.split_once("://"))
                .map_or("redis", |(scheme, _)| scheme);
            format!("{scheme}://{addr}")
        }
        None => inner
            .options
            .seeds
            .first()
            .cloned()
            .ok_or_else(|| "no seed".to_string())?,
    };
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut redis_settings = info.redis_settings().clone();
    if let Some(user) = &inner.options.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = &inner.options.password {
        redis_settings = redis_settings.set_password(password);
    }
    info = info.set_redis_settings(redis_settings);
    let client = match &inner.options.tls_ca {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(BLOCKING_READ + Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}
