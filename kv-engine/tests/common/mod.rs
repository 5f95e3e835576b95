//! What the engine's model tests share.

use std::{path::Path, sync::Arc};

use kv_engine::{
    ManualClock, Settings,
    wal::{DurableStore, FsyncPolicy, LogOptions},
};

/// Opens (or reopens) a durable store in `dir` that snapshots early and
/// often, so restarts load snapshots as well as segments. No fsync: the
/// model tests restart the store, not the machine.
pub(crate) fn open_churning(
    dir: &Path,
    clock: &Arc<ManualClock>,
    settings: Settings,
) -> DurableStore {
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        snapshot_min_log_bytes: 256,
        ..LogOptions::default()
    };
    DurableStore::open_with(dir, options, clock.clone(), settings).expect("opens")
}
