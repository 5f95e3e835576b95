//! The SDK against an in-process stub of `KvService`: metadata, deadlines,
//! streaming and pagination over a real gRPC connection. The stub answers
//! from the requests it gets (no storage), so each test can see what was
//! sent.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use kv_proto::v1::{
    self as pb,
    kv_service_server::{KvService, KvServiceServer},
};
use serde_json::{Value, json};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status};

use crate::{
    ClearOptions, Client, DeleteManyOptions, DeleteOptions, Entry, Error, EventKind, IncrOptions,
    ListOptions, MergeOptions, OpResult, SetManyOptions, SetOptions, WatchOptions, json,
};

const TIMEOUT: Duration = Duration::from_millis(300);

mod reconnect;
mod retry;
mod watch_resume;

/// Answers unary calls from the requests alone; with `pipeline`, also
/// serves the `Pipeline` stream, recording every frame in `frames`; with
/// `call_projects` too, says so in the stream's headers, as a server that
/// honours per-call projects does; with `many_calls`, takes GetMany,
/// SetMany and DeleteMany on the stream and says so (without it, answers
/// them as an older server does: as calls without a request).
#[derive(Default, Clone)]
struct Stub {
    pipeline: bool,
    call_projects: bool,
    many_calls: bool,
    frames: Arc<Mutex<Vec<Frame>>>,
    /// The numbers of pipelined sets, in the order they arrived.
    sets: Arc<Mutex<Vec<f64>>>,
    /// `Pipeline` streams accepted.
    streams: Arc<AtomicUsize>,
    /// Refuses new `Pipeline` streams as a revoked token would be.
    revoked: Arc<AtomicBool>,
    /// Unary single-key calls as (`x-kv-project`, key), in arrival order.
    unary: Arc<Mutex<Vec<(String, String)>>>,
    /// The request id of every write, by call kind, in arrival order.
    ids: Arc<Mutex<Vec<(&'static str, String)>>>,
    /// Watches of the scripted `resume*` keys, as (key, from_version,
    /// incarnation), in arrival order.
    watches: Arc<Mutex<Vec<WatchAsked>>>,
}

/// A watch as the stub got it: key, from_version, incarnation.
type WatchAsked = (String, Option<u64>, Option<u64>);

/// One frame as it arrived: its project and each call's (project, key).
#[derive(Debug, Clone)]
struct Frame {
    project: String,
    calls: Vec<(String, String)>,
}

impl Stub {
    fn frame_sizes(&self) -> Vec<usize> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.calls.len())
            .collect()
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// Records a write's request id.
    fn id(&self, kind: &'static str, id: &str) {
        self.ids.lock().unwrap().push((kind, id.to_string()));
    }

    /// Records a unary single-key call.
    fn saw(&self, project: String, key: &str) {
        self.unary.lock().unwrap().push((project, key.to_string()));
    }
}

/// Refuses requests without a project, the token, or (for unary calls) a
/// deadline; a watch must come without one. Gives the project.
fn check<T>(request: &Request<T>, unary: bool) -> Result<String, Status> {
    let metadata = request.metadata();
    let Some(project) = metadata.get("x-kv-project").and_then(|v| v.to_str().ok()) else {
        return Err(Status::invalid_argument("no project"));
    };
    check_credentials(request, unary)?;
    Ok(project.to_string())
}

fn check_credentials<T>(request: &Request<T>, unary: bool) -> Result<(), Status> {
    let metadata = request.metadata();
    if metadata.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
        return Err(Status::unauthenticated("no token"));
    }
    if metadata.get("grpc-timeout").is_some() != unary {
        return Err(Status::failed_precondition(format!(
            "grpc-timeout present: {}",
            !unary
        )));
    }
    Ok(())
}

/// Key `whoami` reads back the project the call ran in.
fn get(key: &str, project: &str) -> pb::GetResponse {
    if key == "missing" {
        return pb::GetResponse::default();
    }
    let value = if key == "whoami" {
        json!({ "project": project })
    } else {
        json!({ "key": key })
    };
    pb::GetResponse {
        found: true,
        value: Some(json::to_proto(&value).unwrap()),
        version: 7,
        expires_at_ms: (key == "ttl").then_some(123),
        incarnation: 5,
    }
}

const KEYS: [&str; 7] = ["a1", "a2", "a3", "a4", "a5", "b1", "b2"];

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::PipelineResponse, Status>> + Send>>;

