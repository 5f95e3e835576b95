//! The function library every master runs: its source, its version, and
//! installing it.
//!
//! Versions are `MAJOR.MINOR`. A front-end installs its library where
//! none is loaded and upgrades an older one of the same major version
//! (same functions, same layout); it leaves a newer minor version alone
//! (a newer front-end is rolling out) and refuses to start against another
//! major version, whose layout it cannot read.

use redis::{
    Value,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo},
};

use crate::options::ConnectError;

/// The version of the function library this build installs.
pub const LIBRARY_VERSION: &str = "1.1";

const SOURCE: &str = include_str!("library.lua");

/// The library's code with its version filled in.
pub(crate) fn source() -> String {
    SOURCE.replace("__KV_LIBRARY_VERSION__", LIBRARY_VERSION)
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The version written in a loaded library's code.
fn version_in(code: &str) -> Option<&str> {
    let start = code.find("local VERSION = '")? + "local VERSION = '".len();
    let len = code[start..].find('\'')?;
    Some(&code[start..start + len])
}

/// What to do on one master.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Keep,
    Load,
}

fn plan(node: &str, installed: Option<&str>) -> Result<Plan, ConnectError> {
    let Some(installed) = installed else {
        return Ok(Plan::Load);
    };
    let ours = parse_version(LIBRARY_VERSION).expect("the library version is MAJOR.MINOR");
    match parse_version(installed) {
        Some((major, minor)) if major == ours.0 => Ok(if minor < ours.1 {
            Plan::Load
        } else {
            Plan::Keep
        }),
        _ => Err(ConnectError::IncompatibleLibrary {
            node: node.to_string(),
            found: installed.to_string(),
            ours: LIBRARY_VERSION,
        }),
    }
}

/// The `library_code` of library `kv` in a FUNCTION LIST reply, if loaded.
fn installed_code(reply: &Value) -> Option<String> {
    let libraries = match reply {
        Value::Array(items) => items,
        _ => return None,
    };
    for library in libraries {
        let fields: Vec<(&Value, &Value)> = match library {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        let field = |name: &str| {
            fields.iter().find_map(|(k, v)| match k {
                Value::BulkString(b) if b == name.as_bytes() => Some(*v),
                Value::SimpleString(s) if s == name => Some(*v),
                _ => None,
            })
        };
        let is_kv = matches!(field("library_name"), Some(Value::BulkString(b)) if b == b"kv");
        if let (true, Some(Value::BulkString(code))) = (is_kv, field("library_code")) {
            return Some(String::from_utf8_lossy(code).into_owned());
        }
    }
    None
}

/// Checks the cluster, then installs or upgrades the library on every
/// master as [the module docs](self) say.
pub(crate) async fn install(conn: &mut ClusterConnection) -> Result<(), ConnectError> {
    let info: Value = conn
        .route_command(
            redis::cmd("CLUSTER").arg("INFO").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await
        .map_err(ConnectError::Redis)?;
    let info = match info {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    };
    if !info.contains("cluster_state:ok") {
        let state = info
            .lines()
            .find(|l| l.starts_with("cluster_state:"))
            .unwrap_or("cluster_state unknown")
            .trim()
            .to_string();
        return Err(ConnectError::Unhealthy { state });
    }
    let listed: Value = conn
        .route_command(
            redis::cmd("FUNCTION")
                .arg("LIST")
                .arg("LIBRARYNAME")
                .arg("kv")
                .arg("WITHCODE")
                .clone(),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await
        .map_err(ConnectError::Redis)?;
    let per_node = match listed {
        Value::Map(pairs) => pairs,
        other => vec![(Value::BulkString(b"the cluster".to_vec()), other)],
    };
    let source = source();
    for (node, reply) in per_node {
        let node = match &node {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        let code = installed_code(&reply);
        let installed = code.as_deref().map(|c| version_in(c).unwrap_or("unknown"));
        if plan(&node, installed)? == Plan::Load {
            let (host, port) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
                .ok_or_else(|| ConnectError::Unhealthy {
                    state: format!("a master has an address that is not host:port: {node}"),
                })?;
            let _: Value = conn
                .route_command(
                    redis::cmd("FUNCTION")
                        .arg("LOAD")
                        .arg("REPLACE")
                        .arg(&source)
                        .clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                )
                .await
                .map_err(ConnectError::Redis)?;
            tracing::info!(%node, version = LIBRARY_VERSION, previous = ?installed, "installed the kv function library");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_written_into_the_code_and_read_back() {
        assert_eq!(version_in(&source()), Some(LIBRARY_VERSION));
        assert!(!source().contains("__KV_LIBRARY_VERSION__"));
    }

    #[test]
    fn same_major_upgrades_or_keeps_and_another_major_is_refused() {
        let (major, minor) = parse_version(LIBRARY_VERSION).unwrap();
        assert_eq!(plan("n", None).unwrap(), Plan::Load);
        assert_eq!(plan("n", Some(LIBRARY_VERSION)).unwrap(), Plan::Keep);
        assert_eq!(
            plan("n", Some(&format!("{major}.{}", minor + 1))).unwrap(),
            Plan::Keep
        );
        if minor > 0 {
            assert_eq!(
                plan("n", Some(&format!("{major}.{}", minor - 1))).unwrap(),
                Plan::Load
            );
        }
        let err = plan("10.0.0.1:7000", Some(&format!("{}.0", major + 1))).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("10.0.0.1:7000") && message.contains(LIBRARY_VERSION),
            "{message}"
        );
        assert!(plan("n", Some("garbage")).is_err());
    }
}
