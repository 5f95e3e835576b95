//! The backend: connecting, the reads, and the [`Backend`] methods.

use std::{future::Future, sync::Arc};

use dashmap::DashMap;
use kv_engine::{
    Backend, EngineError, Entry, ListPage, ListQuery, Txn, TxnOutcome, WatchError, WatchTarget,
    project::ProjectName, watch::Subscription,
};
use redis::{
    Value,
    cluster::ClusterClient,
    cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo},
};

use crate::{
    catalog,
    codec::{array, entries, int},
    inner::{Inner, unreachable},
    keys, library,
    options::{ConnectError, RedisOptions},
    queues::Queues,
    watch, writer,
};

/// The engine's [`Backend`] over a Redis Cluster. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    pub(crate) inner: Arc<Inner>,
}

impl RedisBackend {
    /// Connects to the cluster, checks that it serves every slot, and
    /// installs (or upgrades) the function library on every master.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kv_redis::ConnectError> {
    /// let options = kv_redis::RedisOptions::new(vec!["redis://127.0.0.1:7000".into()]);
    /// let backend = kv_redis::RedisBackend::connect(options).await?;
    /// # let _ = backend; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConnectError`] naming what is wrong.
    pub async fn connect(options: RedisOptions) -> Result<Self, ConnectError> {
        if options.seeds.is_empty() {
            return Err(ConnectError::NoSeeds);
        }
        if let Err(e) = ProjectName::parse(&options.namespace) {
            return Err(ConnectError::Namespace(e.to_string()));
        }
        let mut builder = ClusterClient::builder(options.seeds.clone())
            .connection_timeout(std::time::Duration::from_secs(2))
            .response_timeout(std::time::Duration::from_secs(5));
        if let Some(user) = &options.username {
            builder = builder.username(user);
        }
        if let Some(password) = &options.password {
            builder = builder.password(password);
        }
        if let Some(ca) = &options.tls_ca {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            });
        }
        let client = builder.build().map_err(ConnectError::Redis)?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(ConnectError::Redis)?;
        library::install(&mut conn).await?;
        let wait_replicas = match options.wait_replicas {
            Some(n) => n,
            None => u32::from(has_replicas(&mut conn).await.map_err(ConnectError::Redis)?),
        };
        let inner = Arc::new(Inner {
            wait_replicas,
            conn,
            names: keys::Names::new(&options.namespace),
            options,
            incarnations: DashMap::new(),
            writes: Queues::default(),
            catalog: Arc::default(),
            generations: DashMap::new(),
        });
        let loaded = catalog::load(&inner).await.map_err(ConnectError::Catalog)?;
        let last_id = loaded.last_id.clone();
        catalog::replace(&inner, loaded);
        tokio::spawn(catalog::follow(Arc::downgrade(&inner), last_id));
        Ok(Self { inner })
    }

    /// Registered projects and tokens, kept current by following the
    /// cluster's catalog stream.
    pub fn catalog(&self) -> &Arc<kv_engine::catalog::Catalog> {
        &self.inner.catalog
    }

    /// Replicas each write waits for before it is acknowledged.
    pub fn wait_replicas(&self) -> u32 {
        self.inner.wait_replicas
    }

    /// Whether the cluster answers and serves every slot (for health).
    ///
    /// Every master is asked, and must answer within two seconds: a master
    /// that does not answer serves no slot, whatever the others say; a
    /// replica that does not answer does not matter.
    pub async fn healthy(&self) -> bool {
        let mut conn = self.inner.conn.clone();
        let asked = conn.route_command(
            redis::cmd("CLUSTER").arg("INFO").clone(),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        );
        let ok = |reply: &Value| match reply {
            Value::BulkString(b) => String::from_utf8_lossy(b).contains("cluster_state:ok"),
            Value::VerbatimString { text, .. } => text.contains("cluster_state:ok"),
            _ => false,
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), asked).await {
            Ok(Ok(Value::Map(answers))) => {
                !answers.is_empty() && answers.iter().all(|(_, a)| ok(a))
            }
            Ok(Ok(single)) => ok(&single),
            _ => false,
        }
    }

    async fn read(
        &self,
        project: &ProjectName,
        keys: &[&str],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        let reply = self
            .inner
            .call("kv_get", project, |cmd| {
                for key in keys {
                    cmd.arg(*key);
                }
            })
            .await
            .map_err(unreachable(format!("reading project {project}")))?;
        let mut parts = array(reply)?.into_iter();
        let (Some(now), Some(incarnation), Some(_version), Some(found)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(crate::codec::malformed("a short kv_get reply"));
        };
        let now = int(&now)?;
        self.inner.saw_incarnation(project, int(&incarnation)?);
        Ok(entries(found)?
            .into_iter()
            .map(|e| e.filter(|e| e.live(now)).map(|e| e.entry()))
            .collect())
    }
}

/// Whether the cluster has replicas: a node flagged as one, or a master
/// that serves no slot (right after `redis-cli --cluster create`, gossip
/// still shows the replicas-to-be as masters without slots for a few
/// seconds; counting only the flag would then silently wait for none).
async fn has_replicas(
    conn: &mut redis::cluster_async::ClusterConnection,
) -> Result<bool, redis::RedisError> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(nodes.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let flags = fields.get(2).copied().unwrap_or("");
        // Fields 8 on are the node's slot ranges.
        flags.contains("slave") || (flags.contains("master") && fields.len() <= 8)
    }))
}

