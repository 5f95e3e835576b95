//! Admin commands: projects, quotas and tokens.

use kv_client::{Client, Code, ProjectInfo, Quota, TokenInfo, TokenLimits};
use serde_json::{Value, json};

use crate::{
    cli::{Global, ProjectCommand, QuotaArgs, TokenCommand},
    exit::{self, Failure},
    output,
};

/// Runs a `project` subcommand.
pub(crate) async fn project(
    client: &Client,
    global: &Global,
    command: ProjectCommand,
) -> Result<u8, Failure> {
    let admin = client.admin();
    match command {
        ProjectCommand::Create { name, quota } => {
            let info = admin.create_project(&name, quota_of(&quota)).await?;
            show_projects(global.json, &[info], false);
        }
        ProjectCommand::Ls => {
            let projects = admin.list_projects().await?;
            show_projects(global.json, &projects, true);
        }
        ProjectCommand::Get { name } => match admin.get_project(&name).await {
            Ok(info) => show_projects(global.json, &[info], false),
            Err(e) if e.code() == Code::NotFound => {
                return Err(Failure::new(exit::NO, format!("no project {name:?}")));
            }
            Err(e) => return Err(e.into()),
        },
        ProjectCommand::Rm { name, yes } => {
            let question = format!("delete project {name:?} and all its keys?");
            if !yes && !output::confirm(&question) {
                return Err(Failure::new(
                    exit::ABORTED,
                    "rm aborted: nothing was deleted",
                ));
            }
            let keys = match admin.delete_project(&name).await {
                Ok(keys) => keys,
                Err(e) if e.code() == Code::NotFound => {
                    return Err(Failure::new(exit::NO, format!("no project {name:?}")));
                }
                Err(e) => return Err(e.into()),
            };
            if global.json {
                output::json_line(&json!({ "project": name, "deleted": true, "keys": keys }));
            } else {
                println!("deleted project {name} ({keys} keys)");
            }
        }
        ProjectCommand::Quota { name, quota } => {
            let info = admin.set_quota(&name, quota_of(&quota)).await?;
            show_projects(global.json, &[info], false);
        }
    }
    Ok(exit::OK)
}

fn quota_of(args: &QuotaArgs) -> Quota {
    Quota {
        max_keys: args.max_keys,
        max_bytes: args.max_bytes,
        ops_per_second: args.ops_per_second,
        write_bytes_per_second: args.write_bytes_per_second,
    }
}

fn project_json(p: &ProjectInfo) -> Value {
    json!({
        "name": p.name,
        "keys": p.keys,
        "bytes": p.bytes,
        "incarnation": p.incarnation,
        "quota": {
            "max_keys": p.quota.max_keys,
            "max_bytes": p.quota.max_bytes,
            "ops_per_second": p.quota.ops_per_second,
            "write_bytes_per_second": p.quota.write_bytes_per_second,
        },
    })
}

/// A list as one JSON array, a single project as one JSON object.
fn show_projects(json: bool, projects: &[ProjectInfo], as_list: bool) {
    if json {
        let items: Vec<Value> = projects.iter().map(project_json).collect();
        match (as_list, items.as_slice()) {
            (false, [one]) => output::json_line(one),
            _ => output::json_line(&Value::Array(items)),
        }
        return;
    }
    let rows: Vec<Vec<String>> = projects
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.keys.to_string(),
                p.bytes.to_string(),
                output::limit(p.quota.max_keys),
                output::limit(p.quota.max_bytes),
                output::limit(p.quota.ops_per_second),
                output::limit(p.quota.write_bytes_per_second),
                p.incarnation.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "KEYS",
            "BYTES",
            "MAX_KEYS",
            "MAX_BYTES",
            "OPS/S",
            "WRITE_B/S",
            "INCARNATION",
        ],
        &rows,
    );
}

/// Runs a `token` subcommand.
pub(crate) async fn token(
    client: &Client,
    global: &Global,
    command: TokenCommand,
) -> Result<u8, Failure> {
    let admin = client.admin();
    match command {
        TokenCommand::Create {
            project,
            read_only,
            ops_per_second,
            write_bytes_per_second,
        } => {
            let limits = TokenLimits {
                ops_per_second,
                write_bytes_per_second,
            };
            let made = admin.create_token_with(&project, read_only, limits).await?;
            if global.json {
                let mut item = token_json(&made.info);
                item["token"] = made.token.into();
                output::json_line(&item);
            } else {
                println!("token {} for project {}:", made.info.id, made.info.project);
                println!("{}", made.token);
                eprintln!("(the secret is shown only now: keep it)");
            }
        }
        TokenCommand::Ls { for_project } => {
            let tokens = admin.list_tokens(for_project.as_deref()).await?;
            if global.json {
                output::json_line(&Value::Array(tokens.iter().map(token_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.project.clone(),
                            if t.read_only { "read" } else { "read-write" }.into(),
                            output::limit(t.limits.ops_per_second),
                            output::limit(t.limits.write_bytes_per_second),
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + std::time::Duration::from_millis(t.created_at_ms),
                            )
                            .to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "PROJECT", "ACCESS", "OPS/S", "WRITE_B/S", "CREATED"],
                    &rows,
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let revoked = admin.revoke_token(&id).await?;
            if global.json {
                output::json_line(&json!({ "id": id, "revoked": revoked }));
            } else if revoked {
                println!("revoked {id}");
            } else {
                eprintln!("kvctl: no token {id:?}");
            }
            return Ok(if revoked { exit::OK } else { exit::NO });
        }
    }
    Ok(exit::OK)
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "id": t.id,
        "project": t.project,
        "read_only": t.read_only,
        "created_at_ms": t.created_at_ms,
        "limits": {
            "ops_per_second": t.limits.ops_per_second,
            "write_bytes_per_second": t.limits.write_bytes_per_second,
        },
    })
}
