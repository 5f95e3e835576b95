//! The catalog on the cluster: registered projects with their quotas, and
//! tokens (their SHA-256 only). It lives in one slot; every front-end loads
//! it at start and then follows its change stream on a connection of its
//! own, so a token revoked or a project deleted through one front-end
//! reaches the open streams of every other within one stream read.

use std::{collections::HashMap, time::Duration};

use kv_engine::{
    EngineError, Quota,
    catalog::{Catalog, CatalogChange, TokenLimits, TokenMeta},
    project::ProjectName,
};
use redis::Value;

use crate::{
    codec::{array, bytes, malformed, stream_entries, text},
    inner::{Inner, dedicated},
};

/// A project's catalog record: "generation|max keys|max bytes", then
/// "|ops per second|write bytes per second" only when a rate is set (so
/// records from before rate limits read unchanged); empty for no limit.
/// The generation is random per creation: a token is stored only for the
/// creation of the project its caller saw. (`library.lua` writes it; this
/// is its reader's mirror.)
#[cfg(test)]
fn project_record(generation: &str, quota: Quota) -> String {
    let limit = |l: Option<u64>| l.map_or(String::new(), |n| n.to_string());
    let mut record = format!(
        "{generation}|{}|{}",
        limit(quota.max_keys),
        limit(quota.max_bytes)
    );
    if quota.ops_per_second.is_some() || quota.write_bytes_per_second.is_some() {
        record += &format!(
            "|{}|{}",
            limit(quota.ops_per_second),
            limit(quota.write_bytes_per_second)
        );
    }
    record
}

fn parse_project(record: &str) -> Option<(String, Quota)> {
    let mut parts = record.split('|');
    let generation = parts.next()?.to_string();
    let mut limit = || -> Option<Option<u64>> {
        let part = parts.next()?;
        if part.is_empty() {
            Some(None)
        } else {
            part.parse().ok().map(Some)
        }
    };
    let (max_keys, max_bytes) = (limit()?, limit()?);
    // Absent in records written before rate limits.
    let (ops_per_second, write_bytes_per_second) = match limit() {
        Some(ops) => (ops, limit()?),
        None => (None, None),
    };
    if parts.next().is_some() {
        return None;
    }
    let quota = Quota {
        max_keys,
        max_bytes,
        ops_per_second,
        write_bytes_per_second,
    };
    Some((generation, quota))
}

/// A token as stored: project name length and name, read-only flag,
/// SHA-256 of the secret, creation time (the library reads the project),
/// then, only for a token with rate limits, a flags byte (bit 0 ops per
/// second, bit 1 write bytes per second) and both limits as u64 (so a
/// token without them is the record written before token limits).
pub(crate) fn token_record(token: &TokenMeta) -> Vec<u8> {
    let name = token.project.as_str().as_bytes();
    let mut out = Vec::with_capacity(1 + name.len() + 1 + 32 + 8 + 17);
    out.push(u8::try_from(name.len()).expect("project names are short"));
    out.extend_from_slice(name);
    out.push(u8::from(token.read_only));
    out.extend_from_slice(&token.secret_sha256);
    out.extend_from_slice(&token.created_at_ms.to_le_bytes());
    let limits = token.limits;
    if limits.is_set() {
        out.push(
            u8::from(limits.ops_per_second.is_some())
                | (u8::from(limits.write_bytes_per_second.is_some()) << 1),
        );
        out.extend_from_slice(&limits.ops_per_second.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&limits.write_bytes_per_second.unwrap_or(0).to_le_bytes());
    }
    out
}

fn parse_token(id: &str, raw: &[u8]) -> Option<TokenMeta> {
    let n = usize::from(*raw.first()?);
    let project = ProjectName::parse(std::str::from_utf8(raw.get(1..1 + n)?).ok()?).ok()?;
    let rest = raw.get(1 + n..)?;
    let u64_at = |at: usize| rest[at..at + 8].try_into().ok().map(u64::from_le_bytes);
    let limits = match rest.len() {
        // Written before token limits.
        41 => TokenLimits::default(),
        58 if matches!(rest[41], 1..=3) => TokenLimits {
            ops_per_second: (rest[41] & 1 != 0).then_some(u64_at(42)?),
            write_bytes_per_second: (rest[41] & 2 != 0).then_some(u64_at(50)?),
        },
        _ => return None,
    };
    Some(TokenMeta {
        id: id.to_string(),
        project,
        read_only: rest[0] != 0,
        secret_sha256: rest[1..33].try_into().ok()?,
        created_at_ms: u64_at(33)?,
        limits,
    })
}

