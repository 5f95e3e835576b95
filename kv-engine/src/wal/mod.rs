//! The durable embedded engine: the in-memory store made persistent by an
//! append-only log and background snapshots.
//!
//! # Layout
//!
//! - Memory ([`MemoryStore`]) serves every read; the log on disk is the
//!   source of truth across restarts.
//! - A write is encoded by the caller, then handed to one writer thread.
//!   The writer gathers everything pending into one `write` and, under
//!   [`FsyncPolicy::Always`], one `fdatasync`; only then does it apply the
//!   batch to memory, in log order, and answer each caller. So the log
//!   order is the apply order for every key, readers never see a write that
//!   is not in the log, and a write that cannot be logged is never applied.
//! - Records carry the resulting state (value with its absolute deadline,
//!   delete, clear), so replay is idempotent over a fuzzy snapshot.
//! - When the log outgrows the live data (twice its size, and at least
//!   `snapshot_min_log_bytes`), the writer starts a new segment and a
//!   background thread streams memory into a snapshot (one shard read lock
//!   at a time): temp file, fsync, rename, fsync the directory, and only then
//!   are the older segments removed.
//! - Start-up loads the newest snapshot and replays the segments after it
//!   (see [`DurableStore::open`]).
//! - Admin changes (projects, tokens) go through the same writer, which
//!   checks their preconditions in log order ([`AdminChange`]): of two
//!   concurrent creates of a name exactly one succeeds. A project deletion
//!   asks for a snapshot at once, so the deleted tenant's values leave the
//!   disk as soon as it is written (the older segments are then removed).
//!
//! Files in the data directory: `LOCK`, `<seq>.log` (segments),
//! `<seq>.snap` (the state of every segment before `<seq>`), and
//! `<seq>.snap.tmp` (an unfinished snapshot, removed at start).

use std::{
    fmt, fs,
    fs::File,
    io,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use tokio::sync::oneshot;

use super::{
    Applied, Backend, EngineError, Entry, ListPage, ListQuery, Quota, Txn, TxnOutcome, WatchError,
    WatchTarget,
    catalog::{Catalog, CatalogChange, TokenMeta},
    memory::{Due, MemoryStore},
    watch::Subscription,
};
use crate::project::ProjectName;

pub mod codec;
mod recovery;
mod snapshot;
mod writer;

pub use recovery::{LOCK_FILE, OpenError, Recovered};

/// When the log is flushed to stable storage. In every mode a record is
/// written to the file (handed to the OS) before its write is acknowledged,
/// so a crash of the process alone (`kill -9`) never loses an acknowledged
/// write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before acknowledging (default). Acknowledged writes
    /// survive an OS crash or power loss. Concurrent writes share one
    /// `fdatasync` (group commit).
    Always,
    /// `fdatasync` at most this often, and within this long of a write. An
    /// OS crash may lose the writes of the last interval.
    Interval(Duration),
    /// Never `fdatasync` (the OS flushes when it likes). An OS crash may lose
    /// any writes not yet flushed by the OS.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    /// Parses `always`, `never` or `interval:<ms>`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kv_engine::wal::FsyncPolicy;
    /// assert_eq!("interval:50".parse(), Ok(FsyncPolicy::Interval(Duration::from_millis(50))));
    /// assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
    /// assert!("sometimes".parse::<FsyncPolicy>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| {
                        format!("{s:?} is not a fsync policy: use always, never or interval:<ms> with ms >= 1")
                    })?;
                Ok(Self::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// How the log behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// At start, truncate the log at the first corrupt record (and drop what
    /// follows) instead of refusing to start.
    pub repair: bool,
    /// No snapshot before the log holds this many bytes.
    pub snapshot_min_log_bytes: u64,
    /// A segment this large is closed and a new one started.
    pub segment_bytes: u64,
    /// What each project may hold. Checked by the writer, one write at a
    /// time in log order, so concurrent writers can never overshoot it.
    pub quota: Quota,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            repair: false,
            snapshot_min_log_bytes: 64 << 20,
            segment_bytes: 64 << 20,
            quota: Quota::default(),
        }
    }
}

