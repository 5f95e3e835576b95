//! `kv.v1.AdminService`: projects, quotas, usage and tokens, on the durable
//! store. Every call first passes [`Auth::require_admin`].
//!
//! Conditions (the project exists, or does not) are judged by the store's
//! writer in log order ([`AdminChange`]), not checked here and then
//! written: of concurrent creates (or deletes) of one name exactly one
//! succeeds.

use std::{future::Future, sync::Arc};

use kv_proto::v1::{
    self as pb, CreateProjectRequest, CreateTokenRequest, CreateTokenResponse,
    DeleteProjectRequest, DeleteProjectResponse, GetProjectRequest, ListProjectsRequest,
    ListProjectsResponse, ListTokensRequest, ListTokensResponse, RevokeTokenRequest,
    RevokeTokenResponse, SetQuotaRequest, admin_service_server,
};
use tonic::{Request, Response, Status};

use kv_engine::{
    Clock, EngineError, Quota,
    catalog::{Catalog, TokenLimits, TokenMeta},
    memory::Usage,
    project::ProjectName,
    wal::{AdminChange, AdminOutcome, BackupCut, DurableStore},
};
use kv_redis::RedisBackend;

use crate::{
    auth::{Auth, new_token},
    status::engine_status,
};

/// A store with a catalog: what the admin API needs of a backend.
pub trait AdminStore: Send + Sync + 'static {
    /// Registered projects and tokens.
    fn catalog(&self) -> &Arc<Catalog>;

    /// Checks and applies an admin change.
    fn admin(
        &self,
        change: AdminChange,
    ) -> impl Future<Output = Result<AdminOutcome, EngineError>> + Send;

    /// What `project` holds and its incarnation.
    fn usage(
        &self,
        project: &ProjectName,
    ) -> impl Future<Output = Result<(Usage, u64), EngineError>> + Send;

    /// Unix ms, as the store's clock reads it.
    fn now_ms(&self) -> u64;

    /// Cuts the log for a backup (see [`DurableStore::backup_cut`]).
    ///
    /// # Errors
    ///
    /// The status to answer: the store cannot cut, or keeps no log.
    fn backup_cut(&self) -> impl Future<Output = Result<BackupCut, Status>> + Send;
}

impl AdminStore for DurableStore {
    fn catalog(&self) -> &Arc<Catalog> {
        DurableStore::catalog(self)
    }

    fn admin(
        &self,
        change: AdminChange,
    ) -> impl Future<Output = Result<AdminOutcome, EngineError>> + Send {
        DurableStore::admin(self, change)
    }

    async fn usage(&self, project: &ProjectName) -> Result<(Usage, u64), EngineError> {
        let memory = self.memory();
        Ok((memory.usage(project), memory.incarnation(project)))
    }

    fn now_ms(&self) -> u64 {
        self.memory().clock().now_ms()
    }

    async fn backup_cut(&self) -> Result<BackupCut, Status> {
        DurableStore::backup_cut(self).await.map_err(engine_status)
    }
}

impl AdminStore for RedisBackend {
    fn catalog(&self) -> &Arc<Catalog> {
        RedisBackend::catalog(self)
    }

    fn admin(
        &self,
        change: AdminChange,
    ) -> impl Future<Output = Result<AdminOutcome, EngineError>> + Send {
        RedisBackend::admin(self, change)
    }

    fn usage(
        &self,
        project: &ProjectName,
    ) -> impl Future<Output = Result<(Usage, u64), EngineError>> + Send {
        RedisBackend::usage(self, project)
    }

    fn now_ms(&self) -> u64 {
        kv_engine::SystemClock.now_ms()
    }

    async fn backup_cut(&self) -> Result<BackupCut, Status> {
        Err(Status::unimplemented(
            "Backup covers the embedded store; with --redis-cluster the data lives in Redis: back it up with Redis's own persistence (RDB or AOF) on every node",
        ))
    }
}

/// The admin API over a store with a catalog.
pub struct AdminService<S> {
    store: Arc<S>,
    auth: Arc<Auth>,
}