/// The stub's answer to one pipelined call, run in `project`. Keys steer
/// it: `hang` is never answered, `slow` after half the timeout, `bad` is an
/// error, `break` ends the stream, `revoke` ends it as a revoked token does.
async fn pipelined(
    call: pb::Call,
    project: &str,
    many_calls: bool,
) -> Option<Result<pb::Reply, Status>> {
    use pb::{call::Request as Req, reply::Response as Res};
    let (key, response) = match call.request? {
        Req::GetMany(_) | Req::SetMany(_) | Req::DeleteMany(_) if !many_calls => (
            String::new(),
            Res::Error(pb::CallError {
                code: Code::InvalidArgument as i32,
                message: format!("call {} has no request", call.id),
                retry_after_ms: None,
            }),
        ),
        Req::GetMany(r) => (
            r.keys.join(","),
            Res::GetMany(pb::GetManyResponse {
                results: r.keys.iter().map(|k| get(k, project)).collect(),
            }),
        ),
        Req::SetMany(r) => (String::new(), Res::SetMany(set_many_reply(&r))),
        Req::DeleteMany(r) => (String::new(), Res::DeleteMany(delete_many_reply(&r))),
        Req::Get(r) => (r.key.clone(), Res::Get(get(&r.key, project))),
        Req::Has(r) => (
            r.key.clone(),
            Res::Has(pb::HasResponse {
                exists: r.key != "missing",
            }),
        ),
        Req::Set(r) => {
            // The version echoes the value, so order is visible.
            let version = match r.value.and_then(|v| v.kind) {
                Some(prost_types::value::Kind::NumberValue(n)) => n as u64,
                _ => 0,
            };
            (
                r.key,
                Res::Set(pb::SetResponse {
                    applied: true,
                    version,
                }),
            )
        }
        Req::Delete(r) => (
            r.key,
            Res::Delete(pb::DeleteResponse {
                deleted: true,
                version: call.timeout_ms,
            }),
        ),
        Req::Incr(r) => (
            r.key,
            Res::Incr(pb::IncrResponse {
                value: r.delta * 2.0,
                version: 1,
            }),
        ),
        Req::Merge(r) => (
            r.key,
            Res::Merge(pb::MergeResponse {
                value: r.patch,
                version: 1,
            }),
        ),
    };
    let response = match key.as_str() {
        "hang" => return None,
        "break" => return Some(Err(Status::aborted("the stub broke the stream"))),
        "revoke" => return Some(Err(Status::unauthenticated("the token was revoked"))),
        "bad" => pb::reply::Response::Error(pb::CallError {
            code: Code::InvalidArgument as i32,
            message: "bad is a bad key".into(),
            retry_after_ms: None,
        }),
        "slow" => {
            tokio::time::sleep(TIMEOUT / 2).await;
            response
        }
        _ => response,
    };
    Some(Ok(pb::Reply {
        id: call.id,
        response: Some(response),
    }))
}

