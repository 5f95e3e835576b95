//! The durable embedded engine: the in-memory store made persistent by an
//! append-only log and background snapshots.
//!
//! # Layout
//!
//! - Memory ([`MemoryStore`]) serves every read; the log on disk is the
//!   source of truth across restarts.
//! - A write is queued in its project's lane (bounded by count and bytes,
//!   see `queue.rs`), then handed to one writer thread. The writer gathers
//!   pending writes, the projects served round-robin, into one `write` and,
//!   under [`FsyncPolicy::Always`], one `fdatasync`; only then does it apply
//!   the batch to memory, in log order, and answer each caller. So the log
//!   order is the apply order for every key, readers never see a write that
//!   is not in the log, and a write that cannot be logged is never applied.
//! - A failed fsync is never retried: writes are refused
//!   ([`crate::EngineError::WritesStopped`]) until the writer has
//!   re-verified the log (`verify.rs`); reads go on.
//! - Records carry the resulting state (value with its absolute deadline,
//!   delete, clear), so replay is idempotent over a fuzzy snapshot.
//! - When the log outgrows the live data (twice its size, and at least
//!   `snapshot_min_log_bytes`), the writer starts a new segment and a
//!   background thread streams memory into a snapshot (one shard read lock
//!   at a time): temp file, fsync, rename, fsync the directory, and only then
//!   are the older segments removed.
//! - Start-up loads the newest snapshot and replays the segments after it
//!   (see [`DurableStore::open`]).
//! - The watch history ([`crate::watch`]) survives restarts: a snapshot
//!   writes each project's history window (its floor and events), since
//!   the segments it replaces are the only other place those changes are
//!   kept, and replay publishes every logged change into the same bounded
//!   history as live application does. So a watcher resumes across a
//!   restart from any version still in the window, and versions and the
//!   feed agree after SIGTERM or SIGKILL. Keeping segments for the window
//!   instead would keep a deleted tenant's values on disk, and let one
//!   rarely written project pin every segment after its oldest change.
//! - Admin changes (projects, tokens) go through the same writer, which
//!   checks their preconditions in log order ([`AdminChange`]): of two
//!   concurrent creates of a name exactly one succeeds. A project deletion
//!   asks for a snapshot at once, so the deleted tenant's values leave the
//!   disk as soon as it is written (the older segments are then removed).
//!
//! - Start-up applies the keys' changes on one worker per core by key hash
//!   (`memory/replay.rs`), and sizes the maps of large projects from the
//!   key counts a clean stop recorded (`sizes.rs`).
//!
//! Files in the data directory: `LOCK`, `<seq>.log` (segments),
//! `<seq>.snap` (the state of every segment before `<seq>`),
//! `<seq>.snap.tmp` (an unfinished snapshot, removed at start), and
//! `SIZES` (large projects' key counts at the last clean stop, a hint
//! removed at start).

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::oneshot;

use crate::{
    Backend, Clock, EngineError, Entry, ListPage, ListQuery, Txn, TxnOutcome, WatchError,
    WatchTarget, catalog::Catalog, memory::MemoryStore, project::ProjectName, watch::Subscription,
};

mod admin;
pub mod codec;
mod cut;
mod dir;
mod frame;
#[cfg(test)]
mod history_tests;
mod options;
#[cfg(test)]
mod order_tests;
mod queue;
mod recovery;
mod scan;
#[cfg(test)]
mod scan_tests;
mod scope;
mod sizes;
mod snapshot;
mod verify;
mod writer;

#[cfg(test)]
mod fairness_tests;

pub use admin::{AdminChange, AdminOutcome};
pub use cut::BackupCut;
pub use dir::LOCK_FILE;
pub use options::{FsyncPolicy, LogOptions};
pub use queue::QueueStats;
use queue::{Limits, Queue};
use recovery::io_error;
pub use recovery::{Damage, OpenError, Recovered};
use writer::{Answer, Change, Submission};

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
    /// Every change on its way to the writer.
    queue: Arc<Queue<Submission>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Builds the ordered key indexes after start-up; joined on close so
    /// no work of this store outlives it.
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
    recovered: Recovered,
    stats: Arc<crate::stats::LogStats>,
}

impl DurableStore {
    /// Opens (creating if needed) the data directory `dir`: takes its lock,
    /// loads the newest snapshot, replays the log after it, and starts the
    /// writer on a new segment. Keys whose deadline passed while the server
    /// was down are loaded as they were: reads treat them as absent, and
    /// the expiry task removes them right after start-up as it removes any
    /// due key (logged, with a version and an `EXPIRED` event), so a watch
    /// resumed across the restart learns they are gone. The watch history
    /// is rebuilt from the snapshot and the replay within its settings.
    ///
    /// A torn tail (an append interrupted by a crash) is cut off with a
    /// warning. Any other damage stops start-up with an error naming the file
    /// and offset, unless `options.repair`, which cuts the log there, drops
    /// what follows, and says how much.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: the directory is locked by another server, unusable,
    /// or corrupt.
    pub fn open(dir: &Path, options: LogOptions, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        Self::open_with(dir, options, clock, crate::Settings::default())
    }

