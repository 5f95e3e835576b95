//! Background reconnection of a failed endpoint, against stubs on fixed
//! ports that come and go.

use std::{net::SocketAddr, time::Instant};

use super::*;
use crate::{EndpointState, RetryPolicy};

/// Serves `stub` on `addr` until `stop` fires.
async fn serve_on(stub: Stub, addr: SocketAddr, stop: tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServiceServer::new(stub))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop.await;
                },
            ),
    );
}

fn states(client: &Client) -> Vec<(bool, bool)> {
    client
        .endpoint_states()
        .iter()
        .map(|EndpointState { up, current, .. }| (*up, *current))
        .collect()
}

#[tokio::test]
async fn a_down_endpoint_is_reconnected_in_the_background_and_taken_over_at_once() {
    // A's port is free: nothing listens there yet.
    let a = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let b = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (stub_a, stub_b) = (Stub::default(), Stub::default());
    let (stop_b, b_stopped) = tokio::sync::oneshot::channel();
    serve_on(stub_b.clone(), b, b_stopped).await;
    let client = Client::builder([format!("http://{a}"), format!("http://{b}")])
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(200))
        .token("secret")
        .auto_batching(false)
        .retry(RetryPolicy::none())
        .connect()
        .await
        .unwrap();
    // A did not answer: marked down, calls go to B (no retry is allowed,
    // so none of them went to A first).
    assert_eq!(states(&client), [(false, false), (true, true)]);
    let kv = client.project("p");
    for i in 0..3 {
        kv.set(&format!("b{i}"), &i).await.unwrap();
    }
    assert_eq!(stub_b.unary.lock().unwrap().len(), 3);

    // A comes up: the background task connects it, with no call made.
    let (_stop_a, a_stopped) = tokio::sync::oneshot::channel();
    serve_on(stub_a.clone(), a, a_stopped).await;
    let waited = Instant::now();
    while !client.endpoint_states()[0].up {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "A was not reconnected: {:?}",
            client.endpoint_states()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_state = &client.endpoint_states()[0];
    assert_eq!(a_state.reconnects, 1);
    assert_eq!(a_state.url, format!("http://{a}"));
    // Calls stay on B while it works: A is a standby.
    assert_eq!(states(&client), [(true, false), (true, true)]);
    kv.set("b3", &3).await.unwrap();
    assert_eq!(stub_b.unary.lock().unwrap().len(), 4);
    assert!(stub_a.unary.lock().unwrap().is_empty());

    // B goes away: one failed attempt there, and the retry lands on A,
    // whose connection is already made.
    stop_b.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = Instant::now();
    let err = kv.set("a0", &0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // Without retries the call that found B gone fails; the next goes to
    // A at once.
    kv.set("a1", &1).await.unwrap();
    assert!(
        before.elapsed() < Duration::from_secs(1),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(
        *stub_a.unary.lock().unwrap(),
        [("p".to_string(), "a1".to_string())]
    );
    assert_eq!(states(&client), [(true, true), (false, false)]);
}
