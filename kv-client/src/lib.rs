//! `kv-client`: the typed async Rust SDK for the kv service.
//!
//! Values go in and out as any serde type (or raw [`serde_json::Value`]);
//! keys live in a project, chosen once with [`Client::project`].
//!
//! # Layout
//!
//! - [`Client`]: one connection (HTTP/2, multiplexed), cheap to clone;
//!   built with [`Client::connect`] or [`Client::builder`]; one client
//!   serves any number of projects.
//! - [`Project`]: a cheap handle for one project's keys:
//!   - reads: [`get`](Project::get), [`get_entry`](Project::get_entry) (with
//!     [`Entry`]'s version, deadline and incarnation), [`has`](Project::has),
//!     [`get_many`](Project::get_many) (many keys as of one moment);
//!   - writes: [`set`](Project::set), [`set_with_ttl`](Project::set_with_ttl),
//!     [`delete`](Project::delete), [`clear`](Project::clear);
//!   - conditional writes: [`set_with`](Project::set_with) and
//!     [`SetOptions`] (TTL or keep it, if absent, if at a version),
//!     [`set_if_absent`](Project::set_if_absent),
//!     [`compare_and_swap`](Project::compare_and_swap), giving a
//!     [`SetOutcome`]; [`delete_if_version`](Project::delete_if_version) and
//!     [`delete_with`](Project::delete_with) ([`DeleteOptions`],
//!     [`DeleteOutcome`]); [`clear_with`](Project::clear_with);
//!   - atomic updates: [`incr`](Project::incr) /
//!     [`incr_with`](Project::incr_with) ([`IncrOptions`]) on JSON numbers,
//!     [`merge`](Project::merge) / [`merge_with`](Project::merge_with)
//!     ([`MergeOptions`]) with RFC 7386 merge patches, both giving a
//!     [`Versioned`] value;
//!   - many keys at once, all or nothing: [`set_many`](Project::set_many) /
//!     [`set_many_with`](Project::set_many_with) ([`SetManyOptions`]),
//!     [`delete_many`](Project::delete_many) /
//!     [`delete_many_with`](Project::delete_many_with), and
//!     [`batch`](Project::batch): a [`Batch`] of checks and writes whose
//!     [`commit`](Batch::commit) gives a [`BatchOutcome`] of [`OpResult`]s;
//!   - listing: [`list`](Project::list) ([`ListOptions`]) gives one [`Page`]
//!     of [`ListEntry`]s; [`list_all`](Project::list_all) /
//!     [`list_all_with`](Project::list_all_with) walk every page;
//!   - change feeds: [`watch`](Project::watch) ([`WatchOptions`]: a key, a
//!     prefix or everything, from a version of an incarnation) gives a
//!     [`Watch`], a stream of [`Event`]s ([`EventKind`]).
//! - [`Error`]: the one error type; [`Error::code`] gives its gRPC code.
//!
//! # Versions
//!
//! Every change in a project (set, delete, expiry, clear) gets the project's
//! next version, counting up from 1. An entry's version is the version of
//! the change that last wrote it: read it with [`Project::get_entry`], write
//! only if it is unchanged with [`Project::compare_and_swap`] or
//! [`Batch::check_version`], and resume a [`Watch`] after it. A condition
//! that does not hold is not an error: the outcome says `applied: false`
//! (or `deleted: false`) with the key's current version.
//!
//! # Incarnations
//!
//! Deleting a project and creating it again under the same name makes a
//! new project that shares nothing with the old one, and its versions
//! start over above every version the old one used. Its incarnation tells
//! the two apart: 0 for the first project of a name, another number for
//! each one created after a deletion. It comes with every version the SDK
//! hands out for resuming: [`Entry::incarnation`], [`Page::incarnation`],
//! [`Event::incarnation`] (and [`ProjectInfo::incarnation`] from the admin
//! API). Give it back with [`WatchOptions::incarnation`]: a watch resuming
//! in a project recreated since fails with `FAILED_PRECONDITION` instead of
//! following the new one as if it were the old.
//!
//! # Auto-batching
//!
//! Single-key calls ([`get`](Project::get), [`set`](Project::set),
//! [`has`](Project::has), [`delete`](Project::delete),
//! [`incr`](Project::incr), [`merge`](Project::merge) and their variants)
//! made concurrently on one [`Client`] share frames of one long-lived
//! `Pipeline` stream, like Redis pipelining without changing your code. A
//! call made while nothing else is pending is sent at once; each keeps its
//! own result, error and timeout; calls on a key apply in the order made.
//!
//! One client, with all its clones and [`Project`] handles, uses one such
//! stream for every project: a gateway serving thousands of tenants through
//! one client holds one stream and no state per project, however many
//! projects it touches. Each frame names its calls' project, and a call
//! names its own only when it differs from the frame's. This needs a
//! server that says, in the stream's response headers
//! (`x-kv-call-projects`), that it honours those names; with an older
//! server (or one without the stream at all) every call is its own unary
//! call with its own `x-kv-project`, slower but never run in the wrong
//! project. When the stream breaks, or the server ends it (a revoked token
//! ends it with `UNAUTHENTICATED`), the calls it carried fail with that
//! code and the next call opens a new one.
//! [`ClientBuilder::auto_batching`] turns it off.
//!
//! # Retries and request ids
//!
//! A write that timed out may or may not have been applied. Every mutating
//! call's options take a `request_id` (1 to [`MAX_REQUEST_ID_BYTES`] bytes;
//! [`new_request_id`] makes a random one): retrying with the same id within
//! the server's idempotency window returns the first call's outcome instead
//! of applying the write again, so even [`Project::incr_with`] is safe to
//! retry. Reusing an id for a different request is `FAILED_PRECONDITION`.
//!
//! # Numbers
//!
//! JSON numbers travel as doubles, as in JavaScript. An integer beyond ±2^53
//! cannot be carried exactly, so the SDK refuses it with
//! [`Error::InvalidArgument`] instead of rounding it; store such numbers as
//! strings. Integral doubles come back as integers, so they deserialize into
//! integer fields. (`-0.0` comes back as `0`.)
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct User { name: String, visits: u32 }
//!
//! # async fn demo() -> Result<(), kv_client::Error> {
//! let client = kv_client::Client::connect("http://127.0.0.1:50051").await?;
//! let kv = client.project("shop");
//! let user = User { name: "Ada".into(), visits: 3 };
//! kv.set("user:1", &user).await?;
//! kv.set_with_ttl("session:x", &"token", Duration::from_secs(3600)).await?;
//! let back: Option<User> = kv.get("user:1").await?;
//! assert_eq!(back, Some(user));
//! assert!(kv.has("user:1").await?);
//! assert!(kv.delete("user:1").await?);
//! let removed: u64 = kv.clear().await?;
//! # let _ = removed; Ok(())
//! # }
//! ```
//!
//! Versions, atomic updates and change feeds:
//!
//! ```no_run
//! use kv_client::{IncrOptions, SetOptions, WatchOptions};
//! use serde_json::json;
//!
//! # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
//! let mut changes = kv.watch(WatchOptions::prefix("stock:")).await?;
//! let created = kv.set_with("stock:42", &10, SetOptions::new().if_absent()).await?;
//! let swapped = kv.compare_and_swap("stock:42", created.version, &9).await?;
//! assert!(swapped.applied);
//! let retry_safe = IncrOptions::new().request_id(kv_client::new_request_id());
//! let left = kv.incr_with("stock:42", -1.0, retry_safe).await?;
//! assert_eq!(left.value, 8.0);
//! let _: serde_json::Value = kv.merge("stock:meta", &json!({"updated": true})).await?;
//! while let Some(event) = changes.next_event().await {
//!     let event = event?;
//!     println!("{:?} {} at version {}", event.kind, event.key, event.version);
//! }
//! # Ok(())
//! # }
//! ```

