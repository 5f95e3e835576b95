//! The one way into a storage engine.

use std::{future::Future, sync::Arc};

use crate::{
    EngineError, Entry, EntryView, ListPage, ListQuery, Op, OpOutcome, Ttl, Txn, TxnOutcome,
    WatchError, WatchTarget, project::ProjectName, watch::Subscription,
};

/// Most client transactions a backend queues ahead of its writer; past
/// it, [`Backend::submit`] refuses with [`EngineError::Overloaded`]. About
/// a second of writes at the log writer's measured peak, so a burst is
/// absorbed and a sustained overload is refused within a second. The
/// durable store also bounds the queue's bytes
/// ([`crate::wal::LogOptions::max_queued_bytes`]) and lets one project
/// fill at most half of either bound.
pub const MAX_QUEUED_WRITES: usize = 65_536;

/// A storage engine holding every project's keys.
///
/// Keys arrive validated (non-empty UTF-8 within the configured size), values
/// as canonical encoded `google.protobuf.Value` bytes (see [`crate::value`]).
/// Every write goes through [`Backend::submit`]: one [`Txn`] of checks and
/// operations, evaluated against the current state and applied all or
/// nothing, one transaction after another (so read-modify-write operations
/// such as increments never lose updates).
///
/// ```
/// use kv_engine::{Backend, memory::MemoryStore};
/// use kv_engine::project::ProjectName;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let shop = ProjectName::parse("shop").unwrap();
/// store.set(&shop, "k", b"\x08\x00".to_vec().into(), None).await.unwrap();
/// assert!(store.has(&shop, "k").await.unwrap());
/// assert_eq!(store.get(&shop, "k").await.unwrap().unwrap().version, 1);
/// # });
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The live entry under `key`, or `None` when missing or expired.
    fn get(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<Option<Entry>, EngineError>> + Send;

    /// [`Backend::get`] of a call admitted to incarnation `incarnation` of
    /// `project`: `None` when the project is no longer that incarnation
    /// (deleted, or created again), so nothing of a successor is answered.
    ///
    /// The default reads, then compares the incarnation; a backend that
    /// can tell which incarnation it read from answers with one lookup of
    /// the project.
    ///
    /// ```
    /// use kv_engine::{Backend, memory::MemoryStore};
    /// use kv_engine::project::ProjectName;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let p = ProjectName::parse("p").unwrap();
    /// store.set(&p, "k", b"\x08\x00".to_vec().into(), None).await.unwrap();
    /// assert!(store.get_in(&p, 0, "k").await.unwrap().unwrap().is_some());
    /// store.delete_project(&p);
    /// assert_eq!(store.get_in(&p, 0, "k").await.unwrap(), None);
    /// # });
    /// ```
    fn get_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> impl Future<Output = Result<Option<Option<Entry>>, EngineError>> + Send {
        async move {
            let entry = self.get(project, key).await?;
            Ok((self.incarnation(project) == incarnation).then_some(entry))
        }
    }

    /// [`Backend::get_in`] that lends the live entry (or `None`) to `read`
    /// instead of copying its value out: a reply can be written straight
    /// from where the store keeps it. `read` runs only when the project is
    /// still incarnation `incarnation` (otherwise the outer `None`); it
    /// should be quick, as a backend may hold a lock of the entry while it
    /// runs.
    ///
    /// The default reads with [`Backend::get_in`] and lends that copy.
    ///
    /// ```
    /// use kv_engine::{Backend, memory::MemoryStore};
    /// use kv_engine::project::ProjectName;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let p = ProjectName::parse("p").unwrap();
    /// store.set(&p, "k", b"\x08\x00".to_vec().into(), None).await.unwrap();
    /// let mut copied = Vec::new();
    /// let read = store.get_with(&p, 0, "k", |entry| {
    ///     copied.extend_from_slice(entry.map_or(&[][..], |e| e.value));
    /// });
    /// assert_eq!(read.await.unwrap(), Some(()));
    /// assert_eq!(copied, b"\x08\x00");
    /// # });
    /// ```
    fn get_with<T, F>(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
        read: F,
    ) -> impl Future<Output = Result<Option<T>, EngineError>> + Send
    where
        T: Send,
        F: FnOnce(Option<EntryView<'_>>) -> T + Send,
    {
        async move {
            let entry = self.get_in(project, incarnation, key).await?;
            Ok(entry.map(|entry| read(entry.as_ref().map(Entry::view))))
        }
    }

    /// [`Backend::has`] of a call admitted to incarnation `incarnation`,
    /// as [`Backend::get_in`]: `None` when the project is no longer it.
    fn has_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> impl Future<Output = Result<Option<bool>, EngineError>> + Send {
        async move {
            let exists = self.has(project, key).await?;
            Ok((self.incarnation(project) == incarnation).then_some(exists))
        }
    }

    /// The live entries under `keys`, in order, as of one moment (no
    /// transaction is seen half applied). Keys may be `String`s or `&str`s
    /// borrowed from a request.
    fn get_many<K: AsRef<str> + Sync>(
        &self,
        project: &ProjectName,
        keys: &[K],
    ) -> impl Future<Output = Result<Vec<Option<Entry>>, EngineError>> + Send;

    /// Whether `key` is present and unexpired.
    fn has(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send;

    /// One page of live keys in byte order.
    fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> impl Future<Output = Result<ListPage, EngineError>> + Send;

    /// Submits `txn`, to be evaluated and applied atomically; the future
    /// resolves with its outcome once it is applied (and, for a durable
    /// backend, logged).
    ///
    /// # Ordering
    ///
    /// The transaction is queued before this call returns, not when the
    /// returned future is first polled. So of two `submit` calls for the
    /// same project made one after the other on one thread, awaited or
    /// not, the first is evaluated and applied first: a stream that submits
    /// its writes in the order it received them applies them in that
    /// order. Writes of different projects may be reordered (the durable
    /// store serves projects round-robin, so one cannot starve another).
    /// The future holds no borrow of the backend.
    ///
    /// # Backpressure
    ///
    /// The queue is bounded ([`MAX_QUEUED_WRITES`], and by bytes in the
    /// durable store). When it is full the future resolves at once with
    /// [`EngineError::Overloaded`] (or [`EngineError::QueueFull`]) and
    /// nothing is applied: load shows as refusals to retry, never as memory
    /// growth.
    fn submit(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> impl Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static;

    /// Subscribes to the changes of `project` matching `target`, from just
    /// after `from_version` (or from now).
    ///
    /// # Errors
    ///
    /// [`WatchError`] when `from_version` is outside the retained history.
    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> impl Future<Output = Result<Subscription, WatchError>> + Send;

    /// Removes up to `limit` entries whose deadline has passed (each an
    /// expiry event) and returns how many due deadlines it consumed.
    fn expire_due(&self, limit: usize) -> impl Future<Output = usize> + Send;

    /// The current incarnation of `project`: 0 for the first project of a
    /// name; after a deletion, a number above every version the deleted
    /// project used. Reads compare it before and after, writes carry it in
    /// [`Txn::incarnation`], and streams re-check it, so nothing of one
    /// incarnation reaches a caller admitted for another.
    fn incarnation(&self, project: &ProjectName) -> u64;

    /// The clock the backend judges time by (deadlines, TTLs): the service
    /// reads the same one for anything timed in front of it (rate-limit
    /// windows), so a test's manual clock governs both.
    fn clock(&self) -> Arc<dyn crate::Clock> {
        Arc::new(crate::SystemClock)
    }

    /// Stores `value` under `key`, expiring `ttl_ms` milliseconds from now,
    /// or never when `None` (which also drops any earlier TTL).
    fn set(
        &self,
        project: &ProjectName,
        key: &str,
        value: Box<[u8]>,
        ttl_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        let ttl = ttl_ms.map_or(Ttl::Never, Ttl::After);
        let txn = Txn::op(Op::Set {
            key: key.into(),
            value,
            ttl,
        });
        let submitted = self.submit(project, txn);
        async move { submitted.await.map(|_| ()) }
    }

    /// Removes `key`; true only when a live key was removed.
    fn delete(
        &self,
        project: &ProjectName,
        key: &str,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send {
        let submitted = self.submit(project, Txn::op(Op::Delete { key: key.into() }));
        async move {
            let outcome = submitted.await?;
            Ok(matches!(
                outcome.results.first(),
                Some(OpOutcome::Delete { deleted: true, .. })
            ))
        }
    }

    /// Removes every key of `project`; returns how many live keys it removed.
    fn clear(
        &self,
        project: &ProjectName,
    ) -> impl Future<Output = Result<u64, EngineError>> + Send {
        let submitted = self.submit(project, Txn::op(Op::Clear));
        async move {
            let outcome = submitted.await?;
            Ok(match outcome.results.first() {
                Some(OpOutcome::Clear { removed, .. }) => *removed,
                _ => 0,
            })
        }
    }
}
