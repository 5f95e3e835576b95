//! Remembering request ids and their outcomes, for retries.

use super::*;

/// Remembered ids a snapshot's walk copies under one hold of a project's
/// request table (see [`MemoryStore::for_each_remembered`]).
pub(super) const REMEMBERED_RUN: usize = 4096;

impl MemoryStore {
    /// The remembered outcome of request `id`, if within the window.
    pub(crate) fn remembered(
        &self,
        project: &ProjectName,
        id: &str,
        now: u64,
    ) -> Option<Remembered> {
        let ns = self.namespace(project)?;
        let table = lock(&ns.cold_if_made()?.requests);
        table
            .as_ref()?
            .by_id
            .get(id)
            .filter(|r| r.at.saturating_add(self.settings.idempotency_window_ms) > now)
            .cloned()
    }

    /// Remembers the outcome of request `id` (replay and the writer).
    pub(crate) fn remember(&self, project: &ProjectName, id: Arc<str>, remembered: Remembered) {
        let now = self.clock.now_ms();
        if remembered
            .at
            .saturating_add(self.settings.idempotency_window_ms)
            <= now
        {
            return;
        }
        let ns = self.namespace_or_create(project);
        lock(&ns.cold().requests)
            .get_or_insert_with(Box::default)
            .insert(id, remembered, now, &self.settings);
    }

    /// Calls `f` with every remembered request id still in its window.
    ///
    /// A project's table is copied [`REMEMBERED_RUN`] ids at a time, each
    /// run under its own short hold of the lock, and `f` (which writes a
    /// file) is called with none held. The writer takes that lock for
    /// every write carrying a request id, and a busy project remembers up
    /// to `idempotency_max_ids` (100 000 by default): copied whole, the
    /// table held the writer, and so every write, for tens of
    /// milliseconds at each snapshot's start. The walk is fuzzy like the
    /// entries' walk: an id remembered meanwhile may be missed, but it is
    /// in the log after the snapshot's base, which replays it.
    pub(crate) fn for_each_remembered<E>(
        &self,
        mut f: impl FnMut(&ProjectName, &str, &Remembered) -> Result<(), E>,
    ) -> Result<(), E> {
        let now = self.clock.now_ms();
        let window = self.settings.idempotency_window_ms;
        let mut live: Vec<(Arc<str>, Remembered)> = Vec::new();
        for (project, ns) in self.live_namespaces() {
            let Some(cold) = ns.cold_if_made() else {
                continue;
            };
            // Where the walk is in the table's order of arrival, counted
            // from the table's first id ever (see `RequestTable::evicted`).
            let mut next: u64 = 0;
            loop {
                live.clear();
                let done = {
                    let guard = lock(&cold.requests);
                    let Some(table) = guard.as_deref() else {
                        break;
                    };
                    let len = table.order.len();
                    let start = usize::try_from(next.saturating_sub(table.evicted))
                        .unwrap_or(usize::MAX)
                        .min(len);
                    let end = start.saturating_add(REMEMBERED_RUN).min(len);
                    // An id remembered again since sits later in the order
                    // too: only its latest arrival (the `at` the table
                    // holds) is taken, so each id is written once.
                    live.extend(table.order.range(start..end).filter_map(|(at, id)| {
                        table
                            .by_id
                            .get(id)
                            .filter(|r| r.at == *at && r.at.saturating_add(window) > now)
                            .map(|r| (id.clone(), r.clone()))
                    }));
                    next = table.evicted + end as u64;
                    end == len
                };
                for (id, r) in &live {
                    f(&project, id, r)?;
                }
                if done {
                    break;
                }
            }
        }
        live.clear();
        Ok(())
    }
}