use std::{future::Future, sync::Arc, time::Duration};

use kv_proto::v1::{
    self as pb, GetRequest, HasRequest, admin_service_client::AdminServiceClient,
    call::Request as Req, kv_service_client::KvServiceClient, reply::Response as Res,
};
use pipeline::Pipeline;
use serde::{Serialize, de::DeserializeOwned};
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

mod admin;
mod batch;
mod error;
mod json;
mod list;
mod many;
#[cfg(test)]
mod mock_tests;
mod options;
mod pipeline;
mod watch;

pub use admin::{Admin, NewToken, ProjectInfo, Quota, TokenInfo};
pub use batch::{Batch, BatchOutcome, OpResult};
pub use error::Error;
pub use json::{MAX_DEPTH, MAX_SAFE_INTEGER};
pub use list::{ListEntry, ListOptions, Page};
pub use options::{
    ClearOptions, DeleteManyOptions, DeleteOptions, IncrOptions, MAX_REQUEST_ID_BYTES,
    MergeOptions, SetManyOptions, SetOptions, new_request_id,
};
pub use tonic::Code;
pub use watch::{Event, EventKind, Watch, WatchOptions};

pub use kv_proto::contract::PROJECT_HEADER;
/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest message the SDK sends or accepts (the server enforces its
/// own, smaller, limits).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connection to a kv server. Clones share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), kv_client::Error> {
/// let client = kv_client::Client::connect("http://127.0.0.1:50051").await?;
/// let carts = client.project("carts");
/// # let _ = carts; Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    grpc: KvServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    timeout: Duration,
    /// `Bearer <token>`, sent with every call.
    authorization: Option<AsciiMetadataValue>,
    /// The auto-batching stream of every project, shared by all clones;
    /// `None` when auto-batching is off.
    pipeline: Option<Arc<Pipeline>>,
}

