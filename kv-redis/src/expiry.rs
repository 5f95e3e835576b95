//! Expiry: every front-end's expiry task sweeps the due-project buckets.
//!
//! A bucket is a sorted set of projects scored by their earliest
//! deadline. Writers lower a project's score when they set an earlier
//! deadline (`ZADD LT`, after the write). A sweeper runs `kv_expire` on each
//! project whose score has come, then moves the project to its next
//! deadline only if no writer changed the score meanwhile (`kv_settle`),
//! and reads the project's earliest deadline once more: a deadline written
//! while it swept is then either seen by that read or recorded by its
//! writer after the move, so no deadline is lost.

use std::sync::Arc;

use kv_engine::project::ProjectName;
use redis::Value;

use crate::{
    codec::{array, int, signed},
    inner::Inner,
    keys,
    replication::replicated,
};

/// Projects taken from one bucket per sweep.
const PROJECTS_PER_BUCKET: usize = 64;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) async fn sweep(inner: Arc<Inner>, limit: usize) -> usize {
    let mut expired = 0;
    for index in 0..keys::BUCKETS {
        if expired >= limit {
            break;
        }
        let bucket = inner.names.bucket(index);
        let mut conn = inner.conn.clone();
        let due: Result<Vec<(String, f64)>, _> = redis::cmd("ZRANGEBYSCORE")
            .arg(&bucket)
            .arg("-inf")
            .arg(unix_ms())
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(PROJECTS_PER_BUCKET)
            .query_async(&mut conn)
            .await;
        let due = match due {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(%bucket, error = %e, "expiry: cannot read a due bucket");
                continue;
            }
        };
        for (name, score) in due {
            let Ok(project) = ProjectName::parse(&name) else {
                continue;
            };
            match expire_project(
                &inner,
                &bucket,
                &project,
                score as u64,
                limit - expired.min(limit),
            )
            .await
            {
                Ok(n) => expired += n,
                Err(e) => tracing::warn!(%project, error = %e, "expiry: a sweep failed"),
            }
        }
    }
    expired
}

async fn expire_project(
    inner: &Inner,
    bucket: &str,
    project: &ProjectName,
    score: u64,
    limit: usize,
) -> Result<usize, String> {
    let limit = limit.max(1);
    let (expired, next) = expire(inner, project, limit).await?;
    let mut conn = inner.conn.clone();
    let _: Value = redis::cmd("FCALL")
        .arg("kv_settle")
        .arg(1)
        .arg(bucket)
        .arg(project.as_str())
        .arg(score)
        .arg(next)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    // A deadline written while this sweep ran: see the module docs.
    let (_, again) = expire(inner, project, 0).await?;
    if again >= 0 && (next < 0 || again < next) {
        let _: Value = redis::cmd("ZADD")
            .arg(bucket)
            .arg("LT")
            .arg(again)
            .arg(project.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(expired)
}

/// Runs `kv_expire`: (keys expired, next deadline or -1).
pub(crate) async fn expire(
    inner: &Inner,
    project: &ProjectName,
    limit: usize,
) -> Result<(usize, i64), String> {
    let reply = inner
        .call("kv_expire", project, |cmd| {
            cmd.arg(limit)
                .arg(inner.options.settings.watch_history_events);
        })
        .await
        .map_err(|e| e.to_string())?;
    let parts = array(reply).map_err(|e| e.to_string())?;
    let [n, next, version] = parts.as_slice() else {
        return Err("a malformed kv_expire reply".into());
    };
    let expired = int(n).map_err(|e| e.to_string())? as usize;
    let next = signed(next).map_err(|e| e.to_string())?;
    if expired > 0 {
        let version = int(version).map_err(|e| e.to_string())?;
        replicated(inner, project, Some(version))
            .await
            .map_err(|e| e.0)?;
    }
    Ok((expired, next))
}
