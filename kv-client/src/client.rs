//! The connection: [`Client`], its builder and TLS settings.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;

use kv_proto::contract::PROJECT_HEADER;
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    Error, IntoEndpoints, RetryPolicy,
    endpoints::{Conn, Endpoints},
    new_request_id,
    pipeline::Pipeline,
    retry::{Failure, Safety},
};

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest message the SDK sends or accepts (the server enforces its
/// own, smaller, limits).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connection to a kv server (or to several, see [`Client::builder`]).
/// Clones share the connection.
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
    /// One connection per endpoint.
    pub(crate) endpoints: Arc<Endpoints>,
    /// The auto-batching stream, when on.
    pub(crate) pipeline: Option<Arc<Pipeline>>,
    /// Each call's deadline, retries included.
    pub(crate) timeout: Duration,
    /// `Bearer <token>`, sent with every call.
    pub(crate) authorization: Option<AsciiMetadataValue>,
    pub(crate) retry: RetryPolicy,
    /// Writes without a request id get a fresh one.
    pub(crate) auto_request_ids: bool,
    pub(crate) honour_retry_after: bool,
}

impl std::fmt::Debug for Client {
    // The token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints.len())
            .field("timeout", &self.timeout)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("auto_batching", &self.pipeline.is_some())
            .field("retry", &self.retry)
            .field("auto_request_ids", &self.auto_request_ids)
            .field("honour_retry_after", &self.honour_retry_after)
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
    pub(crate) urls: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) tls: Option<Tls>,
    pub(crate) token: Option<String>,
    pub(crate) auto_batching: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) auto_request_ids: bool,
    pub(crate) honour_retry_after: bool,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("urls", &self.urls)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
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
    /// Each call's deadline (default 10 s), retries included. A call that
    /// has not succeeded by then fails with [`Error::Timeout`]
    /// (`DEADLINE_EXCEEDED`), whose message says how many attempts were
    /// made and whether one may have been applied; each attempt sends the
    /// time left to the server so it can drop the work. Every write
    /// carries a request id (see [`ClientBuilder::auto_request_ids`]), so
    /// retrying one that timed out with the id the error gives is safe.
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

    /// How failed calls are retried (default [`RetryPolicy::default`]:
    /// up to 10 attempts with exponential backoff and jitter, within the
    /// call's [`timeout`](Self::timeout)). [`RetryPolicy::none`] turns
    /// retries off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kv_client::RetryPolicy;
    /// let builder = kv_client::Client::builder("http://127.0.0.1:50051")
    ///     .timeout(Duration::from_secs(30))
    ///     .retry(RetryPolicy::default().max_attempts(50).max_backoff(Duration::from_secs(2)));
    /// # let _ = builder;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether every write the caller gave no request id gets a fresh one
    /// ([`new_request_id`](crate::new_request_id)), which makes it safe to
    /// retry (default on). Off, a write without an id is retried only
    /// when the failed attempt surely never reached the server (the
    /// connection was refused, the stream refused before processing, the
    /// call never left the SDK); otherwise it fails with the attempt's
    /// error. Ids given by the caller are always sent as given.
    ///
    /// ```
    /// let builder = kv_client::Client::builder("http://127.0.0.1:50051").auto_request_ids(false);
    /// # let _ = builder;
    /// ```
    pub fn auto_request_ids(mut self, on: bool) -> Self {
        self.auto_request_ids = on;
        self
    }

    /// Whether a call refused with `RESOURCE_EXHAUSTED` that carries a
    /// retry-after hint (the status metadata `retry-after-ms: <ms>`, which
    /// the server's rate limits send) is retried after the hinted delay
    /// (default off: it fails at once, for the caller to decide). The
    /// retry happens only if the delay ends before the call's deadline;
    /// otherwise the call fails at once with the server's status. A
    /// `RESOURCE_EXHAUSTED` without a hint (a size limit, a quota) is never
    /// retried. A call that went over the auto-batching stream gets the
    /// same hint in its call error.
    ///
    /// ```
    /// let builder = kv_client::Client::builder("http://127.0.0.1:50051").honour_retry_after(true);
    /// # let _ = builder;
    /// ```
    pub fn honour_retry_after(mut self, on: bool) -> Self {
        self.honour_retry_after = on;
        self
    }

    fn connect_error(&self, url: &str, source: tonic::transport::Error) -> Error {
        Error::Connect {
            url: url.to_owned(),
            source,
        }
    }

    pub(crate) fn endpoint(&self, url: &str) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|source| self.connect_error(url, source))?;
        // Without TCP_NODELAY a serial caller waits on delayed ACKs.
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout);
        let tls = match &self.tls {
            Some(tls) => Some(tls.clone()),
            None if url.starts_with("https://") => Some(Tls::new()),
            None => None,
        };
        match tls {
            Some(tls) => endpoint
                .tls_config(tls.config())
                .map_err(|source| self.connect_error(url, source)),
            None => Ok(endpoint),
        }
    }

    fn authorization(&self) -> Result<Option<AsciiMetadataValue>, Error> {
        self.token
            .as_ref()
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| Error::InvalidArgument("the token is not printable ASCII".into()))
            })
            .transpose()
    }

    fn client(
        &self,
        targets: Vec<Endpoint>,
        channels: Vec<Channel>,
        current: usize,
        down: &[usize],
    ) -> Result<Client, Error> {
        let authorization = self.authorization()?;
        let endpoints = Endpoints::new(
            self.urls.clone(),
            targets,
            channels,
            self.max_message_bytes,
            current,
            down,
        );
        let pipeline = self.auto_batching.then(|| {
            // Only what every call carries: the stream serves every project,
            // so it names none (each frame and call does).
            let mut metadata = MetadataMap::new();
            if let Some(authorization) = &authorization {
                metadata.insert("authorization", authorization.clone());
            }
            Arc::new(Pipeline::new(endpoints.clone(), metadata, self.retry))
        });
        Ok(Client {
            endpoints,
            pipeline,
            timeout: self.timeout,
            authorization,
            retry: self.retry,
            auto_request_ids: self.auto_request_ids,
            honour_retry_after: self.honour_retry_after,
        })
    }

    fn no_endpoints(&self) -> Result<(), Error> {
        if self.urls.is_empty() {
            return Err(Error::InvalidArgument(
                "no endpoint: give the client at least one URL".into(),
            ));
        }
        Ok(())
    }

    /// Connects now: to the first endpoint that answers, in the order
    /// given. Those before it that did not answer are marked down and
    /// reconnected in the background; those after it connect when first
    /// needed.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when a URL is invalid or no endpoint is reachable
    /// within the connect timeout (the error names the last one tried);
    /// [`Error::InvalidArgument`] when no URL was given.
    pub async fn connect(self) -> Result<Client, Error> {
        self.no_endpoints()?;
        let endpoints = self
            .urls
            .iter()
            .map(|url| self.endpoint(url))
            .collect::<Result<Vec<_>, _>>()?;
        let mut last_error = None;
        for (index, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    let channels = endpoints
                        .iter()
                        .enumerate()
                        .map(|(i, e)| {
                            if i == index {
                                channel.clone()
                            } else {
                                e.connect_lazy()
                            }
                        })
                        .collect();
                    // Those that did not answer reconnect in the background.
                    let down: Vec<usize> = (0..index).collect();
                    return self.client(endpoints, channels, index, &down);
                }
                Err(source) => last_error = Some(self.connect_error(&self.urls[index], source)),
            }
        }
        Err(last_error.expect("at least one endpoint was tried"))
    }

    /// Returns at once; connects on the first call (and reconnects after a
    /// failure), so a client can be built before the server is up.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when a URL is invalid; [`Error::InvalidArgument`]
    /// when no URL was given.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        self.no_endpoints()?;
        let targets = self
            .urls
            .iter()
            .map(|url| self.endpoint(url))
            .collect::<Result<Vec<_>, Error>>()?;
        let channels = targets.iter().map(Endpoint::connect_lazy).collect();
        self.client(targets, channels, 0, &[])
    }
}