/// The catalog as the cluster holds it, and the generations of its
/// projects.
pub(crate) struct Loaded {
    pub(crate) last_id: String,
    pub(crate) projects: HashMap<ProjectName, (String, Quota)>,
    pub(crate) tokens: HashMap<String, TokenMeta>,
}

/// A field and its value, as HGETALL answers them.
type Pair = (Vec<u8>, Vec<u8>);

fn pairs(value: Value) -> Result<Vec<Pair>, EngineError> {
    let flat = array(value)?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((bytes(k)?.unwrap_or_default(), bytes(v)?.unwrap_or_default()));
    }
    Ok(out)
}

pub(crate) async fn load(inner: &Inner) -> Result<Loaded, EngineError> {
    let keys = inner.names.catalog_keys();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("kv_catalog_load").arg(keys.len()).arg(&keys[..]);
    let mut conn = inner.conn.clone();
    let reply: Value = cmd
        .query_async(&mut conn)
        .await
        .map_err(crate::inner::unreachable("loading the catalog"))?;
    let mut parts = array(reply)?.into_iter();
    let (Some(last), Some(projects), Some(tokens)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a short kv_catalog_load reply"));
    };
    let last_id = text(&last)?.to_string();
    let mut loaded = Loaded {
        last_id,
        projects: HashMap::new(),
        tokens: HashMap::new(),
    };
    for (name, record) in pairs(projects)? {
        let name = String::from_utf8_lossy(&name);
        let record = String::from_utf8_lossy(&record);
        match (ProjectName::parse(&name), parse_project(&record)) {
            (Ok(project), Some(parsed)) => {
                loaded.projects.insert(project, parsed);
            }
            _ => tracing::warn!(%name, "catalog: skipping an unreadable project record"),
        }
    }
    for (id, raw) in pairs(tokens)? {
        let id = String::from_utf8_lossy(&id).into_owned();
        match parse_token(&id, &raw) {
            Some(token) => {
                loaded.tokens.insert(id, token);
            }
            None => tracing::warn!(%id, "catalog: skipping an unreadable token record"),
        }
    }
    Ok(loaded)
}

/// Makes the local catalog equal to `loaded` (a start, or a reload after
/// the change stream was lost).
pub(crate) fn replace(inner: &Inner, loaded: Loaded) {
    let catalog: &Catalog = &inner.catalog;
    for (project, _) in catalog.projects() {
        if !loaded.projects.contains_key(&project) {
            catalog.apply(&CatalogChange::DeleteProject { project });
        }
    }
    for token in catalog.tokens(None) {
        if !loaded.tokens.contains_key(&token.id) {
            catalog.apply(&CatalogChange::RevokeToken { id: token.id });
        }
    }
    inner.generations.clear();
    for (project, (generation, quota)) in loaded.projects {
        inner.generations.insert(project.clone(), generation);
        if catalog.project(&project) != Some(quota) {
            catalog.apply(&CatalogChange::PutProject { project, quota });
        }
    }
    for (_, token) in loaded.tokens {
        if catalog.token(&token.id).as_ref() != Some(&token) {
            catalog.apply(&CatalogChange::PutToken(token));
        }
    }
}

