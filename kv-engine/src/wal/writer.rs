//! The log writer thread: group commit, rotation, snapshot triggering,
//! and stopping writes when the log cannot be synced.

use std::{
    fs::File,
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    admin::{self, AdminChange, AdminOutcome, AdminOverlay, Admitted},
    codec,
    cut::{self, BackupCut},
    dir::{create_segment, segment_name},
    options::{FsyncPolicy, LogOptions},
    queue::{Queue, Take},
    sizes, snapshot, verify,
};
use crate::{
    EngineError, Txn, TxnOutcome, Versioned,
    catalog::{Catalog, CatalogChange, apply_logged},
    memory::MemoryStore,
    memory::expiry::Due,
    project::ProjectName,
    stats::{LogStats, nanos_since},
    txn::{Commit, Evaluated, Overlay},
};

/// A change the writer evaluates, logs and then applies.
pub(super) enum Change {
    /// A transaction on one project's data.
    Txn { project: ProjectName, txn: Txn },
    /// Deadlines that have come.
    Expire(Vec<Due>),
    /// To the catalog of projects and tokens.
    Admin(AdminChange),
    /// A point-in-time cut for a backup, taken between two groups.
    Cut,
}

/// Record bytes of a change besides its key and value (version, tags,
/// lengths, deadline), rounded up: only to bound a batch's size.
const CHANGE_OVERHEAD: usize = 32;
/// The least a transaction's record takes (project name, time, framing).
const TXN_MIN: usize = 64;
/// An expiry's record bytes, key included, for the usual short key.
const EXPIRY_APPROX: usize = 64;
/// An admin change's record bytes (a token is the largest).
const ADMIN_APPROX: usize = 128;

impl Change {
    /// The one project whose order it takes its place in, if any.
    pub(super) fn project(&self) -> Option<&ProjectName> {
        match self {
            Self::Txn { project, .. } => Some(project),
            Self::Expire(due) => due.first().map(|d| &d.project),
            Self::Admin(change) => change.project(),
            Self::Cut => None,
        }
    }

    /// Roughly the bytes it will log, to bound a batch and the queue.
    pub(super) fn approx_len(&self) -> usize {
        match self {
            Self::Txn { txn, .. } => txn
                .ops
                .iter()
                .map(|op| match op {
                    crate::Op::Set { key, value, .. } => CHANGE_OVERHEAD + key.len() + value.len(),
                    crate::Op::Merge { key, patch, .. } => {
                        CHANGE_OVERHEAD + key.len() + patch.len()
                    }
                    crate::Op::Delete { key } | crate::Op::Incr { key, .. } => {
                        CHANGE_OVERHEAD + key.len()
                    }
                    crate::Op::Clear => CHANGE_OVERHEAD,
                })
                .sum::<usize>()
                .max(TXN_MIN),
            Self::Expire(due) => due.len() * EXPIRY_APPROX,
            Self::Admin(_) | Self::Cut => ADMIN_APPROX,
        }
    }
}

/// The writer's answer to a submission.
pub(super) enum Answer {
    Txn(Arc<TxnOutcome>),
    Expired,
    Admin(AdminOutcome),
    Cut(BackupCut),
}

pub(super) struct Submission {
    pub(super) change: Change,
    pub(super) reply: oneshot::Sender<Result<Answer, EngineError>>,
}

/// A submission evaluated and waiting for its batch to be logged.
enum Pending {
    /// A retry: its remembered outcome.
    Replay(Arc<TxnOutcome>),
    Commit(ProjectName, Commit),
    Expire(Vec<(ProjectName, Vec<Versioned>)>),
    Admin(Admitted),
}

/// How long the writer, idle, waits before looking again whether a
/// snapshot it was asked for can start (one is still being written).
const SNAPSHOT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Most bytes gathered into one write; a single larger record still goes
/// alone.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// How long writes stay stopped after a failed fsync before the writer
/// tries to re-verify the log (and again after each failed try).
const REVERIFY_EVERY: Duration = Duration::from_secs(1);