impl<S: AdminStore> AdminService<S> {
    /// An admin service for `store`, admitting calls through `auth`.
    pub fn new(store: Arc<S>, auth: Arc<Auth>) -> Self {
        Self { store, auth }
    }

    fn project(&self, name: &str) -> Result<ProjectName, Status> {
        ProjectName::parse(name).map_err(|e| Status::invalid_argument(format!("project: {e}")))
    }

    async fn describe(&self, project: &ProjectName, quota: Quota) -> Result<pb::Project, Status> {
        let (usage, incarnation) = self.store.usage(project).await.map_err(engine_status)?;
        Ok(pb::Project {
            name: project.to_string(),
            keys: usage.keys,
            bytes: usage.bytes,
            quota: Some(pb::Quota {
                max_keys: quota.max_keys,
                max_bytes: quota.max_bytes,
                ops_per_second: quota.ops_per_second,
                write_bytes_per_second: quota.write_bytes_per_second,
            }),
            incarnation,
        })
    }

    fn registered(&self, project: &ProjectName) -> Result<Quota, Status> {
        self.store.catalog().project(project).ok_or_else(|| {
            Status::not_found(format!(
                "project {project} is not registered (CreateProject first)"
            ))
        })
    }
}

fn quota(quota: Option<pb::Quota>) -> Quota {
    quota.map_or_else(Quota::default, |q| Quota {
        max_keys: q.max_keys,
        max_bytes: q.max_bytes,
        ops_per_second: q.ops_per_second,
        write_bytes_per_second: q.write_bytes_per_second,
    })
}

fn token_info(meta: TokenMeta) -> pb::TokenInfo {
    pb::TokenInfo {
        id: meta.id,
        project: meta.project.to_string(),
        read_only: meta.read_only,
        created_at_ms: meta.created_at_ms,
        limits: meta.limits.is_set().then_some(pb::TokenLimits {
            ops_per_second: meta.limits.ops_per_second,
            write_bytes_per_second: meta.limits.write_bytes_per_second,
        }),
    }
}

/// Chunks of a backup on their way to the client.
type BackupStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Chunks buffered between the file reader and the client: a slow client
/// holds the reader, not memory.
const BACKUP_CHUNKS_BUFFERED: usize = 4;

