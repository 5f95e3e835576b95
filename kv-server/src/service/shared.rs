//! The service's state and what every handler shares: admitting a call
//! to a project incarnation ([`Scope`]), and the reads.

use std::{pin::Pin, sync::Arc};

use kv_engine::{Backend, project::ProjectName};
use kv_proto::wire::{
    self, GetManyRequest, GetManyResponse, GetRequest, GetResponse, HasRequest, HasResponse,
};
use tonic::{Status, metadata::MetadataMap};

use super::{error::RequestError, respond};
use crate::{
    auth::{Access, Auth},
    config::Limits,
    rate::{RateLimits, TokenRate},
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
    /// The rate limits of the token the call was made with, if it has any.
    pub(crate) token: Option<TokenRate>,
}

/// The status of a call or stream whose project was deleted.
pub(crate) fn project_deleted(project: &ProjectName) -> Status {
    Status::not_found(format!(
        "project {project} was deleted; a project created again under its name is a new project that shares nothing with it"
    ))
}

/// The `kv.v1.KvService` implementation over any [`Backend`].
pub struct KvService<B> {
    pub(super) backend: Arc<B>,
    pub(super) limits: Limits,
    pub(super) auth: Arc<Auth>,
    /// Turns true when the server starts shutting down: open watches end.
    pub(super) stopping: tokio::sync::watch::Receiver<bool>,
    /// Longest a pipelined call may run (`--max-request-time-ms`): the
    /// transport's per-request cap sees only the stream, not its calls.
    pub(super) max_call_time: std::time::Duration,
    /// Per-project calls and bytes written per second.
    pub(super) rate: Arc<RateLimits>,
    /// The memory limit writes that add data are checked against.
    pub(super) memory: Option<crate::memory::MemoryBudget>,
    /// Bytes queued for all watchers together.
    pub(super) watch_bytes: Arc<super::queue::QueueBudget>,
    /// Bytes of pipeline replies queued for all streams together.
    pub(super) reply_bytes: Arc<super::queue::QueueBudget>,
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
            rate: self.rate.clone(),
            memory: self.memory.clone(),
            watch_bytes: self.watch_bytes.clone(),
            reply_bytes: self.reply_bytes.clone(),
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
            rate: Arc::default(),
            memory: None,
            watch_bytes: super::queue::QueueBudget::new(u64::MAX),
            reply_bytes: super::queue::QueueBudget::new(u64::MAX),
        }
    }

    /// Refuses writes that would take the process past `budget`'s limit,
    /// and new watches once it is reached (see [`crate::memory`]). Events
    /// queued for all watchers together, and pipeline replies queued for
    /// all streams together, are each held to an eighth of the limit; a
    /// watcher that is behind when its share runs out, or when something
    /// is refused for memory, is cut (resumable).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::memory::MemoryStore;
    /// use kv_server::{auth::Auth, config::Limits, memory::MemoryBudget, service::KvService};
    /// let auth = Arc::new(Auth::new(None, Default::default()));
    /// let service = KvService::new(Arc::new(MemoryStore::new()), Limits::default(), auth)
    ///     .with_memory(MemoryBudget::new(256 << 20));
    /// # let _ = service;
    /// ```
    pub fn with_memory(mut self, budget: crate::memory::MemoryBudget) -> Self {
        let share = budget.limit() / super::queue::SHARED_BUDGET_DIVISOR;
        self.watch_bytes = super::queue::QueueBudget::new(share);
        self.reply_bytes = super::queue::QueueBudget::new(share);
        self.memory = Some(budget);
        self
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

    /// Admits calls under `rate` (none are limited without it).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{Quota, SystemClock, memory::MemoryStore};
    /// use kv_server::{auth::Auth, config::Limits, rate::RateLimits, service::KvService};
    /// let auth = Arc::new(Auth::new(None, Default::default()));
    /// let per_second = Quota { ops_per_second: Some(1_000), ..Quota::default() };
    /// let rate = RateLimits::new(auth.catalog().clone(), per_second, Arc::new(SystemClock));
    /// let service = KvService::new(Arc::new(MemoryStore::new()), Limits::default(), auth)
    ///     .with_rate_limits(Arc::new(rate));
    /// # let _ = service;
    /// ```
    pub fn with_rate_limits(mut self, rate: Arc<RateLimits>) -> Self {
        self.rate = rate;
        self
    }
}