enum Command {
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
enum Change {
    /// A transaction on one project's data.
    Txn { project: ProjectName, txn: Txn },
    /// Deadlines that have come.
    Expire(Vec<Due>),
    /// To the catalog of projects and tokens.
    Admin(AdminChange),
}

impl Change {
    /// Roughly the bytes it will log, to bound a batch.
    fn approx_len(&self) -> usize {
        match self {
            Self::Txn { txn, .. } => txn
                .ops
                .iter()
                .map(|op| match op {
                    super::Op::Set { key, value, .. } => 32 + key.len() + value.len(),
                    super::Op::Merge { key, patch, .. } => 32 + key.len() + patch.len(),
                    super::Op::Delete { key } | super::Op::Incr { key, .. } => 32 + key.len(),
                    super::Op::Clear => 16,
                })
                .sum::<usize>()
                .max(64),
            Self::Expire(due) => due.len() * 64,
            Self::Admin(_) => 128,
        }
    }
}

/// The writer's answer to a submission.
enum Answer {
    Txn(Arc<TxnOutcome>),
    Expired,
    Admin(AdminOutcome),
}

struct Submission {
    change: Change,
    reply: oneshot::Sender<Result<Answer, EngineError>>,
}

/// The durable store: a [`MemoryStore`] behind an append-only log.
///
/// ```
/// use std::sync::Arc;
/// use kv_engine::{Backend, SystemClock, wal::{DurableStore, LogOptions}};
/// use kv_engine::project::ProjectName;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let p = ProjectName::parse("p").unwrap();
/// let store = DurableStore::open(dir.path(), LogOptions::default(), Arc::new(SystemClock)).unwrap();
/// store.set(&p, "k", b"\x20\x01".to_vec().into(), None).await.unwrap();
/// store.close().await.unwrap();
///
/// let reopened = DurableStore::open(dir.path(), LogOptions::default(), Arc::new(SystemClock)).unwrap();
/// assert!(reopened.has(&p, "k").await.unwrap());
/// # reopened.close().await.unwrap();
/// # });
/// ```
pub struct DurableStore {
    mem: Arc<MemoryStore>,
    catalog: Arc<Catalog>,
    commands: mpsc::Sender<Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Builds the ordered key indexes after start-up; joined on close so
    /// no work of this store outlives it.
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
    recovered: Recovered,
}

impl DurableStore {
    /// The in-memory state reads are served from.
    pub fn memory(&self) -> &Arc<MemoryStore> {
        &self.mem
    }