/// Writes are stopped: a fsync of the log failed.
struct Stopped {
    reason: Arc<str>,
    /// When to try re-verifying the log next.
    retry_at: Instant,
    /// Acknowledged writes may be missing from the disk (they were written
    /// but not yet synced under an interval or never policy): writes resume
    /// only once a snapshot holds them all.
    needs_snapshot: bool,
}

/// The open segment and everything the writer tracks.
struct Writer {
    dir: PathBuf,
    mem: Arc<MemoryStore>,
    catalog: Arc<Catalog>,
    options: LogOptions,
    file: File,
    seq: u64,
    file_len: u64,
    /// Bytes in the segments a recovery would replay (since the newest
    /// snapshot's start).
    log_bytes: u64,
    snapshot: Option<JoinHandle<()>>,
    unsynced: Option<Instant>,
    /// Set when a failed append could not be rolled back: the file may end
    /// in a partial batch, which must be cut before the next append.
    dirty_tail: bool,
    /// A snapshot was asked for (a project was deleted): one starts as soon
    /// as none is running, whatever the log's size.
    snapshot_wanted: bool,
    queue: Arc<Queue<Submission>>,
    /// Latencies, batch sizes and bytes, for monitoring.
    stats: Arc<LogStats>,
    /// Set while writes are stopped after a failed fsync.
    stopped: Option<Stopped>,
    /// Held (locked) for as long as the writer runs.
    _lock: File,
}

