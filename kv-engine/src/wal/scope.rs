//! Narrowing a backup cut to one project: the same files, keeping only the
//! records of that project (its data, versions, incarnations, history,
//! remembered requests, catalog entry, quota and tokens).

use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufReader, BufWriter, Write},
    path::PathBuf,
};

use super::{
    codec::{self, Record},
    cut::BackupCut,
    frame::{self, FrameReader},
};
use crate::{catalog::CatalogChange, project::ProjectName};

impl BackupCut {
    /// This cut narrowed to `project`: each file rewritten beside the
    /// originals with that project's records only, so the files restore
    /// to a server holding that project alone, exactly as it was at the
    /// cut. Blocking: reads and writes files.
    ///
    /// # Errors
    ///
    /// Reading or writing failed, or a record does not decode (the files
    /// were damaged on disk since they were logged).
    pub fn only(mut self, project: &ProjectName) -> io::Result<Self> {
        let dir = self.dir().join("scoped");
        std::fs::create_dir(&dir)?;
        let mut tokens = HashSet::new();
        let mut files = Vec::new();
        for (name, path) in self.files() {
            let target = dir.join(name);
            filter_file(path, &target, name.ends_with(".snap"), project, &mut tokens)
                .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
            files.push((name.clone(), target));
        }
        self.narrow(files, project);
        Ok(self)
    }
}

fn filter_file(
    from: &PathBuf,
    to: &PathBuf,
    snapshot: bool,
    project: &ProjectName,
    tokens: &mut HashSet<String>,
) -> io::Result<()> {
    let magic = if snapshot {
        codec::SNAPSHOT_MAGIC
    } else {
        codec::LOG_MAGIC
    };
    let file = File::open(from)?;
    let len = file.metadata()?.len();
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut reader = FrameReader::open(BufReader::with_capacity(1 << 20, file), len, magic)
        .map_err(|e| invalid(e.to_string()))?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create_new(to)?);
    out.write_all(&codec::file_header(magic))?;
    let mut payload = Vec::new();
    let mut framed = Vec::new();
    let mut entries = 0u64;
    while reader
        .next_into(&mut payload)
        .map_err(|e| invalid(e.to_string()))?
    {
        let at = reader.offset();
        let record = codec::decode_payload(&payload)
            .map_err(|e| invalid(format!("record before offset {at}: {e}")))?;
        framed.clear();
        match record {
            Record::End { .. } => codec::encode_end(&mut framed, entries),
            record => {
                let Some(keep) = keeps(&record, project, tokens) else {
                    continue;
                };
                entries += keep;
                frame::frame(&mut framed, |p| p.extend_from_slice(&payload));
            }
        }
        out.write_all(&framed)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Whether `record` belongs to `project`, and if so how many snapshot
/// entries it counts for (as loading counts them).
fn keeps(record: &Record, project: &ProjectName, tokens: &mut HashSet<String>) -> Option<u64> {
    let (of, entries) = match record {
        Record::Mutation { project, .. } => (project, 1),
        Record::Txn {
            project, mutations, ..
        } => (project, mutations.len() as u64),
        Record::Version { project, .. }
        | Record::Incarnation { project, .. }
        | Record::Retired { project, .. }
        | Record::History { project, .. }
        | Record::HistoryEvent { project, .. } => (project, 0),
        Record::Catalog(change) => match change {
            CatalogChange::PutProject { project, .. }
            | CatalogChange::DeleteProject { project } => (project, 0),
            CatalogChange::PutToken(meta) => {
                if meta.project != *project {
                    return None;
                }
                tokens.insert(meta.id.clone());
                return Some(0);
            }
            CatalogChange::RevokeToken { id } => return tokens.remove(id).then_some(0),
        },
        Record::End { .. } => return None,
    };
    (of == project).then_some(entries)
}
