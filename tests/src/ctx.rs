//! What a conformance case works with: the server's address, clients,
//! and how time passes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kv_engine::ManualClock;
use kv_proto::v1::kv_service_client::KvServiceClient;
use tonic::transport::Channel;

/// Start of the manual clock: any fixed, realistic unix time in ms.
pub const CLOCK_START_MS: u64 = 1_700_000_000_000;

/// How a case lets time pass.
#[derive(Clone)]
pub enum Time {
    /// The server reads this clock; advancing it is instant and exact.
    Manual(Arc<ManualClock>),
    /// The server reads the real clock; advancing means sleeping.
    Real,
}

/// What a conformance case works with.
#[derive(Clone)]
pub struct Ctx {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// An SDK client connected to the server.
    pub client: kv_client::Client,
    /// A raw gRPC client, for requests the SDK would refuse to send.
    pub raw: KvServiceClient<Channel>,
    /// How time passes for the server.
    pub time: Time,
}

impl Ctx {
    /// Connects an SDK client and a raw client to `addr`.
    ///
    /// # Panics
    ///
    /// When the server does not accept connections.
    pub async fn connect(addr: SocketAddr, time: Time) -> Self {
        let url = format!("http://{addr}");
        let client = kv_client::Client::connect(url.clone())
            .await
            .expect("SDK connects");
        let channel = Channel::from_shared(url.clone())
            .expect("valid url")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("raw client connects");
        let raw = KvServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Self {
            url,
            client,
            raw,
            time,
        }
    }

    /// Lets `d` pass for the server: exact under a manual clock, a sleep of
    /// `d` plus a scheduling margin under the real one.
    pub async fn advance(&self, d: Duration) {
        match &self.time {
            Time::Manual(clock) => clock.advance(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Time::Real => tokio::time::sleep(d + Duration::from_millis(50)).await,
        }
    }

    /// Whether time is manual (exact deadline checks are possible).
    pub fn exact_time(&self) -> bool {
        matches!(self.time, Time::Manual(_))
    }
}

/// Reads the next event of `watch` within 5 s.
///
/// # Panics
///
/// When none comes, the stream ends, or it fails.
pub async fn next_event(watch: &mut kv_client::Watch) -> kv_client::Event {
    tokio::time::timeout(Duration::from_secs(5), watch.next_event())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("an event, not an error")
}