impl Client {
    /// A request with this client's credentials and no deadline.
    pub(crate) fn request_without_deadline<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// A unary call (or the start of a stream), retried as the policy
    /// says. `call` makes one attempt on the endpoint it is given; each
    /// request carries the credentials, `project` when given and (unless
    /// `stream`) the time left as its deadline.
    pub(crate) async fn unary<M, T, F, Fut>(
        &self,
        safety: Safety,
        request_id: Option<&str>,
        project: Option<&AsciiMetadataValue>,
        stream: bool,
        message: M,
        call: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Arc<Conn>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.retrying(safety, request_id, |conn, left| {
            let mut request = self.request_without_deadline(message.clone());
            if let Some(project) = project {
                request
                    .metadata_mut()
                    .insert(PROJECT_HEADER, project.clone());
            }
            if !stream {
                request.set_timeout(left);
            }
            let reply = call(conn, request);
            async move {
                reply
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(Failure::from_status)
            }
        })
        .await
    }

    /// The safety of a write whose request id is `id`, giving it a fresh
    /// one first when it has none and ids are automatic.
    pub(crate) fn write_safety(&self, id: &mut String) -> Safety {
        if id.is_empty() && self.auto_request_ids {
            *id = new_request_id();
        }
        if id.is_empty() {
            Safety::Unsafe
        } else {
            Safety::Idempotent
        }
    }