/// Applies one event of the catalog stream.
fn apply_event(inner: &Inner, fields: Vec<Value>) -> Result<(), EngineError> {
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut items = fields.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        map.insert(bytes(k)?.unwrap_or_default(), bytes(v)?.unwrap_or_default());
    }
    let field = |name: &str| {
        map.get(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let project = || {
        field("n")
            .and_then(|n| ProjectName::parse(&n).ok())
            .ok_or_else(|| malformed("a catalog event without a project"))
    };
    match field("o").as_deref() {
        Some("P") => {
            let project = project()?;
            let (generation, quota) = field("r")
                .as_deref()
                .and_then(parse_project)
                .ok_or_else(|| malformed("a catalog event with an unreadable project record"))?;
            inner.generations.insert(project.clone(), generation);
            inner
                .catalog
                .apply(&CatalogChange::PutProject { project, quota });
        }
        Some("D") => {
            let project = project()?;
            // The new incarnation first: streams woken by the change must
            // find their project gone.
            if let Some(incarnation) = field("inc").and_then(|i| i.parse().ok()) {
                inner.saw_incarnation(&project, incarnation);
            }
            inner.generations.remove(&project);
            inner
                .catalog
                .apply(&CatalogChange::DeleteProject { project });
        }
        Some("T") => {
            let id = field("i").ok_or_else(|| malformed("a token event without an id"))?;
            let raw = map.get(b"t".as_slice()).cloned().unwrap_or_default();
            let token =
                parse_token(&id, &raw).ok_or_else(|| malformed("an unreadable token event"))?;
            inner.catalog.apply(&CatalogChange::PutToken(token));
        }
        Some("R") => {
            let id = field("i").ok_or_else(|| malformed("a revoke event without an id"))?;
            inner.catalog.apply(&CatalogChange::RevokeToken { id });
        }
        _ => return Err(malformed("a catalog event of an unknown kind")),
    }
    Ok(())
}

/// Follows the catalog stream after `last_id` until the backend is
/// dropped. A broken connection reloads the whole catalog: events may
/// have been trimmed meanwhile.
pub(crate) async fn follow(inner: std::sync::Weak<Inner>, mut last_id: String) {
    let mut addr: Option<String> = None;
    let mut conn = None;
    let mut reload = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if reload {
            match load(&strong).await {
                Ok(loaded) => {
                    last_id = loaded.last_id.clone();
                    replace(&strong, loaded);
                    reload = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "catalog: cannot reload; retrying");
                    drop(strong);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match dedicated(&strong, addr.clone()).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "catalog: cannot connect; retrying");
                    addr = None;
                    drop(strong);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let stream = strong.names.catalog_stream();
        drop(strong);
        let read: Result<Value, redis::RedisError> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(crate::inner::BLOCKING_READ.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last_id)
            .query_async(c)
            .await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match read.map_err(|e| (e.redirect_node().map(|(n, _)| n.to_string()), e)) {
            Ok(reply) => {
                if let Err(e) = apply_events(&strong, reply, &mut last_id) {
                    tracing::error!(error = %e, "catalog: an unreadable change; reloading");
                    reload = true;
                }
            }
            Err((moved, e)) => {
                if moved.is_none() {
                    tracing::warn!(error = %e, "catalog: the change stream broke; reloading");
                }
                addr = moved;
                conn = None;
                reload = true;
            }
        }
    }
}

fn apply_events(inner: &Inner, reply: Value, last_id: &mut String) -> Result<(), EngineError> {
    for (id, fields) in stream_entries(reply)? {
        apply_event(inner, fields)?;
        *last_id = text(&id)?.to_string();
    }
    Ok(())
}

/// Reads a catalog function's status word.
pub(crate) fn status(reply: &[Value]) -> Result<&str, EngineError> {
    text(
        reply
            .first()
            .ok_or_else(|| malformed("an empty catalog reply"))?,
    )
}

/// A fresh project generation.
pub(crate) fn generation() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let quota = Quota {
            max_keys: Some(10),
            ..Quota::UNLIMITED
        };
        // Without rates the record is the one written before rate limits.
        assert_eq!(project_record("g1", quota), "g1|10|");
        assert_eq!(parse_project("g1|10|"), Some(("g1".into(), quota)));
        assert_eq!(parse_project("g1|x|"), None);
        let rated = Quota {
            ops_per_second: Some(100),
            ..quota
        };
        assert_eq!(project_record("g1", rated), "g1|10||100|");
        assert_eq!(parse_project("g1|10||100|"), Some(("g1".into(), rated)));
        assert_eq!(parse_project("g1|10||100"), None);
        assert_eq!(parse_project("g1|10||100||7"), None);
        let token = TokenMeta {
            id: "abc".into(),
            project: ProjectName::parse("shop").unwrap(),
            read_only: true,
            secret_sha256: [7; 32],
            created_at_ms: 1_700_000_000_000,
            limits: TokenLimits::default(),
        };
        let raw = token_record(&token);
        // The library reads the project from the record's head.
        assert_eq!(raw[0] as usize, 4);
        assert_eq!(&raw[1..5], b"shop");
        assert_eq!(parse_token("abc", &raw), Some(token.clone()));
        assert_eq!(parse_token("abc", &raw[..raw.len() - 1]), None);
        // Without limits the record is the one written before token limits.
        let mut old = vec![4];
        old.extend_from_slice(b"shop");
        old.push(1);
        old.extend_from_slice(&[7; 32]);
        old.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
        assert_eq!(raw, old);
        let limited = TokenMeta {
            limits: TokenLimits {
                ops_per_second: Some(20),
                write_bytes_per_second: None,
            },
            ..token
        };
        let raw = token_record(&limited);
        assert_eq!(raw.len(), old.len() + 17);
        assert_eq!(&raw[1..5], b"shop");
        assert_eq!(parse_token("abc", &raw), Some(limited));
        assert_eq!(parse_token("abc", &raw[..raw.len() - 1]), None);
        let mut bad_flags = raw.clone();
        bad_flags[old.len()] = 4;
        assert_eq!(parse_token("abc", &bad_flags), None);
    }
}
