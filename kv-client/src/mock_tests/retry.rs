//! Retries, automatic request ids, retry-after hints and endpoint failover
//! against the stub, behind an interceptor that fails calls on demand.

use std::{collections::VecDeque, net::SocketAddr, time::Instant};

use super::*;
use crate::RetryPolicy;

/// Fails the next calls with the statuses queued, and counts every call
/// (the `Pipeline` stream's opening included).
#[derive(Default, Clone)]
struct Faults {
    next: Arc<Mutex<VecDeque<Status>>>,
    /// Fail every call with this, once the queue is empty.
    always: Arc<Mutex<Option<Status>>>,
    calls: Arc<AtomicUsize>,
}

impl Faults {
    fn queue(&self, status: Status) {
        self.next.lock().unwrap().push_back(status);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn serve(stub: Stub, faults: Faults) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = KvServiceServer::with_interceptor(stub, move |request: Request<()>| {
        faults.calls.fetch_add(1, Ordering::SeqCst);
        let queued = faults.next.lock().unwrap().pop_front();
        match queued.or_else(|| faults.always.lock().unwrap().clone()) {
            Some(status) => Err(status),
            None => Ok(request),
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Quick retries, so a test sees many within its deadline.
fn quick() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(1000)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
}

fn builder(urls: impl crate::IntoEndpoints) -> crate::ClientBuilder {
    Client::builder(urls)
        .timeout(TIMEOUT)
        .token("secret")
        .auto_batching(false)
        .retry(quick())
}

/// A port nothing listens on.
/// A loopback port nothing listens on, for as long as the test runs. It is
/// picked below the range the OS hands out for port 0, so a listener that
/// another test of this process binds meanwhile cannot land on it (a
/// freed ephemeral port was, under load, the next one handed out).
async fn dead_port() -> SocketAddr {
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = below.saturating_sub(10_000).max(1);
    let start = 10_000 + (std::process::id() as u16 % span);
    for offset in 0..span {
        let port = 10_000 + (start - 10_000 + offset) % span;
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port below {below}");
}

fn assert_random_id(kind: &str, id: &str) {
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{kind} carried request id {id:?}"
    );
}

#[tokio::test]
async fn every_write_gets_a_request_id_unless_turned_off() {
    for batching in [false, true] {
        let stub = pipelining();
        let addr = serve(stub.clone(), Faults::default()).await;
        let kv = builder(format!("http://{addr}"))
            .auto_batching(batching)
            .connect()
            .await
            .unwrap()
            .project("p");
        kv.set("k", &1).await.unwrap();
        kv.set_with("k", &1, SetOptions::new().if_absent())
            .await
            .unwrap();
        kv.delete("k").await.unwrap();
        kv.clear().await.unwrap();
        kv.incr("n", 1.0).await.unwrap();
        let _: Value = kv.merge("m", &json!({"a": 1})).await.unwrap();
        kv.set_many([("a", &1)]).await.unwrap();
        kv.delete_many(["a"]).await.unwrap();
        kv.batch().incr("n", 1.0).commit().await.unwrap();
        // An id the caller gives is sent as given.
        kv.incr_with("n", 1.0, IncrOptions::new().request_id("mine"))
            .await
            .unwrap();
        let ids = stub.ids.lock().unwrap().clone();
        let kinds: Vec<&str> = ids.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds,
            [
                "set",
                "set",
                "delete",
                "clear",
                "incr",
                "merge",
                "set_many",
                "delete_many",
                "batch",
                "incr"
            ],
            "batching {batching}"
        );
        for (kind, id) in &ids[..ids.len() - 1] {
            assert_random_id(kind, id);
        }
        assert_eq!(ids.last().unwrap().1, "mine");
        let distinct: std::collections::HashSet<_> = ids.iter().map(|(_, id)| id).collect();
        assert_eq!(distinct.len(), ids.len(), "ids repeat: {ids:?}");
    }

    let stub = Stub::default();
    let addr = serve(stub.clone(), Faults::default()).await;
    let kv = builder(format!("http://{addr}"))
        .auto_request_ids(false)
        .connect()
        .await
        .unwrap()
        .project("p");
    kv.set("k", &1).await.unwrap();
    kv.incr("n", 1.0).await.unwrap();
    kv.batch().delete("k").commit().await.unwrap();
    let ids = stub.ids.lock().unwrap().clone();
    assert!(ids.iter().all(|(_, id)| id.is_empty()), "{ids:?}");
}

#[tokio::test]
async fn unavailable_is_retried_with_the_same_id_until_it_succeeds() {
    let stub = Stub::default();
    let faults = Faults::default();
    let addr = serve(stub.clone(), faults.clone()).await;
    let kv = builder(format!("http://{addr}"))
        .connect()
        .await
        .unwrap()
        .project("p");
    faults.queue(Status::unavailable("restarting"));
    faults.queue(Status::unavailable("restarting"));
    assert_eq!(kv.incr("n", 2.0).await.unwrap(), 4.0);
    assert_eq!(faults.calls(), 3);
    // A read, too.
    faults.queue(Status::unavailable("restarting"));
    assert!(kv.has("k").await.unwrap());
    assert_eq!(faults.calls(), 5);
    // Other refusals are final.
    faults.queue(Status::permission_denied("not yours"));
    let err = kv.set("k", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(faults.calls(), 6);
    // Every attempt of one write carries one id; the interceptor refused
    // two of the incr's before the stub saw it, so the stub saw it once.
    let ids = stub.ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // No retries: the first failure is the answer.
    let kv = builder(format!("http://{addr}"))
        .retry(RetryPolicy::none())
        .connect()
        .await
        .unwrap()
        .project("p");
    faults.queue(Status::unavailable("restarting"));
    let err = kv.incr("n", 1.0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test]
async fn the_deadline_error_counts_attempts_and_says_what_is_known() {
    let faults = Faults::default();
    *faults.always.lock().unwrap() = Some(Status::unavailable("down for good"));
    let addr = serve(Stub::default(), faults.clone()).await;
    let kv = builder(format!("http://{addr}"))
        .connect()
        .await
        .unwrap()
        .project("p");
    let started = Instant::now();
    let err = kv.incr("n", 1.0).await.unwrap_err();
    assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
    assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    let Error::Timeout {
        attempts,
        may_have_applied,
        request_id: Some(id),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(*attempts > 3, "{err}");
    assert!(*may_have_applied);
    assert_random_id("incr", id);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "deadline of 300 ms passed after {attempts} attempts; the outcome is unknown: an attempt may have been applied (retrying with the same request id"
        )),
        "{message}"
    );
    // The server counted them all (one more may be cut off by the deadline).
    let calls = faults.calls();
    assert!(calls == *attempts as usize || calls + 1 == *attempts as usize);

    let err = kv.get::<Value>("k").await.unwrap_err();
    assert!(
        err.to_string()
            .ends_with("the outcome is known: nothing was applied"),
        "{err}"
    );
}

#[tokio::test]
async fn a_write_without_an_id_is_retried_only_when_it_surely_was_not_sent() {
    let faults = Faults::default();
    let addr = serve(Stub::default(), faults.clone()).await;
    let kv = builder(format!("http://{addr}"))
        .auto_request_ids(false)
        .connect()
        .await
        .unwrap()
        .project("p");
    // The server answered UNAVAILABLE: it may have applied it.
    faults.queue(Status::unavailable("may have run"));
    let err = kv.incr("n", 1.0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(faults.calls(), 1);
    // A read is retried all the same; a write with an id too.
    faults.queue(Status::unavailable("may have run"));
    kv.get::<Value>("k").await.unwrap();
    faults.queue(Status::unavailable("may have run"));
    kv.incr_with("n", 1.0, IncrOptions::new().request_id("r"))
        .await
        .unwrap();
    assert_eq!(faults.calls(), 5);

    // Nothing listens: the connection is refused, so nothing was sent,
    // and the write is retried until its deadline.
    let kv = builder(format!("http://{}", dead_port().await))
        .auto_request_ids(false)
        .connect_lazy()
        .unwrap()
        .project("p");
    let err = kv.set("k", &1).await.unwrap_err();
    match &err {
        Error::Timeout {
            attempts,
            may_have_applied: false,
            request_id: None,
            ..
        } if *attempts > 1 => {}
        other => panic!("{other:?}"),
    }
}

fn limited(hint_ms: &str) -> Status {
    let mut status = Status::resource_exhausted("over the rate limit of 10 calls/s");
    status
        .metadata_mut()
        .insert(crate::RETRY_AFTER_HEADER, hint_ms.parse().unwrap());
    status
}

#[tokio::test]
async fn retry_after_is_honoured_only_when_asked() {
    let faults = Faults::default();
    let addr = serve(pipelining(), faults.clone()).await;
    let url = format!("http://{addr}");

    let kv = builder(url.clone()).connect().await.unwrap().project("p");
    faults.queue(limited("50"));
    let err = kv.incr("n", 1.0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(faults.calls(), 1);

    let kv = builder(url.clone())
        .honour_retry_after(true)
        .connect()
        .await
        .unwrap()
        .project("p");
    faults.queue(limited("50"));
    let started = Instant::now();
    assert_eq!(kv.incr("n", 1.0).await.unwrap(), 2.0);
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(faults.calls(), 3);
    // A hint past the deadline: the call fails at once.
    faults.queue(limited("5000"));
    let started = Instant::now();
    let err = kv.incr("n", 1.0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    // Without a hint (a quota, a size limit) there is no retry.
    faults.queue(Status::resource_exhausted("over the quota of 10 keys"));
    let err = kv.set("k", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(faults.calls(), 5);
}

#[tokio::test]
async fn calls_move_to_the_next_endpoint_when_one_is_down() {
    // The first endpoint refuses connections; the second serves.
    let stub = Stub::default();
    let live = serve(stub.clone(), Faults::default()).await;
    let dead = dead_port().await;
    let client = builder([format!("http://{dead}"), format!("http://{live}")])
        .connect()
        .await
        .unwrap();
    let kv = client.project("p");
    for i in 0..5 {
        kv.set(&format!("k{i}"), &i).await.unwrap();
    }
    assert_eq!(stub.unary.lock().unwrap().len(), 5);

    // The first one answers UNAVAILABLE (a front-end losing its backend):
    // calls move on and stay on the second.
    let (first, second) = (Faults::default(), Faults::default());
    *first.always.lock().unwrap() = Some(Status::unavailable("backend lost"));
    let a = serve(pipelining(), first.clone()).await;
    let b = serve(pipelining(), second.clone()).await;
    let kv = Client::builder(vec![format!("http://{a}"), format!("http://{b}")])
        .timeout(TIMEOUT)
        .token("secret")
        .retry(quick())
        .connect()
        .await
        .unwrap()
        .project("p");
    for _ in 0..5 {
        assert_eq!(kv.incr("n", 1.0).await.unwrap(), 2.0);
    }
    assert_eq!(first.calls(), 1, "the failed endpoint was tried again");
    assert!(second.calls() >= 1);
}
