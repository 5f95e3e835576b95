//! Writes: one queue per project on each front-end, group evaluation with
//! the engine's evaluator, and conditional application by `kv_apply`.
//!
//! A project's queue is drained by one worker task, so writes of one
//! front-end to one project are evaluated and applied in the order they
//! were submitted. Front-ends do not coordinate: `kv_apply` applies a
//! group only if the project's version is still the one the group was
//! evaluated against, and the loser of a race evaluates again.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use kv_engine::{
    EngineError, MAX_QUEUED_WRITES, Mutation, Txn, TxnOutcome,
    project::ProjectName,
    txn::{Commit, Evaluated, Overlay},
};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{
    codec::{array, bytes, malformed, pack, text},
    inner::Inner,
    queues::Pending,
    replication::replicated,
    state::{Snapshot, parse_record, record},
};

/// Most writes evaluated and applied together.
const MAX_GROUP: usize = 128;

/// Evaluations of one group before it is refused as contended.
const MAX_ATTEMPTS: u32 = 32;

/// Resends of an apply whose answer was lost, before its outcome is
/// reported unknown. Each resend is safe: the write ids make a repeat
/// answer what the first run did.
const APPLY_RESENDS: u32 = 3;

/// Most due keys expired before a quota check (more is rare: the expiry
/// task keeps up; what is left counts against the quota until it does).
const QUOTA_SWEEP: usize = 10_000;

/// A worker with nothing to do for this long leaves.
const IDLE: Duration = Duration::from_secs(5);

pub(crate) fn submit(
    inner: &Arc<Inner>,
    project: &ProjectName,
    txn: Txn,
) -> impl Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static {
    let (reply, answer) = oneshot::channel();
    let queues = &inner.writes;
    let refused = if queues.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_WRITES {
        queues.queued.fetch_sub(1, Ordering::AcqRel);
        Some(EngineError::Overloaded {
            capacity: MAX_QUEUED_WRITES,
        })
    } else {
        // Sent under the map's lock on the project: a worker leaving
        // for idleness checks its queue is empty under the same lock, so a
        // write is never left in a queue nobody reads.
        let entry = queues
            .projects
            .entry(project.clone())
            .or_insert_with(|| spawn_worker(inner, project));
        if let Err(mpsc::error::SendError(pending)) = entry.send(Pending { txn, reply }) {
            drop(entry);
            queues.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = pending
                .reply
                .send(Err(EngineError::Internal("a project's write queue closed")));
        }
        None
    };
    async move {
        if let Some(e) = refused {
            return Err(e);
        }
        answer
            .await
            .unwrap_or(Err(EngineError::Internal("a project's writer stopped")))
    }
}

fn spawn_worker(inner: &Arc<Inner>, project: &ProjectName) -> mpsc::UnboundedSender<Pending> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(Arc::clone(inner), project.clone(), rx));
    tx
}