    /// Registered projects and tokens.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Checks, logs and applies an admin change (a project deletion also
    /// removes the project's data: `removed` counts its live keys).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{Quota, SystemClock, wal::{AdminChange, DurableStore, LogOptions}};
    /// use kv_engine::project::ProjectName;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = DurableStore::open(dir.path(), LogOptions::default(), Arc::new(SystemClock)).unwrap();
    /// let shop = ProjectName::parse("shop").unwrap();
    /// let create = AdminChange::CreateProject { project: shop.clone(), quota: Quota::default() };
    /// assert!(store.admin(create.clone()).await.is_ok());
    /// assert!(store.admin(create).await.is_err()); // exactly one create wins
    /// # store.close().await.unwrap();
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`EngineError::Storage`] when it cannot be logged;
    /// [`EngineError::ProjectExists`], [`EngineError::ProjectNotFound`] or
    /// [`EngineError::ProjectGone`] when its condition does not hold.
    pub async fn admin(&self, change: AdminChange) -> Result<AdminOutcome, EngineError> {
        match self.send(Change::Admin(change)).await? {
            Answer::Admin(outcome) => Ok(outcome),
            Answer::Txn(_) | Answer::Expired => Err(EngineError::Internal(
                "the log writer answered an admin change with a data result".into(),
            )),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What start-up found and did.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    async fn send(&self, change: Change) -> Result<Answer, EngineError> {
        let (reply, answer) = oneshot::channel();
        let submission = Submission { change, reply };
        self.commands
            .send(Command::Write(submission))
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Writes everything pending, fsyncs, and stops the writer. Later
    /// writes fail with [`EngineError::Storage`].
    ///
    /// # Errors
    ///
    /// The final flush or fsync failed.
    pub async fn close(&self) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        let flushed = if self.commands.send(Command::Shutdown(reply)).is_ok() {
            answer.await.unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            // The writer also waits for a snapshot in progress.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        let indexer = self
            .indexer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(indexer) = indexer {
            let _ = tokio::task::spawn_blocking(move || indexer.join()).await;
        }
        flushed
    }
}

fn closed() -> EngineError {
    EngineError::Storage {
        context: "the log writer has stopped".into(),
        source: io::Error::new(io::ErrorKind::BrokenPipe, "log closed"),
    }
}

impl Backend for DurableStore {
    async fn get(&self, project: &ProjectName, key: &str) -> Result<Option<Entry>, EngineError> {
        Ok(self.mem.entry_now(project, key))
    }

    async fn get_many(
        &self,
        project: &ProjectName,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        Ok(self.mem.entries_now(project, keys))
    }

    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.mem.has_now(project, key))
    }

    async fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        // Right after start-up the project's ordered index may still be
        // being built: wait here rather than block a runtime thread.
        self.mem.order_ready(project).await;
        Ok(self.mem.list_now(project, query))
    }

    async fn write(&self, project: &ProjectName, txn: Txn) -> Result<Arc<TxnOutcome>, EngineError> {
        let change = Change::Txn {
            project: project.clone(),
            txn,
        };
        match self.send(change).await? {
            Answer::Txn(outcome) => Ok(outcome),
            Answer::Expired | Answer::Admin(_) => Err(EngineError::Internal(
                "the log writer answered a write with a catalog result".into(),
            )),
        }
    }

    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> Result<Subscription, WatchError> {
        self.mem.subscribe(project, target, from_version)
    }

    fn incarnation(&self, project: &ProjectName) -> u64 {
        self.mem.incarnation(project)
    }

    async fn expire_due(&self, limit: usize) -> usize {
        let due = self.mem.take_due(limit);
        let consumed = due.len();
        if consumed > 0 {
            // Expiries are changes like any other: logged, versioned and
            // published by the writer. If it cannot log them, the entries
            // stay invisible (reads check deadlines) and a restart drops them.
            if let Err(e) = self.send(Change::Expire(due)).await {
                tracing::warn!("could not log expiries: {e}");
            }
        }
        consumed
    }
}

/// Applies a logged catalog change to memory and catalog (the writer and
/// replay both come here, so they cannot disagree).
fn apply_catalog(mem: &MemoryStore, catalog: &Catalog, change: CatalogChange) -> Applied {
    // The data goes first: the catalog change wakes open streams, which
    // must then find the project gone, not merely their token.
    let applied = match &change {
        CatalogChange::DeleteProject { project } => mem.delete_project(project),
        CatalogChange::PutProject { .. }
        | CatalogChange::PutToken(_)
        | CatalogChange::RevokeToken { .. } => Applied::default(),
    };
    catalog.apply(&change);
    applied
}

/// File name of segment `seq`.
fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// File name of the snapshot holding every segment before `seq`.
fn snapshot_name(seq: u64) -> String {
    format!("{seq:020}.snap")
}

/// Makes a directory's entries (new, renamed or removed files) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_file_logged(path: &Path, why: &str) {
    match fs::remove_file(path) {
        Ok(()) => tracing::info!(file = %path.display(), "removed {why}"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), "could not remove {why}: {e}"),
    }
}
