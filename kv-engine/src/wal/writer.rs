//! The log writer thread: group commit, rotation, snapshot triggering.

use std::{
    fs::File,
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Instant,
};

use tokio::sync::oneshot;

use super::{
    codec,
    dir::create_segment,
    options::{FsyncPolicy, LogOptions},
    snapshot,
};
use crate::{
    EngineError, Quota, Txn, TxnOutcome, Versioned,
    catalog::{Catalog, CatalogChange, TokenMeta, apply_logged},
    memory::MemoryStore,
    memory::expiry::Due,
    project::ProjectName,
    txn::{Commit, Evaluated, Overlay},
};

pub(super) enum Command {
    Write(Submission),
    /// Flush, fsync and stop once everything queued before has been written.
    Shutdown(oneshot::Sender<io::Result<()>>),
}

/// A change to the catalog of projects and tokens, with the condition
/// under which it applies. The writer judges the condition in log order,
/// against every change before it, so two concurrent admin calls can
/// never both pass a check that only one of them should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminChange {
    /// Registers `project`; [`EngineError::ProjectExists`] if it is. A name
    /// deleted before becomes a new incarnation sharing nothing with the
    /// old one; a name holding unregistered data (open mode) keeps it.
    CreateProject {
        /// The project.
        project: ProjectName,
        /// Its quota.
        quota: Quota,
    },
    /// Replaces a registered project's quota.
    SetQuota {
        /// The project.
        project: ProjectName,
        /// Its quota.
        quota: Quota,
    },
    /// Deletes a registered project: data, history, request ids, tokens.
    DeleteProject {
        /// The project.
        project: ProjectName,
    },
    /// Stores a token of a registered project, if the project is still
    /// the incarnation the caller saw ([`EngineError::ProjectGone`]
    /// otherwise: a token meant for a deleted project never opens its
    /// successor).
    CreateToken {
        /// The token.
        token: TokenMeta,
        /// The incarnation the token is for.
        incarnation: u64,
    },
    /// Removes a token (no error when unknown).
    RevokeToken {
        /// Its id.
        id: String,
    },
}

/// What an [`AdminChange`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdminOutcome {
    /// Live keys a deletion removed; 1 when a revoke removed a token.
    pub removed: u64,
    /// The project's incarnation after the change.
    pub incarnation: u64,
}

/// A change the writer evaluates, logs and then applies.
pub(super) enum Change {
    /// A transaction on one project's data.
    Txn { project: ProjectName, txn: Txn },
    /// Deadlines that have come.
    Expire(Vec<Due>),
    /// To the catalog of projects and tokens.
    Admin(AdminChange),
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
    /// Roughly the bytes it will log, to bound a batch.
    fn approx_len(&self) -> usize {
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
            Self::Admin(_) => ADMIN_APPROX,
        }
    }
}

/// The writer's answer to a submission.
pub(super) enum Answer {
    Txn(Arc<TxnOutcome>),
    Expired,
    Admin(AdminOutcome),
}

pub(super) struct Submission {
    pub(super) change: Change,
    pub(super) reply: oneshot::Sender<Result<Answer, EngineError>>,
    /// Counted in the store's bounded queue (client transactions).
    pub(super) bounded: bool,
}

/// A submission evaluated and waiting for its batch to be logged.
enum Pending {
    /// A retry: its remembered outcome.
    Replay(Arc<TxnOutcome>),
    Commit(ProjectName, Commit),
    Expire(Vec<(ProjectName, Vec<Versioned>)>),
    Admin(Admitted),
}

/// An admin change whose condition held, as what it logs and applies.
struct Admitted {
    /// A new incarnation to start before the catalog change.
    incarnation: Option<(ProjectName, u64)>,
    change: CatalogChange,
    /// The project's incarnation after the change.
    after: u64,
}

/// What the admin changes evaluated earlier in a group will have done to
/// the catalog, so each judges its condition as if they were applied.
#[derive(Default)]
struct AdminOverlay {
    registered: std::collections::HashMap<ProjectName, bool>,
    tokens: std::collections::HashMap<String, bool>,
}

impl AdminOverlay {
    fn registered(&self, catalog: &Catalog, project: &ProjectName) -> bool {
        self.registered
            .get(project)
            .copied()
            .unwrap_or_else(|| catalog.project(project).is_some())
    }