#[tonic::async_trait]
impl<S: AdminStore> admin_service_server::AdminService for AdminService<S> {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.auth.require_admin(request.metadata())?;
        let project = match &request.get_ref().project {
            Some(name) => Some(self.project(name)?),
            None => None,
        };
        let mut cut = self.store.backup_cut().await?;
        if let Some(project) = project {
            let known = self.store.catalog().project(&project).is_some()
                || cut.versions().iter().any(|(p, _)| *p == project);
            if !known {
                return Err(Status::not_found(format!(
                    "project {project} does not exist: nothing to back up"
                )));
            }
            cut = tokio::task::spawn_blocking(move || cut.only(&project))
                .await
                .map_err(|e| Status::internal(format!("the backup's filter failed: {e}")))?
                .map_err(|e| {
                    Status::internal(format!("cannot narrow the backup to one project: {e}"))
                })?;
        }
        let created_at_ms = self.store.now_ms();
        tracing::info!(
            cut_segment = cut.seq(),
            project = cut.project().map(|p| p.as_str()),
            files = cut.files().len(),
            projects = cut.versions().len(),
            "backup started"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_BUFFERED);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut bytes = 0u64;
            let sent = crate::backup::write_backup(&cut, created_at_ms, |data| {
                bytes += data.len() as u64;
                tx.blocking_send(Ok(pb::BackupChunk { data })).is_ok()
            });
            match sent {
                Ok(digest) => tracing::info!(
                    cut_segment = cut.seq(),
                    bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    sha256 = %crate::backup::hex(&digest),
                    "backup sent"
                ),
                Err(e) => {
                    tracing::warn!(cut_segment = cut.seq(), bytes, "backup stopped: {e}");
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "the backup stopped after {bytes} bytes: {e}"
                    ))));
                }
            }
            // The cut's links go here, once every file is read.
            drop(cut);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        self.auth.require_admin(request.metadata())?;
        let CreateProjectRequest { name, quota: q } = request.into_inner();
        let project = self.project(&name)?;
        let quota = quota(q);
        self.store
            .admin(AdminChange::CreateProject {
                project: project.clone(),
                quota,
            })
            .await
            .map_err(engine_status)?;
        tracing::info!(%project, "project created");
        Ok(Response::new(self.describe(&project, quota).await?))
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        self.auth.require_admin(request.metadata())?;
        let project = self.project(&request.get_ref().name)?;
        let outcome = self
            .store
            .admin(AdminChange::DeleteProject {
                project: project.clone(),
            })
            .await
            .map_err(engine_status)?;
        crate::metrics::metrics().forget_project(project.as_str());
        tracing::info!(%project, deleted_keys = outcome.removed, "project deleted; a snapshot will drop its data from disk");
        Ok(Response::new(DeleteProjectResponse {
            deleted_keys: outcome.removed,
        }))
    }

    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        self.auth.require_admin(request.metadata())?;
        let project = self.project(&request.get_ref().name)?;
        let quota = self.registered(&project)?;
        Ok(Response::new(self.describe(&project, quota).await?))
    }

    async fn list_projects(
        &self,
        request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        self.auth.require_admin(request.metadata())?;
        let mut projects = Vec::new();
        for (project, quota) in self.store.catalog().projects() {
            projects.push(self.describe(&project, quota).await?);
        }
        Ok(Response::new(ListProjectsResponse { projects }))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        self.auth.require_admin(request.metadata())?;
        let SetQuotaRequest { name, quota: q } = request.into_inner();
        let project = self.project(&name)?;
        let quota = quota(q);
        self.store
            .admin(AdminChange::SetQuota {
                project: project.clone(),
                quota,
            })
            .await
            .map_err(engine_status)?;
        Ok(Response::new(self.describe(&project, quota).await?))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        self.auth.require_admin(request.metadata())?;
        let CreateTokenRequest {
            project,
            read_only,
            limits,
        } = request.into_inner();
        let limits = limits.map_or_else(TokenLimits::default, |l| TokenLimits {
            ops_per_second: l.ops_per_second,
            write_bytes_per_second: l.write_bytes_per_second,
        });
        let project = self.project(&project)?;
        self.registered(&project)?;
        // The incarnation seen now: if the project is deleted (and maybe
        // recreated) before the token is stored, the store refuses it.
        let (_, incarnation) = self.store.usage(&project).await.map_err(engine_status)?;
        let now = self.store.now_ms();
        let mut token = new_token(project, read_only, now)
            .map_err(|e| Status::unavailable(format!("no randomness for a token: {e}")))?;
        token.meta.limits = limits;
        self.store
            .admin(AdminChange::CreateToken {
                token: token.meta.clone(),
                incarnation,
            })
            .await
            .map_err(engine_status)?;
        tracing::info!(id = %token.meta.id, project = %token.meta.project, read_only, ?limits, "token created");
        Ok(Response::new(CreateTokenResponse {
            token: token.secret,
            info: Some(token_info(token.meta)),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        self.auth.require_admin(request.metadata())?;
        let id = request.into_inner().id;
        let revoked = match self
            .store
            .admin(AdminChange::RevokeToken { id: id.clone() })
            .await
        {
            Ok(_) => true,
            Err(EngineError::TokenNotFound { .. }) => false,
            Err(e) => return Err(engine_status(e)),
        };
        if revoked {
            tracing::info!(%id, "token revoked");
        }
        Ok(Response::new(RevokeTokenResponse { revoked }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.auth.require_admin(request.metadata())?;
        let project = request.into_inner().project;
        let project = if project.is_empty() {
            None
        } else {
            Some(self.project(&project)?)
        };
        let tokens = self
            .store
            .catalog()
            .tokens(project.as_ref())
            .into_iter()
            .map(token_info)
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }
}
