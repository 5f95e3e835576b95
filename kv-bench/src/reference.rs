//! The reference server: the kv.v1 messages served by plain tonic from a
//! concurrent map, with nothing else: no projects, auth, validation,
//! durability, TTLs or versions. Running the `unary` target against it and
//! against kv-server, with the same messages, shows what kv-server's work
//! costs over the floor of gRPC itself.

use std::net::SocketAddr;

use dashmap::DashMap;
use kv_proto::v1::{
    self as pb,
    kv_service_server::{KvService, KvServiceServer},
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

const UNIMPLEMENTED: &str =
    "the reference server only implements Get/Set/Has/Delete/GetMany/SetMany";

/// Largest message either way, as kv-server's default.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Reference {
    map: DashMap<String, prost_types::Value>,
}

impl Reference {
    fn get_one(&self, key: &str) -> pb::GetResponse {
        match self.map.get(key) {
            Some(value) => pb::GetResponse {
                found: true,
                value: Some(value.clone()),
                ..pb::GetResponse::default()
            },
            None => pb::GetResponse::default(),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl KvService for Reference {
    async fn get(&self, request: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        Ok(Response::new(self.get_one(&request.get_ref().key)))
    }

    async fn set(&self, request: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        let request = request.into_inner();
        self.map
            .insert(request.key, request.value.unwrap_or_default());
        Ok(Response::new(pb::SetResponse {
            applied: true,
            version: 0,
        }))
    }

    async fn has(&self, request: Request<pb::HasRequest>) -> Reply<pb::HasResponse> {
        let exists = self.map.contains_key(&request.get_ref().key);
        Ok(Response::new(pb::HasResponse { exists }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let deleted = self.map.remove(&request.get_ref().key).is_some();
        Ok(Response::new(pb::DeleteResponse {
            deleted,
            version: 0,
        }))
    }

    async fn get_many(&self, request: Request<pb::GetManyRequest>) -> Reply<pb::GetManyResponse> {
        let results = request
            .get_ref()
            .keys
            .iter()
            .map(|key| self.get_one(key))
            .collect();
        Ok(Response::new(pb::GetManyResponse { results }))
    }

    async fn set_many(&self, request: Request<pb::SetManyRequest>) -> Reply<pb::SetManyResponse> {
        let entries = request.into_inner().entries;
        let versions = vec![0; entries.len()];
        for entry in entries {
            self.map.insert(entry.key, entry.value.unwrap_or_default());
        }
        Ok(Response::new(pb::SetManyResponse { versions }))
    }

    async fn clear(&self, _: Request<pb::ClearRequest>) -> Reply<pb::ClearResponse> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    async fn incr(&self, _: Request<pb::IncrRequest>) -> Reply<pb::IncrResponse> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    async fn merge(&self, _: Request<pb::MergeRequest>) -> Reply<pb::MergeResponse> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    async fn batch(&self, _: Request<pb::BatchRequest>) -> Reply<pb::BatchResponse> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    async fn delete_many(
        &self,
        _: Request<pb::DeleteManyRequest>,
    ) -> Reply<pb::DeleteManyResponse> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    async fn list(&self, _: Request<pb::ListRequest>) -> Reply<pb::ListResponse> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    type WatchStream = tokio_stream::Empty<Result<pb::WatchEvent, Status>>;

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }

    type PipelineStream = tokio_stream::Empty<Result<pb::PipelineResponse, Status>>;

    async fn pipeline(
        &self,
        _: Request<tonic::Streaming<pb::PipelineRequest>>,
    ) -> Reply<Self::PipelineStream> {
        Err(Status::unimplemented(UNIMPLEMENTED))
    }
}

/// Serves on `addr` until SIGINT or SIGTERM. Logs `listening on ADDR` on
/// stderr once bound (the address port 0 got), as kv-server does.
pub(crate) async fn serve(addr: SocketAddr, workers: u32) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    eprintln!("reference server: {workers} worker thread(s), listening on {bound}");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = KvServiceServer::new(Reference::default())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await
        .map_err(|e| format!("serving failed: {e}"))?;
    eprintln!("reference server: stopped");
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        // Without handlers the default action (exit) still stops it.
        _ => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
