//! `kv-client`: the typed async Rust SDK for the kv service.
//!
//! Values go in and out as any serde type (or raw [`serde_json::Value`]);
//! keys live in a project, chosen once with [`Client::project`].
//!
//! # Layout
//!
//! - [`Client`]: one connection (HTTP/2, multiplexed), cheap to clone;
//!   built with [`Client::connect`] or [`Client::builder`].
//! - [`Project`]: a cheap handle for one project's keys: `get`, `set`,
//!   `set_with_ttl`, `has`, `delete`, `clear`.
//! - [`Error`]: the one error type; [`Error::code`] gives its gRPC code.
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

use std::{future::Future, sync::Arc, time::Duration};

use kv_proto::v1::{
    ClearRequest, DeleteRequest, GetRequest, HasRequest, SetRequest,
    admin_service_client::AdminServiceClient, kv_service_client::KvServiceClient,
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

mod admin;
mod error;
mod json;

pub use admin::{Admin, NewToken, ProjectInfo, Quota, TokenInfo};
pub use error::Error;
pub use json::{MAX_DEPTH, MAX_SAFE_INTEGER};
pub use tonic::Code;

/// Request metadata naming the project.
pub const PROJECT_HEADER: &str = "x-kv-project";
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
}

impl std::fmt::Debug for Client {
    // The token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
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
        Ok(Client {
            grpc: KvServiceClient::new(channel.clone())
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes),
            admin: AdminServiceClient::new(channel),
            timeout: self.timeout,
            authorization,
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
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request.set_timeout(self.timeout);
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
        }
    }

    /// A handle on the keys of project `name`. Cheap; clone it freely.
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
            header: Arc::new(project_header(name)),
        }
    }
}

fn project_header(name: &str) -> Result<AsciiMetadataValue, String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 64 || !valid_chars {
        return Err(format!(
            "project name {name:?} is invalid; names are 1-64 characters of [A-Za-z0-9_.-]"
        ));
    }
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
#[derive(Clone, Debug)]
pub struct Project {
    client: Client,
    header: Arc<Result<AsciiMetadataValue, String>>,
}

impl Project {
    fn request<T>(&self, message: T) -> Result<Request<T>, Error> {
        let header = (*self.header).clone().map_err(Error::InvalidArgument)?;
        let mut request = self.client.request(message);
        request.metadata_mut().insert(PROJECT_HEADER, header);
        Ok(request)
    }

    async fn call<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.client.call(call).await
    }

    /// Reads `key` as a `T`; `None` when the key is missing or expired.
    /// A stored JSON null reads as `Some` when `T` accepts null (an
    /// `Option<_>` or [`serde_json::Value`]).
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
        let request = self.request(GetRequest { key: key.into() })?;
        let reply = self.call(self.client.grpc.clone().get(request)).await?;
        if !reply.found {
            return Ok(None);
        }
        let value = reply
            .value
            .ok_or_else(|| Error::Protocol("found = true without a value".into()))?;
        let json = json::from_proto(value)?;
        serde_json::from_value(json)
            .map(Some)
            .map_err(Error::Decode)
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
        self.set_inner(key, value, None).await
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
        let ttl_ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.set_inner(key, value, Some(ttl_ms)).await
    }

    async fn set_inner<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl_ms: Option<u64>,
    ) -> Result<(), Error> {
        let json = serde_json::to_value(value).map_err(Error::Encode)?;
        let request = self.request(SetRequest {
            key: key.into(),
            value: Some(json::to_proto(&json)?),
            ttl_ms,
        })?;
        self.call(self.client.grpc.clone().set(request)).await?;
        Ok(())
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
        let request = self.request(HasRequest { key: key.into() })?;
        Ok(self
            .call(self.client.grpc.clone().has(request))
            .await?
            .exists)
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
        let request = self.request(DeleteRequest { key: key.into() })?;
        Ok(self
            .call(self.client.grpc.clone().delete(request))
            .await?
            .deleted)
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
        let request = self.request(ClearRequest {})?;
        Ok(self
            .call(self.client.grpc.clone().clear(request))
            .await?
            .deleted)
    }
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
