//! The systems under test: how to connect, and one operation on each.

use std::{sync::Arc, time::Duration};

use kv_proto::v1::{
    DeleteRequest, GetManyRequest, GetRequest, HasRequest, SetManyRequest, SetOp, SetRequest,
    kv_service_client::KvServiceClient,
};
use tonic::{
    Request,
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    cli::{RedisMode, RunArgs, TargetKind, batch_tag},
    etcd::{DeleteRangeRequest, PutRequest, RangeRequest, kv_client::KvClient as EtcdClient},
    workload::{KeySpace, Op, Payload},
};

/// Largest message either way for the gRPC targets, as the SDK's default.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long a Redis reply may take before the call fails, as the kv SDK's
/// default per-call timeout (the redis crate's own default is 500 ms, which
/// a loaded 2-core machine can exceed without anything being wrong).
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to one Redis Cluster node may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed operation: its kind (for counting) and what it said.
#[derive(Debug)]
pub(crate) struct OpError {
    pub(crate) kind: String,
    pub(crate) message: String,
}

impl From<kv_client::Error> for OpError {
    fn from(e: kv_client::Error) -> Self {
        Self {
            kind: format!("{:?}", e.code()),
            message: e.to_string(),
        }
    }
}

impl From<tonic::Status> for OpError {
    fn from(status: tonic::Status) -> Self {
        Self {
            kind: format!("{:?}", status.code()),
            message: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

impl From<redis::RedisError> for OpError {
    fn from(e: redis::RedisError) -> Self {
        Self {
            kind: format!("redis {:?}", e.kind()),
            message: e.to_string(),
        }
    }
}

/// What every connection of a run shares.
pub(crate) struct Shared {
    pub(crate) keys: KeySpace,
    pub(crate) payload: Payload,
    /// The projects the keys live in.
    pub(crate) spread: Spread,
    /// `x-kv-project` for unary calls, one per project of `spread`.
    project_headers: Vec<AsciiMetadataValue>,
    /// `Bearer <token>` for unary calls.
    authorization: Option<AsciiMetadataValue>,
    etcd_serializable: bool,
    /// Redis Cluster batch runs: batch keys carry their task's hash tag, and
    /// this many tasks (tags) read and write them.
    batch_tags: Option<u32>,
}

impl Shared {
    pub(crate) fn new(args: &RunArgs) -> Result<Self, String> {
        let spread = Spread::new(args);
        let project_headers = spread
            .names
            .iter()
            .map(|name| {
                name.parse()
                    .map_err(|_| format!("--project {:?} is not printable ASCII", args.project))
            })
            .collect::<Result<_, _>>()?;
        let authorization = args
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| "--token is not printable ASCII".to_string())?;
        Ok(Self {
            keys: KeySpace::new(args.keys, args.key_bytes),
            payload: Payload::new(args.value_bytes, args.ttl_ms),
            spread,
            project_headers,
            authorization,
            etcd_serializable: args.etcd_serializable,
            batch_tags: args.batch_tags(),
        })
    }

    /// A unary call on the project holding `key`.
    fn unary<T>(&self, key: u64, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        let project = &self.project_headers[self.spread.of(key)];
        metadata.insert("x-kv-project", project.clone());
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        request
    }

    fn ttl_ms(&self, ttl: bool) -> Option<u64> {
        ttl.then(|| u64::try_from(self.payload.ttl.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The kv projects a run's key space is spread over (`--projects`): one
/// run of consecutive keys each, so a preload range splits into few
/// per-project batches.
pub(crate) struct Spread {
    /// `--project` alone, or `<project>-0` to `<project>-<n-1>`.
    pub(crate) names: Vec<String>,
    keys: u64,
}

impl Spread {
    pub(crate) fn new(args: &RunArgs) -> Self {
        let names = if args.projects == 1 {
            vec![args.project.clone()]
        } else {
            (0..args.projects)
                .map(|i| format!("{}-{i}", args.project))
                .collect()
        };
        Self {
            names,
            keys: args.keys,
        }
    }

    /// The index in `names` of the project holding `key` (`key < keys`).
    pub(crate) fn of(&self, key: u64) -> usize {
        if self.names.len() == 1 {
            return 0;
        }
        // 128 bits: `key * projects` overflows u64 for large key spaces.
        let index = u128::from(key) * self.names.len() as u128 / u128::from(self.keys.max(1));
        usize::try_from(index).map_or(self.names.len() - 1, |i| i.min(self.names.len() - 1))
    }

    /// `from..to` cut where the holding project changes, each run with its
    /// project's index.
    fn runs(&self, from: u64, to: u64) -> Vec<(usize, Vec<u64>)> {
        let mut runs: Vec<(usize, Vec<u64>)> = Vec::new();
        for key in from..to {
            let project = self.of(key);
            match runs.last_mut() {
                Some((p, keys)) if *p == project => keys.push(key),
                _ => runs.push((project, vec![key])),
            }
        }
        runs
    }
}

/// One connection (or, for the SDK, one client with its own connection).
/// Clones share it.
// One per task, created once and never moved on the hot path: its size
// does not matter, and boxing would add an indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Conn {
    /// One handle per project of the run's `Spread`, all on one client.
    Sdk(Arc<[kv_client::Project]>),
    Unary(KvServiceClient<Channel>),
    Redis(redis::aio::MultiplexedConnection),
    RedisCluster(ClusterConn),
    Etcd(EtcdClient<Channel>),
}

/// The shared Redis Cluster connection (clones share its per-node
/// multiplexed connections) and the hash tag of one task's batch keys.
#[derive(Clone)]
pub(crate) struct ClusterConn {
    conn: redis::cluster_async::ClusterConnection,
    /// `{b<task>}`, set by `Conn::for_task` for batch workloads.
    tag: Option<String>,
}

/// Opens the run's connections: `--connections` of them per URL (one for
/// Redis multiplexed, one shared cluster connection for Redis Cluster).
pub(crate) async fn connect(args: &RunArgs) -> Result<Vec<Conn>, String> {
    let urls = args.urls();
    if args.target == TargetKind::RedisCluster {
        return Ok(vec![Conn::RedisCluster(cluster(&urls).await?)]);
    }
    // Only the kv targets take several URLs (`RunArgs::validate`). Each
    // round opens one connection to every URL, so the harness, which hands
    // task i connection i mod len, spreads the tasks round-robin over them.
    let rounds = args.effective_connections() / u32::try_from(urls.len()).unwrap_or(u32::MAX);
    let mut conns = Vec::new();
    for url in (0..rounds).flat_map(|_| &urls) {
        let conn = match args.target {
            TargetKind::Sdk => {
                let mut builder = kv_client::Client::builder(url.clone());
                if let Some(token) = &args.token {
                    builder = builder.token(token.clone());
                }
                let client = builder
                    .connect()
                    .await
                    .map_err(|e| format!("cannot connect to kv at {url}: {e}"))?;
                let spread = Spread::new(args);
                Conn::Sdk(spread.names.iter().map(|n| client.project(n)).collect())
            }
            TargetKind::Unary => Conn::Unary(
                KvServiceClient::new(channel(url).await?)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ),
            TargetKind::Redis => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| format!("bad Redis URL {url}: {e}"))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
                Conn::Redis(conn)
            }
            TargetKind::Etcd => Conn::Etcd(
                EtcdClient::new(channel(url).await?)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ),
            TargetKind::RedisCluster => unreachable!("connected above"),
        };
        conns.push(conn);
    }
    debug_assert!(
        args.target != TargetKind::Redis
            || args.redis_mode == RedisMode::Connections
            || conns.len() == 1
    );
    Ok(conns)
}

/// One cluster connection from the seed URLs: the client reads the slot map
/// from the first seed that answers and connects to every master.
async fn cluster(seeds: &[String]) -> Result<ClusterConn, String> {
    let listed = seeds.join(",");
    let client = redis::cluster::ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(REDIS_CONNECT_TIMEOUT)
        .response_timeout(REDIS_RESPONSE_TIMEOUT)
        .build()
        .map_err(|e| format!("bad Redis Cluster seed URLs {listed}: {e}"))?;
    let conn = client
        .get_async_connection()
        .await
        .map_err(|e| format!("cannot connect to Redis Cluster at {listed}: {e}"))?;
    Ok(ClusterConn { conn, tag: None })
}

async fn channel(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad URL {url}: {e}"))?
        // Without TCP_NODELAY a serial caller waits on delayed ACKs; the SDK
        // sets it too.
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

impl Conn {
    /// This connection as caller task `task` uses it: for Redis Cluster
    /// batch workloads, with the task's hash tag on its batch keys.
    pub(crate) fn for_task(mut self, task: u32, shared: &Shared) -> Self {
        if let Conn::RedisCluster(cluster) = &mut self
            && shared.batch_tags.is_some()
        {
            cluster.tag = Some(batch_tag(task));
        }
        self
    }

    /// Runs one operation; returns how many keys it looked for and did not
    /// find (gets, has).
    pub(crate) async fn exec(&mut self, op: &Op, shared: &Shared) -> Result<u64, OpError> {
        match self {
            Conn::Sdk(projects) => {
                let project = &projects[shared.spread.of(op.first_key())];
                sdk(project, op, shared).await
            }
            Conn::Unary(client) => unary(client, op, shared).await,
            Conn::Redis(conn) => plain_redis(conn, op, shared, None).await,
            Conn::RedisCluster(ClusterConn { conn, tag }) => {
                plain_redis(conn, op, shared, tag.as_deref()).await
            }
            Conn::Etcd(client) => etcd(client, op, shared).await,
        }
    }

    /// Writes keys `from..to` with the biggest calls the target has, for
    /// `--preload`.
    pub(crate) async fn write_range(
        &mut self,
        from: u64,
        to: u64,
        shared: &Shared,
    ) -> Result<(), OpError> {
        let keys: Vec<u64> = (from..to).collect();
        match self {
            Conn::Etcd(_) => {
                for key in keys {
                    self.exec(&Op::Set { key, ttl: false }, shared).await?;
                }
                Ok(())
            }
            Conn::RedisCluster(conn) => cluster_write_range(conn, from, to, shared).await,
            _ if shared.spread.names.len() > 1 => {
                // One batch per project: a call writes one project's keys.
                for (_, keys) in shared.spread.runs(from, to) {
                    self.exec(&Op::SetMany { keys, ttl: false }, shared).await?;
                }
                Ok(())
            }
            _ => self
                .exec(&Op::SetMany { keys, ttl: false }, shared)
                .await
                .map(drop),
        }
    }
}

fn missing(found: bool) -> u64 {
    u64::from(!found)
}

async fn sdk(project: &kv_client::Project, op: &Op, shared: &Shared) -> Result<u64, OpError> {
    let name = |n: &u64| shared.keys.name(*n);
    let value = &shared.payload.json;
    match op {
        Op::Get(key) => {
            let found = project.get::<serde_json::Value>(&name(key)).await?;
            Ok(missing(found.is_some()))
        }
        Op::Set { key, ttl: false } => {
            project.set(&name(key), value).await?;
            Ok(0)
        }
        Op::Set { key, ttl: true } => {
            project
                .set_with_ttl(&name(key), value, shared.payload.ttl)
                .await?;
            Ok(0)
        }
        Op::Has(key) => Ok(missing(project.has(&name(key)).await?)),
        Op::Delete(key) => {
            project.delete(&name(key)).await?;
            Ok(0)
        }
        Op::GetMany(keys) => {
            let names: Vec<String> = keys.iter().map(name).collect();
            let found = project.get_many::<serde_json::Value, _>(&names).await?;
            Ok(found.iter().filter(|entry| entry.is_none()).count() as u64)
        }
        Op::SetMany { keys, ttl } => {
            let mut options = kv_client::SetManyOptions::new();
            if *ttl {
                options = options.ttl(shared.payload.ttl);
            }
            project
                .set_many_with(keys.iter().map(|k| (name(k), value)), options)
                .await?;
            Ok(0)
        }
    }
}

async fn unary(
    client: &mut KvServiceClient<Channel>,
    op: &Op,
    shared: &Shared,
) -> Result<u64, OpError> {
    let name = |n: &u64| shared.keys.name(*n);
    match op {
        Op::Get(key) => {
            let reply = client
                .get(shared.unary(*key, GetRequest { key: name(key) }))
                .await?;
            Ok(missing(reply.get_ref().found))
        }
        Op::Set { key, ttl } => {
            let request = SetRequest {
                key: name(key),
                value: Some(shared.payload.proto.clone()),
                ttl_ms: shared.ttl_ms(*ttl),
                ..SetRequest::default()
            };
            client.set(shared.unary(*key, request)).await?;
            Ok(0)
        }
        Op::Has(key) => {
            let reply = client
                .has(shared.unary(*key, HasRequest { key: name(key) }))
                .await?;
            Ok(missing(reply.get_ref().exists))
        }
        Op::Delete(key) => {
            let request = DeleteRequest {
                key: name(key),
                ..DeleteRequest::default()
            };
            client.delete(shared.unary(*key, request)).await?;
            Ok(0)
        }
        Op::GetMany(keys) => {
            let request = GetManyRequest {
                keys: keys.iter().map(name).collect(),
            };
            let reply = client
                .get_many(shared.unary(op.first_key(), request))
                .await?;
            Ok(reply.get_ref().results.iter().filter(|r| !r.found).count() as u64)
        }
        Op::SetMany { keys, ttl } => {
            let entries = keys
                .iter()
                .map(|k| SetOp {
                    key: name(k),
                    value: Some(shared.payload.proto.clone()),
                    ttl_ms: shared.ttl_ms(*ttl),
                    keep_ttl: false,
                })
                .collect();
            let request = SetManyRequest {
                entries,
                request_id: String::new(),
            };
            client
                .set_many(shared.unary(op.first_key(), request))
                .await?;
            Ok(0)
        }
    }
}

/// An operation as plain Redis commands, on one node or on a cluster. In a
/// cluster a pipeline must stay in one slot, so batch keys carry the
/// task's hash tag (always set for batch workloads; see `Conn::for_task`).
async fn plain_redis<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    op: &Op,
    shared: &Shared,
    tag: Option<&str>,
) -> Result<u64, OpError> {
    let name = |n: &u64| shared.keys.name(*n);
    let batch_name = |n: &u64| match tag {
        Some(tag) => shared.keys.tagged_name(tag, *n),
        None => shared.keys.name(*n),
    };
    let value = shared.payload.raw.as_ref();
    match op {
        Op::Get(key) => {
            let found: Option<bytes::Bytes> =
                redis::cmd("GET").arg(name(key)).query_async(conn).await?;
            Ok(missing(found.is_some()))
        }
        Op::Set { key, ttl } => {
            let () = redis_set(name(key), value, shared.ttl_ms(*ttl))
                .query_async(conn)
                .await?;
            Ok(0)
        }
        Op::Has(key) => {
            let exists: u64 = redis::cmd("EXISTS")
                .arg(name(key))
                .query_async(conn)
                .await?;
            Ok(missing(exists > 0))
        }
        Op::Delete(key) => {
            let _deleted: u64 = redis::cmd("DEL").arg(name(key)).query_async(conn).await?;
            Ok(0)
        }
        Op::GetMany(keys) => {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("GET").arg(batch_name(key));
            }
            let found: Vec<Option<bytes::Bytes>> = pipe.query_async(conn).await?;
            Ok(found.iter().filter(|v| v.is_none()).count() as u64)
        }
        Op::SetMany { keys, ttl } => {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.add_command(redis_set(batch_name(key), value, shared.ttl_ms(*ttl)))
                    .ignore();
            }
            let () = pipe.query_async(conn).await?;
            Ok(0)
        }
    }
}

/// `SET key value`, with `PX ttl_ms` when given.
fn redis_set(name: String, value: &[u8], ttl_ms: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(name).arg(value);
    if let Some(ttl_ms) = ttl_ms {
        cmd.arg("PX").arg(ttl_ms);
    }
    cmd
}

/// `--preload` on Redis Cluster: the names the run will read.
async fn cluster_write_range(
    cluster: &ClusterConn,
    from: u64,
    to: u64,
    shared: &Shared,
) -> Result<(), OpError> {
    let value = shared.payload.raw.as_ref();
    match shared.batch_tags {
        // Batch runs use tagged names only: the range under every task's
        // tag, one pipeline (so one slot) per tag.
        Some(tasks) => {
            let mut conn = cluster.conn.clone();
            for task in 0..tasks {
                let tag = batch_tag(task);
                let mut pipe = redis::pipe();
                for n in from..to {
                    pipe.add_command(redis_set(shared.keys.tagged_name(&tag, n), value, None))
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
            }
        }
        // Plain names are spread over every slot: one SET each, all in
        // flight at once (the cluster connection pipelines them per node).
        None => {
            let mut sets = tokio::task::JoinSet::new();
            for n in from..to {
                let cmd = redis_set(shared.keys.name(n), value, None);
                let mut conn = cluster.conn.clone();
                sets.spawn(async move { cmd.query_async::<()>(&mut conn).await });
            }
            while let Some(outcome) = sets.join_next().await {
                outcome.map_err(|e| OpError {
                    kind: "preload".into(),
                    message: format!("a preload write failed: {e}"),
                })??;
            }
        }
    }
    Ok(())
}

async fn etcd(client: &mut EtcdClient<Channel>, op: &Op, shared: &Shared) -> Result<u64, OpError> {
    let name = |n: &u64| bytes::Bytes::from(shared.keys.name(*n).into_bytes());
    match op {
        Op::Get(key) => {
            let request = RangeRequest {
                key: name(key),
                serializable: shared.etcd_serializable,
                count_only: false,
            };
            let reply = client.range(request).await?;
            Ok(missing(!reply.get_ref().kvs.is_empty()))
        }
        Op::Set { key, ttl: false } => {
            let request = PutRequest {
                key: name(key),
                value: shared.payload.raw.clone(),
            };
            client.put(request).await?;
            Ok(0)
        }
        Op::Has(key) => {
            let request = RangeRequest {
                key: name(key),
                serializable: shared.etcd_serializable,
                count_only: true,
            };
            let reply = client.range(request).await?;
            Ok(missing(reply.get_ref().count > 0))
        }
        Op::Delete(key) => {
            client
                .delete_range(DeleteRangeRequest { key: name(key) })
                .await?;
            Ok(0)
        }
        // Refused by `RunArgs::validate`: these never reach here.
        Op::Set { ttl: true, .. } | Op::GetMany(_) | Op::SetMany { .. } => Err(OpError {
            kind: "unsupported".into(),
            message: "etcd runs support single-key operations without TTL only".into(),
        }),
    }
}
