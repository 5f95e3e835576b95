//! The gRPC `kv.v1.KvService`: validate, resolve the project, call the
//! engine, convert back. Nothing else happens here.

use std::{pin::Pin, sync::Arc};

mod guard;
mod pipeline;

use kv_proto::wire::{
    self as wire, BatchRequest, BatchResponse, ClearRequest, ClearResponse, DeleteManyRequest,
    DeleteManyResponse, DeleteRequest, DeleteResponse, GetManyRequest, GetManyResponse, GetRequest,
    GetResponse, HasRequest, HasResponse, IncrRequest, IncrResponse, ListRequest, ListResponse,
    MergeRequest, MergeResponse, PipelineRequest, PipelineResponse, SetManyRequest,
    SetManyResponse, SetRequest, SetResponse, WatchEvent, WatchRequest, kv_service_server,
};
use prost::Message;

use crate::status::{engine_status, watch_status};
use sha2::Digest;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use kv_engine::{
    Backend, Check, Entry, ListQuery, Op, OpOutcome, RequestId, Ttl, Txn, TxnOutcome, WatchError,
    WatchTarget, jsonops,
    project::ProjectName,
    value::{self, ValueError},
    watch::{Event, EventKind, Lagged},
};

use crate::{
    auth::{Access, Auth},
    config::{DEFAULT_LIST_LIMIT, Limits, MAX_LIST_LIMIT, MAX_REQUEST_ID_BYTES},
};

pub use kv_proto::contract::{CALL_PROJECTS_HEADER, PROJECT_HEADER};

use crate::metadata::ProjectError;

/// A request the service refuses before it reaches the engine.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request's project name cannot be used.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The key is empty.
    #[error("key is empty; keys must be 1 to {max} bytes")]
    EmptyKey {
        /// The key limit.
        max: usize,
    },
    /// The key is over the limit.
    #[error("key is {len} bytes; the limit is {max} bytes")]
    KeyTooLong {
        /// Size of the refused key.
        len: usize,
        /// The key limit.
        max: usize,
    },
    /// The value was refused.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// `ttl_ms` is 0.
    #[error("ttl_ms is 0; it must be 1 to {max} ms (omit it for no expiry)")]
    TtlZero {
        /// The TTL limit.
        max: u64,
    },
    /// `ttl_ms` is over the limit.
    #[error("ttl_ms is {ttl_ms}; the limit is {max} ms")]
    TtlTooLong {
        /// The refused TTL.
        ttl_ms: u64,
        /// The TTL limit.
        max: u64,
    },
    /// Two fields that exclude each other were both given.
    #[error("{0}")]
    Conflict(&'static str),
    /// `if_version` or a version check is 0.
    #[error("{field} is 0; versions start at 1 (use if_absent / absent for a missing key)")]
    VersionZero {
        /// The field.
        field: &'static str,
    },
    /// An increment's delta is not a finite number within ±2^53.
    #[error("delta is {delta}; it must be a finite number within ±2^53 (9007199254740992)")]
    BadDelta {
        /// The refused delta.
        delta: f64,
    },
    /// A multi-key call has too many (or no) items.
    #[error("{what} has {count} items; it must have 1 to {max}")]
    Count {
        /// Which list.
        what: &'static str,
        /// How many it had.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A batch op without its kind.
    #[error("ops[{index}] has none of set, delete, incr or merge")]
    EmptyOp {
        /// Its index.
        index: usize,
    },
    /// A check without its condition.
    #[error("checks[{index}] has neither version nor absent")]
    EmptyCheck {
        /// Its index.
        index: usize,
    },
    /// A List limit over the maximum.
    #[error("limit is {limit}; the maximum is {max} (0 means {default})")]
    ListLimit {
        /// The refused limit.
        limit: u32,
        /// The maximum.
        max: usize,
        /// The default.
        default: usize,
    },
    /// The request id is too long.
    #[error("request_id is {len} bytes; the limit is {max} bytes")]
    RequestIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field of a multi-key request was refused; names where.
    #[error("{at}: {source}")]
    At {
        /// Where, like `ops[3].set.value`.
        at: String,
        /// What.
        #[source]
        source: Box<RequestError>,
    },
    /// A response would be larger than the message limit.
    #[error(
        "the response would be over {limit} bytes (the message limit); ask for fewer or smaller keys"
    )]
    ResponseTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl RequestError {
    fn at(self, at: impl Into<String>) -> Self {
        Self::At {
            at: at.into(),
            source: Box::new(self),
        }
    }

    fn is_resource(&self) -> bool {
        match self {
            Self::KeyTooLong { .. }
            | Self::Value(ValueError::TooLarge { .. })
            | Self::RequestIdTooLong { .. }
            | Self::ResponseTooLarge { .. } => true,
            // Too many is a limit; none at all is a malformed request.
            Self::Count { count, .. } => *count > 0,
            Self::At { source, .. } => source.is_resource(),
            _ => false,
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        // Over a size or count limit: RESOURCE_EXHAUSTED; anything else
        // malformed: INVALID_ARGUMENT.
        if e.is_resource() {
            Status::resource_exhausted(e.to_string())
        } else {
            Status::invalid_argument(e.to_string())
        }
    }
}

/// The project a call acts on, and the incarnation of it the caller was
/// admitted to: writes carry it to the engine, reads check it afterwards,
/// so a call admitted just before its project was deleted and recreated
/// can touch neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) project: ProjectName,
    pub(crate) incarnation: u64,
}