/// The ZRANGEBYLEX bounds of a page: after `start_after` (or from the
/// prefix), up to the end of the prefix.
fn lex_bounds(query: &ListQuery) -> (Vec<u8>, Vec<u8>) {
    let prefix = query.prefix.as_bytes();
    let min = if !query.start_after.is_empty() && query.start_after.as_bytes() >= prefix {
        [b"(".as_slice(), query.start_after.as_bytes()].concat()
    } else if prefix.is_empty() {
        b"-".to_vec()
    } else {
        [b"[".as_slice(), prefix].concat()
    };
    // Keys are UTF-8, so no key byte is 0xff: the prefix's successor is
    // the prefix with its last byte raised.
    let max = match prefix.split_last() {
        None => b"+".to_vec(),
        Some((&last, head)) if last < 0xff => [b"(".as_slice(), head, &[last + 1]].concat(),
        Some(_) => b"+".to_vec(),
    };
    (min, max)
}

impl Backend for RedisBackend {
    async fn get(&self, project: &ProjectName, key: &str) -> Result<Option<Entry>, EngineError> {
        Ok(self.read(project, &[key]).await?.pop().flatten())
    }

    async fn get_many<K: AsRef<str> + Sync>(
        &self,
        project: &ProjectName,
        keys: &[K],
    ) -> Result<Vec<Option<Entry>>, EngineError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        self.read(project, &keys).await
    }

    async fn has(&self, project: &ProjectName, key: &str) -> Result<bool, EngineError> {
        Ok(self.get(project, key).await?.is_some())
    }

    async fn list(
        &self,
        project: &ProjectName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        let limit = query.limit.max(1);
        let mut page = ListPage::default();
        let mut query = query.clone();
        let mut first = true;
        loop {
            let (min, max) = lex_bounds(&query);
            // One more than asked, to know whether more follow.
            let want = limit + 1 - page.entries.len();
            let reply = self
                .inner
                .call("kv_list", project, |cmd| {
                    cmd.arg(min).arg(max).arg(want);
                })
                .await
                .map_err(unreachable(format!("listing project {project}")))?;
            let mut parts = array(reply)?.into_iter();
            let (Some(now), Some(incarnation), Some(version), Some(names), Some(found)) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(crate::codec::malformed("a short kv_list reply"));
            };
            let now = int(&now)?;
            self.inner.saw_incarnation(project, int(&incarnation)?);
            if first {
                page.version = int(&version)?;
                first = false;
            }
            let names = array(names)?;
            let fetched = names.len();
            let mut last = None;
            for (name, stored) in names.into_iter().zip(entries(found)?) {
                let name = match crate::codec::bytes(name)? {
                    Some(raw) => String::from_utf8(raw)
                        .map_err(|_| crate::codec::malformed("a key that is not UTF-8"))?,
                    None => continue,
                };
                if let Some(stored) = stored.filter(|s| s.live(now)) {
                    if page.entries.len() == limit {
                        page.more = true;
                        return Ok(page);
                    }
                    let mut entry = stored.entry();
                    if query.keys_only {
                        entry.value = bytes::Bytes::new();
                    }
                    page.entries.push((Arc::from(name.as_str()), entry));
                }
                last = Some(name);
            }
            // Fewer than asked: the range is exhausted. Else dead keys
            // took places: go on after the last one read.
            match last {
                Some(last) if fetched == want => query.start_after = last,
                _ => return Ok(page),
            }
        }
    }

    fn submit(
        &self,
        project: &ProjectName,
        txn: Txn,
    ) -> impl Future<Output = Result<Arc<TxnOutcome>, EngineError>> + Send + 'static {
        writer::submit(&self.inner, project, txn)
    }

    fn watch(
        &self,
        project: &ProjectName,
        target: WatchTarget,
        from_version: Option<u64>,
    ) -> impl Future<Output = Result<Subscription, WatchError>> + Send {
        watch::subscribe(
            Arc::clone(&self.inner),
            project.clone(),
            target,
            from_version,
        )
    }

    fn expire_due(&self, limit: usize) -> impl Future<Output = usize> + Send {
        crate::expiry::sweep(Arc::clone(&self.inner), limit)
    }

    fn incarnation(&self, project: &ProjectName) -> u64 {
        self.inner.incarnations.get(project).map_or(0, |i| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(prefix: &str, start_after: &str) -> ListQuery {
        ListQuery {
            prefix: prefix.into(),
            start_after: start_after.into(),
            limit: 10,
            keys_only: false,
        }
    }

    #[test]
    fn pages_are_lexicographic_ranges() {
        assert_eq!(lex_bounds(&query("", "")), (b"-".to_vec(), b"+".to_vec()));
        assert_eq!(
            lex_bounds(&query("ab", "")),
            (b"[ab".to_vec(), b"(ac".to_vec())
        );
        assert_eq!(
            lex_bounds(&query("ab", "abc")),
            (b"(abc".to_vec(), b"(ac".to_vec())
        );
        // A start before the prefix starts at the prefix.
        assert_eq!(
            lex_bounds(&query("b", "a")),
            (b"[b".to_vec(), b"(c".to_vec())
        );
        assert_eq!(lex_bounds(&query("", "k")), (b"(k".to_vec(), b"+".to_vec()));
    }
}