    /// Connects to `url` (like `http://127.0.0.1:50051`, or several URLs:
    /// see [`Client::builder`]) with default options.
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
    /// [`Error::Connect`] when a URL is invalid or nothing answers there.
    pub async fn connect(url: impl IntoEndpoints) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// Options for a connection to one URL or several.
    ///
    /// Several URLs are endpoints of one service (front-ends over one
    /// cluster, or a server and its stand-in), in order of preference:
    /// calls go to one at a time; when it fails at the transport or says
    /// `UNAVAILABLE`, the retry goes to the next one that is up, and the
    /// failed one is marked down and reconnected in the background (backoff
    /// from 100 ms doubling to 2 s, jittered) until it answers; no call
    /// waits on that while another endpoint is up. Calls stay on the
    /// endpoint they moved to: a recovered one is a standby, ready for the
    /// next failover ([`Client::endpoint_states`] shows which is which).
    /// With one URL, retries wait for that server (for instance through a
    /// restart on the same port).
    ///
    /// ```
    /// let one = kv_client::Client::builder("http://127.0.0.1:50051")
    ///     .timeout(std::time::Duration::from_millis(500));
    /// let two = kv_client::Client::builder(["http://10.0.0.1:50051", "http://10.0.0.2:50051"]);
    /// # let _ = (one, two);
    /// ```
    pub fn builder(urls: impl IntoEndpoints) -> ClientBuilder {
        ClientBuilder {
            urls: urls.into_endpoints(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
            token: None,
            auto_batching: true,
            retry: RetryPolicy::default(),
            auto_request_ids: true,
            honour_retry_after: false,
        }
    }
}

impl Client {
    /// What this client knows of its endpoints, in the order given: which
    /// are up (never failed, or reconnected in the background since),
    /// which one calls go to, and how many times each was reconnected.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kv_client::Error> {
    /// let client = kv_client::Client::connect(["http://10.0.0.1:50051", "http://10.0.0.2:50051"]).await?;
    /// for endpoint in client.endpoint_states() {
    ///     println!("{} up={} current={}", endpoint.url, endpoint.up, endpoint.current);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn endpoint_states(&self) -> Vec<crate::EndpointState> {
        self.endpoints.states()
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of
    /// attempts or the call's deadline passes. Each attempt gets the
    /// endpoint to use and the time left.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        safety: Safety,
        request_id: Option<&str>,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Arc<Conn>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let mut attempts = 0u32;
        let mut may_have_applied = false;
        let deadline_passed = |attempts, may_have_applied| Error::Timeout {
            timeout,
            attempts,
            may_have_applied,
            request_id: request_id.map(str::to_owned),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(deadline_passed(attempts, may_have_applied));
            }
            attempts += 1;
            let (index, conn) = self.endpoints.pick();
            let failure = match tokio::time::timeout_at(deadline, attempt(conn, left)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => {
                    let applied = may_have_applied || safety != Safety::Read;
                    return Err(deadline_passed(attempts, applied));
                }
            };
            // A call the auto-batching stream replayed had several.
            attempts += failure.attempts.saturating_sub(1);
            if failure.deadline {
                let applied = may_have_applied || (failure.maybe_sent && safety != Safety::Read);
                return Err(deadline_passed(attempts, applied));
            }
            if failure.failover {
                self.endpoints.failed(index);
            }
            let honoured = failure.retry_after.filter(|_| self.honour_retry_after);
            let may_apply = failure.maybe_sent && safety != Safety::Read;
            may_have_applied |= may_apply;
            let retry = (failure.retryable || honoured.is_some())
                && attempts < self.retry.attempts()
                && !(may_apply && safety == Safety::Unsafe);
            if !retry {
                return Err(failure.error);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = match honoured {
                // Waiting past the deadline would only end in a timeout:
                // the caller learns the limit now.
                Some(hint) if hint >= left => return Err(failure.error),
                Some(hint) => hint,
                None => self.retry.backoff(attempts).min(left),
            };
            tokio::time::sleep(wait).await;
        }
    }
}
