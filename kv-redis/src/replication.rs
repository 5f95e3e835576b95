//! Waiting for replicas: a write is acknowledged only once `WAIT` says it
//! reached `--redis-wait-replicas` replicas, and watches deliver only
//! changes so confirmed.

use kv_engine::{EngineError, project::ProjectName};
use redis::{
    Value,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr},
};

use crate::inner::Inner;

/// Waits until the write just applied on the project's master has reached
/// the replicas asked for (`WAIT` on the connection the write went over:
/// it counts that connection's writes), so a failover cannot lose it.
///
/// Then records `version` as confirmed (`kv_confirm`): watches deliver
/// only confirmed changes. `None` (a resent write whose version this call
/// does not know) leaves that to the next write.
pub(crate) async fn replicated(
    inner: &Inner,
    project: &ProjectName,
    version: Option<u64>,
) -> Result<(), ReplicationError> {
    let wanted = inner.wait_replicas;
    if wanted == 0 {
        return Ok(());
    }
    let timeout = inner.options.wait_timeout;
    let route = Route::with_slot(Slot::for_key(inner.names.meta(project)), SlotAddr::Master);
    let mut conn = inner.conn.clone();
    let reached = conn
        .route_command(
            redis::cmd("WAIT")
                .arg(wanted)
                .arg(timeout.as_millis() as u64)
                .clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
        )
        .await;
    match reached {
        Ok(Value::Int(n)) if n >= i64::from(wanted) => {
            if let Some(version) = version {
                let confirmed = inner
                    .call("kv_confirm", project, |cmd| {
                        cmd.arg(version);
                    })
                    .await;
                if let Err(e) = confirmed {
                    // The write is safe; its watchers wait for the next
                    // confirmation.
                    tracing::warn!(%project, error = %e, "could not record a replicated version");
                }
            }
            Ok(())
        }
        Ok(Value::Int(n)) => Err(ReplicationError(format!(
            "the write reached {n} of the {wanted} replicas required (--redis-wait-replicas) within {} ms, so a failover could lose it",
            timeout.as_millis()
        ))),
        Ok(other) => Err(ReplicationError(format!("WAIT answered {other:?}"))),
        Err(e) => Err(ReplicationError(format!("WAIT failed: {e}"))),
    }
}

/// A write applied on a master but not confirmed on its replicas.
#[derive(Clone, Debug)]
pub(crate) struct ReplicationError(pub(crate) String);

impl From<ReplicationError> for EngineError {
    fn from(e: ReplicationError) -> Self {
        EngineError::OutcomeUnknown { context: e.0 }
    }
}
