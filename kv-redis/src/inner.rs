//! What every part of the backend shares: the cluster connection, the
//! options, and the incarnations seen.

use dashmap::DashMap;
use kv_engine::{EngineError, project::ProjectName};
use redis::{Value, cluster_async::ClusterConnection};

use crate::{keys, options::RedisOptions, queues::Queues};

pub(crate) struct Inner {
    pub(crate) conn: ClusterConnection,
    pub(crate) options: RedisOptions,
    pub(crate) names: keys::Names,
    /// The incarnation each project had in the newest answer about it.
    pub(crate) incarnations: DashMap<ProjectName, u64>,
    pub(crate) writes: Queues,
}

impl Inner {
    pub(crate) fn saw_incarnation(&self, project: &ProjectName, incarnation: u64) {
        let mut seen = self
            .incarnations
            .entry(project.clone())
            .or_insert(incarnation);
        *seen = (*seen).max(incarnation);
    }

    pub(crate) async fn call(
        &self,
        function: &str,
        project: &ProjectName,
        args: impl FnOnce(&mut redis::Cmd),
    ) -> Result<Value, redis::RedisError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(1).arg(self.names.meta(project));
        args(&mut cmd);
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
