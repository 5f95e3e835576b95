//! Remembering request ids and their outcomes, for retries.

use super::*;

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
    pub(crate) fn for_each_remembered<E>(
        &self,
        mut f: impl FnMut(&ProjectName, &str, &Remembered) -> Result<(), E>,
    ) -> Result<(), E> {
        let now = self.clock.now_ms();
        for (project, ns) in self.live_namespaces() {
            // Copied out first: `f` writes a file, and the writer must not
            // wait on that to remember a new request of this project.
            let Some(cold) = ns.cold_if_made() else {
                continue;
            };
            let live: Vec<(Arc<str>, Remembered)> = lock(&cold.requests)
                .iter()
                .flat_map(|table| table.by_id.iter())
                .filter(|(_, r)| r.at.saturating_add(self.settings.idempotency_window_ms) > now)
                .map(|(id, r)| (id.clone(), r.clone()))
                .collect();
            for (id, r) in &live {
                f(&project, id, r)?;
            }
        }
        Ok(())
    }
}