#[tonic::async_trait]
impl KvService for Stub {
    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let project = check(&r, true)?;
        let reply = get(&r.get_ref().key, &project);
        self.saw(project, &r.get_ref().key);
        Ok(Response::new(reply))
    }

    async fn set(&self, r: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let project = check(&r, true)?;
        let r = r.into_inner();
        self.saw(project, &r.key);
        self.id("set", &r.request_id);
        if r.request_id == "reused" {
            return Err(Status::failed_precondition("request id reused"));
        }
        Ok(Response::new(pb::SetResponse {
            applied: !r.if_absent && r.if_version != Some(666),
            version: r.if_version.unwrap_or(0) + r.ttl_ms.unwrap_or(0) + 1,
        }))
    }

    async fn has(&self, r: Request<pb::HasRequest>) -> Result<Response<pb::HasResponse>, Status> {
        let project = check(&r, true)?;
        self.saw(project, &r.get_ref().key);
        Ok(Response::new(pb::HasResponse {
            exists: r.get_ref().key != "missing",
        }))
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let project = check(&r, true)?;
        let r = r.into_inner();
        self.saw(project, &r.key);
        self.id("delete", &r.request_id);
        Ok(Response::new(pb::DeleteResponse {
            deleted: r.if_version.is_none_or(|v| v == 3),
            version: r.if_version.unwrap_or(50) + r.request_id.len() as u64,
        }))
    }

    async fn clear(
        &self,
        r: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        check(&r, true)?;
        self.id("clear", &r.get_ref().request_id);
        Ok(Response::new(pb::ClearResponse {
            deleted: r.get_ref().request_id.len() as u64,
            version: 99,
        }))
    }

    async fn incr(
        &self,
        r: Request<pb::IncrRequest>,
    ) -> Result<Response<pb::IncrResponse>, Status> {
        let project = check(&r, true)?;
        let r = r.into_inner();
        self.saw(project, &r.key);
        self.id("incr", &r.request_id);
        Ok(Response::new(pb::IncrResponse {
            value: r.delta * 2.0,
            version: r.ttl_ms.unwrap_or(1),
        }))
    }

    async fn merge(
        &self,
        r: Request<pb::MergeRequest>,
    ) -> Result<Response<pb::MergeResponse>, Status> {
        let project = check(&r, true)?;
        let r = r.into_inner();
        self.saw(project, &r.key);
        self.id("merge", &r.request_id);
        Ok(Response::new(pb::MergeResponse {
            value: r.patch,
            version: r.ttl_ms.unwrap_or(5),
        }))
    }

    async fn batch(
        &self,
        r: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        use pb::op_result::Result as R;
        check(&r, true)?;
        let r = r.into_inner();
        self.id("batch", &r.request_id);
        if let Some(index) = r.checks.iter().position(|c| c.key == "taken") {
            return Ok(Response::new(pb::BatchResponse {
                applied: false,
                failed_check: Some(index as u32),
                current_version: 4,
                results: vec![],
            }));
        }
        let results = r
            .ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| pb::OpResult {
                version: 10 + i as u64,
                result: match op.op.unwrap() {
                    pb::op::Op::Set(_) => None,
                    pb::op::Op::Delete(_) => Some(R::Deleted(true)),
                    pb::op::Op::Incr(incr) => Some(R::Number(incr.delta + 1.0)),
                    pb::op::Op::Merge(merge) => Some(R::Value(merge.patch.unwrap())),
                },
            })
            .collect();
        Ok(Response::new(pb::BatchResponse {
            applied: true,
            failed_check: None,
            current_version: 0,
            results,
        }))
    }

    async fn get_many(
        &self,
        r: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let project = check(&r, true)?;
        let keys = &r.get_ref().keys;
        self.saw(project.clone(), &keys.join(","));
        Ok(Response::new(pb::GetManyResponse {
            results: keys.iter().map(|k| get(k, &project)).collect(),
        }))
    }

    async fn set_many(
        &self,
        r: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let project = check(&r, true)?;
        let r = r.into_inner();
        self.saw(project, "set_many");
        self.id("set_many", &r.request_id);
        Ok(Response::new(set_many_reply(&r)))
    }

    async fn delete_many(
        &self,
        r: Request<pb::DeleteManyRequest>,
    ) -> Result<Response<pb::DeleteManyResponse>, Status> {
        let project = check(&r, true)?;
        let r = r.into_inner();
        self.saw(project, "delete_many");
        self.id("delete_many", &r.request_id);
        Ok(Response::new(delete_many_reply(&r)))
    }

    async fn list(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        check(&r, true)?;
        let r = r.into_inner();
        let limit = if r.limit == 0 { 2 } else { r.limit as usize };
        let matching: Vec<&str> = KEYS
            .into_iter()
            .filter(|k| k.starts_with(&r.prefix) && **k > *r.start_after)
            .collect();
        let page = &matching[..limit.min(matching.len())];
        let more = matching.len() > page.len();
        Ok(Response::new(pb::ListResponse {
            entries: page
                .iter()
                .map(|k| pb::ListEntry {
                    key: k.to_string(),
                    value: (!r.keys_only).then(|| json::to_proto(&json!(k)).unwrap()),
                    version: 1,
                    expires_at_ms: None,
                })
                .collect(),
            next_start_after: if more {
                page.last().unwrap().to_string()
            } else {
                String::new()
            },
            version: 77,
            incarnation: 6,
        }))
    }

    type PipelineStream = ReplyStream;

    async fn pipeline(
        &self,
        r: Request<tonic::Streaming<pb::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        if !self.pipeline {
            return Err(Status::unimplemented("no Pipeline here"));
        }
        // One stream serves every project, so it must not name one.
        if r.metadata().get("x-kv-project").is_some() {
            return Err(Status::invalid_argument("the stream names a project"));
        }
        check_credentials(&r, false)?;
        if self.revoked.load(Ordering::SeqCst) {
            return Err(Status::unauthenticated("the token was revoked"));
        }
        self.streams.fetch_add(1, Ordering::SeqCst);
        let mut frames = r.into_inner();
        let seen = self.frames.clone();
        let ids = self.ids.clone();
        let sets = self.sets.clone();
        let call_projects = self.call_projects;
        let many_calls = self.many_calls;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(frame)) = frames.message().await {
                seen.lock().unwrap().push(Frame {
                    project: frame.project.clone(),
                    calls: frame
                        .calls
                        .iter()
                        .map(|call| (call.project.clone(), call_key(call)))
                        .collect(),
                });
                for call in &frame.calls {
                    use pb::call::Request as Req;
                    let id = match &call.request {
                        Some(Req::Set(r)) => Some(("set", &r.request_id)),
                        Some(Req::Delete(r)) => Some(("delete", &r.request_id)),
                        Some(Req::Incr(r)) => Some(("incr", &r.request_id)),
                        Some(Req::Merge(r)) => Some(("merge", &r.request_id)),
                        Some(Req::SetMany(r)) if many_calls => Some(("set_many", &r.request_id)),
                        Some(Req::DeleteMany(r)) if many_calls => {
                            Some(("delete_many", &r.request_id))
                        }
                        _ => None,
                    };
                    if let Some((kind, id)) = id {
                        ids.lock().unwrap().push((kind, id.clone()));
                    }
                    if let Some(pb::call::Request::Set(set)) = &call.request
                        && let Some(prost_types::value::Kind::NumberValue(n)) =
                            set.value.as_ref().and_then(|v| v.kind.clone())
                    {
                        sets.lock().unwrap().push(n);
                    }
                }
                for call in frame.calls {
                    let tx = tx.clone();
                    // An older server runs every call in the stream's
                    // project; this one has none, so that is `default`.
                    let project = [&call.project, &frame.project]
                        .into_iter()
                        .find(|p| call_projects && !p.is_empty())
                        .map_or("default".to_string(), |p| p.to_string());
                    // Each call on its own task: replies come back in any
                    // order, as they may from a real server.
                    tokio::spawn(async move {
                        if let Some(reply) = pipelined(call, &project, many_calls).await {
                            let reply = reply.map(|reply| pb::PipelineResponse {
                                replies: vec![reply],
                            });
                            let _ = tx.send(reply).await;
                        }
                    });
                }
            }
        });
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as ReplyStream);
        if self.call_projects {
            response
                .metadata_mut()
                .insert("x-kv-call-projects", "1".parse().unwrap());
        }
        if self.many_calls {
            response
                .metadata_mut()
                .insert("x-kv-many-calls", "1".parse().unwrap());
        }
        Ok(response)
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        r: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        check(&r, false)?;
        let r = r.into_inner();
        let key = match r.target {
            Some(pb::watch_request::Target::Key(key)) => key,
            _ => return Err(Status::invalid_argument("the stub watches keys only")),
        };
        if key.starts_with("resume") {
            return watch_resume::scripted(self, key, r.from_version, r.incarnation);
        }
        if key == "hang" {
            tokio::time::sleep(TIMEOUT * 3).await;
        }
        if r.from_version == Some(1) {
            return Err(Status::out_of_range("history starts at 10"));
        }
        if r.incarnation.is_some_and(|i| i != 2) {
            return Err(Status::failed_precondition(
                "the project was deleted and created again",
            ));
        }
        let start = r.from_version.unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let kinds = [
                pb::EventKind::Set,
                pb::EventKind::Deleted,
                pb::EventKind::Expired,
                pb::EventKind::Cleared,
            ];
            for (i, kind) in kinds.into_iter().enumerate() {
                // The first event comes after the per-call timeout.
                let pause = if i == 0 { TIMEOUT * 3 / 2 } else { TIMEOUT / 4 };
                tokio::time::sleep(pause).await;
                let event = pb::WatchEvent {
                    kind: kind as i32,
                    key: if kind == pb::EventKind::Cleared {
                        String::new()
                    } else {
                        key.clone()
                    },
                    value: (kind == pb::EventKind::Set)
                        .then(|| json::to_proto(&json!({"n": i})).unwrap()),
                    version: start + 1 + i as u64,
                    expires_at_ms: (kind == pb::EventKind::Set).then_some(1000),
                    incarnation: 2,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(Err(Status::resource_exhausted("behind; resume from 4")))
                .await;
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as EventStream
        ))
    }
}