// The unary methods' work, shared with `Pipeline`, which runs the same
// calls for a stream's frames.
impl<B: Backend> KvService<B> {
    /// Admits a call: its project and the incarnation it is admitted to.
    pub(super) fn scope(&self, metadata: &MetadataMap, access: Access) -> Result<Scope, Status> {
        let caller = self.auth.caller_of(metadata)?;
        let project = caller.project(metadata, None, access)?;
        crate::logging::note_project(project.as_str());
        Ok(self.scope_of(project, TokenRate::of(&caller)))
    }

    pub(crate) fn scope_of(&self, project: ProjectName, token: Option<TokenRate>) -> Scope {
        let incarnation = self.backend.incarnation(&project);
        Scope {
            project,
            incarnation,
            token,
        }
    }

    /// Admits a call of `scope` writing `write_bytes` (0 for a read) under
    /// its project's and its token's rate limits.
    pub(super) fn admit_rate(&self, scope: &Scope, write_bytes: u64) -> Result<(), Status> {
        self.rate
            .admit_with(&scope.project, scope.token.as_ref(), write_bytes)?;
        crate::metrics::metrics().project_op(scope.project.as_str());
        Ok(())
    }

    /// Refuses what a read found when the project it was admitted to is no
    /// longer there: the read may have seen a successor's data.
    pub(super) fn still(&self, scope: &Scope) -> Result<(), Status> {
        if self.backend.incarnation(&scope.project) == scope.incarnation {
            Ok(())
        } else {
            Err(project_deleted(&scope.project))
        }
    }

    pub(super) async fn get_in(
        &self,
        scope: &Scope,
        r: &GetRequest,
    ) -> Result<GetResponse, Status> {
        let key = self.key(&r.key)?;
        self.admit_rate(scope, 0)?;
        // Read and checked against the admitted incarnation in one step:
        // a successor's entry is never answered.
        let entry = self
            .backend
            .get_in(&scope.project, scope.incarnation, key)
            .await
            .map_err(engine_status)?
            .ok_or_else(|| project_deleted(&scope.project))?;
        Ok(respond::get_response(entry, scope.incarnation))
    }

    /// A GetMany: every key validated first, then all read as of one
    /// moment; refused when the values would not fit one message.
    pub(super) async fn get_many_in(
        &self,
        scope: &Scope,
        r: &GetManyRequest,
    ) -> Result<GetManyResponse, Status> {
        self.count("keys", r.keys.len())?;
        // Borrowed from the request: the keys are never copied.
        let keys = r
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| self.key(key).map_err(|e| e.at(format!("keys[{i}]"))))
            .collect::<Result<Vec<&str>, _>>()?;
        self.admit_rate(scope, 0)?;
        let entries = self
            .backend
            .get_many(&scope.project, &keys)
            .await
            .map_err(engine_status)?;
        self.still(scope)?;
        let limit = self.limits.max_message_bytes();
        let total: usize = entries
            .iter()
            .flatten()
            .map(|e| e.value.len() + respond::ENTRY_OVERHEAD)
            .sum();
        if total > limit {
            return Err(RequestError::ResponseTooLarge { limit }.into());
        }
        Ok(GetManyResponse {
            results: entries
                .into_iter()
                .map(|e| respond::get_response(e, scope.incarnation))
                .collect(),
        })
    }

    pub(super) async fn has_in(
        &self,
        scope: &Scope,
        r: &HasRequest,
    ) -> Result<HasResponse, Status> {
        let key = self.key(&r.key)?;
        self.admit_rate(scope, 0)?;
        let exists = self
            .backend
            .has_in(&scope.project, scope.incarnation, key)
            .await
            .map_err(engine_status)?
            .ok_or_else(|| project_deleted(&scope.project))?;
        Ok(HasResponse { exists })
    }
}

/// Resolves once `flag` is true (never, if its sender is gone first).
pub(super) async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

pub(super) type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<wire::WatchEvent, Status>> + Send + 'static>>;

pub(super) type PipelineStream = Pin<
    Box<
        dyn tokio_stream::Stream<Item = Result<kv_proto::frame::ReplyFrame, Status>>
            + Send
            + 'static,
    >,
>;
