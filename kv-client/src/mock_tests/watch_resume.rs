//! A watch resuming by itself against a scripted stub: each stream the
//! stub opens ends its own way (UNAVAILABLE, a memory-limit cut naming a
//! resume point, OUT_OF_RANGE), and one repeats the event at the resume
//! point, as a server replaying its history might.

use kv_proto::contract::{INCARNATION_HEADER, RESUME_FROM_HEADER, WATCH_START_HEADER};

use super::*;
use crate::{Event, RetryPolicy};

/// Where a scripted watch "from now" starts.
const NOW: u64 = 10;

fn set(key: &str, version: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        kind: pb::EventKind::Set as i32,
        key: key.to_string(),
        value: Some(json::to_proto(&json!(version)).unwrap()),
        version,
        expires_at_ms: None,
        incarnation: 2,
    }
}

/// The stub's `Watch` of a `resume*` key. The nth watch of a key (from
/// 1) after version `from` (or [`NOW`]):
///
/// - `resume`: 1 sends from+1..=from+3 and ends `UNAVAILABLE`; 2 repeats
///   `from`, sends from+1, from+2 and is cut (`RESOURCE_EXHAUSTED`) with
///   the resume point from+4 (from+3 and from+4 went to other keys); 3
///   sends from+1, from+2 and ends `UNAVAILABLE`; 4 is `OUT_OF_RANGE`.
/// - `resume-idle`: 1 sends nothing and ends `UNAVAILABLE`; 2 sends
///   from+1 and ends cleanly.
pub(super) fn scripted(
    stub: &Stub,
    key: String,
    from: Option<u64>,
    incarnation: Option<u64>,
) -> Result<Response<EventStream>, Status> {
    let nth = {
        let mut watches = stub.watches.lock().unwrap();
        watches.push((key.clone(), from, incarnation));
        watches.iter().filter(|w| w.0 == key).count()
    };
    let start = from.unwrap_or(NOW);
    let unavailable = || Status::unavailable("the server is shutting down");
    let (events, end): (Vec<u64>, Option<Status>) = match (key.as_str(), nth) {
        ("resume", 1) => ((start + 1..=start + 3).collect(), Some(unavailable())),
        ("resume", 2) => {
            let mut cut = Status::resource_exhausted("at the memory limit; not keeping up");
            cut.metadata_mut()
                .insert(RESUME_FROM_HEADER, (start + 4).into());
            ((start..=start + 2).collect(), Some(cut))
        }
        ("resume", 3) => ((start + 1..=start + 2).collect(), Some(unavailable())),
        ("resume", _) => return Err(Status::out_of_range("history starts at 100")),
        ("resume-idle", 1) => (Vec::new(), Some(unavailable())),
        ("resume-idle", _) => (vec![start + 1], None),
        _ => return Err(Status::invalid_argument("no such script")),
    };
    let items: Vec<Result<pb::WatchEvent, Status>> = events
        .into_iter()
        .map(|v| Ok(set(&key, v)))
        .chain(end.map(Err))
        .collect();
    let mut response = Response::new(Box::pin(tokio_stream::iter(items)) as EventStream);
    response
        .metadata_mut()
        .insert(WATCH_START_HEADER, start.into());
    response.metadata_mut().insert(INCARNATION_HEADER, 2.into());
    Ok(response)
}

fn versions(events: &[Result<Event, Error>]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e.as_ref().ok().map(|e| e.version))
        .collect()
}

async fn drain(watch: &mut crate::Watch) -> Vec<Result<Event, Error>> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = watch.next_event().await {
            all.push(item);
        }
    })
    .await
    .expect("the watch ends within 10 s");
    all
}

#[tokio::test]
async fn a_watch_resumes_without_duplicates_and_ends_at_out_of_range() {
    let stub = Stub::default();
    let kv = client_of(stub.clone()).await.project("p");
    let mut watch = kv.watch(WatchOptions::key("resume")).await.unwrap();
    let all = drain(&mut watch).await;
    // 13 came twice (the second stream repeated its resume point): given
    // once. 16 and 17 were other keys' (the cut's resume point skips them).
    assert_eq!(versions(&all), [11, 12, 13, 14, 15, 18, 19]);
    let errors: Vec<_> = all.iter().filter_map(|e| e.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{all:?}");
    assert_eq!(errors[0].code(), Code::OutOfRange);
    assert!(all.last().unwrap().is_err(), "the error comes last");
    assert_eq!(watch.resumes(), 2);
    assert_eq!(watch.last_version(), Some(19));
    assert!(watch.next_event().await.is_none(), "ended for good");
    // Each reopen asked for the right place, in the incarnation the
    // server named; the first asked for neither.
    let asked: Vec<_> = stub
        .watches
        .lock()
        .unwrap()
        .iter()
        .map(|w| (w.1, w.2))
        .collect();
    assert_eq!(
        asked,
        [
            (None, None),
            (Some(13), Some(2)),
            (Some(17), Some(2)),
            (Some(19), Some(2))
        ]
    );
}

#[tokio::test]
async fn a_watch_broken_before_any_event_resumes_from_its_start() {
    let stub = Stub::default();
    let kv = client_of(stub.clone()).await.project("p");
    let mut watch = kv.watch(WatchOptions::key("resume-idle")).await.unwrap();
    let all = drain(&mut watch).await;
    assert_eq!(versions(&all), [NOW + 1]);
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(watch.resumes(), 1);
    let asked: Vec<_> = stub.watches.lock().unwrap().iter().map(|w| w.1).collect();
    assert_eq!(asked, [None, Some(NOW)]);
}

#[tokio::test]
async fn a_watch_without_resume_ends_at_the_first_break() {
    let stub = Stub::default();
    let kv = client_of(stub.clone()).await.project("p");
    let mut watch = kv
        .watch(WatchOptions::key("resume").resume(false))
        .await
        .unwrap();
    let all = drain(&mut watch).await;
    assert_eq!(versions(&all), [11, 12, 13]);
    assert_eq!(all[3].as_ref().unwrap_err().code(), Code::Unavailable);
    assert_eq!((all.len(), watch.resumes()), (4, 0));
    assert_eq!(stub.watches.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_reopen_that_keeps_failing_ends_the_watch() {
    // The server is gone for good: the reopen attempts (three, by the
    // policy) all fail at the transport, and the last failure ends it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServiceServer::new(Stub::default()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let client = Client::builder(format!("http://{addr}"))
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .token("secret")
        .retry(RetryPolicy::default().max_attempts(3))
        .connect()
        .await
        .unwrap();
    let mut watch = client
        .project("p")
        .watch(WatchOptions::key("resume-idle"))
        .await
        .unwrap();
    // The first stream ends UNAVAILABLE at once; stop the server so that
    // the reopen finds nothing.
    let _ = stop.send(());
    let _ = server.await;
    let all = drain(&mut watch).await;
    let last = all.last().expect("an error ends the watch");
    let code = last.as_ref().unwrap_err().code();
    assert!(matches!(code, Code::Unavailable | Code::Unknown), "{all:?}");
    assert_eq!(watch.resumes(), 0);
}