/// Versions that echo each entry's place, TTL and the request id's length.
fn set_many_reply(r: &pb::SetManyRequest) -> pb::SetManyResponse {
    pb::SetManyResponse {
        versions: r
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| i as u64 + 1 + e.ttl_ms.unwrap_or(0) + r.request_id.len() as u64)
            .collect(),
    }
}

fn delete_many_reply(r: &pb::DeleteManyRequest) -> pb::DeleteManyResponse {
    pb::DeleteManyResponse {
        deleted: (r.keys.len() + r.request_id.len()) as u64,
    }
}

fn call_key(call: &pb::Call) -> String {
    use pb::call::Request as Req;
    match &call.request {
        Some(Req::Get(r)) => r.key.clone(),
        Some(Req::Set(r)) => r.key.clone(),
        Some(Req::Has(r)) => r.key.clone(),
        Some(Req::Delete(r)) => r.key.clone(),
        Some(Req::Incr(r)) => r.key.clone(),
        Some(Req::Merge(r)) => r.key.clone(),
        Some(Req::GetMany(r)) => r.keys.join(","),
        Some(Req::SetMany(_)) => "set_many".into(),
        Some(Req::DeleteMany(_)) => "delete_many".into(),
        None => String::new(),
    }
}

async fn client() -> Client {
    client_of(Stub::default()).await
}

async fn client_of(stub: Stub) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServiceServer::new(stub))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // The stub echoes request ids' lengths into its answers, so these
    // tests see exactly the ids they give; `retry_tests` covers the ids the
    // SDK adds by itself.
    Client::builder(format!("http://{addr}"))
        .timeout(TIMEOUT)
        .token("secret")
        .auto_request_ids(false)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_carry_versions_and_deadlines() {
    let stub = Stub::default();
    let kv = client_of(stub.clone()).await.project("p");
    let entry: Entry<Value> = kv.get_entry("ttl").await.unwrap().unwrap();
    assert_eq!(
        entry,
        Entry {
            value: json!({"key": "ttl"}),
            version: 7,
            expires_at_ms: Some(123),
            incarnation: 5,
        }
    );
    assert_eq!(kv.get_entry::<Value>("missing").await.unwrap(), None);
    assert_eq!(
        kv.get::<Value>("x").await.unwrap(),
        Some(json!({"key": "x"}))
    );
    let err = kv.get_entry::<u32>("x").await.unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err}");
    assert!(kv.has("x").await.unwrap());

    let many = kv
        .get_many::<Value, _>(["a", "missing", "ttl"])
        .await
        .unwrap();
    assert_eq!(many.len(), 3);
    assert_eq!(many[0].as_ref().unwrap().value, json!({"key": "a"}));
    assert_eq!(many[1], None);
    assert_eq!(many[2].as_ref().unwrap().expires_at_ms, Some(123));
    assert_eq!(many[2].as_ref().unwrap().incarnation, 5);

    // Without the stream, each call names its project itself.
    let unary = stub.unary.lock().unwrap().clone();
    assert_eq!(unary.len(), 6, "{unary:?}");
    assert!(unary.iter().all(|(project, _)| project == "p"), "{unary:?}");
}

