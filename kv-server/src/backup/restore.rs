//! Reading a backup back: check every byte, then build a data directory
//! from it beside the target and move it into place in one rename, so a
//! refused backup leaves nothing behind.

use std::{
    fs::{self, File},
    io::{self, BufReader, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use kv_engine::{
    SystemClock,
    project::ProjectName,
    wal::{DurableStore, LogOptions},
};
use sha2::{Digest, Sha256};

use super::{
    FORMAT, Header, MAGIC, MAX_HEADER_LEN, TAG_FILE, TAG_HEADER, TAG_TRAILER, TRAILER_LEN, hex,
};

/// What a restore brought back.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's header.
    pub header: Header,
    /// Data-directory files written.
    pub files: usize,
    /// Bytes of the backup file.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub checksum: String,
}

/// Checks the backup at `from` whole (structure and SHA-256), then restores
/// it into `data_dir`, which must be absent or empty. Nothing is left in
/// `data_dir` unless every check passed, the files were written and synced,
/// and the restored directory opened cleanly with each project at the
/// version the backup recorded.
///
/// # Errors
///
/// A message naming the file, the offset or section, and what is wrong.
pub async fn restore(from: &Path, data_dir: &Path) -> Result<Restored, String> {
    if let Some(why) = not_empty(data_dir)? {
        return Err(format!(
            "refusing to restore into {}: {why}; restore needs an absent or empty directory",
            data_dir.display()
        ));
    }
    // First pass: nothing is written until the whole file checks out.
    let (header, files, bytes, digest) = read(from, None)?;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let temp = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    if temp.exists() {
        fs::remove_dir_all(&temp)
            .map_err(|e| format!("cannot remove the leftover {}: {e}", temp.display()))?;
    }
    fs::create_dir_all(&temp).map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    let built = build(from, &temp, &header).await;
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&temp);
        return Err(e);
    }
    let moved = (|| {
        if data_dir.exists() {
            fs::remove_dir(data_dir)?;
        }
        fs::rename(&temp, data_dir)?;
        File::open(&parent)?.sync_all()
    })();
    if let Err(e) = moved {
        let _ = fs::remove_dir_all(&temp);
        return Err(format!(
            "cannot move the restored directory into {}: {e}",
            data_dir.display()
        ));
    }
    Ok(Restored {
        header,
        files,
        bytes,
        checksum: hex(&digest),
    })
}

/// Second pass into `temp` (the file is checked again as it is copied, in
/// case it changed since), then an open of the result.
async fn build(from: &Path, temp: &Path, header: &Header) -> Result<(), String> {
    let (again, ..) = read(from, Some(temp))?;
    if again != *header {
        return Err(format!("{} changed while it was restored", from.display()));
    }
    let store = DurableStore::open(temp, LogOptions::default(), Arc::new(SystemClock)).map_err(
        |e| {
            format!(
                "the backup's checksum is right but its log does not load: {e} (written by server {})",
                header.server_version
            )
        },
    )?;
    let mut wrong = None;
    for (name, version) in &header.projects {
        let Ok(project) = ProjectName::parse(name) else {
            wrong = Some(format!("the header names an invalid project {name:?}"));
            break;
        };
        let loaded = store.memory().version(&project);
        if loaded != *version {
            wrong = Some(format!(
                "project {name} loads at version {loaded}, the backup recorded {version}"
            ));
            break;
        }
    }
    store
        .close()
        .await
        .map_err(|e| format!("cannot close the restored log: {e}"))?;
    match wrong {
        Some(why) => Err(format!("the backup is inconsistent: {why}")),
        None => Ok(()),
    }
}

fn not_empty(dir: &Path) -> Result<Option<String>, String> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let n = entries.count();
            Ok((n > 0).then(|| format!("it is not empty ({n} entries)")))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Ok(Some("it is not a directory".into()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", dir.display())),
    }
}

