//! `kvctl backup FILE`: a consistent backup of the server (or of one
//! project) streamed by AdminService.Backup into a file; `kvctl restore
//! FILE --data-dir DIR`: the checked restore of `kv-server restore`.
//!
//! The file is written as `FILE.partial` and renamed to `FILE` only once
//! the server has sent its trailer, so a `FILE` that exists is complete
//! (and `kv-server restore` checks its SHA-256 anyway); an interrupted
//! backup leaves only the partial file.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};

use indicatif::ProgressBar;
use kv_client::Client;
use serde_json::json;
use tokio::io::AsyncWrite;

use crate::{
    cli::{BackupArgs, Global, RestoreArgs},
    exit::{self, Failure},
    output::progress,
};

/// A file written as the backup arrives, counting bytes on the progress
/// bar. Writes are synchronous: the backup is the CLI's only task, so
/// blocking its thread on the disk holds nothing else up.
struct Sink {
    file: BufWriter<File>,
    bar: ProgressBar,
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = self.file.write(buf);
        if let Ok(n) = written {
            self.bar.inc(n as u64);
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.file.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Runs `backup` of project `only`, or of the whole server.
pub(crate) async fn run(
    client: &Client,
    global: &Global,
    only: Option<&str>,
    args: BackupArgs,
) -> Result<u8, Failure> {
    let partial = partial_path(&args.file);
    let file = File::create(&partial)
        .map_err(|e| Failure::input(format!("cannot create {}: {e}", partial.display())))?;
    let bar = progress(None, "backup", "bytes");
    let mut sink = Sink {
        file: BufWriter::new(file),
        bar: bar.clone(),
    };
    let summary = client.admin().backup(only, &mut sink).await?;
    let synced = sink
        .file
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all());
    synced.map_err(|e| Failure::input(format!("cannot write {}: {e}", partial.display())))?;
    std::fs::rename(&partial, &args.file).map_err(|e| {
        Failure::input(format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            args.file.display()
        ))
    })?;
    bar.finish_and_clear();
    if global.json {
        println!(
            "{}",
            json!({
                "file": args.file.display().to_string(),
                "project": only,
                "bytes": summary.bytes,
                "sha256": summary.checksum,
            })
        );
    } else {
        println!(
            "backed up {} to {} ({} bytes, sha256 {}); restore with: kv-server restore --from {} --data-dir DIR",
            only.map_or("the server".to_string(), |p| format!("project {p}")),
            args.file.display(),
            summary.bytes,
            summary.checksum,
            args.file.display(),
        );
    }
    Ok(exit::OK)
}

/// Runs `restore`: checks the whole file (structure and SHA-256) before
/// writing anything, builds the directory beside the target and renames it
/// into place only once it opened at every project's recorded version.
pub(crate) async fn restore(global: &Global, args: RestoreArgs) -> Result<u8, Failure> {
    let bar = progress(None, "restore", "steps");
    bar.set_message(format!("checking and restoring {}", args.file.display()));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let done = kv_server::backup::restore::restore(&args.file, &args.data_dir)
        .await
        .map_err(|e| Failure::input(format!("restore refused, nothing was written: {e}")))?;
    bar.finish_and_clear();
    if global.json {
        println!(
            "{}",
            json!({
                "file": args.file.display().to_string(),
                "data_dir": args.data_dir.display().to_string(),
                "project": done.header.project.as_ref().map(|p| p.to_string()),
                "projects": done.header.projects.len(),
                "files": done.files,
                "bytes": done.bytes,
                "sha256": done.checksum,
            })
        );
    } else {
        println!(
            "restored {} into {} ({} projects, {} bytes, sha256 {}); start a server on it with: kv-server --data-dir {}",
            args.file.display(),
            args.data_dir.display(),
            done.header.projects.len(),
            done.bytes,
            done.checksum,
            args.data_dir.display(),
        );
    }
    Ok(exit::OK)
}
