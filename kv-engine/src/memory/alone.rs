//! The store used alone (without a log): its own writer, under a lock,
//! and the [`Backend`] it serves.

use super::*;
use crate::EntryView;
use crate::txn::{Evaluated, Overlay};

impl MemoryStore {
    /// Removes up to `limit` entries whose deadline has passed and returns
    /// how many index records it consumed (so the caller can tell whether
    /// more are due). Work is proportional to what expired.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{memory::MemoryStore, Deadline, ManualClock, Mutation};
    /// use kv_engine::project::ProjectName;
    ///
    /// let clock = Arc::new(ManualClock::new(1_000));
    /// let store = MemoryStore::with_clock(clock.clone());
    /// let p = ProjectName::parse("p").unwrap();
    /// let value = b"\x20\x01".to_vec().into_boxed_slice();
    /// store.apply(&p, Mutation::Set { key: "k".into(), value, expires_at: Deadline::at(1_500) });
    /// clock.advance(500);
    /// assert_eq!(store.stored_entries(), 1); // invisible, not yet reclaimed
    /// store.purge_expired(1024);
    /// assert_eq!(store.stored_entries(), 0);
    /// ```
    pub fn purge_expired(&self, limit: usize) -> usize {
        let due = self.take_due(limit);
        let consumed = due.len();
        let _writer = lock(&self.write_lock);
        let mut overlay = Overlay::default();
        for due in due {
            if let Some(expire) = overlay.expire(self, &due, self.clock.now_ms()) {
                self.apply_expiries(&due.project, vec![expire]);
            }
        }
        consumed
    }

    /// Evaluates and applies `txn` under the store's own write lock (the
    /// store used alone; the durable store evaluates in its log writer).
    ///
    /// # Errors
    ///
    /// [`EngineError`] when an operation is refused; nothing is applied.
    pub fn write_now(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> Result<Arc<TxnOutcome>, EngineError> {
        let _writer = lock(&self.write_lock);
        let mut overlay = Overlay::default();
        let now = self.clock.now_ms();
        match overlay.evaluate(self, project, txn, now, crate::Quota::default())? {
            Evaluated::Replay(outcome) => Ok(outcome),
            Evaluated::Commit(mut commit) => {
                let request = commit.remembered(now);
                self.apply_commit(project, commit.mutations, request);
                Ok(commit.outcome)
            }
        }
    }
}

impl Backend for MemoryStore {
    async fn get(&self, project: &ProjectName, key: &str) -> Result<Option<Entry>, EngineError> {
        Ok(self.entry_now(project, key))
    }

    async fn get_many<K: AsRef<str> + Sync>(
        &self,
        project: &ProjectName,
        keys: &[K],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        Ok(self.entries_now(project, keys))
    }

    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.has_now(project, key))
    }

    async fn get_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> Result<Option<Option<Entry>>, EngineError> {
        Ok(self.entry_in(project, incarnation, key))
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
        F: FnOnce(Option<EntryView<'_>>) -> T + Send,
    {
        Ok(self.entry_with(project, incarnation, key, read))
    }

    async fn has_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> Result<Option<bool>, EngineError> {
        Ok(MemoryStore::has_in(self, project, incarnation, key))
    }

    async fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        Ok(self.list_now(project, query))
    }

    fn submit(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> impl std::future::Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static
    {
        // Applied before this returns: the store used alone has no queue.
        std::future::ready(self.write_now(project, txn))
    }

    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> impl std::future::Future<Output = Result<Subscription, WatchError>> + Send {
        // Subscribed before this returns, like a write is queued.
        std::future::ready(self.subscribe(project, target, from_version))
    }

    async fn expire_due(&self, limit: usize) -> usize {
        self.purge_expired(limit)
    }

    fn incarnation(&self, project: &ProjectName) -> u64 {
        MemoryStore::incarnation(self, project)
    }

    fn clock(&self) -> std::sync::Arc<dyn crate::Clock> {
        std::sync::Arc::clone(MemoryStore::clock(self))
    }
}
