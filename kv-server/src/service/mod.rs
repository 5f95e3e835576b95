//! The gRPC `kv.v1.KvService`: validate, resolve the project, call the
//! engine, convert back. Nothing else happens here.

use std::{pin::Pin, sync::Arc};

mod guard;
mod mutate;
mod pipeline;
mod respond;
mod validate;
mod watch;

use kv_engine::{Backend, ListQuery, project::ProjectName};
pub use kv_proto::contract::{CALL_PROJECTS_HEADER, PROJECT_HEADER};
use kv_proto::wire::{
    self as wire, BatchRequest, BatchResponse, ClearRequest, ClearResponse, DeleteManyRequest,
    DeleteManyResponse, DeleteRequest, DeleteResponse, GetManyRequest, GetManyResponse, GetRequest,
    GetResponse, HasRequest, HasResponse, IncrRequest, IncrResponse, ListRequest, ListResponse,
    MergeRequest, MergeResponse, PipelineRequest, PipelineResponse, SetManyRequest,
    SetManyResponse, SetRequest, SetResponse, WatchRequest, kv_service_server,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
pub use validate::RequestError;

use crate::{
    auth::{Access, Auth},
    config::{DEFAULT_LIST_LIMIT, Limits, MAX_LIST_LIMIT},
    status::engine_status,
};

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
        Ok(respond::get_response(entry, scope.incarnation))
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
}

/// Resolves once `flag` is true (never, if its sender is gone first).
async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<wire::WatchEvent, Status>> + Send + 'static>>;

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
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
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
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
    }

    async fn clear(
        &self,
        request: Request<ClearRequest>,
    ) -> Result<Response<ClearResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
    }

    async fn incr(&self, request: Request<IncrRequest>) -> Result<Response<IncrResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
    }

    async fn merge(
        &self,
        request: Request<MergeRequest>,
    ) -> Result<Response<MergeResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
    }

    async fn batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
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
                .map(|e| respond::get_response(e, scope.incarnation))
                .collect(),
        }))
    }

    async fn set_many(
        &self,
        request: Request<SetManyRequest>,
    ) -> Result<Response<SetManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
    }

    async fn delete_many(
        &self,
        request: Request<DeleteManyRequest>,
    ) -> Result<Response<DeleteManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_ref())?.await?;
        Ok(Response::new(response))
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
        self.open_watch(request).map(Response::new)
    }
}
