//! `kvctl import`: JSON lines made by `export` written back in batches.
//!
//! Lines are applied in order, consecutive lines of one project together in
//! one all-or-nothing batch. After each batch the progress file records how
//! many lines are applied, so a run stopped anywhere (Ctrl-C, a lost
//! connection, a killed process) resumes after the last batch that applied.
//! Each batch carries a request id made of the run's id (kept in the
//! progress file) and its first line: a batch resent after an interruption
//! that had in fact applied is answered from the server's memory of it
//! instead of writing again (within the server's idempotency window), and
//! a new import of the same file, with a new run id, writes again.
//!
//! Deadlines are absolute: a key keeps the deadline it was exported with;
//! one that has passed is skipped and counted. Versions cannot be set by a
//! client: imported keys get the target project's next versions. Projects
//! are registered (without quotas) when the token may; quotas and tokens
//! are not part of an export.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use kv_client::{Client, Code, MAX_REQUEST_ID_BYTES, Quota};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    cli::{Global, ImportArgs},
    exit::{self, Failure},
    output::{now_ms, progress},
};

/// One exported entry; its `version` is read but cannot be applied.
#[derive(Debug, Deserialize)]
struct Line {
    project: String,
    key: String,
    value: Value,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    #[serde(default, rename = "version")]
    _version: Option<u64>,
}

/// What the progress file keeps between runs.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    /// Which input this is the progress of.
    input: String,
    /// The run's id: the prefix of its batches' request ids.
    run: String,
    /// Lines applied (or skipped) from the start of the input.
    lines: u64,
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Counts {
    written: u64,
    expired: u64,
    batches: u64,
    resumed_at: u64,
    /// Projects registered (or found registered) so far.
    registered: HashSet<String>,
}

/// Registers `name` so that it is listed (and exported) like the original:
/// a project written without being created exists, but only registered
/// ones are listed. A project token may not register; it writes into its
/// own project, which is fine.
async fn register(client: &Client, name: &str) -> Result<(), Failure> {
    match client.admin().create_project(name, Quota::default()).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Code::AlreadyExists | Code::PermissionDenied) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs `import`.
pub(crate) async fn run(global: &Global, args: ImportArgs) -> Result<u8, Failure> {
    let (reader, identity, size): (Box<dyn Read>, String, Option<u64>) = match &args.file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::input(format!("cannot open {}: {e}", path.display())))?;
            let meta = file
                .metadata()
                .map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let identity = format!("{}:{}:{modified}", canonical.display(), meta.len());
            (Box::new(file), identity, Some(meta.len()))
        }
        None => (Box::new(std::io::stdin()), "stdin".into(), None),
    };
    let resume_file = args.resume_file.clone().or_else(|| {
        args.file.as_ref().map(|f| {
            let mut name = f.as_os_str().to_owned();
            name.push(".progress");
            PathBuf::from(name)
        })
    });
    let client = if args.dry_run {
        None
    } else {
        Some(crate::connect::connect(global).await?)
    };
    let mut progress_state = match (&resume_file, args.dry_run) {
        (Some(path), false) => Some(load_or_start(path, &identity)?),
        _ => None,
    };
    let skip = progress_state.as_ref().map_or(0, |p| p.lines);
    let mut counts = Counts {
        resumed_at: skip,
        ..Counts::default()
    };
    if skip > 0 {
        eprintln!("resuming after line {skip}");
    }
    let bar = progress(size, "import", "bytes");
    let mut batch: Vec<(u64, Line)> = Vec::new();
    let mut lines_read = 0u64;
    for (index, text) in BufReader::new(reader).lines().enumerate() {
        let number = index as u64 + 1;
        let text = text.map_err(|e| Failure::input(format!("line {number}: cannot read: {e}")))?;
        bar.inc(text.len() as u64 + 1);
        lines_read = number;
        if number <= skip || text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text)
            .map_err(|e| Failure::input(format!("line {number}: not an exported entry: {e}")))?;
        if batch
            .first()
            .is_some_and(|(_, first)| first.project != line.project)
            || batch.len() >= args.batch_size as usize
        {
            flush(
                client.as_ref(),
                &mut batch,
                &mut progress_state,
                resume_file.as_deref(),
                &mut counts,
                number - 1,
            )
            .await?;
            if args.stop_after_batches.is_some_and(|n| counts.batches >= n) {
                bar.abandon();
                return Err(Failure::new(
                    exit::ABORTED,
                    format!(
                        "stopped after {} batches; run the same command again to resume after line {}",
                        counts.batches,
                        number - 1
                    ),
                ));
            }
        }
        batch.push((number, line));
    }
    flush(
        client.as_ref(),
        &mut batch,
        &mut progress_state,
        resume_file.as_deref(),
        &mut counts,
        lines_read,
    )
    .await?;
    bar.finish_and_clear();
    if let (Some(path), false) = (&resume_file, args.dry_run) {
        // Done: a later run of the same file is a new import, not a resume.
        let _ = std::fs::remove_file(path);
    }
    let summary = json!({
        "dry_run": args.dry_run,
        "lines": lines_read,
        "resumed_after_line": counts.resumed_at,
        "written": counts.written,
        "skipped_expired": counts.expired,
        "batches": counts.batches,
    });
    if global.json {
        crate::output::json_line(&summary);
    } else {
        let verb = if args.dry_run { "would write" } else { "wrote" };
        println!(
            "{verb} {} entries in {} batches; skipped {} expired; {} lines read{}",
            counts.written,
            counts.batches,
            counts.expired,
            lines_read,
            if skip > 0 {
                format!(" (resumed after line {skip})")
            } else {
                String::new()
            }
        );
    }
    Ok(exit::OK)
}

