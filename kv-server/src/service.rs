//! The gRPC `kv.v1.KvService`: validate, resolve the project, call the
//! engine, convert back. Nothing else happens here.

use std::sync::Arc;

use kv_proto::wire::{
    ClearRequest, ClearResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse,
    HasRequest, HasResponse, SetRequest, SetResponse, kv_service_server,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    auth::{Access, Auth},
    config::Limits,
    engine::{Backend, EngineError},
    project::{ProjectName, ProjectNameError},
    value::{self, ValueError},
};

/// Request metadata key naming the project in open mode.
pub const PROJECT_HEADER: &str = "x-kv-project";

/// A request the service refuses before it reaches the engine.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// `x-kv-project` is not printable ASCII.
    #[error(
        "{PROJECT_HEADER} metadata is not printable ASCII; project names are 1-64 characters of [A-Za-z0-9_.-]"
    )]
    ProjectNotAscii,
    /// `x-kv-project` names an invalid project.
    #[error("{PROJECT_HEADER}: {0}")]
    Project(#[from] ProjectNameError),
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
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        let message = e.to_string();
        match e {
            RequestError::KeyTooLong { .. } | RequestError::Value(ValueError::TooLarge { .. }) => {
                Status::resource_exhausted(message)
            }
            RequestError::ProjectNotAscii
            | RequestError::Project(_)
            | RequestError::EmptyKey { .. }
            | RequestError::Value(
                ValueError::Missing
                | ValueError::TooDeep
                | ValueError::Malformed(_)
                | ValueError::NoKind { .. }
                | ValueError::NonFinite { .. },
            )
            | RequestError::TtlZero { .. }
            | RequestError::TtlTooLong { .. } => Status::invalid_argument(message),
        }
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Storage { .. } => {
                tracing::warn!(error = %e, "write failed in storage");
                Status::unavailable(e.to_string())
            }
            EngineError::DeadlineOverflow { .. } => Status::invalid_argument(e.to_string()),
            EngineError::QuotaExceeded(_) => Status::resource_exhausted(e.to_string()),
        }
    }
}

/// Resolves the project of a request from its `x-kv-project` metadata
/// (open mode), defaulting to `default`.
///
/// ```
/// use kv_server::service::project_of;
/// let mut metadata = tonic::metadata::MetadataMap::new();
/// assert_eq!(project_of(&metadata).unwrap().as_str(), "default");
/// metadata.insert("x-kv-project", "shop".parse().unwrap());
/// assert_eq!(project_of(&metadata).unwrap().as_str(), "shop");
/// ```
///
/// # Errors
///
/// [`RequestError`] when the header is not ASCII or not a valid name.
pub fn project_of(metadata: &MetadataMap) -> Result<ProjectName, RequestError> {
    match metadata.get(PROJECT_HEADER) {
        None => Ok(ProjectName::default_project()),
        Some(raw) => {
            let name = raw.to_str().map_err(|_| RequestError::ProjectNotAscii)?;
            Ok(ProjectName::parse(name)?)
        }
    }
}

/// The `kv.v1.KvService` implementation over any [`Backend`].
pub struct KvService<B> {
    backend: Arc<B>,
    limits: Limits,
    auth: Arc<Auth>,
}

impl<B> KvService<B> {
    /// A service answering from `backend` under `limits`, admitting calls
    /// through `auth`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_server::{auth::Auth, config::Limits, engine::memory::MemoryStore, service::KvService};
    /// let auth = Arc::new(Auth::new(None, Default::default()));
    /// let service = KvService::new(Arc::new(MemoryStore::new()), Limits::default(), auth);
    /// let _grpc = kv_proto::wire::kv_service_server::KvServiceServer::new(service);
    /// ```
    pub fn new(backend: Arc<B>, limits: Limits, auth: Arc<Auth>) -> Self {
        Self {
            backend,
            limits,
            auth,
        }
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
}

#[tonic::async_trait]
impl<B: Backend> kv_service_server::KvService for KvService<B> {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let project = self.auth.project_for(request.metadata(), Access::Read)?;
        let key = self.key(&request.get_ref().key)?;
        let value = self.backend.get(&project, key).await?;
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let project = self.auth.project_for(request.metadata(), Access::Write)?;
        let SetRequest { key, value, ttl_ms } = request.get_ref();
        let key = self.key(key)?;
        let ttl_ms = self.ttl(*ttl_ms)?;
        let value =
            value::canonicalize(value, self.limits.max_value_bytes).map_err(RequestError::from)?;
        self.backend.set(&project, key, value, ttl_ms).await?;
        Ok(Response::new(SetResponse {}))
    }

    async fn has(&self, request: Request<HasRequest>) -> Result<Response<HasResponse>, Status> {
        let project = self.auth.project_for(request.metadata(), Access::Read)?;
        let key = self.key(&request.get_ref().key)?;
        let exists = self.backend.has(&project, key).await?;
        Ok(Response::new(HasResponse { exists }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let project = self.auth.project_for(request.metadata(), Access::Write)?;
        let key = self.key(&request.get_ref().key)?;
        let deleted = self.backend.delete(&project, key).await?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn clear(
        &self,
        request: Request<ClearRequest>,
    ) -> Result<Response<ClearResponse>, Status> {
        let project = self.auth.project_for(request.metadata(), Access::Write)?;
        let deleted = self.backend.clear(&project).await?;
        Ok(Response::new(ClearResponse { deleted }))
    }
}
