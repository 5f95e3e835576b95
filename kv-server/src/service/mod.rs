//! The gRPC `kv.v1.KvService`: validate, resolve the project, call the
//! engine, convert back. Nothing else happens here.
//!
//! # Layout
//!
//! - `mod.rs`: the handlers, each a few lines.
//! - `shared.rs`: the service's state, admitting a call to a project
//!   incarnation (`Scope`), the reads.
//! - `validate.rs` (wire requests into engine operations) with `error.rs`
//!   ([`RequestError`]); `respond.rs` (engine results into wire messages);
//!   `mutate.rs` (every writing request: one trait, one path to the engine).
//! - `watch.rs`, `pipeline.rs`: the long-lived streams, both under the rule
//!   of `guard.rs`, their replies queued in `queue.rs` (bounded by bytes);
//!   `outbox.rs` writes a pipeline's replies straight into encoded frames.
//!
//! Errors of the engine map to statuses in [`crate::status`].

mod error;
mod guard;
mod mutate;
mod outbox;
mod pipeline;
mod queue;
mod respond;
mod shared;
mod validate;
mod watch;

use std::sync::Arc;

pub use error::RequestError;
use kv_engine::{Backend, ListQuery};
pub use kv_proto::contract::{CALL_PROJECTS_HEADER, MANY_CALLS_HEADER, PROJECT_HEADER};
use kv_proto::wire::{
    self as wire, BatchRequest, BatchResponse, ClearRequest, ClearResponse, DeleteManyRequest,
    DeleteManyResponse, DeleteRequest, DeleteResponse, GetManyRequest, GetManyResponse, GetRequest,
    GetResponse, HasRequest, HasResponse, IncrRequest, IncrResponse, ListRequest, ListResponse,
    MergeRequest, MergeResponse, PipelineRequest, SetManyRequest, SetManyResponse, SetRequest,
    SetResponse, WatchRequest, kv_service_server,
};
pub use shared::KvService;
use shared::{PipelineStream, WatchStream};
use tonic::{Request, Response, Status};

use crate::{
    auth::Access,
    config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT},
    rate::TokenRate,
    status::engine_status,
};

#[tonic::async_trait]
impl<B: Backend> kv_service_server::KvService for KvService<B> {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        Ok(Response::new(self.get_in(&scope, request.get_ref()).await?))
    }

    async fn set(&self, mut request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn has(&self, request: Request<HasRequest>) -> Result<Response<HasResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        Ok(Response::new(self.has_in(&scope, request.get_ref()).await?))
    }

    async fn delete(
        &self,
        mut request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn clear(
        &self,
        mut request: Request<ClearRequest>,
    ) -> Result<Response<ClearResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn incr(
        &self,
        mut request: Request<IncrRequest>,
    ) -> Result<Response<IncrResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn merge(
        &self,
        mut request: Request<MergeRequest>,
    ) -> Result<Response<MergeResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn batch(
        &self,
        mut request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn get_many(
        &self,
        request: Request<GetManyRequest>,
    ) -> Result<Response<GetManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Read)?;
        Ok(Response::new(
            self.get_many_in(&scope, request.get_ref()).await?,
        ))
    }

    async fn set_many(
        &self,
        mut request: Request<SetManyRequest>,
    ) -> Result<Response<SetManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
        Ok(Response::new(response))
    }

    async fn delete_many(
        &self,
        mut request: Request<DeleteManyRequest>,
    ) -> Result<Response<DeleteManyResponse>, Status> {
        let scope = self.scope(request.metadata(), Access::Write)?;
        let response = self.start(&scope, request.get_mut())?.await?;
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
        self.admit_rate(&scope, 0)?;
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
            used += key.len() + entry.value.len() + respond::ENTRY_OVERHEAD;
            if used > budget && !entries.is_empty() {
                cut = true;
                break;
            }
            entries.push(wire::ListEntry {
                key: key.to_string(),
                value: entry.value,
                version: entry.version,
                expires_at_ms: entry.expires_at.map(kv_engine::Deadline::ms),
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
            .map(|project| self.scope_of(project, TokenRate::of(&caller)));
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
        let (tx, rx) = queue::channel(
            pipeline::PIPELINE_QUEUE,
            pipeline::PIPELINE_QUEUE_BYTES,
            Arc::clone(&self.reply_bytes),
        );
        tokio::spawn(self.clone().serve_pipeline(metadata, guard, calls, tx));
        let mut response = Response::new(Box::pin(rx) as Self::PipelineStream);
        // Tells clients this server runs each call on the project it names:
        // one that did not would run them all on the stream's project.
        response.metadata_mut().insert(
            CALL_PROJECTS_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        // And that it takes GetMany, SetMany and DeleteMany on the stream:
        // one that did not would answer them as calls without a request.
        response.metadata_mut().insert(
            MANY_CALLS_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        Ok(response)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.open_watch(request).await
    }
}