fn load_or_start(path: &Path, identity: &str) -> Result<Progress, Failure> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let saved: Progress = serde_json::from_slice(&bytes).map_err(|e| {
                Failure::input(format!(
                    "{} is not an import progress file: {e}",
                    path.display()
                ))
            })?;
            if saved.input != identity {
                return Err(Failure::input(format!(
                    "{} records the progress of another input ({}); delete it to import from the start",
                    path.display(),
                    saved.input
                )));
            }
            Ok(saved)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fresh = Progress {
                input: identity.into(),
                run: kv_client::new_request_id(),
                lines: 0,
            };
            save(path, &fresh)?;
            Ok(fresh)
        }
        Err(e) => Err(Failure::input(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the progress file whole or not at all (a new file renamed over).
fn save(path: &Path, progress: &Progress) -> Result<(), Failure> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let text = serde_json::to_vec(progress).unwrap_or_default();
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))
}

/// Writes `batch` (one project's consecutive lines) as one all-or-nothing
/// call, then records that every line up to `through` is applied.
async fn flush(
    client: Option<&Client>,
    batch: &mut Vec<(u64, Line)>,
    state: &mut Option<Progress>,
    resume_file: Option<&Path>,
    counts: &mut Counts,
    through: u64,
) -> Result<(), Failure> {
    let Some((first_line, first)) = batch.first() else {
        return Ok(());
    };
    if let Some(client) = client
        && counts.registered.insert(first.project.clone())
    {
        register(client, &first.project).await?;
    }
    let now = now_ms();
    let live: Vec<&Line> = batch
        .iter()
        .map(|(_, line)| line)
        .filter(|line| line.expires_at_ms.is_none_or(|at| at > now))
        .collect();
    counts.expired += (batch.len() - live.len()) as u64;
    if !live.is_empty() {
        counts.batches += 1;
        counts.written += live.len() as u64;
        if let Some(client) = client {
            let mut call = client.project(&first.project).batch();
            for line in &live {
                call = match line.expires_at_ms {
                    Some(at) => {
                        call.set_with_ttl(&line.key, &line.value, Duration::from_millis(at - now))
                    }
                    None => call.set(&line.key, &line.value),
                };
            }
            if let Some(progress) = state.as_ref() {
                call = call.request_id(request_id(&progress.run, *first_line));
            }
            let committed = match call.commit().await {
                // The batch has no conditions, so FAILED_PRECONDITION can
                // only be its request id, which belongs to this run and this
                // line: an earlier attempt of this very batch was applied
                // (killed before its progress was saved) with TTLs counted
                // from an earlier moment, so the resend differs. It is done.
                Err(e) if state.is_some() && e.code() == Code::FailedPrecondition => Ok(()),
                other => other.map(drop),
            };
            committed.map_err(|e| {
                let failure = Failure::from(e);
                Failure::new(
                    failure.code,
                    format!(
                        "batch starting at line {first_line} (project {:?}) failed: {}; lines before it are applied, run again to resume",
                        first.project, failure.message
                    ),
                )
            })?;
        }
    }
    if let (Some(progress), Some(path)) = (state.as_mut(), resume_file) {
        progress.lines = through;
        save(path, progress)?;
    }
    batch.clear();
    Ok(())
}

/// The request id of the batch starting at `line` in run `run`: the same
/// on every resume of the run, different for another run.
fn request_id(run: &str, line: u64) -> String {
    let digest = Sha256::digest(format!("{run}/{line}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("kvctl-import-{hex}");
    id[..id.len().min(MAX_REQUEST_ID_BYTES)].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_per_run_and_line_and_within_the_limit() {
        let id = request_id("run-1", 501);
        assert_eq!(id, request_id("run-1", 501));
        assert_ne!(id, request_id("run-1", 1001));
        assert_ne!(id, request_id("run-2", 501));
        assert!(id.len() <= MAX_REQUEST_ID_BYTES, "{id}");
    }
}