/// Reads and checks the backup at `from`; with `into`, writes its files
/// there (synced). Returns the header, the file count, the byte count and
/// the digest.
fn read(from: &Path, into: Option<&Path>) -> Result<(Header, usize, u64, [u8; 32]), String> {
    let file = File::open(from).map_err(|e| format!("cannot open {}: {e}", from.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?
        .len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        at: 0,
        size,
        path: from,
    };
    let bad = |at: u64, what: String| {
        format!(
            "{} is not a valid backup: {what} (at byte {at} of {size})",
            from.display()
        )
    };
    let mut magic = [0; 8];
    r.exact(&mut magic, "the file header")?;
    if magic != MAGIC {
        return Err(bad(0, "it does not start with KVBACKUP".into()));
    }
    let mut format = [0; 2];
    r.exact(&mut format, "the file header")?;
    let format = u16::from_le_bytes(format);
    if format != FORMAT {
        return Err(bad(
            8,
            format!("format {format} is not the one this build reads ({FORMAT})"),
        ));
    }
    let mut header = None;
    let mut sections = 0u64;
    let mut names = std::collections::BTreeSet::new();
    loop {
        let start = r.at;
        let mut head = [0; 9];
        r.exact(&mut head, "a section header")?;
        let tag = head[0];
        let len = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
        if len > size.saturating_sub(r.at) {
            return Err(format!(
                "{} is truncated or corrupt: section {} at byte {start} says {len} bytes, only {} remain (the file has {size})",
                from.display(),
                sections + 1,
                size - r.at
            ));
        }
        match tag {
            TAG_HEADER if header.is_none() && sections == 0 => {
                if len > MAX_HEADER_LEN {
                    return Err(bad(start, format!("a header of {len} bytes")));
                }
                let mut body = vec![0; len as usize];
                r.exact(&mut body, "the header")?;
                header = Some(
                    Header::decode(&body)
                        .map_err(|e| bad(start, format!("its header is malformed: {e}")))?,
                );
            }
            TAG_FILE if header.is_some() => {
                let mut n = [0; 2];
                r.exact(&mut n, "a file name")?;
                let n = u16::from_le_bytes(n);
                let mut name = vec![0; usize::from(n)];
                r.exact(&mut name, "a file name")?;
                let name = String::from_utf8(name).ok().filter(|n| data_file_name(n));
                let Some(name) = name else {
                    return Err(bad(
                        start,
                        format!("section {} is not a snapshot or log segment", sections + 1),
                    ));
                };
                if !names.insert(name.clone()) {
                    return Err(bad(start, format!("{name} appears twice")));
                }
                let content = len.checked_sub(2 + u64::from(n)).ok_or_else(|| {
                    bad(
                        start,
                        format!("section {} is shorter than its name", sections + 1),
                    )
                })?;
                r.copy(content, into.map(|dir| dir.join(&name)).as_deref(), &name)?;
            }
            TAG_TRAILER if header.is_some() => {
                if len != TRAILER_LEN {
                    return Err(bad(
                        start,
                        format!("a trailer of {len} bytes, not {TRAILER_LEN}"),
                    ));
                }
                let mut count = [0; 8];
                r.exact(&mut count, "the trailer")?;
                let expected: [u8; 32] = r.hasher.clone().finalize().into();
                let mut digest = [0; 32];
                r.inner
                    .read_exact(&mut digest)
                    .map_err(|_| r.truncated("the trailer's checksum"))?;
                r.at += 32;
                let count = u64::from_le_bytes(count);
                if count != sections {
                    return Err(bad(
                        start,
                        format!("the trailer counts {count} sections, the file has {sections}"),
                    ));
                }
                if digest != expected {
                    return Err(format!(
                        "{} is corrupt: its SHA-256 is {}, the trailer records {}; the file was damaged after it was written",
                        from.display(),
                        hex(&expected),
                        hex(&digest)
                    ));
                }
                if r.at != size {
                    return Err(bad(
                        r.at,
                        format!("{} bytes after the trailer", size - r.at),
                    ));
                }
                let header = header.ok_or_else(|| bad(0, "no header".into()))?;
                if let Some(dir) = into {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
                }
                return Ok((header, names.len(), size, digest));
            }
            other => {
                return Err(bad(
                    start,
                    format!("section {} has an unexpected tag {other}", sections + 1),
                ));
            }
        }
        sections += 1;
    }
}

/// `<20 digits>.snap` or `<20 digits>.log`: nothing else is ever in a
/// backup, and nothing else may be written into the data directory.
fn data_file_name(name: &str) -> bool {
    let digits = name
        .strip_suffix(".snap")
        .or_else(|| name.strip_suffix(".log"));
    digits.is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
}

struct Reader<'a> {
    inner: BufReader<File>,
    hasher: Sha256,
    at: u64,
    size: u64,
    path: &'a Path,
}

impl Reader<'_> {
    fn truncated(&self, what: &str) -> String {
        format!(
            "{} is truncated: it ends at byte {} inside {what}",
            self.path.display(),
            self.size
        )
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), String> {
        self.inner
            .read_exact(buf)
            .map_err(|_| self.truncated(what))?;
        self.hasher.update(&*buf);
        self.at += buf.len() as u64;
        Ok(())
    }

    fn copy(&mut self, mut len: u64, to: Option<&Path>, name: &str) -> Result<(), String> {
        let mut out = match to {
            Some(path) => Some(
                File::create_new(path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mut buf = vec![0; 1 << 20];
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            self.exact(&mut buf[..n], &format!("file {name}"))?;
            if let (Some(out), Some(path)) = (&mut out, to) {
                out.write_all(&buf[..n])
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            len -= n as u64;
        }
        if let (Some(out), Some(path)) = (out, to) {
            out.sync_all()
                .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// `kv-server restore --from FILE --data-dir DIR`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kv-server restore",
    about = "Restore a backup (from AdminService.Backup) into a new data directory"
)]
pub struct RestoreCli {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The data directory to create; it must be absent or empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// Runs the `restore` subcommand with `args` (its name first): prints what
/// was restored, or the reason it was refused. Exit code 0 when restored,
/// 1 when refused, 2 for bad arguments.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser;
    // Usage lines name the whole command, not the subcommand alone.
    let args = std::iter::once("kv-server restore".into()).chain(args.into_iter().skip(1));
    let cli = match RestoreCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(restore(&cli.from, &cli.data_dir)) {
        Ok(done) => {
            println!(
                "restored {} into {}: {}, {} files, {} bytes, sha256 {}, {} projects, cut at log segment {}, taken at {} ms by server {}",
                cli.from.display(),
                cli.data_dir.display(),
                done.header.project.as_ref().map_or_else(
                    || "whole server".to_string(),
                    |p| format!("project {p} only")
                ),
                done.files,
                done.bytes,
                done.checksum,
                done.header.projects.len(),
                done.header.cut_segment,
                done.header.created_at_ms,
                done.header.server_version
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: restore refused, nothing was written: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