impl Writer {
    fn run(mut self) {
        /// However the writer ends, even by a panic, nothing queued is left
        /// waiting for it.
        struct Abandon(Arc<Queue<Submission>>);
        impl Drop for Abandon {
            fn drop(&mut self) {
                self.0.abandon();
            }
        }
        let _abandon = Abandon(Arc::clone(&self.queue));
        let mut buf = Vec::new();
        loop {
            match self.queue.take(MAX_BATCH_BYTES, self.wake_at()) {
                Take::Batch(mut batch) => {
                    if let Some(stopped) = &self.stopped {
                        // Queued before writes stopped: refused like the
                        // ones after.
                        for Submission { reply, .. } in batch.drain(..) {
                            let _ = reply.send(Err(EngineError::WritesStopped {
                                reason: Arc::clone(&stopped.reason),
                            }));
                        }
                        continue;
                    }
                    let cuts: Vec<_> = batch
                        .extract_if(.., |s| matches!(s.change, Change::Cut))
                        .collect();
                    self.commit(&mut batch, &mut buf);
                    for Submission { reply, .. } in cuts {
                        let _ = reply.send(self.cut());
                    }
                    self.after_batch();
                }
                Take::Idle => self.on_idle(),
                Take::Stop(replies) => {
                    let finished = self.finish();
                    for reply in replies {
                        let copy = match &finished {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        let _ = reply.send(copy);
                    }
                    return;
                }
            }
        }
    }

    /// When the writer must wake with nothing queued: an interval fsync
    /// due, a snapshot asked for, a re-verification to try.
    fn wake_at(&self) -> Option<Instant> {
        if let Some(stopped) = &self.stopped {
            return Some(stopped.retry_at);
        }
        let sync_at = match (self.options.fsync, self.unsynced) {
            (FsyncPolicy::Interval(every), Some(since)) => Some(since + every),
            _ => None,
        };
        let snapshot_at = self.snapshot_wanted.then(|| Instant::now() + SNAPSHOT_POLL);
        sync_at.into_iter().chain(snapshot_at).min()
    }

    fn on_idle(&mut self) {
        if self.stopped.is_some() {
            if self
                .stopped
                .as_ref()
                .is_some_and(|s| s.retry_at <= Instant::now())
            {
                self.reverify();
            }
            return;
        }
        if let (FsyncPolicy::Interval(every), Some(since)) = (self.options.fsync, self.unsynced)
            && since + every <= Instant::now()
        {
            self.sync_in_background();
        }
        if self.snapshot_wanted && self.stopped.is_none() {
            self.after_batch();
        }
    }

    fn sync_in_background(&mut self) {
        match self.file.sync_data() {
            Ok(()) => self.unsynced = None,
            // Writes of the interval were acknowledged: only a snapshot
            // can make them durable now.
            Err(e) => self.stop_writes("fdatasync", &e, true),
        }
    }

    /// A fsync of the log failed: refuse every write until the log is
    /// re-verified. The failed fsync is never tried again, since the kernel
    /// may have dropped the pages it failed to write and a second fsync
    /// would then report success for data that is not on disk.
    fn stop_writes(&mut self, call: &str, e: &io::Error, acknowledged_at_risk: bool) {
        let reason: Arc<str> = format!(
            "the write-ahead log could not be synced ({call} of {} failed: {e})",
            segment_name(self.seq)
        )
        .into();
        tracing::error!(
            "{reason}; writes are stopped until the log is re-verified (tried every {} ms); reads go on",
            REVERIFY_EVERY.as_millis()
        );
        self.queue.set_stopped(Some(Arc::clone(&reason)));
        let needs_snapshot =
            acknowledged_at_risk || self.stopped.as_ref().is_some_and(|s| s.needs_snapshot);
        self.stopped = Some(Stopped {
            reason,
            retry_at: Instant::now() + REVERIFY_EVERY,
            needs_snapshot,
        });
    }

    /// Whether writes acknowledged but not yet synced may be in the file.
    fn unsynced_acknowledged(&self) -> bool {
        self.options.fsync != FsyncPolicy::Always
    }

    /// Re-verifies the log after a failed fsync: the current segment must
    /// read back whole up to its last synced write; what follows (the
    /// refused group) is cut, durably; a new segment is started and
    /// synced, and, if acknowledged writes may be missing from the disk, a
    /// snapshot of memory (which holds exactly the acknowledged writes) is
    /// written. Only then do writes resume; on any failure they stay
    /// stopped and this is tried again later.
    fn reverify(&mut self) {
        let Some(stopped) = &self.stopped else {
            return;
        };
        let needs_snapshot = stopped.needs_snapshot;
        let renewed = verify::verify_and_cut(&self.dir, self.seq, self.file_len).and_then(|()| {
            let seq = self.seq + 1;
            create_segment(&self.dir, seq).map(|file| (seq, file))
        });
        let (seq, file) = match renewed {
            Ok(renewed) => renewed,
            Err(e) => return self.still_stopped(&e.to_string()),
        };
        self.file = file;
        self.seq = seq;
        self.file_len = codec::FILE_HEADER_LEN as u64;
        self.log_bytes += self.file_len;
        self.unsynced = None;
        self.dirty_tail = false;
        if needs_snapshot {
            if let Some(handle) = self.snapshot.take() {
                let _ = handle.join();
            }
            // Nothing is applied while writes are stopped: memory is the
            // state of every acknowledged write, and of nothing else.
            if !snapshot::write(&self.dir, &self.mem, &self.catalog, seq, &self.stats) {
                return self.still_stopped("the snapshot of the acknowledged writes failed");
            }
            self.log_bytes = self.file_len;
        }
        tracing::info!(
            segment = seq,
            "the write-ahead log is re-verified; writes resume"
        );
        self.stopped = None;
        self.queue.set_stopped(None);
    }

    fn still_stopped(&mut self, why: &str) {
        tracing::warn!(
            segment = self.seq,
            "the write-ahead log could not be re-verified ({why}); writes stay stopped"
        );
        if let Some(stopped) = &mut self.stopped {
            stopped.retry_at = Instant::now() + REVERIFY_EVERY;
        }
    }

    /// Evaluates the batch in order (each write sees the ones before it),
    /// logs it with one write (and one fsync), then applies and answers.
    /// Refused writes (quota, failed operations) are answered at once and
    /// never logged.
    fn commit(&mut self, batch: &mut Vec<Submission>, buf: &mut Vec<u8>) {
        self.stats.batch_writes.observe(batch.len() as u64);
        buf.clear();
        let now = self.mem.clock().now_ms();
        let mut overlay = Overlay::default();
        let mut admin = AdminOverlay::default();
        let mut pending: Vec<(Pending, oneshot::Sender<Result<Answer, EngineError>>)> =
            Vec::with_capacity(batch.len());
        for Submission { change, reply } in batch.drain(..) {
            match change {
                Change::Txn { project, txn } => {
                    let quota = self.catalog.effective_quota(&project, self.options.quota);
                    match overlay.evaluate(&*self.mem, &project, txn, now, quota) {
                        Err(refused) => {
                            let _ = reply.send(Err(refused));
                        }
                        Ok(Evaluated::Replay(outcome)) => {
                            pending.push((Pending::Replay(outcome), reply));
                        }
                        Ok(Evaluated::Commit(commit)) => {
                            if !commit.mutations.is_empty() || commit.remember.is_some() {
                                let request = commit
                                    .remember
                                    .as_ref()
                                    .map(|(id, fp)| (&**id, *fp, &*commit.outcome));
                                codec::encode_txn(buf, &project, now, &commit.mutations, request);
                            }
                            pending.push((Pending::Commit(project, commit), reply));
                        }
                    }
                }
                Change::Expire(due) => {
                    // One record per project per group: expiries of many
                    // keys cost one frame, not one each.
                    let mut expired: Vec<(ProjectName, Vec<Versioned>)> = Vec::new();
                    for due in due {
                        if let Some(expire) = overlay.expire(&*self.mem, &due, now) {
                            match expired.last_mut() {
                                Some((project, list)) if *project == due.project => {
                                    list.push(expire);
                                }
                                _ => expired.push((due.project, vec![expire])),
                            }
                        }
                    }
                    for (project, list) in &expired {
                        codec::encode_txn(buf, project, now, list, None);
                    }
                    pending.push((Pending::Expire(expired), reply));
                }
                Change::Cut => {
                    // `run` takes cuts out of the batch: a cut here would
                    // fall before the group's earlier writes are logged.
                    let _ = reply.send(Err(EngineError::Internal(
                        "a backup cut reached the group commit",
                    )));
                }
                Change::Admin(change) => match admin::admit(
                    &self.mem,
                    &self.catalog,
                    change,
                    now,
                    &mut overlay,
                    &mut admin,
                ) {
                    Ok(admitted) => {
                        if let Some((project, base)) = &admitted.incarnation {
                            codec::encode_incarnation(buf, project, *base);
                        }
                        codec::encode_catalog(buf, &admitted.change);
                        pending.push((Pending::Admin(admitted), reply));
                    }
                    Err(refused) => {
                        let _ = reply.send(Err(refused));
                    }
                },
            }
        }
        if pending.is_empty() {
            return;
        }
        let logged = if buf.is_empty() {
            Ok(())
        } else {
            self.append(buf)
        };
        if let Err(e) = logged {
            tracing::error!(
                segment = self.seq,
                "log append failed, {} write(s) refused: {e}",
                pending.len()
            );
            for (_, reply) in pending {
                let refused = match &self.stopped {
                    Some(stopped) => EngineError::WritesStopped {
                        reason: Arc::clone(&stopped.reason),
                    },
                    None => EngineError::Storage {
                        context: format!("could not append to the log in {}", self.dir.display()),
                        source: io::Error::new(e.kind(), e.to_string()),
                    },
                };
                let _ = reply.send(Err(refused));
            }
            return;
        }
        for (done, reply) in pending {
            // The caller may have given up (deadline, hang-up): the write
            // stands regardless, as it is in the log.
            let answer = match done {
                Pending::Replay(outcome) => Answer::Txn(outcome),
                Pending::Commit(project, mut commit) => {
                    let request = commit.remembered(now);
                    self.mem.apply_commit(&project, commit.mutations, request);
                    Answer::Txn(commit.outcome)
                }
                Pending::Expire(expired) => {
                    for (project, list) in expired {
                        self.mem.apply_expiries(&project, list);
                    }
                    Answer::Expired
                }
                Pending::Admin(Admitted {
                    incarnation,
                    change,
                    after,
                }) => {
                    if let Some((project, base)) = incarnation {
                        self.mem.start_incarnation(&project, base);
                    }
                    if matches!(change, CatalogChange::DeleteProject { .. }) {
                        self.snapshot_wanted = true;
                    }
                    let revoke = matches!(change, CatalogChange::RevokeToken { .. });
                    let applied = apply_logged(&self.mem, &self.catalog, change);
                    Answer::Admin(AdminOutcome {
                        removed: if revoke { 1 } else { applied.removed },
                        incarnation: after,
                    })
                }
            };
            let _ = reply.send(Ok(answer));
        }
    }

    /// Writes `buf` at the end of the segment and, as the policy says,
    /// syncs it. Nothing of a failed append is left in the file (as far
    /// as the file system lets it be cut); a failed fsync also stops writes.
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.dirty_tail {
            self.rollback()?;
        }
        let before = self.file_len;
        let started = Instant::now();
        let written = self.file.write_all(buf);
        self.stats.appends.observe(nanos_since(started));
        if let Err(e) = written {
            // Cut the partial batch so disk never holds a write that was
            // refused; if even that fails, retry before the next append.
            self.dirty_tail = true;
            if let Err(cut) = self.rollback() {
                tracing::error!(segment = self.seq, "could not cut a failed append: {cut}");
            }
            return Err(e);
        }
        let synced = match self.options.fsync {
            FsyncPolicy::Always => self.timed_sync(),
            FsyncPolicy::Interval(every) => {
                let since = *self.unsynced.get_or_insert_with(Instant::now);
                if since.elapsed() >= every {
                    self.timed_sync().map(|()| self.unsynced = None)
                } else {
                    Ok(())
                }
            }
            FsyncPolicy::Never => Ok(()),
        };
        if let Err(e) = synced {
            // The refused group must not come back at a restart: cut it now
            // (without a fsync, which could not be trusted); re-verifying
            // makes the cut durable before writes resume.
            if let Err(cut) = self.file.set_len(before) {
                tracing::error!(
                    segment = self.seq,
                    "could not cut a write whose fsync failed: {cut}"
                );
            }
            self.stop_writes("fdatasync", &e, self.unsynced_acknowledged());
            return Err(e);
        }
        self.file_len += buf.len() as u64;
        self.log_bytes += buf.len() as u64;
        self.stats
            .appended_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.stats
            .log_bytes
            .store(self.log_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// A fsync of the segment, timed.
    fn timed_sync(&self) -> io::Result<()> {
        let started = Instant::now();
        let synced = self.file.sync_data();
        self.stats.fsyncs.observe(nanos_since(started));
        synced
    }

    fn rollback(&mut self) -> io::Result<()> {
        self.file.set_len(self.file_len)?;
        if let Err(e) = self.file.sync_data() {
            self.stop_writes("fdatasync", &e, self.unsynced_acknowledged());
            return Err(e);
        }
        self.dirty_tail = false;
        Ok(())
    }

    fn after_batch(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        if let Some(handle) = self.snapshot.take_if(|h| h.is_finished()) {
            let _ = handle.join();
        }
        if self.snapshot_wanted && self.snapshot.is_none() {
            self.snapshot_wanted = false;
            self.start_snapshot();
            return;
        }
        let live = self.mem.data_bytes();
        let want_snapshot = self.snapshot.is_none()
            && self.log_bytes >= self.options.snapshot_min_log_bytes
            && self.log_bytes > live.saturating_mul(2);
        if want_snapshot {
            self.start_snapshot();
        } else if self.file_len >= self.options.segment_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(
                segment = self.seq,
                "could not start a new segment, continuing in this one: {e}"
            );
        }
    }

    fn start_snapshot(&mut self) {
        if let Err(e) = self.rotate() {
            tracing::warn!(
                segment = self.seq,
                "could not start a snapshot (new segment failed): {e}"
            );
            return;
        }
        // Every record before segment `seq` is applied: the snapshot walk
        // starts from a state that includes them all.
        let base = self.seq;
        let (dir, mem, catalog, stats) = (
            self.dir.clone(),
            Arc::clone(&self.mem),
            Arc::clone(&self.catalog),
            Arc::clone(&self.stats),
        );
        self.log_bytes = self.file_len;
        self.stats
            .log_bytes
            .store(self.log_bytes, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("kv-snapshot".into())
            .spawn(move || {
                snapshot::write(&dir, &mem, &catalog, base, &stats);
            });
        match spawned {
            Ok(handle) => self.snapshot = Some(handle),
            Err(e) => tracing::warn!("could not start the snapshot thread: {e}"),
        }
    }

    /// Cuts the log after everything applied so far (see `cut.rs`).
    fn cut(&mut self) -> Result<Answer, EngineError> {
        let dir = self.dir.clone();
        let storage = |context: &str, e: io::Error| EngineError::Storage {
            context: format!("{context} in {}", dir.display()),
            source: e,
        };
        self.rotate()
            .map_err(|e| storage("could not start a segment for a backup", e))?;
        let versions = self.mem.versions();
        cut::link(&self.dir, self.seq, versions)
            .map(Answer::Cut)
            .map_err(|e| storage("could not link the files of a backup", e))
    }

    /// Closes the current segment and starts the next one.
    fn rotate(&mut self) -> io::Result<()> {
        if let Err(e) = self.file.sync_data() {
            self.stop_writes("fdatasync", &e, self.unsynced_acknowledged());
            return Err(e);
        }
        let seq = self.seq + 1;
        let file = create_segment(&self.dir, seq)?;
        self.file = file;
        self.seq = seq;
        self.file_len = codec::FILE_HEADER_LEN as u64;
        self.log_bytes += self.file_len;
        self.unsynced = None;
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(handle) = self.snapshot.take() {
            let _ = handle.join();
        }
        self.file.flush()?;
        self.file.sync_data()?;
        if self.stopped.is_none() {
            sizes::write(
                &self.dir,
                self.seq,
                self.file_len,
                &self.mem.large_projects(),
            );
        }
        Ok(())
    }
}

/// What a writer starts from: the state a recovery loaded and the fresh
/// segment after it.
pub(super) struct Parts {
    pub(super) dir: PathBuf,
    pub(super) mem: Arc<MemoryStore>,
    pub(super) catalog: Arc<Catalog>,
    pub(super) options: LogOptions,
    /// The fresh segment, and its number.
    pub(super) file: File,
    pub(super) seq: u64,
    /// Bytes of the segments a recovery would replay, before `file`.
    pub(super) log_bytes: u64,
    /// The data directory's lock, held for as long as the writer runs.
    pub(super) lock: File,
    /// Where every change comes from.
    pub(super) queue: Arc<Queue<Submission>>,
    /// Where the writer reports what it did.
    pub(super) stats: Arc<LogStats>,
}

/// Starts the writer thread; it takes every change from `parts.queue`
/// until the queue is closed.
pub(super) fn spawn(parts: Parts) -> io::Result<JoinHandle<()>> {
    let header = codec::FILE_HEADER_LEN as u64;
    let writer = Writer {
        dir: parts.dir,
        mem: parts.mem,
        catalog: parts.catalog,
        options: parts.options,
        file: parts.file,
        seq: parts.seq,
        file_len: header,
        log_bytes: parts.log_bytes + header,
        snapshot: None,
        unsynced: None,
        dirty_tail: false,
        snapshot_wanted: false,
        queue: parts.queue,
        stats: parts.stats,
        stopped: None,
        _lock: parts.lock,
    };
    std::thread::Builder::new()
        .name("kv-log-writer".into())
        .spawn(move || writer.run())
}
