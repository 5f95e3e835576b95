//! `kvctl export`: every entry of one project or of all, as JSON lines.
//!
//! Each line is `{"project","key","value","version","expires_at_ms"}`, the
//! deadline absolute (Unix milliseconds, `null` for none) so that an import
//! later gives the same deadline, not a TTL restarted from the import.
//! Each page is read at one version of its project; pages are not one
//! snapshot together (a key written during the export may appear in its
//! old or its new state, or be missed if it moved across a page boundary).

use std::io::{BufWriter, Write};

use kv_client::{Client, ListOptions};
use serde_json::json;

use crate::{
    cli::{ExportArgs, Global},
    exit::{self, Failure},
    output::progress,
};

/// Runs `export` of project `only`, or of every registered project.
pub(crate) async fn run(
    client: &Client,
    global: &Global,
    only: Option<&str>,
    args: ExportArgs,
) -> Result<u8, Failure> {
    let admin = client.admin();
    // With a project token the admin API is closed: export that one project
    // without knowing its size.
    let projects: Vec<(String, Option<u64>)> = match only {
        Some(name) => {
            let keys = admin.get_project(name).await.ok().map(|p| p.keys);
            vec![(name.to_string(), keys)]
        }
        None => admin
            .list_projects()
            .await?
            .into_iter()
            .map(|p| (p.name, Some(p.keys)))
            .collect(),
    };
    let total = projects.iter().map(|(_, keys)| *keys).sum::<Option<u64>>();
    let bar = progress(total, "export", "keys");
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut written = 0u64;
    for (name, _) in &projects {
        bar.set_message(name.clone());
        let project = client.project(name);
        let mut start_after: Option<String> = None;
        loop {
            let mut options = ListOptions::new().limit(args.page_size);
            if let Some(after) = start_after.take() {
                options = options.start_after(after);
            }
            let page = project.list(options).await?;
            for entry in &page.entries {
                let line = json!({
                    "project": name,
                    "key": entry.key,
                    "value": entry.value,
                    "version": entry.version,
                    "expires_at_ms": entry.expires_at_ms,
                });
                writeln!(out, "{line}")
                    .map_err(|e| Failure::input(format!("cannot write the export: {e}")))?;
            }
            written += page.entries.len() as u64;
            bar.inc(page.entries.len() as u64);
            match page.next_start_after {
                Some(after) => start_after = Some(after),
                None => break,
            }
        }
    }
    out.flush()
        .map_err(|e| Failure::input(format!("cannot write the export: {e}")))?;
    bar.finish_and_clear();
    if global.json {
        eprintln!(
            "{}",
            json!({ "exported": written, "projects": projects.len() })
        );
    } else {
        eprintln!(
            "exported {written} entries from {} projects",
            projects.len()
        );
    }
    Ok(exit::OK)
}