impl std::fmt::Debug for Client {
    // The token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("auto_batching", &self.pipeline.is_some())
            .finish_non_exhaustive()
    }
}

/// Options for [`Client`]; start from [`Client::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// # async fn demo() -> Result<(), kv_client::Error> {
/// let client = kv_client::Client::builder("http://127.0.0.1:50051")
///     .timeout(Duration::from_secs(2))
///     .connect_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # let _ = client; Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_message_bytes: usize,
    tls: Option<Tls>,
    token: Option<String>,
    auto_batching: bool,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// TLS settings for a connection to an `https://` URL.
///
/// Without a CA the system's trusted roots verify the server; with one,
/// only that CA does (a private PKI). A client identity is sent to servers
/// that require mutual TLS.
///
/// ```no_run
/// # async fn demo() -> Result<(), kv_client::Error> {
/// let ca = std::fs::read("ca.pem").unwrap();
/// let tls = kv_client::Tls::new()
///     .ca_certificate_pem(ca)
///     .client_identity_pem(std::fs::read("client.pem").unwrap(), std::fs::read("client.key").unwrap());
/// let client = kv_client::Client::builder("https://kv.internal:50051").tls(tls).connect().await?;
/// # let _ = client; Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Tls {
    ca_pems: Vec<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    // The client key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("custom_cas", &self.ca_pems.len())
            .field("client_identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl Tls {
    /// TLS verified against the system's trusted roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts this PEM CA certificate (instead of the system roots); may be
    /// given more than once.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// Presents this PEM certificate and private key to servers that require
    /// client certificates (mutual TLS).
    pub fn client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Verifies the server certificate against this name rather than the
    /// URL's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = if self.ca_pems.is_empty() {
            config.with_native_roots()
        } else {
            config.ca_certificates(self.ca_pems.iter().map(Certificate::from_pem))
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

impl ClientBuilder {
    /// Per-call timeout (default 10 s). A call that takes longer fails with
    /// [`Error::Timeout`] (`DEADLINE_EXCEEDED`); the deadline is also sent to
    /// the server so it can drop the work. A write that timed out may or may
    /// not have been applied: read it back, or write again (sets are
    /// idempotent).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait for the TCP/HTTP2 connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sends `authorization: Bearer <token>` with every call: a project token
    /// (`kv_...`) or the admin token. Use TLS too, or the token travels in
    /// the clear.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS settings (an `https://` URL without them uses the system roots).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether concurrent single-key calls (get, get_entry, has, set and
    /// its variants, delete, incr, merge) are batched over one long-lived
    /// stream (default on), one per client whatever the number of
    /// projects. Each call keeps its own result, error and timeout, and
    /// calls on a key apply in the order they were made; a call made while
    /// nothing else is pending is sent at once. Off, every call is its own
    /// unary gRPC call. Servers without the stream, or whose stream cannot
    /// carry calls of several projects, get unary calls either way.
    ///
    /// ```
    /// let unbatched = kv_client::Client::builder("http://127.0.0.1:50051").auto_batching(false);
    /// # let _ = unbatched;
    /// ```
    pub fn auto_batching(mut self, on: bool) -> Self {
        self.auto_batching = on;
        self
    }

    /// Largest message sent or received, in bytes (default 64 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|source| Error::Connect {
                url: self.url.clone(),
                source,
            })?;
        // Without TCP_NODELAY a serial caller waits on delayed ACKs.
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout);
        let tls = match &self.tls {
            Some(tls) => Some(tls.clone()),
            None if self.url.starts_with("https://") => Some(Tls::new()),
            None => None,
        };
        match tls {
            Some(tls) => endpoint
                .tls_config(tls.config())
                .map_err(|source| Error::Connect {
                    url: self.url.clone(),
                    source,
                }),
            None => Ok(endpoint),
        }
    }

    fn client(&self, channel: Channel) -> Result<Client, Error> {
        let authorization = self
            .token
            .as_ref()
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| Error::InvalidArgument("the token is not printable ASCII".into()))
            })
            .transpose()?;
        let grpc = KvServiceClient::new(channel.clone())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let pipeline = self.auto_batching.then(|| {
            // Only what every call carries: the stream serves every project,
            // so it names none (each frame and call does).
            let mut metadata = MetadataMap::new();
            if let Some(authorization) = &authorization {
                metadata.insert("authorization", authorization.clone());
            }
            Arc::new(Pipeline::new(grpc.clone(), metadata))
        });
        Ok(Client {
            grpc,
            admin: AdminServiceClient::new(channel),
            timeout: self.timeout,
            authorization,
            pipeline,
        })
    }

    /// Connects now.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the URL is invalid or the server is not
    /// reachable within the connect timeout.
    pub async fn connect(self) -> Result<Client, Error> {
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(|source| Error::Connect {
                url: self.url.clone(),
                source,
            })?;
        self.client(channel)
    }

    /// Returns at once; connects on the first call (and reconnects after a
    /// failure), so a client can be built before the server is up.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the URL is invalid.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let channel = self.endpoint()?.connect_lazy();
        self.client(channel)
    }
}

