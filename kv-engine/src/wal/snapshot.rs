//! Writing a snapshot: stream memory out, make it durable, then drop the
//! segments it replaces.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::Path,
};

use super::{
    codec,
    dir::{remove_older, snapshot_name, sync_dir},
};
use crate::{
    catalog::Catalog,
    memory::MemoryStore,
    stats::{LogStats, nanos_since},
};

/// Bytes of a snapshot written between two fsyncs of it while it is
/// written. The log's fsync commits the filesystem's journal, and a
/// commit first writes out the data of other files it covers; a snapshot
/// synced only at its end can leave a hundred megabytes dirty for some
/// log fsync to wait behind (every durable write then stalls). Syncing as
/// it goes bounds that wait to about this much data, as Redis does for
/// its own rewrites.
const SYNC_EVERY: u64 = 4 << 20;

/// The snapshot file, synced every [`SYNC_EVERY`] bytes.
struct Syncing {
    file: File,
    unsynced: u64,
}

impl Write for Syncing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes the snapshot `<base>.snap` from `mem`, whose state includes every
/// record of the segments before `base`, then removes those segments and
/// older snapshots. Failures are logged: the older files stay, so a
/// recovery still finds everything. True when the snapshot is durable.
pub(super) fn write(
    dir: &Path,
    mem: &MemoryStore,
    catalog: &Catalog,
    base: u64,
    stats: &LogStats,
) -> bool {
    let started = std::time::Instant::now();
    tracing::info!(snapshot = base, "snapshot started");
    match write_file(dir, mem, catalog, base) {
        Ok(count) => {
            let bytes = fs::metadata(dir.join(snapshot_name(base))).map_or(0, |m| m.len());
            stats.snapshot_written(bytes, nanos_since(started));
            tracing::info!(
                snapshot = base,
                entries = count,
                took_ms = started.elapsed().as_millis() as u64,
                "snapshot written"
            );
            remove_older(dir, base);
            true
        }
        Err(e) => {
            stats
                .snapshot_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(snapshot = base, "snapshot failed, the log is kept: {e}");
            false
        }
    }
}

fn write_file(dir: &Path, mem: &MemoryStore, catalog: &Catalog, base: u64) -> io::Result<u64> {
    let name = snapshot_name(base);
    let tmp = dir.join(format!("{name}.tmp"));
    let result = (|| {
        let file = Syncing {
            file: File::create(&tmp)?,
            unsynced: 0,
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&codec::file_header(codec::SNAPSHOT_MAGIC))?;
        // One entry encoded at a time: memory stays bounded whatever the
        // data size.
        let mut record = Vec::new();
        // The catalog first, so loading meets projects before their data.
        for change in catalog.changes() {
            record.clear();
            codec::encode_catalog(&mut record, &change);
            out.write_all(&record)?;
        }
        // Deleted names and incarnations before counters and entries:
        // loading starts each incarnation afresh, then fills it.
        let (retired, incarnations) = mem.incarnations();
        for (project, last) in &retired {
            record.clear();
            codec::encode_retired(&mut record, project, *last);
            out.write_all(&record)?;
        }
        for (project, base) in &incarnations {
            record.clear();
            codec::encode_incarnation(&mut record, project, *base);
            out.write_all(&record)?;
        }
        // Version counters before entries: loading raises them first, so
        // no version is ever handed out twice, even for emptied projects.
        for (project, version) in mem.versions() {
            record.clear();
            codec::encode_version(&mut record, &project, version);
            out.write_all(&record)?;
        }
        // Each project's change history after its counter, before the
        // entries: the older segments go once this file is in place, so
        // the history window must be here for a watcher to resume across
        // a restart. Its events are collected after the counters, so a
        // history never ends below its project's counter.
        let events = mem.for_each_history(|window| {
            record.clear();
            codec::encode_history(
                &mut record,
                window.project,
                window.incarnation,
                window.floor,
            );
            out.write_all(&record)?;
            for event in window.events {
                record.clear();
                codec::encode_history_event(&mut record, window.project, window.incarnation, event);
                out.write_all(&record)?;
            }
            Ok::<(), io::Error>(())
        })?;
        tracing::debug!(snapshot = base, events, "history written");
        let count = mem.for_each_stored(|project, key, value, expires_at, version| {
            record.clear();
            codec::encode_entry(&mut record, project, key, value, expires_at, version);
            out.write_all(&record)
        })?;
        mem.for_each_remembered(|project, id, remembered| {
            record.clear();
            let request = Some((id, remembered.fingerprint, &*remembered.outcome));
            codec::encode_txn(&mut record, project, remembered.at, &[], request);
            out.write_all(&record)
        })?;
        record.clear();
        codec::encode_end(&mut record, count);
        out.write_all(&record)?;
        let file = out.into_inner().map_err(|e| e.into_error())?.file;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(&name))?;
        sync_dir(dir)?;
        Ok(count)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