/// The status of a call or stream whose project was deleted.
pub(crate) fn project_deleted(project: &ProjectName) -> Status {
    Status::not_found(format!(
        "project {project} was deleted; a project created again under its name is a new project that shares nothing with it"
    ))
}

/// The `kv.v1.KvService` implementation over any [`Backend`].
pub struct KvService<B> {
    backend: Arc<B>,
    limits: Limits,
    auth: Arc<Auth>,
    /// Turns true when the server starts shutting down: open watches end.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Longest a pipelined call may run (`--max-request-time-ms`): the
    /// transport's per-request cap sees only the stream, not its calls.
    max_call_time: std::time::Duration,
}

// Not derived: that would require `B: Clone`, and the backend is shared.
impl<B> Clone for KvService<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            limits: self.limits.clone(),
            auth: self.auth.clone(),
            stopping: self.stopping.clone(),
            max_call_time: self.max_call_time,
        }
    }
}

impl<B> KvService<B> {
    /// A service answering from `backend` under `limits`, admitting calls
    /// through `auth`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::memory::MemoryStore;
    /// use kv_server::{auth::Auth, config::Limits, service::KvService};
    /// let auth = Arc::new(Auth::new(None, Default::default()));
    /// let service = KvService::new(Arc::new(MemoryStore::new()), Limits::default(), auth);
    /// let _grpc = kv_proto::wire::kv_service_server::KvServiceServer::new(service);
    /// ```
    pub fn new(backend: Arc<B>, limits: Limits, auth: Arc<Auth>) -> Self {
        Self {
            backend,
            limits,
            auth,
            stopping: tokio::sync::watch::Sender::new(false).subscribe(),
            max_call_time: crate::config::Config::default().max_request_time,
        }
    }