impl Client {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.request_without_deadline(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A request without a `grpc-timeout`: for streams, which outlive the
    /// per-call timeout.
    fn request_without_deadline<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    async fn call<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => Ok(reply?.into_inner()),
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }

    /// The admin API (projects, quotas, tokens), with this client's
    /// credentials (the admin token when the server requires one).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kv_client::Error> {
    /// let admin = kv_client::Client::builder("http://127.0.0.1:50051")
    ///     .token("the-admin-token")
    ///     .connect()
    ///     .await?
    ///     .admin();
    /// admin.create_project("shop", kv_client::Quota::default()).await?;
    /// let token = admin.create_token("shop", false).await?;
    /// println!("give the shop service this secret once: {}", token.token);
    /// # Ok(())
    /// # }
    /// ```
    pub fn admin(&self) -> Admin {
        Admin {
            client: self.clone(),
        }
    }

    /// Connects to `url` (like `http://127.0.0.1:50051`) with default options.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kv_client::Error> {
    /// let client = kv_client::Client::connect("http://127.0.0.1:50051").await?;
    /// # let _ = client; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the URL is invalid or nothing answers there.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// Options for a connection to `url`.
    ///
    /// ```
    /// let builder = kv_client::Client::builder("http://127.0.0.1:50051")
    ///     .timeout(std::time::Duration::from_millis(500));
    /// # let _ = builder;
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
            token: None,
            auto_batching: true,
        }
    }

    /// A handle on the keys of project `name`. Cheap, and holds nothing
    /// on the client (handles of any number of projects share the client's
    /// one auto-batching stream); clone it freely, or make one per request.
    ///
    /// The name is checked here (1-64 characters of `[A-Za-z0-9_.-]`); an
    /// invalid one makes every call on the handle fail with
    /// [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn demo(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// let prefs = client.project("prefs");
    /// prefs.set("theme", &"dark").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn project(&self, name: &str) -> Project {
        Project {
            client: self.clone(),
            name: Arc::from(name),
            header: Arc::new(project_header(name)),
        }
    }
}

fn project_header(name: &str) -> Result<AsciiMetadataValue, String> {
    kv_proto::contract::check_project_name(name)
        .map_err(|e| format!("project name {name:?} is invalid: {e}"))?;
    MetadataValue::try_from(name).map_err(|e| format!("project name {name:?}: {e}"))
}

/// One project's keys. Cheap to clone; every call is independent.
///
/// ```no_run
/// # async fn demo(client: kv_client::Client) -> Result<(), kv_client::Error> {
/// let kv = client.project("shop");
/// kv.set("cart:7", &serde_json::json!({"items": [1, 2]})).await?;
/// let cart: Option<serde_json::Value> = kv.get("cart:7").await?;
/// # let _ = cart; Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Project {
    client: Client,
    /// Travels with each auto-batched call, shared rather than copied.
    name: Arc<str>,
    header: Arc<Result<AsciiMetadataValue, String>>,
}

impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project")
            .field("client", &self.client)
            .field("header", &self.header)
            .finish()
    }
}