    /// [`DurableStore::open`] with engine tunables.
    ///
    /// # Errors
    ///
    /// As [`DurableStore::open`].
    pub fn open_with(
        dir: &Path,
        options: LogOptions,
        clock: Arc<dyn Clock>,
        settings: crate::Settings,
    ) -> Result<Self, OpenError> {
        let started = Instant::now();
        let recovery::Loaded {
            mem,
            catalog,
            lock,
            file,
            seq,
            log_bytes,
            build,
            mut recovered,
        } = recovery::recover(dir, options.repair, clock, settings)?;
        let indexer = if build.is_empty() {
            None
        } else {
            let handle = std::thread::Builder::new()
                .name("kv-index-build".into())
                .spawn(move || {
                    let building = Instant::now();
                    let keys = build.keys();
                    build.run();
                    tracing::info!(
                        keys,
                        took_ms = building.elapsed().as_millis() as u64,
                        "ordered key indexes built"
                    );
                })
                .map_err(io_error("cannot start the index builder thread"))?;
            Some(handle)
        };
        cut::remove_stale(dir);
        recovered.took = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            snapshot = ?recovered.snapshot,
            snapshot_entries = recovered.snapshot_entries,
            segments = recovered.segments,
            records = recovered.records,
            keys = mem.stored_entries(),
            took_ms = recovered.took.as_millis() as u64,
            index_ms = recovered.index_took.as_millis() as u64,
            index_deferred_keys = recovered.index_deferred_keys,
            index_presorted_keys = recovered.index_presorted_keys,
            history_skipped = recovered.history_skipped,
            "recovered"
        );

        let queue = Arc::new(Queue::new(Limits {
            max_writes: crate::MAX_QUEUED_WRITES,
            max_bytes: options.max_queued_bytes,
        }));
        let stats = Arc::new(crate::stats::LogStats::default());
        stats
            .log_bytes
            .store(log_bytes, std::sync::atomic::Ordering::Relaxed);
        let handle = writer::spawn(writer::Parts {
            dir: dir.to_path_buf(),
            mem: Arc::clone(&mem),
            catalog: Arc::clone(&catalog),
            options,
            file,
            seq,
            log_bytes,
            lock,
            queue: Arc::clone(&queue),
            stats: Arc::clone(&stats),
        })
        .map_err(io_error("cannot start the log writer thread"))?;
        Ok(Self {
            mem,
            catalog,
            queue,
            writer: Mutex::new(Some(handle)),
            indexer: Mutex::new(indexer),
            dir: dir.to_path_buf(),
            recovered,
            stats,
        })
    }

    /// What the log writer and snapshots have done since the store opened
    /// (latencies, batch sizes, bytes), for monitoring.
    pub fn log_stats(&self) -> &Arc<crate::stats::LogStats> {
        &self.stats
    }

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
            Answer::Txn(_) | Answer::Expired | Answer::Cut(_) => Err(EngineError::Internal(
                "the log writer answered an admin change with a data result",
            )),
        }
    }

    /// Cuts the log for an online backup: after the writes applied so
    /// far, before any later one. The returned files (the newest snapshot
    /// and the segments after it, linked so they outlive a snapshot that
    /// replaces them) hold exactly the state at the cut; writes go on
    /// while they are read. See [`BackupCut`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{Backend, SystemClock, wal::{DurableStore, LogOptions}};
    /// use kv_engine::project::ProjectName;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = DurableStore::open(dir.path(), LogOptions::default(), Arc::new(SystemClock)).unwrap();
    /// let p = ProjectName::parse("p").unwrap();
    /// store.set(&p, "k", b"\x20\x01".to_vec().into(), None).await.unwrap();
    /// let cut = store.backup_cut().await.unwrap();
    /// assert!(!cut.files().is_empty());
    /// assert_eq!(cut.versions(), &[(p, 1)]);
    /// # drop(cut);
    /// # store.close().await.unwrap();
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`EngineError::Storage`] when the segment cannot be switched or the
    /// files linked; [`EngineError::WritesStopped`] while writes are.
    pub async fn backup_cut(&self) -> Result<BackupCut, EngineError> {
        match self.send(Change::Cut).await? {
            Answer::Cut(cut) => Ok(cut),
            Answer::Txn(_) | Answer::Expired | Answer::Admin(_) => Err(EngineError::Internal(
                "the log writer answered a backup cut with another result",
            )),
        }
    }

    /// Client writes waiting for the log writer, and their bytes.
    pub fn write_queue(&self) -> QueueStats {
        self.queue.stats()
    }

    /// Why writes are refused, while they are: a fsync of the log failed
    /// and the log has not been re-verified yet (see
    /// [`EngineError::WritesStopped`]). Reads are served meanwhile.
    pub fn writes_stopped(&self) -> Option<Arc<str>> {
        self.queue.stopped()
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
        self.enqueue(change)?.await.map_err(|_| closed())?
    }

    /// Hands `change` to the writer now. Client transactions wait in their
    /// project's lane of the bounded queue (see [`crate::MAX_QUEUED_WRITES`]
    /// and [`LogOptions::max_queued_bytes`]); expiries and admin changes
    /// are not bounded: they are the server's own, few, and must not be
    /// lost to a busy queue.
    fn enqueue(
        &self,
        change: Change,
    ) -> Result<oneshot::Receiver<Result<Answer, EngineError>>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let bytes = change.approx_len();
        let project = change.project().cloned();
        let submission = Submission { change, reply };
        match (&submission.change, project) {
            (Change::Txn { .. }, Some(project)) => {
                self.queue.push(&project, bytes, submission, closed)?;
            }
            (_, project) => {
                self.queue
                    .push_system(project.as_ref(), bytes, submission, closed)?;
            }
        }
        Ok(answer)
    }

    /// Writes everything pending, fsyncs, and stops the writer. Later
    /// writes fail with [`EngineError::Storage`].
    ///
    /// # Errors
    ///
    /// The final flush or fsync failed.
    pub async fn close(&self) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.queue.close(Some(reply));
        // No answer: the writer had already stopped (a second close).
        let flushed = answer.await.unwrap_or(Ok(()));
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

