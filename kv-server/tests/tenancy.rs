//! Tenancy boundaries while streams are open and across restarts, against
//! the real binary.
//!
//! Revoking a token ends the Watch and Pipeline streams it opened within
//! about a second with UNAUTHENTICATED, and nothing written or sent after
//! the revocation reaches or runs through them. Deleting a project ends
//! its streams with NOT_FOUND naming it, and the project created under the
//! same name afterwards shares nothing with it: not its data, history,
//! versions, usage or tokens, not after a restart, and (once the server
//! has compacted) not even on disk. Incarnations tell the two apart.
//! Concurrent admin calls on one name have exactly one winner. One SDK
//! client serves any number of projects in bounded memory, and per-call
//! projects on a Pipeline stream obey the caller's credentials.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use kv_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, kv_service_client::KvServiceClient,
    watch_request::Target,
};
use kv_tests::BinaryServer;
use prost_types::{Value, value::Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, Streaming, transport::Channel};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const ADMIN: &str = "tenancy-admin-secret-0123456789";
/// The server promises about a second; the margin absorbs a loaded machine.
const END_WITHIN: Duration = Duration::from_secs(3);
/// Bound on any wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long a stream is given to show something it must not.
const QUIET: Duration = Duration::from_millis(300);

fn start_authenticated() -> BinaryServer {
    BinaryServer::start(BIN, &["--fsync", "never", "--admin-token", ADMIN])
}

fn start_authenticated_in(dir: &Path) -> BinaryServer {
    BinaryServer::start_in(BIN, dir, &["--fsync", "never", "--admin-token", ADMIN])
}

fn start_open() -> BinaryServer {
    BinaryServer::start(BIN, &["--fsync", "never"])
}

/// A value no other test, run or file can contain by chance, so finding it
/// anywhere means it came from here.
fn unique(label: &str) -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("OS randomness");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{label}-{hex}")
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn text_of(value: Option<&Value>) -> Option<&str> {
    match value.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// Who a call comes from: the metadata it carries.
#[derive(Clone, Debug, Default)]
struct Caller {
    token: Option<String>,
    project: Option<String>,
}

impl Caller {
    fn admin() -> Self {
        Self {
            token: Some(ADMIN.to_string()),
            project: None,
        }
    }

    fn admin_on(project: &str) -> Self {
        Self {
            token: Some(ADMIN.to_string()),
            project: Some(project.to_string()),
        }
    }

    fn token(secret: &str) -> Self {
        Self {
            token: Some(secret.to_string()),
            project: None,
        }
    }

    fn open(project: Option<&str>) -> Self {
        Self {
            token: None,
            project: project.map(str::to_string),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ASCII token"),
            );
        }
        if let Some(project) = &self.project {
            request
                .metadata_mut()
                .insert("x-kv-project", project.parse().expect("ASCII name"));
        }
        request
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid url")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connects to the server")
}

/// Data calls as one caller, through the raw client (the SDK does not
/// expose incarnations).
#[derive(Clone)]
struct Kv {
    raw: KvServiceClient<Channel>,
    caller: Caller,
}

impl Kv {
    async fn new(addr: SocketAddr, caller: Caller) -> Self {
        Self {
            raw: KvServiceClient::new(channel(addr).await),
            caller,
        }
    }

    fn with(&self, caller: Caller) -> Self {
        Self {
            raw: self.raw.clone(),
            caller,
        }
    }

    async fn set(&self, key: &str, value: &str) -> Result<u64, Status> {
        let request = self.caller.request(pb::SetRequest {
            key: key.into(),
            value: Some(text(value)),
            ..Default::default()
        });
        let reply = self.raw.clone().set(request).await?.into_inner();
        assert!(reply.applied, "an unconditional set applies");
        Ok(reply.version)
    }

    async fn get(&self, key: &str) -> Result<pb::GetResponse, Status> {
        let request = self.caller.request(pb::GetRequest { key: key.into() });
        Ok(self.raw.clone().get(request).await?.into_inner())
    }

    async fn list(&self) -> Result<pb::ListResponse, Status> {
        let request = self.caller.request(pb::ListRequest {
            limit: 1000,
            ..Default::default()
        });
        Ok(self.raw.clone().list(request).await?.into_inner())
    }

    async fn watch(&self, request: pb::WatchRequest) -> Result<Streaming<pb::WatchEvent>, Status> {
        let request = self.caller.request(request);
        Ok(self.raw.clone().watch(request).await?.into_inner())
    }

    /// Opens a Pipeline stream carrying `first`. The frame is queued before
    /// the call so that a server answering the headers only after the first
    /// frame cannot deadlock the test.
    async fn pipeline(&self, first: pb::PipelineRequest) -> Result<Pipe, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue the first frame");
        let request = self.caller.request(ReceiverStream::new(rx));
        let response = tokio::time::timeout(WAIT, self.raw.clone().pipeline(request))
            .await
            .expect("the Pipeline stream opens in time")?;
        let headers = response.metadata().clone();
        Ok(Pipe {
            tx,
            rx: response.into_inner(),
            headers,
        })
    }
}

fn watch_all() -> pb::WatchRequest {
    pb::WatchRequest::default()
}

fn watch_from(from_version: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        from_version: Some(from_version),
        ..Default::default()
    }
}

/// The admin API through the raw client, with the admin token.
#[derive(Clone)]
struct Admin {
    raw: AdminServiceClient<Channel>,
}

/// A token just created.
#[derive(Clone, Debug)]
struct Token {
    secret: String,
    id: String,
}

impl Admin {
    async fn new(addr: SocketAddr) -> Self {
        Self {
            raw: AdminServiceClient::new(channel(addr).await),
        }
    }

    fn request<T>(message: T) -> Request<T> {
        Caller::admin().request(message)
    }

    async fn create_project(&self, name: &str) -> Result<pb::Project, Status> {
        let request = Self::request(pb::CreateProjectRequest {
            name: name.into(),
            quota: None,
        });
        Ok(self.raw.clone().create_project(request).await?.into_inner())
    }