    fn token_exists(&self, catalog: &Catalog, id: &str) -> bool {
        self.tokens
            .get(id)
            .copied()
            .unwrap_or_else(|| catalog.token(id).is_some())
    }
}

/// How long the writer, idle, waits before looking again whether a
/// snapshot it was asked for can start (one is still being written).
const SNAPSHOT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Most bytes gathered into one write; a single larger record still goes
/// alone.
const MAX_BATCH_BYTES: usize = 8 << 20;

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
    /// Bounded submissions queued and not yet taken.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Held (locked) for as long as the writer runs.
    _lock: File,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        loop {
            let Some(first) = self.next_command(&commands) else {
                // Every sender is gone: flush what was written and stop.
                let _ = self.finish();
                return;
            };
            let mut shutdown = None;
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Write(submission) => {
                        if submission.bounded {
                            self.queued
                                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        }
                        bytes += submission.change.approx_len();
                        batch.push(submission);
                    }
                    Command::Shutdown(reply) => {
                        shutdown = Some(reply);
                        break;
                    }
                }
                if bytes < MAX_BATCH_BYTES {
                    next = commands.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch, &mut buf);
            }
            if let Some(reply) = shutdown {
                let _ = reply.send(self.finish());
                return;
            }
            self.after_batch();
        }
    }

    /// Waits for the next command; under an interval policy, fsyncs when
    /// the interval ends with nothing new.
    fn next_command(&mut self, commands: &mpsc::Receiver<Command>) -> Option<Command> {
        loop {
            let sync_at = match (self.options.fsync, self.unsynced) {
                (FsyncPolicy::Interval(every), Some(since)) => Some(since + every),
                _ => None,
            };
            let snapshot_at = self.snapshot_wanted.then(|| Instant::now() + SNAPSHOT_POLL);
            let Some(deadline) = sync_at.into_iter().chain(snapshot_at).min() else {
                return commands.recv().ok();
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait) {
                Ok(command) => return Some(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if sync_at.is_some_and(|at| at <= Instant::now()) {
                        self.sync_in_background();
                    }
                    if self.snapshot_wanted {
                        self.after_batch();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn sync_in_background(&mut self) {
        match self.file.sync_data() {
            Ok(()) => self.unsynced = None,
            Err(e) => tracing::error!(segment = self.seq, "interval fsync failed: {e}"),
        }
    }

    /// Evaluates the batch in order (each write sees the ones before it),
    /// logs it with one write (and one fsync), then applies and answers.
    /// Refused writes (quota, failed operations) are answered at once and
    /// never logged.
    fn commit(&mut self, batch: &mut Vec<Submission>, buf: &mut Vec<u8>) {
        buf.clear();
        let now = self.mem.clock().now_ms();
        let mut overlay = Overlay::default();
        let mut admin = AdminOverlay::default();
        let mut pending: Vec<(Pending, oneshot::Sender<Result<Answer, EngineError>>)> =
            Vec::with_capacity(batch.len());
        for Submission { change, reply, .. } in batch.drain(..) {
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
                Change::Admin(change) => match self.admit(change, now, &mut overlay, &mut admin) {
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
                let _ = reply.send(Err(EngineError::Storage {
                    context: format!("could not append to the log in {}", self.dir.display()),
                    source: io::Error::new(e.kind(), e.to_string()),
                }));
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
                        self.mem.apply_commit(&project, list, None);
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

    /// Judges an admin change's condition against the catalog and the
    /// changes before it in the group; what it will log and apply.
    fn admit(
        &self,
        change: AdminChange,
        now: u64,
        overlay: &mut Overlay,
        admin: &mut AdminOverlay,
    ) -> Result<Admitted, EngineError> {
        let registered = |admin: &AdminOverlay, project: &ProjectName| {
            if admin.registered(&self.catalog, project) {
                Ok(())
            } else {
                Err(EngineError::ProjectNotFound {
                    project: project.clone(),
                })
            }
        };
        Ok(match change {
            AdminChange::CreateProject { project, quota } => {
                if admin.registered(&self.catalog, &project) {
                    return Err(EngineError::ProjectExists { project });
                }
                admin.registered.insert(project.clone(), true);
                let current = overlay.incarnation(&*self.mem, &project);
                let held = overlay.holds_namespace(&*self.mem, &project);
                // A name never used starts at 0 when first written; one
                // holding unregistered data (open mode) keeps it. A name
                // used before starts above the old numbering and above
                // the clock, so the new versions say nothing of how many
                // changes the deleted project had.
                let incarnation = if held || current == 0 {
                    None
                } else {
                    let base = current.max(now);
                    overlay.begin(&project, base);
                    Some((project.clone(), base))
                };
                Admitted {
                    after: incarnation.as_ref().map_or(current, |(_, base)| *base),
                    incarnation,
                    change: CatalogChange::PutProject { project, quota },
                }
            }
            AdminChange::SetQuota { project, quota } => {
                registered(admin, &project)?;
                Admitted {
                    after: overlay.incarnation(&*self.mem, &project),
                    incarnation: None,
                    change: CatalogChange::PutProject { project, quota },
                }
            }
            AdminChange::DeleteProject { project } => {
                registered(admin, &project)?;
                admin.registered.insert(project.clone(), false);
                for token in self.catalog.tokens(Some(&project)) {
                    admin.tokens.insert(token.id, false);
                }
                overlay.drop_project(&*self.mem, &project);
                Admitted {
                    after: overlay.incarnation(&*self.mem, &project),
                    incarnation: None,
                    change: CatalogChange::DeleteProject { project },
                }
            }
            AdminChange::CreateToken { token, incarnation } => {
                registered(admin, &token.project)?;
                if overlay.incarnation(&*self.mem, &token.project) != incarnation {
                    return Err(EngineError::ProjectGone {
                        project: token.project,
                    });
                }
                admin.tokens.insert(token.id.clone(), true);
                Admitted {
                    after: incarnation,
                    incarnation: None,
                    change: CatalogChange::PutToken(token),
                }
            }
            AdminChange::RevokeToken { id } => {
                if !admin.token_exists(&self.catalog, &id) {
                    return Err(EngineError::TokenNotFound { id });
                }
                admin.tokens.insert(id.clone(), false);
                Admitted {
                    after: 0,
                    incarnation: None,
                    change: CatalogChange::RevokeToken { id },
                }
            }
        })
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.dirty_tail {
            self.rollback()?;
        }
        let before = self.file_len;
        let written = self
            .file
            .write_all(buf)
            .and_then(|()| match self.options.fsync {
                FsyncPolicy::Always => self.file.sync_data(),
                FsyncPolicy::Interval(every) => {
                    let since = *self.unsynced.get_or_insert_with(Instant::now);
                    if since.elapsed() >= every {
                        self.file.sync_data()?;
                        self.unsynced = None;
                    }
                    Ok(())
                }
                FsyncPolicy::Never => Ok(()),
            });
        match written {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                self.log_bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut the partial batch so disk never holds a write that was
                // refused; if even that fails, retry before the next append.
                self.file_len = before;
                self.dirty_tail = true;
                if let Err(cut) = self.rollback() {
                    tracing::error!(segment = self.seq, "could not cut a failed append: {cut}");
                }
                Err(e)
            }
        }
    }

    fn rollback(&mut self) -> io::Result<()> {
        self.file.set_len(self.file_len)?;
        self.file.sync_data()?;
        self.dirty_tail = false;
        Ok(())
    }

    fn after_batch(&mut self) {
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
        let (dir, mem, catalog) = (
            self.dir.clone(),
            Arc::clone(&self.mem),
            Arc::clone(&self.catalog),
        );
        self.log_bytes = self.file_len;
        let spawned = std::thread::Builder::new()
            .name("kv-snapshot".into())
            .spawn(move || snapshot::write(&dir, &mem, &catalog, base));
        match spawned {
            Ok(handle) => self.snapshot = Some(handle),
            Err(e) => tracing::warn!("could not start the snapshot thread: {e}"),
        }
    }

    /// Closes the current segment and starts the next one.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
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
        self.file.sync_data()
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
    /// Bounded submissions queued and not yet taken; the writer counts
    /// them out as it takes them.
    pub(super) queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Starts the writer thread; every write goes through the returned sender.
pub(super) fn spawn(parts: Parts) -> io::Result<(mpsc::Sender<Command>, JoinHandle<()>)> {
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
        queued: parts.queued,
        _lock: parts.lock,
    };
    let (commands, receiver) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("kv-log-writer".into())
        .spawn(move || writer.run(receiver))?;
    Ok((commands, handle))
}