impl Drop for DurableStore {
    fn drop(&mut self) {
        // Without a close: the writer still logs everything queued, then
        // stops on its own.
        self.queue.close(None);
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

    async fn get_many<K: AsRef<str> + Sync>(
        &self,
        project: &ProjectName,
        keys: &[K],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        Ok(self.mem.entries_now(project, keys))
    }

    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.mem.has_now(project, key))
    }

    async fn get_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> Result<Option<Option<Entry>>, EngineError> {
        Ok(self.mem.entry_in(project, incarnation, key))
    }

    async fn get_with<T, F>(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
        read: F,
    ) -> Result<Option<T>, EngineError>
    where
        T: Send,
        F: FnOnce(Option<crate::EntryView<'_>>) -> T + Send,
    {
        Ok(self.mem.entry_with(project, incarnation, key, read))
    }

    async fn has_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> Result<Option<bool>, EngineError> {
        Ok(self.mem.has_in(project, incarnation, key))
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

    fn submit(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> impl Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static {
        let change = Change::Txn {
            project: project.clone(),
            txn,
        };
        // Queued here, before the future exists: see the trait's ordering.
        let queued = self.enqueue(change);
        async move {
            match queued?.await.map_err(|_| closed())?? {
                Answer::Txn(outcome) => Ok(outcome),
                Answer::Expired | Answer::Admin(_) | Answer::Cut(_) => Err(EngineError::Internal(
                    "the log writer answered a write with a catalog result",
                )),
            }
        }
    }

    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Subscription, WatchError>> + Send {
        // Subscribed before this returns, like a write is queued.
        std::future::ready(self.mem.subscribe(project, target, from_version))
    }

    fn incarnation(&self, project: &ProjectName) -> u64 {
        self.mem.incarnation(project)
    }

    fn clock(&self) -> Arc<dyn crate::Clock> {
        Arc::clone(self.mem.clock())
    }

    async fn expire_due(&self, limit: usize) -> usize {
        let due = self.mem.take_due(limit);
        let consumed = due.len();
        // Expiries are changes like any other: logged, versioned and
        // published by the writer, each project's in its order. If it cannot
        // log them, the entries stay invisible (reads check deadlines) and a
        // restart drops them.
        let mut by_project: Vec<Vec<crate::memory::expiry::Due>> = Vec::new();
        for due in due {
            match by_project.iter_mut().find(|d| d[0].project == due.project) {
                Some(same) => same.push(due),
                None => by_project.push(vec![due]),
            }
        }
        let sent: Vec<_> = by_project
            .into_iter()
            .map(|due| self.enqueue(Change::Expire(due)))
            .collect();
        for answer in sent {
            let logged = match answer {
                Ok(answer) => answer.await.map_err(|_| closed()).and_then(|a| a),
                Err(e) => Err(e),
            };
            if let Err(e) = logged {
                tracing::warn!("could not log expiries: {e}");
            }
        }
        consumed
    }
}
