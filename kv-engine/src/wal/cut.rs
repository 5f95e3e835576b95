//! A point-in-time cut of the log, for online backups.
//!
//! The writer is the only thread that logs and applies changes. Asked for a
//! cut, it finishes the group in hand, closes the current segment (synced)
//! and starts the next one; the newest complete snapshot plus every segment
//! after it up to the closed one are then exactly the state after the last
//! group before the cut: the same files a recovery would read. It
//! hard-links them into a private directory, so a snapshot finishing later
//! cannot remove them while they are copied, and notes each project's
//! version at that moment. Nothing is written or waited for besides the
//! one segment switch: writes go on while the files are read.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::dir::{Kind, parse_name, segment_name, snapshot_name};
use crate::project::ProjectName;

/// Prefix of the private directories holding a cut's links.
const CUT_DIR_PREFIX: &str = "backup-cut-";

/// The files holding the state at one cut, kept alive until dropped.
#[derive(Debug)]
pub struct BackupCut {
    dir: PathBuf,
    files: Vec<(String, PathBuf)>,
    seq: u64,
    versions: Vec<(ProjectName, u64)>,
    project: Option<ProjectName>,
}

impl BackupCut {
    /// The one project the files hold, when narrowed to one
    /// ([`BackupCut::only`]); `None`: the whole server.
    pub fn project(&self) -> Option<&ProjectName> {
        self.project.as_ref()
    }

    /// The private directory of the links.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the files with ones holding `project` alone.
    pub(super) fn narrow(&mut self, files: Vec<(String, PathBuf)>, project: &ProjectName) {
        self.files = files;
        self.versions.retain(|(p, _)| p == project);
        self.project = Some(project.clone());
    }

    /// Each file's data-directory name and the path to read it from, the
    /// snapshot (if any) first, then the segments in order.
    pub fn files(&self) -> &[(String, PathBuf)] {
        &self.files
    }

    /// The log position of the cut: the state is every record of the
    /// segments before this one.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Each live project's version at the cut: every change a project got
    /// a version up to this for is in the files, and no later one.
    pub fn versions(&self) -> &[(ProjectName, u64)] {
        &self.versions
    }
}

impl Drop for BackupCut {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "could not remove a backup's links: {e}");
        }
    }
}

/// Links the files holding every segment before `seq` (the newest complete
/// snapshot and the segments from its base on) into a fresh directory.
/// Called by the writer right after it started segment `seq`.
pub(super) fn link(
    data_dir: &Path,
    seq: u64,
    versions: Vec<(ProjectName, u64)>,
) -> io::Result<BackupCut> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = data_dir.join(format!("{CUT_DIR_PREFIX}{seq:020}-{nanos}"));
    fs::create_dir(&dir)?;
    let mut cut = BackupCut {
        dir,
        files: Vec::new(),
        seq,
        versions,
        project: None,
    };
    // A snapshot finishing meanwhile removes the segments it replaces: then
    // the listing is stale and is taken again (the new snapshot is there).
    let mut tries = 0;
    loop {
        match link_once(data_dir, &mut cut) {
            Ok(()) => return Ok(cut),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 => {
                tries += 1;
                for (_, path) in cut.files.drain(..) {
                    let _ = fs::remove_file(path);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn link_once(data_dir: &Path, cut: &mut BackupCut) -> io::Result<()> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        match entry.file_name().to_str().and_then(parse_name) {
            Some((s, Kind::Snapshot)) if s <= cut.seq => snapshots.push(s),
            Some((s, Kind::Segment)) if s < cut.seq => segments.push(s),
            _ => {}
        }
    }
    let base = snapshots.iter().copied().max();
    segments.retain(|s| base.is_none_or(|b| *s >= b));
    segments.sort_unstable();
    let names = base
        .map(snapshot_name)
        .into_iter()
        .chain(segments.into_iter().map(segment_name));
    for name in names {
        let target = cut.dir.join(&name);
        fs::hard_link(data_dir.join(&name), &target)?;
        cut.files.push((name, target));
    }
    Ok(())
}

/// Removes the links of backups a stopped server left behind.
pub(super) fn remove_stale(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(CUT_DIR_PREFIX)) {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed a stale backup's links")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), "could not remove a stale backup's links: {e}")
                }
            }
        }
    }
}
