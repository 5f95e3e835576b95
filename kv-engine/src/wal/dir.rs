//! The data directory: file names, creating segments durably,
//! removing what a snapshot replaced.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::Path,
};

use super::codec;

/// File name of segment `seq`.
pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// File name of the snapshot holding every segment before `seq`.
pub(super) fn snapshot_name(seq: u64) -> String {
    format!("{seq:020}.snap")
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn remove_file_logged(path: &Path, why: &str) {
    match fs::remove_file(path) {
        Ok(()) => tracing::info!(file = %path.display(), "removed {why}"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), "could not remove {why}: {e}"),
    }
}

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// What kind of file a data-directory name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Segment,
    Snapshot,
    Temp,
}

/// Parses `<20 digits>.log`, `.snap` or `.snap.tmp`.
pub(super) fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let (digits, kind) = if let Some(d) = name.strip_suffix(".snap.tmp") {
        (d, Kind::Temp)
    } else if let Some(d) = name.strip_suffix(".snap") {
        (d, Kind::Snapshot)
    } else if let Some(d) = name.strip_suffix(".log") {
        (d, Kind::Segment)
    } else {
        return None;
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, kind))
}

/// Creates segment `seq` with its header, durably (file and directory).
pub(super) fn create_segment(dir: &std::path::Path, seq: u64) -> io::Result<File> {
    let path = dir.join(segment_name(seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let written = file
        .write_all(&codec::file_header(codec::LOG_MAGIC))
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = written {
        // Leave no half-made segment behind to confuse a recovery.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Removes the segments and snapshots a durable snapshot at `base` makes
/// redundant.
pub(super) fn remove_older(dir: &Path, base: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_name(name) {
            Some((seq, Kind::Segment)) if seq < base => {
                remove_file_logged(&entry.path(), "segment replaced by a snapshot")
            }
            Some((seq, Kind::Snapshot)) if seq < base => {
                remove_file_logged(&entry.path(), "older snapshot")
            }
            _ => {}
        }
    }
    if let Err(e) = sync_dir(dir) {
        tracing::warn!("could not sync the data directory: {e}");
    }
}