    async fn delete_project(&self, name: &str) -> Result<u64, Status> {
        let request = Self::request(pb::DeleteProjectRequest { name: name.into() });
        Ok(self
            .raw
            .clone()
            .delete_project(request)
            .await?
            .into_inner()
            .deleted_keys)
    }

    async fn get_project(&self, name: &str) -> Result<pb::Project, Status> {
        let request = Self::request(pb::GetProjectRequest { name: name.into() });
        Ok(self.raw.clone().get_project(request).await?.into_inner())
    }

    async fn list_projects(&self) -> Vec<pb::Project> {
        let request = Self::request(pb::ListProjectsRequest {});
        self.raw
            .clone()
            .list_projects(request)
            .await
            .expect("ListProjects")
            .into_inner()
            .projects
    }

    async fn create_token(&self, project: &str, read_only: bool) -> Token {
        let request = Self::request(pb::CreateTokenRequest {
            project: project.into(),
            read_only,
            limits: None,
        });
        let reply = self
            .raw
            .clone()
            .create_token(request)
            .await
            .unwrap_or_else(|e| panic!("CreateToken for {project}: {e:?}"))
            .into_inner();
        Token {
            secret: reply.token,
            id: reply.info.expect("token info").id,
        }
    }

    async fn revoke(&self, id: &str) -> bool {
        let request = Self::request(pb::RevokeTokenRequest { id: id.into() });
        self.raw
            .clone()
            .revoke_token(request)
            .await
            .expect("RevokeToken")
            .into_inner()
            .revoked
    }

    async fn token_ids(&self, project: &str) -> Vec<String> {
        let request = Self::request(pb::ListTokensRequest {
            project: project.into(),
        });
        self.raw
            .clone()
            .list_tokens(request)
            .await
            .expect("ListTokens")
            .into_inner()
            .tokens
            .into_iter()
            .map(|t| t.id)
            .collect()
    }
}

/// What a stream did within a wait.
#[derive(Debug)]
enum Next<T> {
    Item(T),
    Failed(Status),
    /// Ended without a status: never a correct end for these streams.
    Ended,
    Quiet,
}

async fn next<T>(stream: &mut Streaming<T>, within: Duration) -> Next<T> {
    match tokio::time::timeout(within, stream.message()).await {
        Ok(Ok(Some(item))) => Next::Item(item),
        Ok(Ok(None)) => Next::Ended,
        Ok(Err(status)) => Next::Failed(status),
        Err(_) => Next::Quiet,
    }
}