    /// Ends open watches (UNAVAILABLE, naming the version to resume from)
    /// once `stopping` turns true, so they do not hold a shutdown's drain.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::memory::MemoryStore;
    /// use kv_server::{auth::Auth, config::Limits, service::KvService};
    /// let (stop, stopping) = tokio::sync::watch::channel(false);
    /// let auth = Arc::new(Auth::new(None, Default::default()));
    /// let service = KvService::new(Arc::new(MemoryStore::new()), Limits::default(), auth)
    ///     .with_stopping(stopping);
    /// stop.send_replace(true);
    /// # let _ = service;
    /// ```
    pub fn with_stopping(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Caps each call of a `Pipeline` stream at `limit`, as
    /// `--max-request-time-ms` caps a unary request.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use kv_engine::memory::MemoryStore;
    /// use kv_server::{auth::Auth, config::Limits, service::KvService};
    /// let auth = Arc::new(Auth::new(None, Default::default()));
    /// let service = KvService::new(Arc::new(MemoryStore::new()), Limits::default(), auth)
    ///     .with_max_call_time(Duration::from_secs(5));
    /// # let _ = service;
    /// ```
    pub fn with_max_call_time(mut self, limit: std::time::Duration) -> Self {
        self.max_call_time = limit;
        self
    }

    fn key<'k>(&self, key: &'k str) -> Result<&'k str, RequestError> {
        let max = self.limits.max_key_bytes;
        match key.len() {
            0 => Err(RequestError::EmptyKey { max }),
            len if len > max => Err(RequestError::KeyTooLong { len, max }),
            _ => Ok(key),
        }
    }

    fn ttl(&self, ttl_ms: Option<u64>) -> Result<Option<u64>, RequestError> {
        let max = self.limits.max_ttl_ms;
        match ttl_ms {
            Some(0) => Err(RequestError::TtlZero { max }),
            Some(ttl_ms) if ttl_ms > max => Err(RequestError::TtlTooLong { ttl_ms, max }),
            ttl => Ok(ttl),
        }
    }

    fn value(&self, encoded: &[u8]) -> Result<Box<[u8]>, RequestError> {
        Ok(value::canonicalize(encoded, self.limits.max_value_bytes)?)
    }

    fn count(&self, what: &'static str, count: usize) -> Result<(), RequestError> {
        let max = self.limits.max_batch_ops;
        if count == 0 || count > max {
            return Err(RequestError::Count { what, count, max });
        }
        Ok(())
    }

    fn set_op(&self, op: &wire::SetOp) -> Result<Op, RequestError> {
        let key = self.key(&op.key)?;
        let value = self.value(&op.value).map_err(|e| e.at("value"))?;
        let ttl = match (self.ttl(op.ttl_ms)?, op.keep_ttl) {
            (Some(_), true) => {
                return Err(RequestError::Conflict(
                    "ttl_ms and keep_ttl exclude each other: give one or neither",
                ));
            }
            (Some(ms), false) => Ttl::After(ms),
            (None, true) => Ttl::Keep,
            (None, false) => Ttl::Never,
        };
        Ok(Op::Set {
            key: key.into(),
            value,
            ttl,
        })
    }

    fn incr_op(&self, key: &str, delta: f64, ttl_ms: Option<u64>) -> Result<Op, RequestError> {
        let key = self.key(key)?;
        if !delta.is_finite() || delta.abs() > jsonops::MAX_EXACT {
            return Err(RequestError::BadDelta { delta });
        }
        Ok(Op::Incr {
            key: key.into(),
            delta,
            ttl_ms: self.ttl(ttl_ms)?,
        })
    }

    fn merge_op(&self, key: &str, patch: &[u8], ttl_ms: Option<u64>) -> Result<Op, RequestError> {
        let key = self.key(key)?;
        let patch = self.value(patch).map_err(|e| e.at("patch"))?;
        Ok(Op::Merge {
            key: key.into(),
            patch,
            ttl_ms: self.ttl(ttl_ms)?,
        })
    }

    /// The request id of a mutating call, bound to a digest of the request
    /// (without the id) so the same id with another request is caught.
    fn request_id<M: Message + Clone>(
        method: &str,
        id: &str,
        request: &M,
        clear_id: impl FnOnce(&mut M),
    ) -> Result<Option<RequestId>, RequestError> {
        if id.is_empty() {
            return Ok(None);
        }
        if id.len() > MAX_REQUEST_ID_BYTES {
            return Err(RequestError::RequestIdTooLong {
                len: id.len(),
                max: MAX_REQUEST_ID_BYTES,
            });
        }
        let mut bare = request.clone();
        clear_id(&mut bare);
        let mut digest = sha2::Sha256::new();
        digest.update(method.as_bytes());
        digest.update([0]);
        digest.update(bare.encode_to_vec());
        let digest = digest.finalize();
        let fingerprint = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        Ok(Some(RequestId {
            id: id.into(),
            fingerprint,
        }))
    }

    fn txn(
        &self,
        scope: &Scope,
        checks: Vec<Check>,
        ops: Vec<Op>,
        request: Option<RequestId>,
    ) -> Txn {
        Txn {
            checks,
            ops,
            request,
            max_value_bytes: self.limits.max_value_bytes,
            incarnation: Some(scope.incarnation),
        }
    }
}

