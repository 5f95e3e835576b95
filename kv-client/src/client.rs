//! The connection: [`Client`], its builder and TLS settings.

use std::{sync::Arc, time::Duration};

use kv_proto::v1::{admin_service_client::AdminServiceClient, kv_service_client::KvServiceClient};
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{Error, pipeline::Pipeline};

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
    pub(crate) grpc: KvServiceClient<Channel>,
    pub(crate) admin: AdminServiceClient<Channel>,
    pub(crate) timeout: Duration,
    /// `Bearer <token>`, sent with every call.
    pub(crate) authorization: Option<AsciiMetadataValue>,
    /// The auto-batching stream of every project, shared by all clones;
    /// `None` when auto-batching is off.
    pub(crate) pipeline: Option<Arc<Pipeline>>,
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
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) tls: Option<Tls>,
    pub(crate) token: Option<String>,
    pub(crate) auto_batching: bool,
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
    pub(crate) ca_pems: Vec<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
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

    pub(crate) fn config(&self) -> ClientTlsConfig {
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

    pub(crate) fn endpoint(&self) -> Result<Endpoint, Error> {
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

    pub(crate) fn client(&self, channel: Channel) -> Result<Client, Error> {
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
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.request_without_deadline(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A request without a `grpc-timeout`: for streams, which outlive the
    /// per-call timeout.
    pub(crate) fn request_without_deadline<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    pub(crate) async fn call<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => Ok(reply?.into_inner()),
            Err(_) => Err(Error::Timeout(self.timeout)),
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
}