#[tokio::test]
async fn conditional_writes_report_their_outcome() {
    let kv = client().await.project("p");
    kv.set("k", &1).await.unwrap();
    kv.set_with_ttl("k", &1, Duration::from_millis(5))
        .await
        .unwrap();

    let outcome = kv.set_if_absent("k", &1).await.unwrap();
    assert!(!outcome.applied);
    assert_eq!(outcome.version, 1);
    let outcome = kv.compare_and_swap("k", 41, &1).await.unwrap();
    assert!(outcome.applied);
    assert_eq!(outcome.version, 42);
    let outcome = kv.compare_and_swap("k", 666, &1).await.unwrap();
    assert!(!outcome.applied);
    let outcome = kv
        .set_with(
            "k",
            &1,
            SetOptions::new()
                .ttl(Duration::from_millis(10))
                .if_version(5),
        )
        .await
        .unwrap();
    assert_eq!(outcome.version, 16);

    let err = kv
        .set_with("k", &1, SetOptions::new().request_id("reused"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Status(_)));
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    assert!(kv.delete("k").await.unwrap());
    let outcome = kv.delete_if_version("k", 3).await.unwrap();
    assert!(outcome.deleted);
    assert_eq!(outcome.version, 3);
    assert!(!kv.delete_if_version("k", 4).await.unwrap().deleted);
    let outcome = kv
        .delete_with("k", DeleteOptions::new().request_id("abc"))
        .await
        .unwrap();
    assert_eq!(outcome.version, 53);

    assert_eq!(kv.clear().await.unwrap(), 0);
    let cleared = kv
        .clear_with(ClearOptions::new().request_id("12345"))
        .await
        .unwrap();
    assert_eq!((cleared.deleted, cleared.version), (5, 99));
}

#[tokio::test]
async fn counters_merges_and_many_writes() {
    let kv = client().await.project("p");
    assert_eq!(kv.incr("n", 1.5).await.unwrap(), 3.0);
    let counter = kv
        .incr_with("n", -2.0, IncrOptions::new().ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!((counter.value, counter.version), (-4.0, 1000));
    let err = kv.incr("n", f64::NAN).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Profile {
        name: String,
    }
    let merged: Profile = kv.merge("u", &json!({"name": "Ada"})).await.unwrap();
    assert_eq!(merged.name, "Ada");
    let merged = kv
        .merge_with::<_, Value>(
            "u",
            &json!({"a": null}),
            MergeOptions::new().ttl(Duration::from_millis(8)),
        )
        .await
        .unwrap();
    assert_eq!((merged.value, merged.version), (json!({"a": null}), 8));

    let versions = kv.set_many([("a", &1), ("b", &2)]).await.unwrap();
    assert_eq!(versions, [1, 2]);
    let (a, b) = (json!("x"), json!(["y"]));
    let versions = kv
        .set_many_with(
            vec![("a".to_string(), &a), ("b".to_string(), &b)],
            SetManyOptions::new()
                .ttl(Duration::from_millis(10))
                .request_id("r"),
        )
        .await
        .unwrap();
    assert_eq!(versions, [12, 13]);
    assert_eq!(kv.delete_many(["a", "b", "c"]).await.unwrap(), 3);
    let keys = vec!["a".to_string()];
    let deleted = kv
        .delete_many_with(&keys, DeleteManyOptions::new().request_id("rr"))
        .await
        .unwrap();
    assert_eq!(deleted, 3);
}

#[tokio::test]
async fn batches_round_trip() {
    let kv = client().await.project("p");
    let outcome = kv
        .batch()
        .check_version("a", 3)
        .set("a", &1)
        .delete("b")
        .incr("c", 1.0)
        .merge("d", &json!({"x": 1}))
        .request_id("batch")
        .commit()
        .await
        .unwrap();
    assert!(outcome.applied);
    assert_eq!(
        outcome.results,
        [
            OpResult::Set { version: 10 },
            OpResult::Delete {
                deleted: true,
                version: 11
            },
            OpResult::Incr {
                value: 2.0,
                version: 12
            },
            OpResult::Merge {
                value: json!({"x": 1}),
                version: 13
            },
        ]
    );
    let outcome = kv
        .batch()
        .check_absent("free")
        .check_absent("taken")
        .set("taken", &1)
        .commit()
        .await
        .unwrap();
    assert!(!outcome.applied);
    assert_eq!(outcome.failed_check, Some(1));
    assert_eq!(outcome.current_version, 4);
    assert!(outcome.results.is_empty());
}

#[tokio::test]
async fn listings_walk_every_page() {
    let kv = client().await.project("p");
    let page = kv.list(ListOptions::new()).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.entries[0].value, Some(json!("a1")));
    assert_eq!(page.next_start_after.as_deref(), Some("a2"));
    assert_eq!((page.version, page.incarnation), (77, 6));

    let page = kv
        .list(
            ListOptions::new()
                .prefix("a")
                .start_after("a3")
                .limit(10)
                .keys_only(),
        )
        .await
        .unwrap();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a4", "a5"]);
    assert!(page.entries.iter().all(|e| e.value.is_none()));
    assert_eq!(page.next_start_after, None);

    let all = kv.list_all("a").await.unwrap();
    let keys: Vec<_> = all.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a1", "a2", "a3", "a4", "a5"]);
    let all = kv
        .list_all_with(ListOptions::new().limit(3).keys_only().start_after("a1"))
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(kv.list_all("").await.unwrap().len(), KEYS.len());
}