/// The next event, which must come.
async fn event(watch: &mut Streaming<pb::WatchEvent>, what: &str) -> pb::WatchEvent {
    match next(watch, WAIT).await {
        Next::Item(event) => event,
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

/// Reads until the stream fails; the failure must be `code`, saying `says`,
/// within [`END_WITHIN`] of `since`, and nothing may follow it. Returns
/// the items delivered before the end, for the caller to judge.
async fn ends<T: std::fmt::Debug>(
    stream: &mut Streaming<T>,
    code: Code,
    says: &str,
    since: Instant,
    what: &str,
) -> Vec<T> {
    let mut before = Vec::new();
    let status = loop {
        let left = END_WITHIN.saturating_sub(since.elapsed());
        match next(stream, left).await {
            Next::Item(item) => before.push(item),
            Next::Failed(status) => break status,
            Next::Ended => panic!("{what}: ended without a status after {before:?}"),
            Next::Quiet => panic!(
                "{what}: still open {:?} after the change (delivered {before:?})",
                since.elapsed()
            ),
        }
    };
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().contains(says),
        "{what}: {:?} does not say {says:?}",
        status.message()
    );
    assert!(
        since.elapsed() < END_WITHIN,
        "{what}: ended only after {:?}",
        since.elapsed()
    );
    match next(stream, QUIET).await {
        Next::Ended | Next::Quiet => {}
        other => panic!("{what}: after its end the stream went on: {other:?}"),
    }
    before
}

fn set_call(id: u64, project: &str, key: &str, value: &str) -> pb::Call {
    pb::Call {
        id,
        timeout_ms: 0,
        project: project.into(),
        request: Some(pb::call::Request::Set(pb::SetRequest {
            key: key.into(),
            value: Some(text(value)),
            ..Default::default()
        })),
    }
}

fn get_call(id: u64, project: &str, key: &str) -> pb::Call {
    pb::Call {
        id,
        timeout_ms: 0,
        project: project.into(),
        request: Some(pb::call::Request::Get(pb::GetRequest { key: key.into() })),
    }
}

fn frame(calls: Vec<pb::Call>) -> pb::PipelineRequest {
    pb::PipelineRequest {
        calls,
        project: String::new(),
    }
}

/// An open Pipeline stream.
struct Pipe {
    tx: mpsc::Sender<pb::PipelineRequest>,
    rx: Streaming<pb::PipelineResponse>,
    headers: tonic::metadata::MetadataMap,
}

impl Pipe {
    /// Sends a frame; a stream the server has already closed may refuse it.
    async fn send(&self, calls: Vec<pb::Call>) {
        let _ = self.tx.send(frame(calls)).await;
    }

    /// The replies to `ids`, which must all come.
    async fn replies(&mut self, ids: &[u64], what: &str) -> HashMap<u64, pb::reply::Response> {
        let mut got = HashMap::new();
        let deadline = Instant::now() + WAIT;
        while ids.iter().any(|id| !got.contains_key(id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match next(&mut self.rx, left).await {
                Next::Item(frame) => {
                    for reply in frame.replies {
                        let response = reply.response.expect("a reply carries a response");
                        assert!(
                            got.insert(reply.id, response).is_none(),
                            "{what}: call {} answered twice",
                            reply.id
                        );
                    }
                }
                other => panic!("{what}: waiting for replies {ids:?}, got {other:?} ({got:?})"),
            }
        }
        got
    }
}

/// The error code of a reply, or None when it succeeded.
fn reply_code(response: &pb::reply::Response) -> Option<i32> {
    match response {
        pb::reply::Response::Error(e) => Some(e.code),
        _ => None,
    }
}

#[track_caller]
fn succeeded(replies: &HashMap<u64, pb::reply::Response>, id: u64, what: &str) {
    assert_eq!(
        reply_code(&replies[&id]),
        None,
        "{what}: call {id}: {:?}",
        replies[&id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_token_ends_its_watches_at_once() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    let targets = [
        ("project", None),
        ("prefix", Some(Target::Prefix("k".into()))),
        ("key", Some(Target::Key("k".into()))),
    ];
    // Each variant in a project of its own, all at once: a revocation
    // must end its token's watches and nobody else's.
    let mut variants = tokio::task::JoinSet::new();
    for read_only in [false, true] {
        for (label, target) in targets.clone() {
            let admin = admin.clone();
            variants.spawn(async move {
                let what = format!("{label} watch of a read_only={read_only} token");
                let project = format!("rev-{label}-{read_only}");
                admin.create_project(&project).await.unwrap();
                let data = Kv::new(addr, Caller::admin_on(&project)).await;
                let silent = admin.create_token(&project, read_only).await;
                let raced = admin.create_token(&project, read_only).await;
                let bystander = admin.create_token(&project, read_only).await;
                let mut watches = Vec::new();
                for token in [&silent, &raced, &bystander] {
                    let request = pb::WatchRequest {
                        target: target.clone(),
                        ..Default::default()
                    };
                    let kv = data.with(Caller::token(&token.secret));
                    watches.push(kv.watch(request).await.unwrap());
                }
                // Live before the revocations: each sees a write.
                let before = unique("before");
                data.set("k", &before).await.unwrap();
                for watch in &mut watches {
                    let seen = event(watch, &what).await;
                    assert_eq!(text_of(seen.value.as_ref()), Some(before.as_str()));
                }
                let [silent_watch, raced_watch, bystander_watch] = &mut watches[..] else {
                    unreachable!()
                };

                // Nothing written after the revocation: the watch ends anyway.
                let since = Instant::now();
                assert!(admin.revoke(&silent.id).await);
                let delivered = ends(
                    silent_watch,
                    Code::Unauthenticated,
                    "",
                    since,
                    &format!("{what}, revoked"),
                )
                .await;
                assert!(delivered.is_empty(), "{what}: {delivered:?}");

                // Written right after the revocation: never delivered to it.
                let since = Instant::now();
                assert!(admin.revoke(&raced.id).await);
                let after = unique("after");
                data.set("k", &after).await.unwrap();
                let delivered = ends(
                    raced_watch,
                    Code::Unauthenticated,
                    "",
                    since,
                    &format!("{what}, revoked then written"),
                )
                .await;
                assert!(
                    delivered.is_empty(),
                    "{what}: a write made after the revocation reached the revoked watch: {delivered:?}"
                );

                // A token nobody revoked keeps its watch.
                let seen = event(bystander_watch, &what).await;
                assert_eq!(
                    text_of(seen.value.as_ref()),
                    Some(after.as_str()),
                    "{what}: the bystander"
                );
                // The revoked token is refused from now on.
                let refused = data
                    .with(Caller::token(&silent.secret))
                    .watch(watch_all())
                    .await;
                let status = match refused {
                    Err(status) => status,
                    Ok(mut watch) => match next(&mut watch, WAIT).await {
                        Next::Failed(status) => status,
                        other => panic!("{what}: a revoked token watched again: {other:?}"),
                    },
                };
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            });
        }
    }
    while let Some(variant) = tokio::time::timeout(Duration::from_secs(60), variants.join_next())
        .await
        .expect("every variant finishes within 60 s")
    {
        variant.expect("variant passed");
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_token_ends_its_pipeline_streams_at_once() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    for read_only in [false, true] {
        let what = format!("Pipeline of a read_only={read_only} token");
        let project = format!("pipe-{read_only}");
        admin.create_project(&project).await.unwrap();
        let data = Kv::new(addr, Caller::admin_on(&project)).await;
        data.set("k", "before").await.unwrap();
        let silent = admin.create_token(&project, read_only).await;
        let raced = admin.create_token(&project, read_only).await;
        let bystander = admin.create_token(&project, read_only).await;
        // What a call of this token does: a read-only one can only read,
        // so a read is what shows whether a call ran.
        let call = |id: u64, key: &str, value: &str| {
            if read_only {
                get_call(id, "", key)
            } else {
                set_call(id, "", key, value)
            }
        };
        let mut pipes = Vec::new();
        for token in [&silent, &raced, &bystander] {
            let kv = data.with(Caller::token(&token.secret));
            let mut pipe = kv
                .pipeline(frame(vec![call(1, "first", "one")]))
                .await
                .unwrap();
            let replies = pipe.replies(&[1], &what).await;
            succeeded(&replies, 1, &what);
            pipes.push(pipe);
        }
        let [silent_pipe, raced_pipe, bystander_pipe] = &mut pipes[..] else {
            unreachable!()
        };

        // Nothing sent after the revocation: the stream ends anyway, with
        // no further frame.
        let since = Instant::now();
        assert!(admin.revoke(&silent.id).await);
        let frames = ends(
            &mut silent_pipe.rx,
            Code::Unauthenticated,
            "",
            since,
            &format!("{what}, revoked"),
        )
        .await;
        assert!(frames.is_empty(), "{what}: {frames:?}");

        // Sent right after the revocation: never run.
        let since = Instant::now();
        assert!(admin.revoke(&raced.id).await);
        let late = unique("late");
        raced_pipe.send(vec![call(2, &late, &late)]).await;
        let frames = ends(
            &mut raced_pipe.rx,
            Code::Unauthenticated,
            "",
            since,
            &format!("{what}, revoked then sent"),
        )
        .await;
        for reply in frames.iter().flat_map(|f| &f.replies) {
            let response = reply.response.as_ref().expect("a response");
            assert!(
                reply_code(response).is_some(),
                "{what}: a call sent after the revocation ran: {reply:?}"
            );
        }
        if !read_only {
            tokio::time::sleep(QUIET).await;
            let stored = data.get(&late).await.unwrap();
            assert!(
                !stored.found,
                "{what}: a call sent after the revocation was applied"
            );
        }

        // A token nobody revoked keeps its stream.
        bystander_pipe.send(vec![call(3, "k", "still")]).await;
        let replies = bystander_pipe.replies(&[3], &what).await;
        succeeded(&replies, 3, &format!("{what}, bystander"));
    }
    server.terminate();
}

/// The old project's streams after a DeleteProject of `b`: they end with
/// NOT_FOUND naming the project and never show its successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_project_ends_its_streams_with_not_found() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    let as_admin = Kv::new(addr, Caller::admin_on("b")).await;

    // Round one waits for the ends before recreating; round two recreates
    // and writes at once, racing the ends.
    for race in [false, true] {
        let what = |stream: &str| format!("{stream} (recreated at once: {race})");
        let created = admin.create_project("b").await.unwrap();
        let token = admin.create_token("b", false).await;
        let as_token = as_admin.with(Caller::token(&token.secret));
        // The stream's first write comes before the watches, which then
        // see only what follows.
        let mut pipe = as_token
            .pipeline(frame(vec![set_call(1, "", "p", "piped")]))
            .await
            .unwrap();
        succeeded(&pipe.replies(&[1], "pipe").await, 1, "pipe");
        let mut token_watch = as_token.watch(watch_all()).await.unwrap();
        let mut key_watch = as_token
            .watch(pb::WatchRequest {
                target: Some(Target::Key("k".into())),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut admin_watch = as_admin.watch(watch_all()).await.unwrap();
        let before = unique("before");
        as_token.set("k", &before).await.unwrap();
        for watch in [&mut token_watch, &mut key_watch, &mut admin_watch] {
            let seen = event(watch, "a watch before the deletion").await;
            assert_eq!(text_of(seen.value.as_ref()), Some(before.as_str()));
        }
        let old_incarnation = created.incarnation;

        let since = Instant::now();
        assert_eq!(admin.delete_project("b").await.unwrap(), 2, "p and k");
        let successor = if race {
            admin.create_project("b").await.unwrap();
            let fresh = admin.create_token("b", false).await;
            let kv = as_admin.with(Caller::token(&fresh.secret));
            let new = unique("successor");
            kv.set("k", &new).await.unwrap();
            as_admin.set("k", &new).await.unwrap();
            Some((kv, new))
        } else {
            None
        };
        let streams = [
            (&mut token_watch, "Watch of a project token"),
            (&mut key_watch, "Watch of one key with a project token"),
            (
                &mut admin_watch,
                "Watch of the admin token with x-kv-project",
            ),
        ];
        for (watch, name) in streams {
            let delivered = ends(watch, Code::NotFound, "project b", since, &what(name)).await;
            assert!(
                delivered.is_empty(),
                "{}: events after the deletion: {delivered:?}",
                what(name)
            );
        }
        let frames = ends(
            &mut pipe.rx,
            Code::NotFound,
            "project b",
            since,
            &what("Pipeline of a project token"),
        )
        .await;
        assert!(frames.is_empty(), "{frames:?}");

        let (kv, new) = match successor {
            Some(successor) => successor,
            None => {
                admin.create_project("b").await.unwrap();
                let fresh = admin.create_token("b", false).await;
                let kv = as_admin.with(Caller::token(&fresh.secret));
                let new = unique("successor");
                kv.set("k", &new).await.unwrap();
                (kv, new)
            }
        };
        // The ended streams stay ended, whatever the successor does.
        kv.set("k2", &new).await.unwrap();
        pipe.send(vec![set_call(2, "", "p", &new)]).await;
        for watch in [&mut token_watch, &mut key_watch, &mut admin_watch] {
            match next(watch, QUIET).await {
                Next::Ended | Next::Quiet => {}
                other => panic!("an ended watch of the old project went on: {other:?}"),
            }
        }
        match next(&mut pipe.rx, QUIET).await {
            Next::Ended | Next::Quiet => {}
            other => panic!("an ended pipeline of the old project went on: {other:?}"),
        }
        let p = kv.get("p").await.unwrap();
        assert!(
            !p.found,
            "a frame sent on the old project's stream ran: {p:?}"
        );
        let current = admin.get_project("b").await.unwrap();
        assert_ne!(current.incarnation, old_incarnation);
        // Clean slate for the next round.
        admin.delete_project("b").await.unwrap();
    }
    server.terminate();
}

/// A Pipeline of the admin token whose `x-kv-project` names a project is
/// that project's stream: deleting it ends the stream with NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pipeline_naming_a_deleted_project_ends_with_not_found() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    admin.create_project("b").await.unwrap();
    let as_admin = Kv::new(addr, Caller::admin_on("b")).await;
    let mut pipe = as_admin
        .pipeline(frame(vec![set_call(1, "", "k", "v")]))
        .await
        .unwrap();
    succeeded(&pipe.replies(&[1], "admin pipe").await, 1, "admin pipe");
    let since = Instant::now();
    admin.delete_project("b").await.unwrap();
    let frames = ends(
        &mut pipe.rx,
        Code::NotFound,
        "project b",
        since,
        "Pipeline of the admin token with x-kv-project: b",
    )
    .await;
    assert!(frames.is_empty(), "{frames:?}");
    server.terminate();
}

/// What a watch that may be refused did when a write followed its opening:
/// the refusal, or the first event.
async fn first_after_write(
    kv: &Kv,
    request: pb::WatchRequest,
    writer: &Kv,
    key: &str,
    value: &str,
) -> Result<pb::WatchEvent, Status> {
    let mut watch = kv.watch(request.clone()).await?;
    writer.set(key, value).await.unwrap();
    match next(&mut watch, WAIT).await {
        Next::Item(event) => Ok(event),
        Next::Failed(status) => Err(status),
        other => panic!("watch {request:?}: {other:?}"),
    }
}

/// The first scenario, step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_project_never_shows_the_old_one() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    admin.create_project("b").await.unwrap();
    let old_token = admin.create_token("b", false).await;
    let old = Kv::new(addr, Caller::token(&old_token.secret)).await;
    let old_value = unique("old-b1");
    let first = old.set("b1", &old_value).await.unwrap();
    let old_last = old.set("b2", &old_value).await.unwrap();
    assert!(old_last > first);

    admin.delete_project("b").await.unwrap();
    let created = admin.create_project("b").await.unwrap();
    let token = admin.create_token("b", false).await;
    let kv = old.with(Caller::token(&token.secret));
    let incarnation = created.incarnation;

    let b1 = kv.get("b1").await.unwrap();
    assert!(!b1.found, "the old b1 is back: {b1:?}");
    assert_eq!(b1.incarnation, incarnation);

    // From 0: nothing of the old project, only what the new one writes.
    let fresh = unique("fresh");
    let seen = first_after_write(&kv, watch_from(0), &kv, "fresh", &fresh)
        .await
        .expect("a watch from 0 of the new project is accepted");
    assert_eq!(
        (seen.key.as_str(), text_of(seen.value.as_ref())),
        ("fresh", Some(fresh.as_str())),
        "the first event from 0 is the new project's first write: {seen:?}"
    );
    assert_eq!(seen.incarnation, incarnation);

    // From a version of the old project: refused, or nothing old.
    for from in [1, old_last] {
        let value = unique("after-resume");
        match first_after_write(&kv, watch_from(from), &kv, "resume", &value).await {
            Ok(seen) => {
                assert!(
                    !["b1", "b2"].contains(&seen.key.as_str())
                        && text_of(seen.value.as_ref()) != Some(old_value.as_str()),
                    "from {from}: an old event: {seen:?}"
                );
                assert_eq!(seen.incarnation, incarnation, "from {from}: {seen:?}");
                assert!(seen.version > incarnation, "from {from}: {seen:?}");
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                assert!(
                    status.message().contains("recreated"),
                    "from {from}: {status:?}"
                );
            }
            Err(status) => assert_eq!(status.code(), Code::OutOfRange, "from {from}: {status:?}"),
        }
    }

    // Naming the old incarnation: refused, with or without a resume point.
    for from_version in [None, Some(old_last), Some(0)] {
        let request = pb::WatchRequest {
            from_version,
            incarnation: Some(0),
            ..Default::default()
        };
        let status = first_after_write(&kv, request, &kv, "named", "x")
            .await
            .expect_err("a watch naming the old incarnation is refused");
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "from {from_version:?}: {status:?}"
        );
    }
    // Naming the current one works.
    let request = pb::WatchRequest {
        from_version: Some(kv.list().await.unwrap().version),
        incarnation: Some(incarnation),
        ..Default::default()
    };
    let value = unique("named-current");
    let seen = first_after_write(&kv, request, &kv, "current", &value)
        .await
        .expect("a watch naming the current incarnation is accepted");
    assert_eq!(text_of(seen.value.as_ref()), Some(value.as_str()));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incarnations_start_at_zero_and_jump_past_every_old_version() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    let as_admin = Kv::new(addr, Caller::admin_on("b")).await;
    let mut expected = 0;
    let mut older_versions: Vec<u64> = Vec::new();
    for round in 0..3 {
        let created = admin.create_project("b").await.unwrap();
        let incarnation = created.incarnation;
        if round == 0 {
            assert_eq!(incarnation, 0, "a first-time project");
        } else {
            assert!(incarnation > 0, "round {round}: a recreated project");
            let newest = older_versions.iter().max().copied().unwrap_or(0);
            assert!(
                incarnation > newest,
                "round {round}: incarnation {incarnation} is not above the old version {newest}"
            );
            assert!(incarnation > expected, "incarnations only grow");
        }
        expected = incarnation;
        assert_eq!(
            admin.get_project("b").await.unwrap().incarnation,
            incarnation
        );
        let listed = admin.list_projects().await;
        let listed = listed.iter().find(|p| p.name == "b").expect("b is listed");
        assert_eq!(listed.incarnation, incarnation);

        let token = admin.create_token("b", false).await;
        let kv = as_admin.with(Caller::token(&token.secret));
        let missing = kv.get("k0").await.unwrap();
        assert!(!missing.found);
        assert_eq!(missing.incarnation, incarnation, "Get of a missing key");
        let empty = kv.list().await.unwrap();
        assert!(empty.entries.is_empty(), "{empty:?}");
        assert_eq!(empty.incarnation, incarnation, "List of an empty project");

        // A watch from the empty project's listing misses nothing.
        let mut watch = kv.watch(watch_from(empty.version)).await.unwrap();
        let mut versions = Vec::new();
        for i in 0..5 {
            let version = kv.set(&format!("k{i}"), &format!("v{i}")).await.unwrap();
            if i == 0 {
                assert!(
                    version > incarnation,
                    "the first write's version {version} is not above the incarnation {incarnation}"
                );
            }
            versions.push(version);
        }
        for (i, version) in versions.iter().enumerate() {
            let seen = event(&mut watch, "watch from the listing").await;
            assert_eq!(seen.key, format!("k{i}"));
            assert_eq!(seen.version, *version);
            assert_eq!(seen.incarnation, incarnation, "WatchEvent");
        }
        let got = kv.get("k0").await.unwrap();
        assert_eq!((got.found, got.incarnation), (true, incarnation), "Get");
        let listed = kv.list().await.unwrap();
        assert_eq!(listed.incarnation, incarnation, "List");
        assert_eq!(listed.entries.len(), 5);
        assert_eq!(
            admin.get_project("b").await.unwrap().incarnation,
            incarnation
        );
        older_versions.extend(versions);
        older_versions.push(listed.version);
        older_versions.push(incarnation);
        admin.delete_project("b").await.unwrap();
    }
    server.terminate();
}

/// How a server is stopped before a restart.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Term,
}

fn stop(server: BinaryServer, how: Stop) {
    match how {
        Stop::Kill => server.kill(),
        Stop::Term => {
            let status = server.terminate();
            assert!(status.success(), "SIGTERM exit: {status}");
        }
    }
}

/// What the deleted tenant left: its token, keys and values, and every
/// version it was answered with.
struct OldTenant {
    token: Token,
    keys: Vec<String>,
    values: Vec<String>,
    newest_version: u64,
}

async fn fill_old_tenant(addr: SocketAddr, admin: &Admin) -> OldTenant {
    admin.create_project("b").await.unwrap();
    let token = admin.create_token("b", false).await;
    let kv = Kv::new(addr, Caller::token(&token.secret)).await;
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut newest_version = 0;
    for i in 0..20 {
        let key = format!("old{i}");
        let value = unique("old-value");
        newest_version = kv.set(&key, &value).await.unwrap();
        keys.push(key);
        values.push(value);
    }
    OldTenant {
        token,
        keys,
        values,
        newest_version,
    }
}

/// Everything a caller can see of project `b` shows nothing of `old`; the
/// new tenant holds exactly `new_keys` (written with `new_token`).
async fn no_trace_of(
    addr: SocketAddr,
    old: &OldTenant,
    new_token: &Token,
    new_keys: &[String],
    what: &str,
) {
    let admin = Admin::new(addr).await;
    let kv = Kv::new(addr, Caller::token(&new_token.secret)).await;
    let as_admin = kv.with(Caller::admin_on("b"));
    let project = admin.get_project("b").await.unwrap();
    assert!(
        project.incarnation > old.newest_version,
        "{what}: incarnation {} is not above the old version {}",
        project.incarnation,
        old.newest_version
    );
    for caller in [&kv, &as_admin] {
        for key in &old.keys {
            let got = caller.get(key).await.unwrap();
            assert!(!got.found, "{what}: old {key} is back: {got:?}");
        }
        let listed = caller.list().await.unwrap();
        let keys: Vec<&str> = listed.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, new_keys, "{what}: List");
        assert_eq!(listed.incarnation, project.incarnation, "{what}");
    }
    if new_keys.is_empty() {
        assert_eq!(
            (project.keys, project.bytes),
            (0, 0),
            "{what}: usage of the new project"
        );
    } else {
        assert_eq!(project.keys, new_keys.len() as u64, "{what}: usage");
    }
    for project in ["b", ""] {
        let ids = admin.token_ids(project).await;
        assert!(
            !ids.contains(&old.token.id),
            "{what}: the old token is listed (project {project:?}): {ids:?}"
        );
    }
    let refused = kv
        .with(Caller::token(&old.token.secret))
        .get(&old.keys[0])
        .await
        .expect_err("the old token is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");

    // A watch from 0 delivers the new tenant's history and new writes,
    // never the old tenant's. A tenant whose changes outgrew the history
    // (rebuilt at each restart, bounded) may be refused as too old: then
    // it is watched from its listing instead.
    let listed = kv.list().await.unwrap().version;
    let too_old = |status: &Status| !new_keys.is_empty() && status.code() == Code::OutOfRange;
    let mut watch = match kv.watch(watch_from(0)).await {
        Ok(watch) => Some(watch),
        Err(status) if too_old(&status) => None,
        Err(status) => panic!("{what}: watch from 0: {status:?}"),
    };
    let marker = unique("after-restart");
    kv.set("zz-marker", &marker).await.unwrap();
    loop {
        let Some(stream) = watch.as_mut() else {
            watch = Some(kv.watch(watch_from(listed)).await.unwrap());
            continue;
        };
        let seen = match next(stream, WAIT).await {
            Next::Item(seen) => seen,
            Next::Failed(status) if too_old(&status) => {
                watch = Some(kv.watch(watch_from(listed)).await.unwrap());
                continue;
            }
            other => panic!("{what}: watch from 0: {other:?}"),
        };
        let value = text_of(seen.value.as_ref()).unwrap_or_default().to_string();
        assert!(
            !old.values.contains(&value) && !old.keys.contains(&seen.key),
            "{what}: an old event: {seen:?}"
        );
        assert_eq!(seen.incarnation, project.incarnation, "{what}: {seen:?}");
        if value == marker {
            break;
        }
        assert!(
            new_keys.contains(&seen.key),
            "{what}: unexpected event {seen:?}"
        );
    }
}

async fn deleted_tenant_stays_gone(how: Stop, recreate_before_stop: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_authenticated_in(dir.path());
    let admin = Admin::new(server.addr).await;
    let old = fill_old_tenant(server.addr, &admin).await;
    assert_eq!(admin.delete_project("b").await.unwrap(), 20);
    let mut new_keys = Vec::new();
    let mut new_token = None;
    if recreate_before_stop {
        admin.create_project("b").await.unwrap();
        let token = admin.create_token("b", false).await;
        let kv = Kv::new(server.addr, Caller::token(&token.secret)).await;
        kv.set("new", "written before the restart").await.unwrap();
        new_keys.push("new".to_string());
        new_token = Some(token);
    }
    stop(server, how);

    let server = start_authenticated_in(dir.path());
    let admin = Admin::new(server.addr).await;
    let new_token = match new_token {
        Some(token) => token,
        None => {
            admin.create_project("b").await.unwrap();
            admin.create_token("b", false).await
        }
    };
    let what = format!("after {how:?} (recreated before: {recreate_before_stop})");
    no_trace_of(server.addr, &old, &new_token, &new_keys, &what).await;
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_project_stays_gone_after_kill_9() {
    deleted_tenant_stays_gone(Stop::Kill, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_project_stays_gone_after_sigterm() {
    deleted_tenant_stays_gone(Stop::Term, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_project_stays_new_after_kill_9() {
    deleted_tenant_stays_gone(Stop::Kill, true).await;
}

/// Files under `dir` whose bytes contain `marker`. Files removed while
/// being read are skipped.
fn files_containing(dir: &Path, marker: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, marker));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(marker.len()).any(|w| w == marker)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Polls every 100 ms until `done` or `limit`; whether it got there.
async fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_projects_values_leave_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_authenticated_in(dir.path());
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    // A neighbour whose data must survive the compaction.
    admin.create_project("a").await.unwrap();
    let neighbour = Kv::new(addr, Caller::admin_on("a")).await;
    let kept = unique("kept");
    neighbour.set("keep", &kept).await.unwrap();
    let old = fill_old_tenant(addr, &admin).await;
    let marker = old.values[0].clone();
    assert!(
        poll_until(Duration::from_secs(5), || !files_containing(
            dir.path(),
            marker.as_bytes()
        )
        .is_empty())
        .await,
        "the old tenant's value was never found on disk, so this test could not see it go"
    );

    assert_eq!(admin.delete_project("b").await.unwrap(), 20);
    let gone = poll_until(Duration::from_secs(15), || {
        old.values
            .iter()
            .all(|v| files_containing(dir.path(), v.as_bytes()).is_empty())
    })
    .await;
    let left: Vec<String> = old
        .values
        .iter()
        .flat_map(|v| files_containing(dir.path(), v.as_bytes()))
        .collect();
    assert!(
        gone,
        "15 s after the deletion the old tenant's values are still in {left:?}"
    );
    assert!(
        !files_containing(dir.path(), kept.as_bytes()).is_empty(),
        "the neighbour's value left the disk too"
    );

    let status = server.terminate();
    assert!(status.success(), "{status}");
    let server = start_authenticated_in(dir.path());
    let admin = Admin::new(server.addr).await;
    admin.create_project("b").await.unwrap();
    let new_token = admin.create_token("b", false).await;
    no_trace_of(
        server.addr,
        &old,
        &new_token,
        &[],
        "after compaction and restart",
    )
    .await;
    let neighbour = Kv::new(server.addr, Caller::admin_on("a")).await;
    let got = neighbour.get("keep").await.unwrap();
    assert_eq!(text_of(got.value.as_ref()), Some(kept.as_str()));
    assert!(files_containing(dir.path(), marker.as_bytes()).is_empty());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_and_deletes_of_one_name_have_one_winner() {
    let server = start_authenticated();
    let addr = server.addr;
    // Several connections, so the calls really arrive side by side.
    let mut admins = Vec::new();
    for _ in 0..4 {
        admins.push(Admin::new(addr).await);
    }
    let data = Kv::new(addr, Caller::admin_on("race")).await;
    // The first round creates a new name; the later ones recreate it.
    for round in 0..3 {
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let creates: Vec<_> = (0..32)
            .map(|i| {
                let admin = admins[i % admins.len()].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    admin.create_project("race").await.map(|_| ())
                })
            })
            .collect();
        let mut codes = Vec::new();
        for create in creates {
            let outcome = tokio::time::timeout(WAIT, create).await.unwrap().unwrap();
            codes.push(outcome.map_err(|e| e.code()));
        }
        let won = codes.iter().filter(|c| c.is_ok()).count();
        let exists = codes
            .iter()
            .filter(|c| **c == Err(Code::AlreadyExists))
            .count();
        assert_eq!(
            (won, exists),
            (1, 31),
            "round {round}: creates ended {codes:?}"
        );

        for i in 0..10 {
            data.set(&format!("k{i}"), "v").await.unwrap();
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let deletes: Vec<_> = (0..16)
            .map(|i| {
                let admin = admins[i % admins.len()].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    admin.delete_project("race").await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for delete in deletes {
            let outcome = tokio::time::timeout(WAIT, delete).await.unwrap().unwrap();
            outcomes.push(outcome.map_err(|e| e.code()));
        }
        let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        let missing = outcomes
            .iter()
            .filter(|o| **o == Err(Code::NotFound))
            .count();
        assert_eq!(
            (won, missing),
            (vec![&10], 15),
            "round {round}: deletes ended {outcomes:?}"
        );
        let status = admins[0].get_project("race").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    server.terminate();
}

/// The test process's resident memory, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// Set in the process that runs the memory-measuring test body alone.
const ALONE: &str = "KV_TENANCY_MEASURE_ALONE";

/// Memory is measured in a process of its own: the tests running beside
/// it in this one would move its resident size.
#[test]
fn one_sdk_client_serves_ten_thousand_projects_in_bounded_memory() {
    if std::env::var_os(ALONE).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(many_projects_on_one_client());
        return;
    }
    let name = "one_sdk_client_serves_ten_thousand_projects_in_bounded_memory";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the measured run did not run the test: {stdout}"
    );
}

async fn many_projects_on_one_client() {
    let started = Instant::now();
    let server = start_open();
    let url = format!("http://{}", server.addr);
    let client = kv_client::Client::builder(url.clone())
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut after_1000 = 0;
    let sequential = async {
        for i in 0..10_000u64 {
            client
                .project(&format!("g{i}"))
                .set("k", &i)
                .await
                .unwrap_or_else(|e| panic!("project g{i}: {e}"));
            if i == 999 {
                after_1000 = rss_bytes();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), sequential)
        .await
        .expect("10000 projects one after another within 40 s");
    let after_10000 = rss_bytes();
    let growth = after_10000.saturating_sub(after_1000);
    println!(
        "RSS after 1000 projects {} KiB, after 10000 {} KiB, {:?} so far",
        after_1000 / 1024,
        after_10000 / 1024,
        started.elapsed()
    );
    assert!(
        growth < 30 << 20,
        "the client grew by {} KiB over 9000 more projects",
        growth / 1024
    );

    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut state = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for round in 0..20 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let p = state % 2000;
                    let kv = client.project(&format!("g{p}"));
                    let mine = format!("{t}:{round}");
                    kv.set(&format!("t{t}"), &mine)
                        .await
                        .unwrap_or_else(|e| panic!("task {t} set in g{p}: {e}"));
                    let back: Option<String> = kv
                        .get(&format!("t{t}"))
                        .await
                        .unwrap_or_else(|e| panic!("task {t} get in g{p}: {e}"));
                    assert_eq!(back.as_deref(), Some(mine.as_str()), "task {t} in g{p}");
                    let first: Option<u64> = kv
                        .get("k")
                        .await
                        .unwrap_or_else(|e| panic!("task {t} get k in g{p}: {e}"));
                    assert_eq!(first, Some(p), "g{p} holds its own k");
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("concurrent callers finish within 30 s")
            .expect("caller passed");
    }

    // The server is healthy and every project holds its own value.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(server.addr).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let fresh = Kv::new(server.addr, Caller::open(Some("g9999"))).await;
    let got = fresh.get("k").await.unwrap();
    assert!(got.found, "g9999 lost its key");
    let log = server.log();
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "the server panicked: {log:?}"
    );
    server.terminate();
    println!("took {:?}", started.elapsed());
}

/// Reads `key` of `project` through a plain unary call in open mode.
async fn open_value(kv: &Kv, project: Option<&str>, key: &str) -> Option<String> {
    let got = kv.with(Caller::open(project)).get(key).await.unwrap();
    text_of(got.value.as_ref()).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_picks_projects_by_header_and_per_call() {
    let server = start_open();
    let kv = Kv::new(server.addr, Caller::open(Some("p1"))).await;
    kv.set("k", "one").await.unwrap();
    assert_eq!(
        open_value(&kv, Some("p1"), "k").await.as_deref(),
        Some("one")
    );
    assert_eq!(open_value(&kv, Some("p2"), "k").await, None);
    assert_eq!(open_value(&kv, None, "k").await, None, "default project");

    // A stream with no project of its own: each call names its project, or
    // gets the default.
    let mut pipe = kv
        .with(Caller::open(None))
        .pipeline(frame(vec![
            set_call(1, "p1", "c", "call-p1"),
            set_call(2, "p2", "c", "call-p2"),
            set_call(3, "", "c", "call-default"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        pipe.headers
            .get("x-kv-call-projects")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "the server says it honours per-call projects"
    );
    let replies = pipe.replies(&[1, 2, 3], "per-call projects").await;
    for id in 1..=3 {
        succeeded(&replies, id, "per-call projects");
    }
    // The frame's project for calls that name none; a call may still name
    // another.
    pipe.tx
        .send(pb::PipelineRequest {
            calls: vec![
                set_call(4, "", "f", "frame-p3"),
                set_call(5, "p4", "f", "call-p4"),
                get_call(6, "p1", "c"),
                get_call(7, "", "f"),
            ],
            project: "p3".into(),
        })
        .await
        .unwrap();
    let replies = pipe.replies(&[4, 5, 6, 7], "frame projects").await;
    for id in 4..=7 {
        succeeded(&replies, id, "frame projects");
    }
    let read = |id: u64| match &replies[&id] {
        pb::reply::Response::Get(got) => text_of(got.value.as_ref()).map(str::to_string),
        other => panic!("call {id}: {other:?}"),
    };
    assert_eq!(read(6).as_deref(), Some("call-p1"));
    assert_eq!(read(7).as_deref(), Some("frame-p3"));
    for (project, key, value) in [
        (Some("p1"), "c", "call-p1"),
        (Some("p2"), "c", "call-p2"),
        (None, "c", "call-default"),
        (Some("p3"), "f", "frame-p3"),
        (Some("p4"), "f", "call-p4"),
    ] {
        assert_eq!(
            open_value(&kv, project, key).await.as_deref(),
            Some(value),
            "{project:?}/{key}"
        );
    }
    assert_eq!(open_value(&kv, Some("p2"), "f").await, None);
    assert_eq!(open_value(&kv, None, "f").await, None);

    // A stream opened on a project: calls naming none act there.
    let mut pipe = kv
        .with(Caller::open(Some("p5")))
        .pipeline(frame(vec![set_call(1, "", "s", "stream-p5")]))
        .await
        .unwrap();
    succeeded(&pipe.replies(&[1], "stream project").await, 1, "p5");
    assert_eq!(
        open_value(&kv, Some("p5"), "s").await.as_deref(),
        Some("stream-p5")
    );
    assert_eq!(open_value(&kv, None, "s").await, None);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_token_names_only_its_own_project_per_call() {
    let server = start_authenticated();
    let addr = server.addr;
    let admin = Admin::new(addr).await;
    admin.create_project("p1").await.unwrap();
    admin.create_project("p2").await.unwrap();
    let token = admin.create_token("p1", false).await;
    let as_admin = Kv::new(addr, Caller::admin_on("p2")).await;
    as_admin.set("secret", "p2's").await.unwrap();
    let kv = as_admin.with(Caller::token(&token.secret));
    let mut pipe = kv
        .pipeline(frame(vec![
            set_call(1, "", "a", "own-implicit"),
            set_call(2, "p1", "b", "own-named"),
            set_call(3, "p2", "c", "stolen"),
            get_call(4, "p2", "secret"),
            get_call(5, "p1", "a"),
        ]))
        .await
        .unwrap();
    let replies = pipe.replies(&[1, 2, 3, 4, 5], "token pipeline").await;
    for id in [1, 2, 5] {
        succeeded(&replies, id, "own project");
    }
    for id in [3, 4] {
        assert_eq!(
            reply_code(&replies[&id]),
            Some(Code::PermissionDenied as i32),
            "call {id} named another project: {:?}",
            replies[&id]
        );
    }
    match &replies[&5] {
        pb::reply::Response::Get(got) => {
            assert_eq!(text_of(got.value.as_ref()), Some("own-implicit"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!as_admin.get("c").await.unwrap().found, "p2 was written");
    let own = as_admin.with(Caller::admin_on("p1"));
    for (key, value) in [("a", "own-implicit"), ("b", "own-named")] {
        let got = own.get(key).await.unwrap();
        assert_eq!(text_of(got.value.as_ref()), Some(value));
    }
    // The refusals failed those calls alone: the stream goes on.
    pipe.send(vec![set_call(6, "p1", "d", "later")]).await;
    succeeded(&pipe.replies(&[6], "after refusals").await, 6, "later");

    // The admin token names any project per call.
    let mut pipe = as_admin
        .with(Caller::admin())
        .pipeline(frame(vec![
            set_call(1, "p1", "x", "admin-p1"),
            set_call(2, "p2", "x", "admin-p2"),
        ]))
        .await
        .unwrap();
    let replies = pipe.replies(&[1, 2], "admin pipeline").await;
    succeeded(&replies, 1, "admin p1");
    succeeded(&replies, 2, "admin p2");
    let seen: HashSet<Option<String>> = [
        text_of(own.get("x").await.unwrap().value.as_ref()).map(str::to_string),
        text_of(as_admin.get("x").await.unwrap().value.as_ref()).map(str::to_string),
    ]
    .into();
    assert_eq!(
        seen,
        HashSet::from([Some("admin-p1".to_string()), Some("admin-p2".to_string())])
    );
    server.terminate();
}
