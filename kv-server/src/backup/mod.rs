//! Online backups: the file format, writing one from a cut of the log, and
//! reading one back with every byte checked.
//!
//! # Format (version 1, integers little-endian)
//!
//! ```text
//! "KVBACKUP" u16:format
//! section*    = u8:tag u64:len body[len]
//!   1 header  = u64:created_at_ms u64:cut_segment
//!               u8:scope (0 = whole server | 1 str:project = one project)
//!               str:server_version u32:projects (str:name u64:version)*
//!   2 file    = str:name content      (a snapshot or log segment, verbatim)
//!   3 trailer = u64:sections_before sha256[32]
//! str         = u16:len utf8[len]
//! ```
//!
//! The header comes first, the trailer last; the digest covers every byte
//! of the file before it. The files are the newest snapshot and the log
//! segments after it up to the cut, exactly as the server would recover
//! from them, so every record keeps its own CRC and format version too.

use std::{
    fs::File,
    io::{self, Read},
};

use kv_engine::wal::BackupCut;
use sha2::{Digest, Sha256};

pub mod restore;

/// The first bytes of a backup file.
pub const MAGIC: [u8; 8] = *b"KVBACKUP";
/// The format this build writes and reads.
pub const FORMAT: u16 = 1;

const TAG_HEADER: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_TRAILER: u8 = 3;
/// Bytes of a trailer's body: the section count and the digest.
const TRAILER_LEN: u64 = 8 + 32;
/// A header larger than this is damage, not a big server.
const MAX_HEADER_LEN: u64 = 64 << 20;
/// Bytes per chunk handed to the stream.
const CHUNK: usize = 256 << 10;

/// What a backup's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// When the backup was taken, Unix ms.
    pub created_at_ms: u64,
    /// The log position of the cut (the first segment not included).
    pub cut_segment: u64,
    /// The one project backed up; `None` for the whole server.
    pub project: Option<String>,
    /// The version of the server that wrote it.
    pub server_version: String,
    /// Each project's version at the cut.
    pub projects: Vec<(String, u64)>,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        out.extend_from_slice(&self.cut_segment.to_le_bytes());
        match &self.project {
            None => out.push(0),
            Some(project) => {
                out.push(1);
                put_str(&mut out, project);
            }
        }
        put_str(&mut out, &self.server_version);
        out.extend_from_slice(&(self.projects.len() as u32).to_le_bytes());
        for (name, version) in &self.projects {
            put_str(&mut out, name);
            out.extend_from_slice(&version.to_le_bytes());
        }
        out
    }

    fn decode(body: &[u8]) -> Result<Self, String> {
        let mut r = Cursor { body, at: 0 };
        let created_at_ms = r.u64()?;
        let cut_segment = r.u64()?;
        let project = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.str()?),
            scope => {
                return Err(format!(
                    "scope {scope} is unknown (0 = whole server, 1 = one project)"
                ));
            }
        };
        let server_version = r.str()?;
        let count = u32::from_le_bytes(r.take(4)?.try_into().unwrap_or_default());
        let mut projects = Vec::new();
        for _ in 0..count {
            let name = r.str()?;
            projects.push((name, r.u64()?));
        }
        if r.at != body.len() {
            return Err(format!("{} bytes after its last field", body.len() - r.at));
        }
        Ok(Self {
            created_at_ms,
            cut_segment,
            project,
            server_version,
            projects,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

struct Cursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.body.len());
        let end = end.ok_or_else(|| format!("a field at byte {} runs past its end", self.at))?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    fn str(&mut self) -> Result<String, String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default());
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// Writes the backup of `cut` as chunks to `send`, which returns false when
/// nobody is listening any more (the backup then stops). Blocking: file
/// reads. The digest of the whole file is returned.
pub fn write_backup(
    cut: &BackupCut,
    created_at_ms: u64,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut emit = |bytes: Vec<u8>, hasher: &mut Sha256| -> io::Result<()> {
        hasher.update(&bytes);
        if send(bytes) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the backup's reader went away",
            ))
        }
    };
    let header = Header {
        created_at_ms,
        cut_segment: cut.seq(),
        project: cut.project().map(ToString::to_string),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        projects: cut
            .versions()
            .iter()
            .map(|(p, v)| (p.to_string(), *v))
            .collect(),
    };
    let body = header.encode();
    let mut out = Vec::with_capacity(CHUNK);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    section_head(&mut out, TAG_HEADER, body.len() as u64);
    out.extend_from_slice(&body);
    let mut sections = 1u64;
    for (name, path) in cut.files() {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut name_field = Vec::new();
        put_str(&mut name_field, name);
        section_head(&mut out, TAG_FILE, name_field.len() as u64 + len);
        out.extend_from_slice(&name_field);
        // The files are closed: their length cannot change under us, but a
        // short read is still caught rather than shifting every later byte.
        let mut left = len;
        while left > 0 {
            if out.len() >= CHUNK {
                emit(
                    std::mem::replace(&mut out, Vec::with_capacity(CHUNK)),
                    &mut hasher,
                )?;
            }
            let room = (CHUNK - out.len()).max(4096) as u64;
            let want = left.min(room) as usize;
            let start = out.len();
            out.resize(start + want, 0);
            file.read_exact(&mut out[start..])?;
            left -= want as u64;
        }
        sections += 1;
    }
    section_head(&mut out, TAG_TRAILER, TRAILER_LEN);
    out.extend_from_slice(&sections.to_le_bytes());
    hasher.update(&out);
    let digest: [u8; 32] = hasher.finalize().into();
    out.extend_from_slice(&digest);
    if !send(out) {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the backup's reader went away",
        ));
    }
    Ok(digest)
}

fn section_head(out: &mut Vec<u8>, tag: u8, len: u64) {
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
}

/// Lowercase hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