impl Project {
    fn request<T>(&self, message: T) -> Result<Request<T>, Error> {
        let mut request = self.stream_request(message)?;
        request.set_timeout(self.client.timeout);
        Ok(request)
    }

    /// A request without a deadline (the per-call timeout then bounds only
    /// the wait for the response headers, through [`Project::call`]).
    fn stream_request<T>(&self, message: T) -> Result<Request<T>, Error> {
        let header = (*self.header).clone().map_err(Error::InvalidArgument)?;
        let mut request = self.client.request_without_deadline(message);
        request.metadata_mut().insert(PROJECT_HEADER, header);
        Ok(request)
    }

    fn kv(&self) -> KvServiceClient<Channel> {
        self.client.grpc.clone()
    }

    async fn call<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.client.call(call).await
    }

    /// A single-key call: over the auto-batching stream when there is one,
    /// otherwise (or when the server has none) as its unary call.
    async fn run(&self, request: Req) -> Result<Res, Error> {
        if let Err(e) = &*self.header {
            return Err(Error::InvalidArgument(e.clone()));
        }
        let request = match &self.client.pipeline {
            Some(pipeline) if request.encoded_len() <= pipeline::MAX_CALL_BYTES => {
                match pipeline
                    .call(&self.name, request, self.client.timeout)
                    .await
                {
                    Ok(result) => return result,
                    Err(request) => request,
                }
            }
            _ => request,
        };
        let kv = self.kv();
        match request {
            Req::Get(r) => self
                .call(kv.clone().get(self.request(r)?))
                .await
                .map(Res::Get),
            Req::Set(r) => self
                .call(kv.clone().set(self.request(r)?))
                .await
                .map(Res::Set),
            Req::Has(r) => self
                .call(kv.clone().has(self.request(r)?))
                .await
                .map(Res::Has),
            Req::Delete(r) => self
                .call(kv.clone().delete(self.request(r)?))
                .await
                .map(Res::Delete),
            Req::Incr(r) => self
                .call(kv.clone().incr(self.request(r)?))
                .await
                .map(Res::Incr),
            Req::Merge(r) => self
                .call(kv.clone().merge(self.request(r)?))
                .await
                .map(Res::Merge),
        }
    }

    /// Reads `key` as a `T`; `None` when the key is missing or expired.
    /// A stored JSON null reads as `Some` when `T` accepts null (an
    /// `Option<_>` or [`serde_json::Value`]). [`Project::get_entry`] also
    /// gives the version and the deadline.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let visits: Option<u64> = kv.get("visits").await?;
    /// # let _ = visits; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] from the server (`INVALID_ARGUMENT` for a bad key),
    /// [`Error::Decode`] when the value does not fit `T`, [`Error::Timeout`],
    /// [`Error::InvalidArgument`] for a bad project name.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        Ok(self.get_entry(key).await?.map(|entry| entry.value))
    }

    /// Reads `key` as a `T` with its version and deadline; `None` when the
    /// key is missing or expired.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// if let Some(entry) = kv.get_entry::<u64>("stock:42").await? {
    ///     // Write back only if nobody changed it meanwhile.
    ///     let outcome = kv.compare_and_swap("stock:42", entry.version, &(entry.value - 1)).await?;
    ///     if !outcome.applied { /* reread and retry */ }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::get`].
    pub async fn get_entry<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Entry<T>>, Error> {
        match self.run(Req::Get(GetRequest { key: key.into() })).await? {
            Res::Get(reply) => entry_from_proto(reply),
            _ => Err(pipeline::mismatch("Get")),
        }
    }

    /// Stores `value` under `key` with no expiry (removing any earlier TTL).
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// kv.set("flags", &serde_json::json!({"beta": true})).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an integer beyond ±2^53 or nesting
    /// deeper than [`MAX_DEPTH`]; [`Error::Encode`] when `value` cannot be
    /// JSON; [`Error::Status`] from the server (`RESOURCE_EXHAUSTED` over a
    /// size limit, `INVALID_ARGUMENT` for a bad key); [`Error::Timeout`].
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.set_with(key, value, SetOptions::new()).await?;
        Ok(())
    }

    /// Stores `value` under `key`, expiring after `ttl` (millisecond
    /// resolution; a fraction of a millisecond rounds up).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// kv.set_with_ttl("session:abc", &"user-7", Duration::from_secs(3600)).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`], plus [`Error::InvalidArgument`] for a zero `ttl`
    /// and `INVALID_ARGUMENT` from the server past its maximum TTL.
    pub async fn set_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), Error> {
        if ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "ttl is zero; use set() for a key that never expires".into(),
            ));
        }
        self.set_with(key, value, SetOptions::new().ttl(ttl))
            .await?;
        Ok(())
    }

    /// Stores `value` under `key` as `options` say: with a TTL or keeping
    /// the current one, only if absent or only at a version
    /// (compare-and-swap), with a request id. Tells whether the write was
    /// applied, and the key's version: the new one when applied, otherwise
    /// the current one (0 when absent), ready for the next compare-and-swap.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::SetOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let lock = SetOptions::new().if_absent().ttl(Duration::from_secs(30));
    /// let outcome = kv.set_with("lock:job-9", &"worker-3", lock).await?;
    /// if outcome.applied {
    ///     // We hold the lock; renew it only if it is still ours.
    ///     let renew = SetOptions::new().if_version(outcome.version).ttl(Duration::from_secs(30));
    ///     kv.set_with("lock:job-9", &"worker-3", renew).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set_with_ttl`]; [`Error::InvalidArgument`] for a
    /// request id that is empty or longer than [`MAX_REQUEST_ID_BYTES`];
    /// `FAILED_PRECONDITION` from the server when a request id is reused
    /// for a different request. A condition that does not hold is not an
    /// error: it is `applied = false`.
    pub async fn set_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: SetOptions,
    ) -> Result<SetOutcome, Error> {
        let message = options.to_request(key, encode(value)?)?;
        let Res::Set(reply) = self.run(Req::Set(message)).await? else {
            return Err(pipeline::mismatch("Set"));
        };
        Ok(SetOutcome {
            applied: reply.applied,
            version: reply.version,
        })
    }

    /// Stores `value` under `key` only if the key is absent (or expired),
    /// with no expiry.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let created = kv.set_if_absent("user:ada", &serde_json::json!({"id": 1})).await?;
    /// if !created.applied { println!("taken, at version {}", created.version); }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`].
    pub async fn set_if_absent<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<SetOutcome, Error> {
        self.set_with(key, value, SetOptions::new().if_absent())
            .await
    }

    /// Stores `value` under `key` only if the key is at exactly
    /// `expected_version`, with no expiry (use [`Project::set_with`] and
    /// [`SetOptions::keep_ttl`] to keep a deadline).
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// loop {
    ///     let Some(entry) = kv.get_entry::<Vec<String>>("tags").await? else { break };
    ///     let mut tags = entry.value;
    ///     tags.push("new".into());
    ///     if kv.compare_and_swap("tags", entry.version, &tags).await?.applied { break }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`]; `INVALID_ARGUMENT` from the server for version 0.
    pub async fn compare_and_swap<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected_version: u64,
        value: &T,
    ) -> Result<SetOutcome, Error> {
        self.set_with(key, value, SetOptions::new().if_version(expected_version))
            .await
    }

    /// Whether `key` exists and has not expired.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// if kv.has("lock:job-9").await? { /* someone holds it */ }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] from the server, [`Error::Timeout`],
    /// [`Error::InvalidArgument`] for a bad project name.
    pub async fn has(&self, key: &str) -> Result<bool, Error> {
        match self.run(Req::Has(HasRequest { key: key.into() })).await? {
            Res::Has(reply) => Ok(reply.exists),
            _ => Err(pipeline::mismatch("Has")),
        }
    }

    /// Removes `key`; true only when a live key was removed.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let existed = kv.delete("cart:7").await?;
    /// # let _ = existed; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`].
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        Ok(self.delete_with(key, DeleteOptions::new()).await?.deleted)
    }

    /// Removes `key` only if it is at exactly `version`.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// if let Some(lock) = kv.get_entry::<String>("lock:job-9").await? {
    ///     // Release the lock only if nobody took it over meanwhile.
    ///     let released = kv.delete_if_version("lock:job-9", lock.version).await?;
    ///     # let _ = released;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`]. A version that does not match is not an
    /// error: it is `deleted = false`.
    pub async fn delete_if_version(&self, key: &str, version: u64) -> Result<DeleteOutcome, Error> {
        self.delete_with(key, DeleteOptions::new().if_version(version))
            .await
    }

    /// Removes `key` as `options` say (at a version, with a request id).
    ///
    /// ```no_run
    /// use kv_client::DeleteOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let outcome = kv.delete_with("cart:7", DeleteOptions::new().request_id("checkout-7")).await?;
    /// println!("deleted: {} (version {})", outcome.deleted, outcome.version);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`]; [`Error::InvalidArgument`] for a bad request id.
    pub async fn delete_with(
        &self,
        key: &str,
        options: DeleteOptions,
    ) -> Result<DeleteOutcome, Error> {
        let Res::Delete(reply) = self.run(Req::Delete(options.to_request(key)?)).await? else {
            return Err(pipeline::mismatch("Delete"));
        };
        Ok(DeleteOutcome {
            deleted: reply.deleted,
            version: reply.version,
        })
    }

    /// Removes every key of the project; returns how many live keys it
    /// removed. Other projects are untouched.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let removed = kv.clear().await?;
    /// # let _ = removed; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`].
    pub async fn clear(&self) -> Result<u64, Error> {
        Ok(self.clear_with(ClearOptions::new()).await?.deleted)
    }

    /// Removes every key of the project, with a request id; returns how
    /// many live keys it removed and the version of the clear.
    ///
    /// ```no_run
    /// use kv_client::ClearOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let id = kv_client::new_request_id();
    /// let outcome = kv.clear_with(ClearOptions::new().request_id(id)).await?;
    /// println!("removed {} keys at version {}", outcome.deleted, outcome.version);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`]; [`Error::InvalidArgument`] for a bad request id.
    pub async fn clear_with(&self, options: ClearOptions) -> Result<ClearOutcome, Error> {
        let request = self.request(options.to_request()?)?;
        let reply = self.call(self.kv().clear(request)).await?;
        Ok(ClearOutcome {
            deleted: reply.deleted,
            version: reply.version,
        })
    }

    /// Adds `delta` to the JSON number under `key` atomically (an absent key
    /// counts as 0) and returns the result.
    ///
    /// `delta` may be negative or fractional; it must be finite and within
    /// ±2^53, like every number the SDK sends.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let views = kv.incr("views:home", 1.0).await?;
    /// println!("{views} views");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a non-finite `delta` or one beyond
    /// ±2^53; `FAILED_PRECONDITION` from the server when the stored value is
    /// not a number or the result would be beyond ±2^53 (nothing changes);
    /// otherwise as [`Project::has`].
    pub async fn incr(&self, key: &str, delta: f64) -> Result<f64, Error> {
        Ok(self.incr_with(key, delta, IncrOptions::new()).await?.value)
    }

    /// [`Project::incr`] with options (the TTL of a key it creates, a request
    /// id); returns the number and the key's new version.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::IncrOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// // A fixed one-minute window: the first hit creates the key and its TTL.
    /// let window = IncrOptions::new().ttl(Duration::from_secs(60));
    /// let hits = kv.incr_with("rate:client-9", 1.0, window).await?;
    /// if hits.value > 100.0 { /* throttle */ }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::incr`]; [`Error::InvalidArgument`] for a zero TTL or a
    /// bad request id.
    pub async fn incr_with(
        &self,
        key: &str,
        delta: f64,
        options: IncrOptions,
    ) -> Result<Versioned<f64>, Error> {
        let Res::Incr(reply) = self.run(Req::Incr(options.to_request(key, delta)?)).await? else {
            return Err(pipeline::mismatch("Incr"));
        };
        Ok(Versioned {
            value: reply.value,
            version: reply.version,
        })
    }

    /// Applies an RFC 7386 JSON merge patch to `key` atomically and returns
    /// the value after it as a `T`. Object members of the patch replace,
    /// null members remove, nested objects merge; a non-object patch
    /// replaces the value; an absent key is patched as if it held `{}`. The
    /// key keeps its deadline.
    ///
    /// ```no_run
    /// use serde_json::{Value, json};
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let profile: Value = kv.merge("user:1", &json!({"email": "ada@example.com", "phone": null})).await?;
    /// # let _ = profile; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`], plus [`Error::Decode`] when the result does not
    /// fit `T` (the patch was applied all the same).
    pub async fn merge<P, T>(&self, key: &str, patch: &P) -> Result<T, Error>
    where
        P: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        Ok(self
            .merge_with(key, patch, MergeOptions::new())
            .await?
            .value)
    }

    /// [`Project::merge`] with options (a new TTL, a request id); returns the
    /// value after the patch and the key's new version.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::MergeOptions;
    /// use serde_json::{Value, json};
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let options = MergeOptions::new().ttl(Duration::from_secs(1800));
    /// let session = kv.merge_with::<_, Value>("session:x", &json!({"cart": [7]}), options).await?;
    /// println!("version {}: {}", session.version, session.value);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::merge`]; [`Error::InvalidArgument`] for a zero TTL or a
    /// bad request id.
    pub async fn merge_with<P, T>(
        &self,
        key: &str,
        patch: &P,
        options: MergeOptions,
    ) -> Result<Versioned<T>, Error>
    where
        P: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let message = options.to_request(key, encode(patch)?)?;
        let Res::Merge(reply) = self.run(Req::Merge(message)).await? else {
            return Err(pipeline::mismatch("Merge"));
        };
        let value = reply
            .value
            .ok_or_else(|| Error::Protocol("Merge reply without a value".into()))?;
        Ok(Versioned {
            value: decode(value)?,
            version: reply.version,
        })
    }

    /// Starts a [`Batch`]: checks plus writes on this project, applied all or
    /// nothing with [`Batch::commit`].
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let outcome = kv
    ///     .batch()
    ///     .check_absent("order:9")
    ///     .set("order:9", &serde_json::json!({"total": 30}))
    ///     .incr("stats:orders", 1.0)
    ///     .commit()
    ///     .await?;
    /// if !outcome.applied { println!("order 9 already exists"); }
    /// # Ok(())
    /// # }
    /// ```
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }
}