#[tokio::test]
async fn a_watch_outlives_the_per_call_timeout() {
    let kv = client().await.project("p");
    let mut watch = kv
        .watch(WatchOptions::key("w").from_version(20).incarnation(2))
        .await
        .unwrap();
    assert_eq!(watch.last_version(), None);
    assert_eq!(watch.last_incarnation(), None);
    let started = tokio::time::Instant::now();

    let first = watch.next_event().await.unwrap().unwrap();
    assert_eq!(first.kind, EventKind::Set);
    assert_eq!(first.key, "w");
    assert_eq!(first.value, Some(json!({"n": 0})));
    assert_eq!((first.version, first.expires_at_ms), (21, Some(1000)));
    assert_eq!(first.incarnation, 2);
    assert_eq!(watch.last_version(), Some(21));
    assert_eq!(watch.last_incarnation(), Some(2));

    // The rest through the Stream impl.
    let mut kinds = Vec::new();
    while let Some(event) = watch.next().await {
        match event {
            Ok(event) => {
                assert_eq!(event.value, None);
                kinds.push((event.kind, event.key, event.version));
            }
            Err(err) => {
                assert_eq!(err.code(), tonic::Code::ResourceExhausted);
                assert!(matches!(err, Error::Status(_)));
                kinds.push((EventKind::Cleared, "error".into(), 0));
            }
        }
    }
    assert!(started.elapsed() > TIMEOUT, "{:?}", started.elapsed());
    assert_eq!(
        kinds,
        [
            (EventKind::Deleted, "w".to_string(), 22),
            (EventKind::Expired, "w".to_string(), 23),
            (EventKind::Cleared, String::new(), 24),
            (EventKind::Cleared, "error".to_string(), 0),
        ]
    );
    assert_eq!(watch.last_version(), Some(24));
    assert!(watch.next_event().await.is_none(), "ended for good");
}

