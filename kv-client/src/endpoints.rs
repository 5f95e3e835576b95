//! Several endpoints: one connection each, and failover between them.
//!
//! Calls go to one endpoint at a time, the current one. When an attempt
//! there fails at the transport or with `UNAVAILABLE`, that endpoint is
//! set aside for a cool-down and the next attempt goes to the next one
//! that is not; the channel of the failed one reconnects by itself when
//! it is next used. Sticking to one endpoint (rather than spreading calls
//! over all) keeps one auto-batching stream busy, which is what makes it
//! fast, and keeps calls made one after the other in order.
//!
//! This is hand-rolled rather than tonic's `Channel::balance_list`: a
//! balanced channel hides which endpoint a call went to, so a dead one is
//! found again by later calls, and there would be one `Pipeline` stream
//! for all endpoints, broken whenever any of them goes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kv_proto::v1::{admin_service_client::AdminServiceClient, kv_service_client::KvServiceClient};
use tonic::transport::Channel;

use crate::pipeline::Pipeline;

/// How long an endpoint that failed is passed over while another one is
/// usable.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(1);

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

/// One endpoint: its channel's stubs and its auto-batching stream.
pub(crate) struct Conn {
    pub(crate) grpc: KvServiceClient<Channel>,
    pub(crate) admin: AdminServiceClient<Channel>,
    pub(crate) pipeline: Option<Arc<Pipeline>>,
}

impl Conn {
    pub(crate) fn kv(&self) -> KvServiceClient<Channel> {
        self.grpc.clone()
    }

    pub(crate) fn admin(&self) -> AdminServiceClient<Channel> {
        self.admin.clone()
    }
}

/// The endpoints of one client, shared by its clones.
pub(crate) struct Endpoints {
    conns: Vec<Arc<Conn>>,
    /// Until when each endpoint is passed over.
    down_until: Vec<Mutex<Option<Instant>>>,
    current: AtomicUsize,
}

impl Endpoints {
    /// `conns` in order of preference, starting at `current`.
    pub(crate) fn new(conns: Vec<Conn>, current: usize) -> Self {
        Self {
            down_until: conns.iter().map(|_| Mutex::new(None)).collect(),
            conns: conns.into_iter().map(Arc::new).collect(),
            current: AtomicUsize::new(current),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn any(&self) -> &Conn {
        &self.conns[0]
    }

    fn down_until(&self, index: usize) -> Option<Instant> {
        *self.down_until[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint for the next attempt: the current one, or the first
    /// after it not cooling down; when all are, the one that recovers
    /// first.
    pub(crate) fn pick(&self) -> (usize, Arc<Conn>) {
        let count = self.conns.len();
        let start = self.current.load(Ordering::Acquire) % count;
        if count > 1 {
            let now = Instant::now();
            let mut soonest = (start, None::<Instant>);
            for step in 0..count {
                let index = (start + step) % count;
                match self.down_until(index) {
                    Some(until) if until > now => {
                        if soonest.1.is_none_or(|s| until < s) {
                            soonest = (index, Some(until));
                        }
                    }
                    _ => {
                        if index != start {
                            let _ = self.current.compare_exchange(
                                start,
                                index,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                        }
                        return (index, self.conns[index].clone());
                    }
                }
            }
            return (soonest.0, self.conns[soonest.0].clone());
        }
        (start, self.conns[start].clone())
    }

    /// An attempt on endpoint `index` failed at the transport: pass it
    /// over for a while, and move on from it if it was the current one.
    pub(crate) fn failed(&self, index: usize) {
        let count = self.conns.len();
        if count == 1 {
            return;
        }
        *self.down_until[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + COOL_DOWN);
        let _ = self.current.compare_exchange(
            index,
            (index + 1) % count,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}