/// `value` as JSON on the wire, checked against the number and depth rules.
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<prost_types::Value, Error> {
    json::to_proto(&serde_json::to_value(value).map_err(Error::Encode)?)
}

/// A value from the wire as a `T`.
fn decode<T: DeserializeOwned>(value: prost_types::Value) -> Result<T, Error> {
    serde_json::from_value(json::from_proto(value)?).map_err(Error::Decode)
}

fn entry_from_proto<T: DeserializeOwned>(
    reply: pb::GetResponse,
) -> Result<Option<Entry<T>>, Error> {
    if !reply.found {
        return Ok(None);
    }
    let value = reply
        .value
        .ok_or_else(|| Error::Protocol("found = true without a value".into()))?;
    Ok(Some(Entry {
        value: decode(value)?,
        version: reply.version,
        expires_at_ms: reply.expires_at_ms,
        incarnation: reply.incarnation,
    }))
}

/// A stored value with its version, deadline and the project's incarnation;
/// from [`Project::get_entry`] and [`Project::get_many`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// if let Some(entry) = kv.get_entry::<String>("session:x").await? {
///     println!("{} at version {}, expires {:?}", entry.value, entry.version, entry.expires_at_ms);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry<T> {
    /// The value.
    pub value: T,
    /// The version of the change that last wrote the key.
    pub version: u64,
    /// When the key expires (unix milliseconds), if it has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The project's incarnation: [`version`](Self::version) means something
    /// only in it (see [`WatchOptions::incarnation`]).
    pub incarnation: u64,
}