#[tokio::test]
async fn a_watch_that_cannot_start_fails() {
    let kv = client().await.project("p");
    let err = kv.watch(WatchOptions::key("hang")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let err = kv
        .watch(WatchOptions::key("w").from_version(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    // A resume point of an earlier life of the project.
    let err = kv
        .watch(WatchOptions::key("w").from_version(30).incarnation(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = kv.watch(WatchOptions::prefix("x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = kv
        .client
        .project("bad name!")
        .watch(WatchOptions::all())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

fn pipelining() -> Stub {
    Stub {
        pipeline: true,
        call_projects: true,
        many_calls: true,
        ..Stub::default()
    }
}

#[tokio::test]
async fn concurrent_calls_share_frames_and_keep_their_own_results() {
    let stub = pipelining();
    let kv = client_of(stub.clone()).await.project("p");
    // A lone call goes out at once, alone.
    assert_eq!(
        kv.get::<Value>("one").await.unwrap(),
        Some(json!({"key": "one"}))
    );
    assert_eq!(stub.frame_sizes(), vec![1]);
    let calls = (0..200).map(|i| {
        let kv = kv.clone();
        tokio::spawn(async move {
            match i % 4 {
                0 => kv.get::<Value>(&format!("k{i}")).await.map(|v| v.unwrap()),
                1 => kv.has(&format!("k{i}")).await.map(|b| json!(b)),
                2 => kv
                    .set_with(&format!("k{i}"), &i, SetOptions::new())
                    .await
                    .map(|o| json!(o.version)),
                _ => kv.get::<Value>("bad").await.map(|v| v.unwrap()),
            }
        })
    });
    // Spawned all at once, then awaited.
    let calls: Vec<_> = calls.collect();
    let results: Vec<_> = futures_join(calls.into_iter()).await;
    for (i, result) in results.into_iter().enumerate() {
        match i % 4 {
            0 => assert_eq!(result.unwrap(), json!({"key": format!("k{i}")})),
            1 => assert_eq!(result.unwrap(), json!(true)),
            2 => assert_eq!(result.unwrap(), json!(i)),
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.code(), Code::InvalidArgument, "{err}");
                assert!(err.to_string().contains("bad is a bad key"), "{err}");
            }
        }
    }
    let frames = stub.frame_sizes();
    assert_eq!(frames.iter().sum::<usize>(), 201, "{frames:?}");
    assert!(
        frames.iter().any(|&n| n > 1),
        "200 concurrent calls went one per frame: {frames:?}"
    );
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn each_pipelined_call_keeps_its_own_deadline() {
    let kv = client_of(pipelining()).await.project("p");
    let started = std::time::Instant::now();
    let (hung, slow, quick) = tokio::join!(
        kv.get::<Value>("hang"),
        kv.get::<Value>("slow"),
        kv.get::<Value>("quick"),
    );
    let err = hung.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { timeout, .. } if timeout == TIMEOUT),
        "{err}"
    );
    assert!(started.elapsed() >= TIMEOUT);
    assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
    assert_eq!(slow.unwrap(), Some(json!({"key": "slow"})));
    assert_eq!(quick.unwrap(), Some(json!({"key": "quick"})));
    // The remaining time travels with the call (the stub echoes it as the
    // delete's version): at most the timeout, rounded up.
    let sent = kv
        .delete_with("x", DeleteOptions::new())
        .await
        .unwrap()
        .version;
    assert!(sent > 0 && sent <= TIMEOUT.as_millis() as u64 + 1, "{sent}");
}

#[tokio::test]
async fn a_broken_stream_fails_its_calls_and_the_next_call_reopens_it() {
    let stub = pipelining();
    let kv = client_of(stub.clone()).await.project("p");
    let (broken, waiting) = tokio::join!(kv.get::<Value>("break"), kv.get::<Value>("hang"));
    let err = broken.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    let err = waiting.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    assert!(err.to_string().contains("may or may not have run"), "{err}");
    assert_eq!(
        kv.get::<Value>("after").await.unwrap(),
        Some(json!({"key": "after"}))
    );
    assert_eq!(stub.streams(), 2);
}

#[tokio::test]
async fn calls_made_in_order_are_sent_in_order() {
    let stub = pipelining();
    let kv = client_of(stub.clone()).await.project("p");
    // Issued without awaiting one another, polled in this order.
    let writes = (1..=50u64).map(|i| {
        let kv = kv.clone();
        async move {
            kv.set_with("k", &i, SetOptions::new())
                .await
                .unwrap()
                .version
        }
    });
    let versions = futures_util_join_all(writes).await;
    assert_eq!(versions, (1..=50).collect::<Vec<_>>());
    let arrived = stub.sets.lock().unwrap().clone();
    assert_eq!(arrived, (1..=50).map(|i| i as f64).collect::<Vec<_>>());
}

/// Polls every future in order on this task, like `join_all`.
async fn futures_util_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *output = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn auto_batching_off_makes_unary_calls() {
    let stub = pipelining();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServiceServer::new(stub.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let kv = Client::builder(format!("http://{addr}"))
        .timeout(TIMEOUT)
        .token("secret")
        .auto_batching(false)
        .connect()
        .await
        .unwrap()
        .project("p");
    // The unary stub refuses a request id "reused"; the pipelined one never.
    let err = kv
        .set_with("k", &1, SetOptions::new().request_id("reused"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(stub.frames.lock().unwrap().is_empty());
    assert_eq!(stub.streams(), 0);
}

const TENANTS: [&str; 3] = ["alpha", "beta", "gamma"];

#[tokio::test]
async fn calls_of_several_projects_share_one_stream() {
    let stub = pipelining();
    let client = client_of(stub.clone()).await;
    // Handles from clones of the client share its stream too.
    let handles: Vec<_> = TENANTS.iter().map(|n| client.clone().project(n)).collect();
    let reads = (0..30).map(|i| {
        let kv = handles[i % 3].clone();
        async move { kv.get::<Value>("whoami").await.unwrap().unwrap() }
    });
    let answers = futures_util_join_all(reads).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer, json!({ "project": TENANTS[i % 3] }), "call {i}");
    }
    // A fresh handle per call, as a gateway makes them.
    let writes = (0..30u64).map(|i| {
        let client = client.clone();
        async move {
            let kv = client.project(TENANTS[i as usize % 3]);
            kv.set_with("n", &i, SetOptions::new())
                .await
                .unwrap()
                .version
        }
    });
    assert_eq!(
        futures_util_join_all(writes).await,
        (0..30).collect::<Vec<_>>()
    );

    assert_eq!(stub.streams(), 1);
    assert!(stub.unary.lock().unwrap().is_empty());
    let frames = stub.frames.lock().unwrap().clone();
    let mut ran_in = Vec::new();
    for frame in &frames {
        assert!(TENANTS.contains(&frame.project.as_str()), "{frame:?}");
        for (project, key) in &frame.calls {
            // Named only when it differs from the frame's.
            assert_ne!(project, &frame.project, "{frame:?}");
            let project = if project.is_empty() {
                &frame.project
            } else {
                project
            };
            ran_in.push((project.as_str(), key.as_str()));
        }
    }
    let expected: Vec<_> = (0..30)
        .map(|i| (TENANTS[i % 3], "whoami"))
        .chain((0..30).map(|i| (TENANTS[i % 3], "n")))
        .collect();
    assert_eq!(ran_in, expected);
    assert!(
        frames
            .iter()
            .any(|f| f.calls.iter().any(|(project, _)| !project.is_empty())),
        "no frame carried calls of several projects: {frames:?}"
    );
}

#[tokio::test]
async fn a_thousand_projects_one_after_another_open_one_stream() {
    let stub = pipelining();
    let client = client_of(stub.clone()).await;
    for i in 0..1000u64 {
        let kv = client.project(&format!("g{i}"));
        let outcome = kv.set_with("k", &i, SetOptions::new()).await.unwrap();
        assert_eq!(outcome.version, i);
    }
    assert_eq!(stub.streams(), 1);
    let frames = stub.frames.lock().unwrap().clone();
    assert_eq!(frames.len(), 1000);
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.project, format!("g{i}"));
        // The frame names the project; its one call need not.
        assert_eq!(frame.calls, [(String::new(), "k".to_string())]);
    }
}

#[tokio::test]
async fn a_server_without_per_call_projects_gets_unary_calls() {
    // It has the stream, but would run every call in the stream's project.
    let stub = Stub {
        pipeline: true,
        ..Stub::default()
    };
    let client = client_of(stub.clone()).await;
    let reads = (0..9).map(|i| {
        let kv = client.project(TENANTS[i % 3]);
        async move { kv.get::<Value>("whoami").await.unwrap().unwrap() }
    });
    let answers = futures_util_join_all(reads).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer, json!({ "project": TENANTS[i % 3] }), "call {i}");
    }
    for (i, name) in TENANTS.into_iter().enumerate() {
        let outcome = client
            .project(name)
            .set_with("k", &1, SetOptions::new().if_version(i as u64 + 1))
            .await
            .unwrap();
        assert_eq!(outcome.version, i as u64 + 2);
    }

    // Opened once to learn what the server can do, and never used.
    assert_eq!(stub.streams(), 1);
    assert!(stub.frames.lock().unwrap().is_empty());
    let mut unary = stub.unary.lock().unwrap().clone();
    unary.sort();
    let mut expected: Vec<_> = (0..9)
        .map(|i| (TENANTS[i % 3].to_string(), "whoami".to_string()))
        .chain(TENANTS.map(|name| (name.to_string(), "k".to_string())))
        .collect();
    expected.sort();
    assert_eq!(unary, expected);
}

#[tokio::test]
async fn a_stream_the_server_ends_fails_its_calls_with_its_code_and_the_next_call_reopens() {
    let stub = pipelining();
    let client = client_of(stub.clone()).await;
    let (a, b) = (client.project("a"), client.project("b"));
    let (revoked, in_flight) = tokio::join!(a.get::<Value>("revoke"), b.get::<Value>("hang"));
    let err = revoked.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = in_flight.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.to_string().contains("may or may not have run"), "{err}");

    // While the credentials stay bad, reopening fails with the server's
    // own status.
    stub.revoked.store(true, Ordering::SeqCst);
    let err = a.get::<Value>("x").await.unwrap_err();
    assert!(
        matches!(&err, Error::Status(s) if s.code() == Code::Unauthenticated),
        "{err}"
    );
    assert_eq!(stub.streams(), 1);

    stub.revoked.store(false, Ordering::SeqCst);
    assert_eq!(
        b.get::<Value>("whoami").await.unwrap(),
        Some(json!({ "project": "b" }))
    );
    assert_eq!(
        a.get::<Value>("whoami").await.unwrap(),
        Some(json!({ "project": "a" }))
    );
    assert_eq!(stub.streams(), 2);
    assert!(stub.unary.lock().unwrap().is_empty());
}

#[tokio::test]
async fn many_key_calls_ride_the_stream_only_when_the_server_takes_them() {
    for many_calls in [true, false] {
        let stub = Stub {
            many_calls,
            ..pipelining()
        };
        let kv = client_of(stub.clone()).await.project("q");
        let (got, versions, deleted, one) = tokio::join!(
            kv.get_many::<Value, _>(["a", "missing", "whoami"]),
            kv.set_many_with(
                [("x", &1), ("y", &2)],
                SetManyOptions::new()
                    .ttl(Duration::from_millis(10))
                    .request_id("r"),
            ),
            kv.delete_many(["a", "b"]),
            kv.get::<Value>("single"),
        );
        let got = got.unwrap();
        assert_eq!(got[0].as_ref().unwrap().value, json!({"key": "a"}));
        assert_eq!(got[0].as_ref().unwrap().version, 7);
        assert!(got[1].is_none());
        assert_eq!(got[2].as_ref().unwrap().value, json!({"project": "q"}));
        assert_eq!(versions.unwrap(), [12, 13]);
        // Two keys and no id (automatic ids are off here).
        assert_eq!(deleted.unwrap(), 2);
        assert_eq!(one.unwrap(), Some(json!({"key": "single"})));
        let streamed: Vec<String> = stub
            .frames
            .lock()
            .unwrap()
            .iter()
            .flat_map(|f| f.calls.iter().map(|(_, key)| key.clone()))
            .collect();
        let unary: Vec<String> = stub
            .unary
            .lock()
            .unwrap()
            .iter()
            .map(|(project, key)| {
                assert_eq!(project, "q");
                key.clone()
            })
            .collect();
        let many = ["a,missing,whoami", "set_many", "delete_many"];
        for key in many {
            assert_eq!(streamed.contains(&key.to_string()), many_calls, "{key}");
            assert_eq!(unary.contains(&key.to_string()), !many_calls, "{key}");
        }
        assert!(streamed.contains(&"single".to_string()));
        let ids = stub.ids.lock().unwrap().clone();
        assert!(ids.contains(&("set_many", "r".to_string())), "{ids:?}");
    }
}