// The unary methods' work, shared with `Pipeline`, which runs the same
// calls for a stream's frames.
impl<B: Backend> KvService<B> {
    /// Admits a call: its project and the incarnation it is admitted to.
    fn scope(&self, metadata: &MetadataMap, access: Access) -> Result<Scope, Status> {
        let project = self.auth.project_for(metadata, access)?;
        Ok(self.scope_of(project))
    }

    pub(crate) fn scope_of(&self, project: ProjectName) -> Scope {
        let incarnation = self.backend.incarnation(&project);
        Scope {
            project,
            incarnation,
        }
    }

    /// Refuses what a read found when the project it was admitted to is no
    /// longer there: the read may have seen a successor's data.
    fn still(&self, scope: &Scope) -> Result<(), Status> {
        if self.backend.incarnation(&scope.project) == scope.incarnation {
            Ok(())
        } else {
            Err(project_deleted(&scope.project))
        }
    }

    async fn get_in(&self, scope: &Scope, r: &GetRequest) -> Result<GetResponse, Status> {
        let key = self.key(&r.key)?;
        let entry = self
            .backend
            .get(&scope.project, key)
            .await
            .map_err(engine_status)?;
        self.still(scope)?;
        Ok(get_response(entry, scope.incarnation))
    }

    async fn set_in(&self, scope: &Scope, r: &SetRequest) -> Result<SetResponse, Status> {
        let op = self.set_op(&wire::SetOp {
            key: r.key.clone(),
            value: r.value.clone(),
            ttl_ms: r.ttl_ms,
            keep_ttl: r.keep_ttl,
        })?;
        let checks = match (r.if_absent, r.if_version) {
            (true, Some(_)) => {
                return Err(RequestError::Conflict(
                    "if_absent and if_version exclude each other: give one or neither",
                )
                .into());
            }
            (_, Some(0)) => {
                return Err(RequestError::VersionZero {
                    field: "if_version",
                }
                .into());
            }
            (true, None) => vec![Check::Absent {
                key: r.key.as_str().into(),
            }],
            (false, Some(version)) => vec![Check::Version {
                key: r.key.as_str().into(),
                version,
            }],
            (false, None) => Vec::new(),
        };
        let id = Self::request_id("Set", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(&scope.project, self.txn(scope, checks, vec![op], id))
            .await
            .map_err(engine_status)?;
        let version = if outcome.applied {
            match first(&outcome)? {
                OpOutcome::Set { version } => *version,
                _ => 0,
            }
        } else {
            outcome.current_version
        };
        Ok(SetResponse {
            applied: outcome.applied,
            version,
        })
    }

    async fn has_in(&self, scope: &Scope, r: &HasRequest) -> Result<HasResponse, Status> {
        let key = self.key(&r.key)?;
        let exists = self
            .backend
            .has(&scope.project, key)
            .await
            .map_err(engine_status)?;
        self.still(scope)?;
        Ok(HasResponse { exists })
    }

    async fn delete_in(&self, scope: &Scope, r: &DeleteRequest) -> Result<DeleteResponse, Status> {
        let key = self.key(&r.key)?;
        let checks = match r.if_version {
            Some(0) => {
                return Err(RequestError::VersionZero {
                    field: "if_version",
                }
                .into());
            }
            Some(version) => vec![Check::Version {
                key: key.into(),
                version,
            }],
            None => Vec::new(),
        };
        let id = Self::request_id("Delete", &r.request_id, r, |m| m.request_id.clear())?;
        let op = Op::Delete { key: key.into() };
        let outcome = self
            .backend
            .write(&scope.project, self.txn(scope, checks, vec![op], id))
            .await
            .map_err(engine_status)?;
        let (deleted, version) = match outcome.results.first() {
            Some(OpOutcome::Delete { deleted, version }) => (*deleted, *version),
            _ => (false, outcome.current_version),
        };
        Ok(DeleteResponse { deleted, version })
    }

    async fn incr_in(&self, scope: &Scope, r: &IncrRequest) -> Result<IncrResponse, Status> {
        let op = self.incr_op(&r.key, r.delta, r.ttl_ms)?;
        let id = Self::request_id("Incr", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(&scope.project, self.txn(scope, Vec::new(), vec![op], id))
            .await
            .map_err(engine_status)?;
        match first(&outcome)? {
            OpOutcome::Incr { value, version } => Ok(IncrResponse {
                value: *value,
                version: *version,
            }),
            _ => Err(Status::internal("incr returned another kind of result")),
        }
    }

    async fn merge_in(&self, scope: &Scope, r: &MergeRequest) -> Result<MergeResponse, Status> {
        let op = self.merge_op(&r.key, &r.patch, r.ttl_ms)?;
        let id = Self::request_id("Merge", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(&scope.project, self.txn(scope, Vec::new(), vec![op], id))
            .await
            .map_err(engine_status)?;
        match first(&outcome)? {
            OpOutcome::Merge { value, version } => Ok(MergeResponse {
                value: value.clone(),
                version: *version,
            }),
            _ => Err(Status::internal("merge returned another kind of result")),
        }
    }
}

fn get_response(entry: Option<Entry>, incarnation: u64) -> GetResponse {
    match entry {
        Some(entry) => GetResponse {
            found: true,
            value: entry.value,
            version: entry.version,
            expires_at_ms: entry.expires_at,
            incarnation,
        },
        None => GetResponse {
            incarnation,
            ..GetResponse::default()
        },
    }
}

fn first(outcome: &TxnOutcome) -> Result<&OpOutcome, Status> {
    outcome
        .results
        .first()
        .ok_or_else(|| Status::internal("a write returned no result"))
}

fn op_result(result: &OpOutcome) -> wire::OpResult {
    use wire::op_result::Result as R;
    let (version, result) = match result {
        OpOutcome::Set { version } => (*version, None),
        OpOutcome::Delete { deleted, version } => (*version, Some(R::Deleted(*deleted))),
        OpOutcome::Incr { value, version } => (*version, Some(R::Number(*value))),
        OpOutcome::Merge { value, version } => (*version, Some(R::Value(value.clone()))),
        OpOutcome::Clear { version, .. } => (*version, None),
    };
    wire::OpResult { version, result }
}

fn watch_event(event: &Event, incarnation: u64) -> WatchEvent {
    let kind = match event.kind {
        EventKind::Set => wire::EventKind::Set,
        EventKind::Deleted => wire::EventKind::Deleted,
        EventKind::Expired => wire::EventKind::Expired,
        EventKind::Cleared => wire::EventKind::Cleared,
    };
    WatchEvent {
        kind: kind as i32,
        key: event.key.to_string(),
        value: event.value.clone().unwrap_or_default(),
        version: event.version,
        expires_at_ms: (event.expires_at != 0).then_some(event.expires_at),
        incarnation,
    }
}

/// Resolves once `flag` is true (never, if its sender is gone first).
async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Events sent to a watcher per wake-up; bounds the work between checks
/// for a hang-up.
const WATCH_BATCH: usize = 256;
/// Events queued for one watcher's connection before the history itself
/// has to hold them.
const WATCH_QUEUE: usize = 64;

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

type PipelineStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<PipelineResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> kv_service_server::KvService for KvService<B> {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        Ok(Response::new(self.get_in(&scope, request.get_ref()).await?))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        Ok(Response::new(self.set_in(&scope, request.get_ref()).await?))
    }

    async fn has(&self, request: Request<HasRequest>) -> Result<Response<HasResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        Ok(Response::new(self.has_in(&scope, request.get_ref()).await?))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        Ok(Response::new(
            self.delete_in(&scope, request.get_ref()).await?,
        ))
    }

    async fn clear(
        &self,
        request: Request<ClearRequest>,
    ) -> Result<Response<ClearResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let r = request.get_ref();
        let id = Self::request_id("Clear", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(
                &scope.project,
                self.txn(&scope, Vec::new(), vec![Op::Clear], id),
            )
            .await
            .map_err(engine_status)?;
        let (deleted, version) = match first(&outcome)? {
            OpOutcome::Clear { removed, version } => (*removed, *version),
            _ => (0, 0),
        };
        Ok(Response::new(ClearResponse { deleted, version }))
    }

    async fn incr(&self, request: Request<IncrRequest>) -> Result<Response<IncrResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        Ok(Response::new(
            self.incr_in(&scope, request.get_ref()).await?,
        ))
    }