/// What a conditional set did; from [`Project::set_with`],
/// [`Project::set_if_absent`] and [`Project::compare_and_swap`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let kv_client::SetOutcome { applied, version } = kv.set_if_absent("id:ada", &1).await?;
/// # let _ = (applied, version); Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetOutcome {
    /// False when the condition did not hold; nothing changed.
    pub applied: bool,
    /// The key's new version when applied; otherwise its current version
    /// (0 when absent).
    pub version: u64,
}

/// What a delete did; from [`Project::delete_with`] and
/// [`Project::delete_if_version`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let outcome = kv.delete_if_version("lock:job-9", 4).await?;
/// if !outcome.deleted { println!("now at version {}", outcome.version); }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeleteOutcome {
    /// True only when a live key was removed.
    pub deleted: bool,
    /// The version of the deletion when deleted; otherwise the key's
    /// current version (0 when absent).
    pub version: u64,
}

/// What a clear did; from [`Project::clear_with`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let outcome = kv.clear_with(kv_client::ClearOptions::new()).await?;
/// println!("{} keys removed at version {}", outcome.deleted, outcome.version);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClearOutcome {
    /// How many live keys were removed.
    pub deleted: u64,
    /// The version of the clear (0 when the project held nothing).
    pub version: u64,
}

/// A value just written, with the key's new version; from
/// [`Project::incr_with`] and [`Project::merge_with`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let kv_client::Versioned { value, version } =
///     kv.incr_with("hits", 1.0, kv_client::IncrOptions::new()).await?;
/// # let _ = (value, version); Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Versioned<T> {
    /// The value after the write.
    pub value: T,
    /// The key's new version.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_shows_the_quickstart_example_verbatim() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../examples/quickstart.rs");
        assert!(
            readme.contains(example),
            "README.md must embed kv-client/examples/quickstart.rs exactly"
        );
    }
}
