//! The data commands of one project: get, set, has, del, incr, merge, ls,
//! watch, clear.

use std::io::Write;

use kv_client::{
    EventKind, IncrOptions, ListOptions, MergeOptions, Project, SetOptions, WatchOptions,
};
use serde_json::{Value, json};

use crate::{
    cli::{Command, Global, LsArgs, SetArgs, WatchArgs},
    exit::{self, Failure},
    output,
};

/// Runs one data command on `project`.
pub(crate) async fn run(
    project: &Project,
    global: &Global,
    command: Command,
) -> Result<u8, Failure> {
    let json = global.json;
    match command {
        Command::Get { key } => get(project, json, &key).await,
        Command::Set(args) => set(project, json, args).await,
        Command::Has { key } => {
            let found = project.has(&key).await?;
            if json {
                output::json_line(&json!({ "key": key, "exists": found }));
            } else {
                println!("{found}");
            }
            Ok(if found { exit::OK } else { exit::NO })
        }
        Command::Del { key } => {
            let deleted = project.delete(&key).await?;
            if json {
                output::json_line(&json!({ "key": key, "deleted": deleted }));
            } else if deleted {
                println!("deleted {key}");
            } else {
                eprintln!("kvctl: no key {key:?}");
            }
            Ok(if deleted { exit::OK } else { exit::NO })
        }
        Command::Incr { key, delta, ttl } => {
            let mut options = IncrOptions::new();
            if let Some(ttl) = ttl {
                options = options.ttl(ttl);
            }
            let done = project.incr_with(&key, delta, options).await?;
            let value = number(done.value);
            if json {
                output::json_line(&json!({ "key": key, "value": value, "version": done.version }));
            } else {
                println!("{value}");
            }
            Ok(exit::OK)
        }
        Command::Merge { key, patch, ttl } => {
            let patch = parse_json("PATCH", &patch)?;
            let mut options = MergeOptions::new();
            if let Some(ttl) = ttl {
                options = options.ttl(ttl);
            }
            let done = project
                .merge_with::<_, Value>(&key, &patch, options)
                .await?;
            if json {
                output::json_line(
                    &json!({ "key": key, "value": done.value, "version": done.version }),
                );
            } else {
                println!("{}", done.value);
            }
            Ok(exit::OK)
        }
        Command::Ls(args) => ls(project, json, args).await,
        Command::Watch(args) => watch(project, json, args).await,
        Command::Clear { yes } => {
            let question = format!("delete every key of project {:?}?", project_name(global));
            if !yes && !output::confirm(&question) {
                return Err(Failure::new(
                    exit::ABORTED,
                    "clear aborted: nothing was deleted",
                ));
            }
            let deleted = project.clear().await?;
            if json {
                output::json_line(&json!({ "deleted": deleted }));
            } else {
                println!("deleted {deleted} keys");
            }
            Ok(exit::OK)
        }
        other => Err(Failure::usage(format!("not a data command: {other:?}"))),
    }
}

fn project_name(global: &Global) -> &str {
    global.project.as_deref().unwrap_or_default()
}

/// A JSON number, integral ones without a fraction (`42`, not `42.0`), as
/// the server stores them.
fn number(value: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() < EXACT {
        json!(value as i64)
    } else {
        json!(value)
    }
}

/// Parses a JSON argument, saying which one and how to quote a string.
pub(crate) fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        Failure::usage(format!(
            "{what} is not JSON ({e}): quote a string as '\"text\"' or pass --string"
        ))
    })
}

async fn get(project: &Project, json: bool, key: &str) -> Result<u8, Failure> {
    let Some(entry) = project.get_entry::<Value>(key).await? else {
        if json {
            output::json_line(&json!({ "key": key, "found": false }));
        } else {
            eprintln!("kvctl: no key {key:?}");
        }
        return Ok(exit::NO);
    };
    if json {
        output::json_line(&json!({
            "key": key,
            "found": true,
            "value": entry.value,
            "version": entry.version,
            "expires_at_ms": entry.expires_at_ms,
        }));
    } else {
        println!("{}", entry.value);
    }
    Ok(exit::OK)
}