    async fn merge(
        &self,
        request: Request<MergeRequest>,
    ) -> Result<Response<MergeResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        Ok(Response::new(
            self.merge_in(&scope, request.get_ref()).await?,
        ))
    }

    async fn batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let r = request.get_ref();
        self.count("ops", r.ops.len())?;
        if r.checks.len() > self.limits.max_batch_ops {
            return Err(RequestError::Count {
                what: "checks",
                count: r.checks.len(),
                max: self.limits.max_batch_ops,
            }
            .into());
        }
        let mut checks = Vec::with_capacity(r.checks.len());
        for (i, check) in r.checks.iter().enumerate() {
            let at = |e: RequestError| e.at(format!("checks[{i}]"));
            let key: Box<str> = self.key(&check.key).map_err(at)?.into();
            checks.push(match check.expect {
                Some(wire::check::Expect::Version(0)) => {
                    return Err(at(RequestError::VersionZero { field: "version" }).into());
                }
                Some(wire::check::Expect::Version(version)) => Check::Version { key, version },
                Some(wire::check::Expect::Absent(true)) => Check::Absent { key },
                Some(wire::check::Expect::Absent(false)) | None => {
                    return Err(RequestError::EmptyCheck { index: i }.into());
                }
            });
        }
        let mut ops = Vec::with_capacity(r.ops.len());
        for (i, op) in r.ops.iter().enumerate() {
            use wire::op::Op as O;
            let parsed = match &op.op {
                Some(O::Set(set)) => self.set_op(set).map_err(|e| e.at(format!("ops[{i}].set"))),
                Some(O::Delete(delete)) => self
                    .key(&delete.key)
                    .map(|key| Op::Delete { key: key.into() })
                    .map_err(|e| e.at(format!("ops[{i}].delete"))),
                Some(O::Incr(incr)) => self
                    .incr_op(&incr.key, incr.delta, incr.ttl_ms)
                    .map_err(|e| e.at(format!("ops[{i}].incr"))),
                Some(O::Merge(merge)) => self
                    .merge_op(&merge.key, &merge.patch, merge.ttl_ms)
                    .map_err(|e| e.at(format!("ops[{i}].merge"))),
                None => Err(RequestError::EmptyOp { index: i }),
            };
            ops.push(parsed?);
        }
        let id = Self::request_id("Batch", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(&scope.project, self.txn(&scope, checks, ops, id))
            .await
            .map_err(engine_status)?;
        Ok(Response::new(BatchResponse {
            applied: outcome.applied,
            failed_check: outcome.failed_check,
            current_version: outcome.current_version,
            results: outcome.results.iter().map(op_result).collect(),
        }))
    }

    async fn get_many(
        &self,
        request: Request<GetManyRequest>,
    ) -> Result<Response<GetManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        let keys = &request.get_ref().keys;
        self.count("keys", keys.len())?;
        for (i, key) in keys.iter().enumerate() {
            self.key(key).map_err(|e| e.at(format!("keys[{i}]")))?;
        }
        let entries = self
            .backend
            .get_many(&scope.project, keys)
            .await
            .map_err(engine_status)?;
        self.still(&scope)?;
        let limit = self.limits.max_message_bytes();
        let total: usize = entries.iter().flatten().map(|e| e.value.len() + 32).sum();
        if total > limit {
            return Err(RequestError::ResponseTooLarge { limit }.into());
        }
        Ok(Response::new(GetManyResponse {
            results: entries
                .into_iter()
                .map(|e| get_response(e, scope.incarnation))
                .collect(),
        }))
    }

    async fn set_many(
        &self,
        request: Request<SetManyRequest>,
    ) -> Result<Response<SetManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let r = request.get_ref();
        self.count("entries", r.entries.len())?;
        let ops = r
            .entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                self.set_op(entry)
                    .map_err(|e| e.at(format!("entries[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = Self::request_id("SetMany", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(&scope.project, self.txn(&scope, Vec::new(), ops, id))
            .await
            .map_err(engine_status)?;
        let versions = outcome
            .results
            .iter()
            .map(|r| match r {
                OpOutcome::Set { version } => *version,
                _ => 0,
            })
            .collect();
        Ok(Response::new(SetManyResponse { versions }))
    }

    async fn delete_many(
        &self,
        request: Request<DeleteManyRequest>,
    ) -> Result<Response<DeleteManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let r = request.get_ref();
        self.count("keys", r.keys.len())?;
        let ops = r
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                self.key(key)
                    .map(|key| Op::Delete { key: key.into() })
                    .map_err(|e| e.at(format!("keys[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = Self::request_id("DeleteMany", &r.request_id, r, |m| m.request_id.clear())?;
        let outcome = self
            .backend
            .write(&scope.project, self.txn(&scope, Vec::new(), ops, id))
            .await
            .map_err(engine_status)?;
        let deleted = outcome
            .results
            .iter()
            .filter(|r| matches!(r, OpOutcome::Delete { deleted: true, .. }))
            .count() as u64;
        Ok(Response::new(DeleteManyResponse { deleted }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        let r = request.get_ref();
        let limit = match r.limit {
            0 => DEFAULT_LIST_LIMIT,
            n if n as usize > MAX_LIST_LIMIT => {
                return Err(RequestError::ListLimit {
                    limit: n,
                    max: MAX_LIST_LIMIT,
                    default: DEFAULT_LIST_LIMIT,
                }
                .into());
            }
            n => n as usize,
        };
        let query = ListQuery {
            prefix: r.prefix.clone(),
            start_after: r.start_after.clone(),
            limit,
            keys_only: r.keys_only,
        };
        let page = self
            .backend
            .list(&scope.project, &query)
            .await
            .map_err(engine_status)?;
        self.still(&scope)?;
        // A page of large values is cut short at the message limit; the
        // cursor carries on from there.
        let budget = self.limits.max_message_bytes() / 2;
        let mut used = 0;
        let mut entries = Vec::with_capacity(page.entries.len());
        let mut cut = false;
        for (key, entry) in page.entries {
            used += key.len() + entry.value.len() + 32;
            if used > budget && !entries.is_empty() {
                cut = true;
                break;
            }
            entries.push(wire::ListEntry {
                key: key.to_string(),
                value: entry.value,
                version: entry.version,
                expires_at_ms: entry.expires_at,
            });
        }
        let next_start_after = if page.more || cut {
            entries.last().map(|e| e.key.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListResponse {
            entries,
            next_start_after,
            version: page.version,
            incarnation: scope.incarnation,
        }))
    }

    type PipelineStream = PipelineStream;

    async fn pipeline(
        &self,
        request: Request<tonic::Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        // Bad credentials fail the stream at once rather than every call.
        let caller = self.auth.caller_of(request.metadata())?;
        let bound = caller
            .bound_project(request.metadata())?
            .map(|project| self.scope_of(project));
        if bound.is_some() {
            caller.project(request.metadata(), None, Access::Read)?;
        }
        let (metadata, _, calls) = request.into_parts();
        let guard = guard::StreamGuard::new(
            Arc::clone(&self.auth),
            metadata.clone(),
            bound,
            Access::Read,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(pipeline::PIPELINE_QUEUE);
        tokio::spawn(self.clone().serve_pipeline(metadata, guard, calls, tx));
        let mut response = Response::new(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as Self::PipelineStream
        );
        // Tells clients this server runs each call on the project it names:
        // one that did not would run them all on the stream's project.
        response.metadata_mut().insert(
            CALL_PROJECTS_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        Ok(response)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        let r = request.get_ref();
        let target = match &r.target {
            None => WatchTarget::All,
            Some(wire::watch_request::Target::Key(key)) => {
                WatchTarget::Key(self.key(key).map_err(|e| e.at("key"))?.into())
            }
            Some(wire::watch_request::Target::Prefix(prefix)) if prefix.is_empty() => {
                WatchTarget::All
            }
            Some(wire::watch_request::Target::Prefix(prefix)) => {
                if prefix.len() > self.limits.max_key_bytes {
                    return Err(RequestError::KeyTooLong {
                        len: prefix.len(),
                        max: self.limits.max_key_bytes,
                    }
                    .at("prefix")
                    .into());
                }
                WatchTarget::Prefix(prefix.as_str().into())
            }
        };
        // Subscribed before the response starts: once a client holds the
        // stream, every later change reaches it.
        let mut subscription = self
            .backend
            .watch(&scope.project, target, r.from_version)
            .map_err(watch_status)?;
        let incarnation = subscription.incarnation();
        if incarnation != scope.incarnation {
            // Deleted (and recreated) between the credential check and the
            // subscription: the caller was admitted to the old project.
            return Err(project_deleted(&scope.project));
        }
        if let Some(asked) = r.incarnation
            && asked != incarnation
        {
            return Err(watch_status(WatchError::OtherIncarnation {
                asked,
                incarnation,
            }));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
        let mut stopping = self.stopping.clone();
        let backend = Arc::clone(&self.backend);
        let project = scope.project.clone();
        let mut guard = guard::StreamGuard::new(
            Arc::clone(&self.auth),
            request.into_parts().0,
            Some(scope),
            Access::Read,
        );
        tokio::spawn(async move {
            /// What woke the watch task.
            enum Woke {
                Batch(Result<Vec<Arc<Event>>, Lagged>),
                Recheck,
            }
            loop {
                let woke = tokio::select! {
                    batch = subscription.next_batch(WATCH_BATCH) => Woke::Batch(batch),
                    () = tx.closed() => return,
                    () = guard.changed() => Woke::Recheck,
                    () = until_true(&mut stopping) => {
                        let resume = subscription.cursor();
                        let status = Status::unavailable(format!(
                            "the server is shutting down; watch again with from_version {resume}"
                        ));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let events = match woke {
                    Woke::Recheck => Vec::new(),
                    Woke::Batch(Ok(events)) => events,
                    Woke::Batch(Err(lagged @ Lagged::Behind { .. })) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(lagged.to_string())))
                            .await;
                        return;
                    }
                    Woke::Batch(Err(Lagged::Deleted)) => {
                        let _ = tx.send(Err(project_deleted(&project))).await;
                        return;
                    }
                };
                // Before anything is delivered: a change made after a
                // revocation or deletion is applied after the catalog
                // change, so a batch holding one fails this check.
                if let Err(status) = guard.check(&*backend) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                for event in events {
                    if tx.send(Ok(watch_event(&event, incarnation))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
