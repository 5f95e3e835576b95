//! The changes a recovery need not publish into the change histories
//! (found by the log's scan, `wal::scan`, which says why skipping them
//! leaves every ring as a full replay does).

use std::collections::HashMap;

use crate::{Settings, project::ProjectName};

/// The changes each project's history need not be given during a replay.
#[derive(Debug, Default)]
pub(crate) struct Horizons {
    /// Per project, the newest version that is not published (only
    /// projects logging more changes than a ring holds).
    pub(crate) through: HashMap<ProjectName, u64>,
    /// The most bytes the log's changes can make all rings hold together
    /// (see `wal::scan`).
    pub(crate) ring_bytes: u64,
}

impl Horizons {
    /// Whether skipping leaves the rings exactly as a full replay does:
    /// the rings restored before the log (`restored` bytes) and what the
    /// log's changes can add never reach the shared budget.
    pub(crate) fn fits(&self, restored: usize, settings: &Settings) -> bool {
        (restored as u64).saturating_add(self.ring_bytes)
            <= settings.watch_history_total_bytes as u64
    }

    /// The newest version of `project` not to publish (0: publish all).
    pub(crate) fn through(&self, project: &ProjectName) -> u64 {
        self.through.get(project).copied().unwrap_or(0)
    }
}
