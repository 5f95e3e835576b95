//! Several endpoints: one connection each, failover between them, and
//! reconnection in the background.
//!
//! Calls go to one endpoint at a time, the current one. When an attempt
//! there fails at the transport or with `UNAVAILABLE`, that endpoint is
//! marked down and the next attempt goes to the next one that is up. A
//! task then reconnects the down endpoint in the background, with a
//! bounded, jittered backoff, and marks it up once a fresh connection is
//! made; no call waits on that while another endpoint is up. Calls do not
//! move back to a recovered endpoint by themselves: they stay where they
//! are until that one fails, and the recovered one is a ready standby (its
//! connection already made, so the move costs no failed attempt). Moving
//! back would cut the auto-batching stream, and the endpoints serve the
//! same data. Sticking to one endpoint (rather than spreading calls over
//! all) keeps one auto-batching stream busy, which is what makes it fast,
//! and keeps calls made one after the other in order.
//!
//! With one endpoint there is nothing to move to: its channel reconnects
//! by itself when next used, and retries wait for it.
//!
//! This is hand-rolled rather than tonic's `Channel::balance_list`: a
//! balanced channel hides which endpoint a call went to, so a dead one is
//! found again by later calls.

use std::{
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use kv_proto::v1::{admin_service_client::AdminServiceClient, kv_service_client::KvServiceClient};
use tonic::transport::{Channel, Endpoint};

/// The first background reconnect waits up to this long (jittered), so a
/// server that is going away is not reconnected at once.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two background reconnects.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// The wait before background reconnect `round` (1-based): doubling from
/// [`RECONNECT_FIRST`] up to [`RECONNECT_MAX`], between half and all of
/// that bound, so that clients cut off together do not come back together.
fn reconnect_wait(round: u32) -> Duration {
    let bound = RECONNECT_FIRST
        .saturating_mul(1 << round.saturating_sub(1).min(16))
        .min(RECONNECT_MAX);
    bound.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// What a client knows of one of its endpoints; see
/// [`Client::endpoint_states`](crate::Client::endpoint_states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    /// The URL, as given.
    pub url: String,
    /// Not known to be down: never failed, or reconnected since.
    pub up: bool,
    /// Where calls go now.
    pub current: bool,
    /// Times a background reconnect brought it back.
    pub reconnects: u64,
}

/// The URLs a client may use: one (`&str`, `String`) or several, in order
/// of preference (a `Vec`, an array or a slice of them); see
/// [`Client::builder`](crate::Client::builder).
///
/// ```
/// use kv_client::IntoEndpoints;
/// assert_eq!("http://a:1".into_endpoints(), ["http://a:1"]);
/// assert_eq!(["http://a:1", "http://b:1"].into_endpoints().len(), 2);
/// assert_eq!(vec!["http://a:1".to_string()].into_endpoints(), ["http://a:1"]);
/// ```
pub trait IntoEndpoints {
    /// The URLs, in order of preference.
    fn into_endpoints(self) -> Vec<String>;
}

impl IntoEndpoints for &str {
    fn into_endpoints(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl IntoEndpoints for String {
    fn into_endpoints(self) -> Vec<String> {
        vec![self]
    }
}

impl IntoEndpoints for &String {
    fn into_endpoints(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<S: AsRef<str>> IntoEndpoints for Vec<S> {
    fn into_endpoints(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_owned()).collect()
    }
}

impl<S: AsRef<str>> IntoEndpoints for &[S] {
    fn into_endpoints(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_owned()).collect()
    }
}

impl<S: AsRef<str>> IntoEndpoints for &Vec<S> {
    fn into_endpoints(self) -> Vec<String> {
        self.as_slice().into_endpoints()
    }
}

impl<S: AsRef<str>, const N: usize> IntoEndpoints for [S; N] {
    fn into_endpoints(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_owned()).collect()
    }
}

/// One endpoint's channel stubs.
pub(crate) struct Conn {
    pub(crate) grpc: KvServiceClient<Channel>,
    pub(crate) admin: AdminServiceClient<Channel>,
}

impl Conn {
    pub(crate) fn new(channel: Channel, max_message_bytes: usize) -> Self {
        Conn {
            grpc: KvServiceClient::new(channel.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            admin: AdminServiceClient::new(channel),
        }
    }

    pub(crate) fn kv(&self) -> KvServiceClient<Channel> {
        self.grpc.clone()
    }

    pub(crate) fn admin(&self) -> AdminServiceClient<Channel> {
        self.admin.clone()
    }
}

#[derive(Default)]
struct Health {
    down: bool,
    /// A background task is reconnecting it.
    reconnecting: bool,
    reconnects: u64,
}

/// The endpoints of one client, shared by its clones.
pub(crate) struct Endpoints {
    urls: Vec<String>,
    /// How to connect each again.
    targets: Vec<Endpoint>,
    max_message_bytes: usize,
    conns: Vec<RwLock<Arc<Conn>>>,
    health: Vec<Mutex<Health>>,
    current: AtomicUsize,
    /// For the reconnect tasks, which must not keep the client alive.
    me: Weak<Endpoints>,
}

fn lock(health: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    health.lock().unwrap_or_else(|p| p.into_inner())
}

impl Endpoints {
    /// Endpoints in order of preference, with their channels, starting at
    /// `current`; those in `down` failed to connect and are reconnected in
    /// the background.
    pub(crate) fn new(
        urls: Vec<String>,
        targets: Vec<Endpoint>,
        channels: Vec<Channel>,
        max_message_bytes: usize,
        current: usize,
        down: &[usize],
    ) -> Arc<Self> {
        let endpoints = Arc::new_cyclic(|me| Self {
            health: urls.iter().map(|_| Mutex::default()).collect(),
            urls,
            targets,
            max_message_bytes,
            conns: channels
                .into_iter()
                .map(|c| RwLock::new(Arc::new(Conn::new(c, max_message_bytes))))
                .collect(),
            current: AtomicUsize::new(current),
            me: me.clone(),
        });
        for &index in down {
            endpoints.failed(index);
        }
        endpoints
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    fn conn(&self, index: usize) -> Arc<Conn> {
        self.conns[index]
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The endpoint for the next attempt: the current one if up, or else
    /// the first after it that is; when none is, the current one (its
    /// channel may come back by itself).
    pub(crate) fn pick(&self) -> (usize, Arc<Conn>) {
        let count = self.conns.len();
        let start = self.current.load(Ordering::Acquire) % count;
        for step in 0..count {
            let index = (start + step) % count;
            if !lock(&self.health[index]).down {
                if index != start {
                    let _ = self.current.compare_exchange(
                        start,
                        index,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                return (index, self.conn(index));
            }
        }
        (start, self.conn(start))
    }

    /// An attempt on endpoint `index` failed at the transport: mark it
    /// down, move on from it if it was the current one, and reconnect it
    /// in the background.
    pub(crate) fn failed(&self, index: usize) {
        let count = self.conns.len();
        if count == 1 {
            return;
        }
        let start_task = {
            let mut health = lock(&self.health[index]);
            health.down = true;
            !std::mem::replace(&mut health.reconnecting, true)
        };
        let _ = self.current.compare_exchange(
            index,
            (index + 1) % count,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if start_task {
            tokio::spawn(reconnect(self.me.clone(), index));
        }
    }

    /// Each endpoint's state, in the order given.
    pub(crate) fn states(&self) -> Vec<EndpointState> {
        let current = self.current.load(Ordering::Acquire) % self.conns.len();
        self.urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let health = lock(&self.health[index]);
                EndpointState {
                    url: url.clone(),
                    up: !health.down,
                    current: index == current,
                    reconnects: health.reconnects,
                }
            })
            .collect()
    }
}

/// Reconnects endpoint `index` until it answers, then marks it up. Holds
/// the endpoints only between attempts, so it ends once the client is
/// dropped.
async fn reconnect(endpoints: Weak<Endpoints>, index: usize) {
    let mut round = 0;
    loop {
        round += 1;
        tokio::time::sleep(reconnect_wait(round)).await;
        let Some(target) = endpoints.upgrade().map(|e| e.targets[index].clone()) else {
            return;
        };
        // Bounded by the builder's connect timeout.
        let Ok(channel) = target.connect().await else {
            continue;
        };
        let Some(endpoints) = endpoints.upgrade() else {
            return;
        };
        let conn = Arc::new(Conn::new(channel, endpoints.max_message_bytes));
        *endpoints.conns[index]
            .write()
            .unwrap_or_else(|p| p.into_inner()) = conn;
        let mut health = lock(&endpoints.health[index]);
        health.down = false;
        health.reconnecting = false;
        health.reconnects += 1;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_to_a_bound_with_jitter() {
        for _ in 0..100 {
            let first = reconnect_wait(1);
            assert!(first >= RECONNECT_FIRST / 2 && first <= RECONNECT_FIRST);
            let late = reconnect_wait(40);
            assert!(late >= RECONNECT_MAX / 2 && late <= RECONNECT_MAX);
        }
        let waits: Vec<_> = (0..20).map(|_| reconnect_wait(3)).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "no jitter: {waits:?}");
    }
}
