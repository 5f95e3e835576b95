//! Change histories across a restart: what a snapshot writes of each
//! project's ring, and how loading one restores it.

use super::*;

/// One project's ring as a snapshot writes it.
pub(crate) struct Window<'a> {
    /// The project.
    pub(crate) project: &'a ProjectName,
    /// Its incarnation: a ring restored only into the same incarnation.
    pub(crate) incarnation: u64,
    /// The newest version the ring no longer holds.
    pub(crate) floor: u64,
    /// The events after `floor`, in version order.
    pub(crate) events: &'a [Arc<Event>],
}

impl MemoryStore {
    /// Calls `f` with the change history of every live project, one at a
    /// time, each as of one moment (events are shared with the ring, not
    /// copied), and returns how many events there were.
    ///
    /// # Errors
    ///
    /// The first error `f` returns, which stops the walk.
    pub(crate) fn for_each_history<E>(
        &self,
        mut f: impl FnMut(Window<'_>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut count = 0;
        for (project, ns) in self.live_namespaces() {
            let Some((floor, events)) = ns.hub.window() else {
                continue;
            };
            count += events.len() as u64;
            f(Window {
                project: &project,
                incarnation: ns.incarnation,
                floor,
                events: &events,
            })?;
        }
        Ok(count)
    }

    /// Restarts `project`'s history as holding nothing after `floor`
    /// (loading a snapshot's ring), if the project is still incarnation
    /// `incarnation`; a snapshot's ring of another incarnation is ignored.
    /// Returns whether it was restored.
    pub(crate) fn restore_history(
        &self,
        project: &ProjectName,
        incarnation: u64,
        floor: u64,
    ) -> bool {
        if self.incarnation(project) != incarnation {
            return false;
        }
        let ns = self.namespace_or_create(project);
        ns.hub.restore(floor, &self.history);
        // Versions never go back, whatever the snapshot's counters said.
        ns.version.fetch_max(floor, Ordering::AcqRel);
        true
    }

    /// Appends an event of a snapshot's ring to `project`'s history (after
    /// [`MemoryStore::restore_history`]), bounded as live changes are.
    pub(crate) fn restore_history_event(
        &self,
        project: &ProjectName,
        incarnation: u64,
        event: Event,
    ) {
        let Some(ns) = self
            .namespace(project)
            .filter(|ns| ns.incarnation == incarnation)
        else {
            return;
        };
        ns.version.fetch_max(event.version, Ordering::AcqRel);
        ns.hub.restore_event(event, &self.settings, &self.history);
    }

    /// `project`'s history as (floor, versions held), for tests.
    #[cfg(test)]
    pub(crate) fn history_window(&self, project: &ProjectName) -> Option<(u64, Vec<u64>)> {
        let ns = self.namespace(project)?;
        let (floor, events) = ns.hub.window()?;
        Some((floor, events.iter().map(|e| e.version).collect()))
    }
}
