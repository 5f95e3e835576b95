//! Watches: where a watcher starts (`kv_watch_start`), and a task per
//! watcher that reads the project's change stream on a connection of its
//! own, so a blocking read never delays other commands.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use kv_engine::{
    WatchError, WatchTarget,
    project::ProjectName,
    watch::{Event, EventKind, FeedSender, Lagged, Subscription, start_cursor},
};
use redis::{Value, aio::MultiplexedConnection};

use crate::{
    codec::{Stored, array, bytes, int, malformed, stream_entries},
    // How long one blocking read waits is also how often a quiet watcher
    // looks whether its project was deleted and its client is gone.
    inner::{BLOCKING_READ, Inner, dedicated},
};

/// How soon a watcher holding unconfirmed changes looks again.
const CONFIRM_POLL: Duration = Duration::from_millis(5);

/// Events read per XREAD.
const READ_COUNT: usize = 512;

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    project: ProjectName,
    target: WatchTarget,
    from: Option<u64>,
) -> Result<Subscription, WatchError> {
    let (incarnation, version, oldest) = start(&inner, &project)
        .await
        .map_err(|context| WatchError::Unavailable { context })?;
    inner.saw_incarnation(&project, incarnation);
    // The stream holds `oldest..=version` (nothing when empty).
    let floor = if oldest == 0 { version } else { oldest - 1 };
    let cursor = start_cursor(from, incarnation, floor, version)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(feed(inner, project, incarnation, cursor, tx));
    Ok(Subscription::from_feed(target, incarnation, cursor, rx))
}

async fn start(inner: &Inner, project: &ProjectName) -> Result<(u64, u64, u64), String> {
    let reply = inner
        .call("kv_watch_start", project, |_| {})
        .await
        .map_err(|e| format!("reading where project {project}'s history starts: {e}"))?;
    let parts = array(reply).map_err(|e| e.to_string())?;
    let get = |i: usize| -> Result<u64, String> {
        parts
            .get(i)
            .ok_or_else(|| "a short kv_watch_start reply".to_string())
            .and_then(|v| int(v).map_err(|e| e.to_string()))
    };
    Ok((get(0)?, get(1)?, get(2)?))
}

/// Reads the project's stream after `cursor` and sends every change, in
/// order, until the subscription is dropped or the history moved past it.
async fn feed(
    inner: Arc<Inner>,
    project: ProjectName,
    incarnation: u64,
    mut cursor: u64,
    tx: FeedSender,
) {
    let stream = inner.names.stream(&project);
    let mut addr: Option<String> = None;
    let mut conn: Option<MultiplexedConnection> = None;
    let mut failures = 0u32;
    // Read but not yet known to be on the replicas: held back, so no
    // watcher sees a change a failover could take back.
    let mut held: VecDeque<Arc<Event>> = VecDeque::new();
    let mut read = cursor;
    while !tx.is_closed() {
        let c = match &mut conn {
            Some(c) => c,
            None => match dedicated(&inner, addr.clone()).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(%project, error = %e, "watch: cannot connect; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20))))
                        .await;
                    addr = None;
                    continue;
                }
            },
        };
        // While changes are held, look again soon for their confirmation.
        let block = if held.is_empty() {
            BLOCKING_READ
        } else {
            CONFIRM_POLL
        };
        let reply: Result<Value, redis::RedisError> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(format!("{read}-0"))
            .query_async(c)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                // The slot moved (resharding, failover): follow it. The
                // redirect names the node's "host:port" and the slot.
                addr = e.redirect_node().map(|(node, _slot)| node.to_string());
                conn = None;
                failures += 1;
                if addr.is_none() {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20))))
                        .await;
                }
                continue;
            }
        };
        failures = 0;
        let events = match events_of(reply) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(%project, error = %e, "watch: an unreadable change event");
                return;
            }
        };
        if events.is_empty() && held.is_empty() {
            // Quiet: was the project deleted meanwhile?
            if let Ok((now, _, _)) = start(&inner, &project).await
                && now != incarnation
            {
                inner.saw_incarnation(&project, now);
                let _ = tx.send(Err(Lagged::Deleted)).await;
                return;
            }
            continue;
        }
        if let Some(first) = events.first() {
            if first.version != read + 1 {
                let _ = tx
                    .send(Err(Lagged::Behind {
                        cursor,
                        oldest: first.version - 1,
                    }))
                    .await;
                return;
            }
            read = events.last().map_or(read, |e| e.version);
            held.extend(events);
        }
        let confirmed = if inner.wait_replicas == 0 {
            read
        } else {
            match confirmed_version(&inner, &project).await {
                Ok(confirmed) => confirmed,
                Err(e) => {
                    tracing::warn!(%project, error = %e, "watch: cannot read the replicated version");
                    continue;
                }
            }
        };
        let ready = held.iter().take_while(|e| e.version <= confirmed).count();
        if ready == 0 {
            continue;
        }
        let batch: Vec<Arc<Event>> = held.drain(..ready).collect();
        cursor = batch.last().map_or(cursor, |e| e.version);
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
    }
}

/// The newest version of `project` known to be on the replicas.
async fn confirmed_version(inner: &Inner, project: &ProjectName) -> Result<u64, String> {
    let reply = inner
        .call("kv_confirmed", project, |_| {})
        .await
        .map_err(|e| e.to_string())?;
    let parts = array(reply).map_err(|e| e.to_string())?;
    parts
        .get(1)
        .ok_or_else(|| "a short kv_confirmed reply".to_string())
        .and_then(|v| int(v).map_err(|e| e.to_string()))
}

fn events_of(reply: Value) -> Result<Vec<Arc<Event>>, kv_engine::EngineError> {
    let mut out = Vec::new();
    for (id, fields) in stream_entries(reply)? {
        let id = bytes(id)?.ok_or_else(|| malformed("an XREAD entry without an id"))?;
        let version = std::str::from_utf8(&id)
            .ok()
            .and_then(|s| s.split('-').next()?.parse().ok())
            .ok_or_else(|| malformed("a stream id that is not VERSION-0"))?;
        out.push(Arc::new(event(version, fields)?));
    }
    Ok(out)
}

fn event(version: u64, fields: Vec<Value>) -> Result<Event, kv_engine::EngineError> {
    let mut kind = None;
    let mut key = String::new();
    let mut stored = None;
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = bytes(name)?.unwrap_or_default();
        let value = bytes(value)?.unwrap_or_default();
        match name.as_slice() {
            b"t" => kind = value.first().copied(),
            b"k" => {
                key = String::from_utf8(value)
                    .map_err(|_| malformed("an event key that is not UTF-8"))?
            }
            b"e" => stored = Some(Stored::parse(value)?),
            _ => {}
        }
    }
    let kind = match kind {
        Some(b's') => EventKind::Set,
        Some(b'd') => EventKind::Deleted,
        Some(b'e') => EventKind::Expired,
        Some(b'c') => EventKind::Cleared,
        _ => return Err(malformed("an event of an unknown kind")),
    };
    Ok(Event {
        version,
        kind,
        key: key.into(),
        expires_at: stored.as_ref().and_then(|s| s.expires_at),
        value: stored.map(|s| s.value),
    })
}