async fn set(project: &Project, json: bool, args: SetArgs) -> Result<u8, Failure> {
    let value = if args.string {
        Value::String(args.value)
    } else {
        parse_json("VALUE", &args.value)?
    };
    let mut options = SetOptions::new();
    if let Some(ttl) = args.ttl {
        options = options.ttl(ttl);
    }
    if args.if_absent {
        options = options.if_absent();
    }
    if let Some(version) = args.if_version {
        options = options.if_version(version);
    }
    let outcome = project.set_with(&args.key, &value, options).await?;
    if json {
        output::json_line(&json!({
            "key": args.key,
            "applied": outcome.applied,
            "version": outcome.version,
        }));
    } else if outcome.applied {
        println!("set {} at version {}", args.key, outcome.version);
    } else {
        eprintln!(
            "kvctl: not set: the condition does not hold ({} is at version {})",
            args.key, outcome.version
        );
    }
    Ok(if outcome.applied { exit::OK } else { exit::NO })
}

async fn ls(project: &Project, json: bool, args: LsArgs) -> Result<u8, Failure> {
    let mut start_after = args.start_after;
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let mut next = None;
    if json {
        let _ = write!(out, "{{\"entries\":[");
    }
    while left > 0 {
        let mut options = ListOptions::new()
            .prefix(args.prefix.clone())
            .limit(args.page_size.min(u32::try_from(left).unwrap_or(u32::MAX)));
        if args.keys_only {
            options = options.keys_only();
        }
        if let Some(after) = start_after.take() {
            options = options.start_after(after);
        }
        let page = project.list(options).await?;
        let mut rows = Vec::new();
        for entry in &page.entries {
            left -= 1;
            if json {
                let mut item = json!({
                    "key": entry.key,
                    "version": entry.version,
                    "expires_at_ms": entry.expires_at_ms,
                });
                if let Some(value) = &entry.value {
                    item["value"] = value.clone();
                }
                let _ = write!(out, "{}{item}", if first { "" } else { "," });
                first = false;
            } else if args.keys_only {
                rows.push(vec![
                    entry.key.clone(),
                    entry.version.to_string(),
                    output::ttl_left(entry.expires_at_ms),
                ]);
            } else {
                rows.push(vec![
                    entry.key.clone(),
                    entry.version.to_string(),
                    output::ttl_left(entry.expires_at_ms),
                    entry
                        .value
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_default(),
                ]);
            }
        }
        if !json && !rows.is_empty() {
            let header: &[&str] = if args.keys_only {
                &["KEY", "VERSION", "TTL"]
            } else {
                &["KEY", "VERSION", "TTL", "VALUE"]
            };
            // A header per page keeps output streaming on large projects.
            drop(out);
            output::table(header, &rows);
            out = std::io::stdout().lock();
        }
        next = page.next_start_after.clone();
        match page.next_start_after {
            Some(after) => start_after = Some(after),
            None => break,
        }
    }
    if json {
        let _ = writeln!(out, "],\"next_start_after\":{}}}", json!(next));
    } else if let Some(after) = next {
        let _ = writeln!(out, "(more: --start-after {after:?})");
    }
    Ok(exit::OK)
}

async fn watch(project: &Project, json: bool, args: WatchArgs) -> Result<u8, Failure> {
    let mut options = if args.prefix.is_empty() {
        WatchOptions::all()
    } else {
        WatchOptions::prefix(args.prefix)
    };
    if let Some(version) = args.from_version {
        options = options.from_version(version);
    }
    if let Some(incarnation) = args.incarnation {
        options = options.incarnation(incarnation);
    }
    let mut feed = project.watch(options).await?;
    let mut seen = 0;
    while args.count.is_none_or(|count| seen < count) {
        let Some(event) = feed.next_event().await else {
            break;
        };
        let event = event?;
        seen += 1;
        let kind = match event.kind {
            EventKind::Set => "set",
            EventKind::Deleted => "deleted",
            EventKind::Expired => "expired",
            EventKind::Cleared => "cleared",
        };
        if json {
            output::json_line(&json!({
                "kind": kind,
                "key": event.key,
                "value": event.value,
                "version": event.version,
                "expires_at_ms": event.expires_at_ms,
                "incarnation": event.incarnation,
            }));
        } else {
            let value = event
                .value
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default();
            println!("{:>8}  {kind:<7}  {}  {value}", event.version, event.key);
        }
        let _ = std::io::stdout().flush();
    }
    Ok(exit::OK)
}