async fn run(inner: Arc<Inner>, project: ProjectName, mut rx: mpsc::UnboundedReceiver<Pending>) {
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(pending)) => pending,
            Ok(None) => return,
            Err(_) => {
                let left = inner
                    .writes
                    .projects
                    .remove_if(&project, |_, _| rx.is_empty())
                    .is_some();
                if left {
                    return;
                }
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let n = group.len();
        apply_group(&inner, &project, group).await;
        inner.writes.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What became of one write of a group.
enum Fate {
    Answered(Result<Arc<TxnOutcome>, EngineError>),
    /// Its commit's index in the group's commits.
    Commit(usize),
}

fn touched(group: &[Pending]) -> (Vec<Box<str>>, Vec<Box<str>>) {
    let mut keys = BTreeSet::new();
    let mut ids = Vec::new();
    for pending in group {
        for check in &pending.txn.checks {
            match check {
                kv_engine::Check::Version { key, .. } | kv_engine::Check::Absent { key } => {
                    keys.insert(key.clone());
                }
            }
        }
        for op in &pending.txn.ops {
            match op {
                kv_engine::Op::Set { key, .. }
                | kv_engine::Op::Delete { key }
                | kv_engine::Op::Incr { key, .. }
                | kv_engine::Op::Merge { key, .. } => {
                    keys.insert(key.clone());
                }
                kv_engine::Op::Clear => {}
            }
        }
        if let Some(request) = &pending.txn.request {
            ids.push(Box::from(&*request.id));
        }
    }
    (keys.into_iter().collect(), ids)
}

fn write_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

async fn apply_group(inner: &Arc<Inner>, project: &ProjectName, group: Vec<Pending>) {
    let (keys, ids) = touched(&group);
    let wids: Vec<String> = group.iter().map(|_| write_id()).collect();
    let mut fates: Vec<Fate> = Vec::new();
    let quota = inner
        .catalog
        .effective_quota(project, inner.options.default_quota);
    let limited = quota.max_keys.is_some() || quota.max_bytes.is_some();
    let mut swept = false;
    for attempt in 1..=MAX_ATTEMPTS {
        let snapshot = match read(inner, project, &keys, &ids).await {
            Ok(snapshot) => snapshot,
            Err(context) => {
                for pending in group {
                    let _ = pending.reply.send(Err(EngineError::Unreachable {
                        context: format!("reading project {project} for a write"),
                        source: context.clone().into(),
                    }));
                }
                return;
            }
        };
        inner.saw_incarnation(project, snapshot.incarnation);
        if limited && snapshot.due > 0 && !swept {
            // Keys past their deadline still count in what the project
            // holds until expired: expire them now (with their events),
            // so a quota never refuses a write for space the dead hold.
            swept = true;
            if let Err(e) = crate::expiry::expire(inner, project, QUOTA_SWEEP).await {
                tracing::warn!(%project, error = %e, "could not expire due keys before a quota check");
            }
            continue;
        }
        let mut overlay = Overlay::default();
        let mut commits: Vec<(usize, Commit)> = Vec::new();
        fates.clear();
        for (i, pending) in group.iter().enumerate() {
            let fate = match overlay.evaluate(
                &snapshot,
                project,
                pending.txn.clone(),
                snapshot.now,
                quota,
            ) {
                Ok(Evaluated::Replay(outcome)) => Fate::Answered(Ok(outcome)),
                Ok(Evaluated::Commit(commit)) => {
                    commits.push((i, commit));
                    Fate::Commit(commits.len() - 1)
                }
                Err(e) => Fate::Answered(Err(e)),
            };
            fates.push(fate);
        }
        if commits.is_empty() {
            return answer(group, fates, Vec::new());
        }
        let cmd = apply_command(inner, project, &snapshot, &overlay, &commits, &wids);
        match send_apply(inner, &cmd).await {
            Ok(Applied::Ok) => {
                note_deadlines(inner, project, &commits).await;
                let last = overlay.version(&snapshot, project);
                let replicated = replicated(inner, project, Some(last)).await;
                let outcomes = commits
                    .into_iter()
                    .map(|(_, c)| {
                        replicated.clone()?;
                        Ok(c.outcome)
                    })
                    .collect();
                return answer(group, fates, outcomes);
            }
            Ok(Applied::Dup(outcomes)) => {
                let replicated = replicated(inner, project, None).await;
                let outcomes = outcomes
                    .into_iter()
                    .map(|raw| {
                        replicated.clone()?;
                        parse_record(&raw, snapshot.now).map(|r| r.outcome)
                    })
                    .collect();
                return answer(group, fates, outcomes);
            }
            Ok(Applied::Gone(incarnation)) => inner.saw_incarnation(project, incarnation),
            Ok(Applied::Conflict) => {
                if attempt > 2 {
                    // Another front-end is writing to this project: let it
                    // finish rather than collide again at once.
                    let jitter = fastrand::u64(..1000 * u64::from(attempt.min(10)));
                    tokio::time::sleep(Duration::from_micros(jitter)).await;
                }
            }
            Err(SendError::Lost(e)) => {
                let outcomes = commits
                    .iter()
                    .map(|_| Err(EngineError::OutcomeUnknown { context: e.clone() }))
                    .collect();
                return answer(group, fates, outcomes);
            }
            Err(SendError::Refused(e)) => {
                let message = e.to_string();
                let outcomes = commits
                    .iter()
                    .map(|_| {
                        Err(EngineError::Unreachable {
                            context: format!("the cluster refused a write to project {project}"),
                            source: message.clone().into(),
                        })
                    })
                    .collect();
                return answer(group, fates, outcomes);
            }
        }
    }
    for pending in group {
        let _ = pending.reply.send(Err(EngineError::Contended {
            project: project.clone(),
            attempts: MAX_ATTEMPTS,
        }));
    }
}

fn answer(
    group: Vec<Pending>,
    fates: Vec<Fate>,
    outcomes: Vec<Result<Arc<TxnOutcome>, EngineError>>,
) {
    let mut outcomes: Vec<Option<Result<Arc<TxnOutcome>, EngineError>>> =
        outcomes.into_iter().map(Some).collect();
    for (pending, fate) in group.into_iter().zip(fates) {
        let result =
            match fate {
                Fate::Answered(result) => result,
                Fate::Commit(i) => outcomes.get_mut(i).and_then(Option::take).unwrap_or(Err(
                    EngineError::Internal("an applied write lost its outcome"),
                )),
            };
        let _ = pending.reply.send(result);
    }
}

async fn read(
    inner: &Inner,
    project: &ProjectName,
    keys: &[Box<str>],
    ids: &[Box<str>],
) -> Result<Snapshot, String> {
    let requests: Vec<String> = ids
        .iter()
        .map(|id| inner.names.request(project, id))
        .collect();
    let cmd = inner.command("kv_snapshot", project, &requests, |cmd| {
        for key in keys {
            cmd.arg(&**key);
        }
    });
    let mut conn = inner.conn.clone();
    let reply: Value = cmd
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Snapshot::parse(reply, ids, keys).map_err(|e| e.to_string())
}

fn apply_command(
    inner: &Inner,
    project: &ProjectName,
    snapshot: &Snapshot,
    overlay: &Overlay,
    commits: &[(usize, Commit)],
    wids: &[String],
) -> redis::Cmd {
    let usage = overlay.usage(snapshot, project);
    let settings = &inner.options.settings;
    let mut extra = Vec::with_capacity(2 * commits.len());
    for (i, commit) in commits {
        let write = inner.names.write(project, &wids[*i]);
        let request = match &commit.remember {
            Some((id, _)) => inner.names.request(project, id),
            None => write.clone(),
        };
        extra.push(write);
        extra.push(request);
    }
    let mut cmd = inner.command("kv_apply", project, &extra, |cmd| {
        cmd.arg(snapshot.incarnation)
            .arg(snapshot.incarnation.to_le_bytes().as_slice())
            .arg(snapshot.version)
            .arg(snapshot.horizon())
            .arg(usage.keys)
            .arg(usage.bytes)
            .arg(settings.watch_history_events)
            .arg(settings.idempotency_window_ms.max(1));
    });
    for (_, commit) in commits {
        let (has_request, fingerprint) = commit
            .remember
            .as_ref()
            .map_or(("0", 0), |(_, fp)| ("1", *fp));
        cmd.arg(has_request)
            .arg(record(snapshot.incarnation, fingerprint, &commit.outcome));
    }
    for (_, commit) in commits {
        for change in &commit.mutations {
            match &change.mutation {
                Mutation::Set {
                    key,
                    value,
                    expires_at,
                } => cmd.arg("s").arg(change.version).arg(&**key).arg(pack(
                    change.version,
                    *expires_at,
                    value,
                )),
                Mutation::Delete { key } => cmd.arg("d").arg(change.version).arg(&**key).arg(""),
                Mutation::Expire { key } => cmd.arg("e").arg(change.version).arg(&**key).arg(""),
                Mutation::Clear => cmd.arg("c").arg(change.version).arg("").arg(""),
            };
        }
    }
    cmd
}

enum Applied {
    Ok,
    Dup(Vec<Vec<u8>>),
    Gone(u64),
    Conflict,
}

fn parse_applied(reply: Value) -> Result<Applied, EngineError> {
    let mut parts = array(reply)?.into_iter();
    let status = parts
        .next()
        .ok_or_else(|| malformed("an empty kv_apply reply"))?;
    Ok(match text(&status)? {
        "ok" => Applied::Ok,
        "conflict" => Applied::Conflict,
        "gone" => Applied::Gone(crate::codec::int(
            &parts
                .next()
                .ok_or_else(|| malformed("kv_apply gone without incarnation"))?,
        )?),
        "dup" => Applied::Dup(
            array(
                parts
                    .next()
                    .ok_or_else(|| malformed("kv_apply dup without outcomes"))?,
            )?
            .into_iter()
            .map(|v| bytes(v).map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()?,
        ),
        _ => return Err(malformed("an unknown kv_apply status")),
    })
}

/// Why an apply has no answer.
enum SendError {
    /// The cluster refused the call before running it (out of memory, the
    /// slot not served): nothing was applied.
    Refused(redis::RedisError),
    /// The answer was lost: the write may or may not have been applied.
    Lost(String),
}

/// Sends the apply, resending it when its answer is lost.
async fn send_apply(inner: &Inner, cmd: &redis::Cmd) -> Result<Applied, SendError> {
    let mut last = String::new();
    for resend in 0..=APPLY_RESENDS {
        if resend > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(resend))).await;
        }
        let mut conn = inner.conn.clone();
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(reply) => return parse_applied(reply).map_err(|e| SendError::Lost(e.to_string())),
            // An error reply: the function did not run (the library
            // raises no errors of its own once it writes).
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                return Err(SendError::Refused(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, resend, "a write's answer was lost; resending it");
                last = e.to_string();
            }
        }
    }
    Err(SendError::Lost(format!(
        "the cluster did not answer the write after {} attempts ({last})",
        APPLY_RESENDS + 1
    )))
}

/// Records the project's earliest new deadline in its due bucket, so the
/// expiry task of some front-end expires it in time.
async fn note_deadlines(inner: &Inner, project: &ProjectName, commits: &[(usize, Commit)]) {
    let earliest = commits
        .iter()
        .flat_map(|(_, c)| &c.mutations)
        .filter_map(|m| match &m.mutation {
            Mutation::Set { expires_at, .. } => *expires_at,
            _ => None,
        })
        .min();
    if let Some(at) = earliest {
        let mut conn = inner.conn.clone();
        let noted: Result<Value, _> = redis::cmd("ZADD")
            .arg(inner.names.bucket_of(project))
            .arg("LT")
            .arg(at.ms())
            .arg(project.as_str())
            .query_async(&mut conn)
            .await;
        if let Err(e) = noted {
            tracing::warn!(%project, error = %e, "could not record a deadline for the expiry task");
        }
    }
}
