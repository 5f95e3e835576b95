//! The memory limit of the real binary (`--max-memory 64MiB`): writers of
//! large values in many projects (unary and pipelined), watchers that read
//! and watchers that never do. Writes past the limit are refused with
//! RESOURCE_EXHAUSTED naming the limit and the usage; reads, deletes and
//! clears keep working at the limit; once data is deleted writes are
//! admitted again; the server stays alive and its resident set stays
//! within the limit plus the documented overhead.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kv_client::{Code, WatchOptions};
use kv_tests::BinaryServer;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const LIMIT: u64 = 64 << 20;
/// The README's documented overhead of the anonymous resident memory over
/// the limit (requests and replies in flight); the mapped binary comes on
/// top of it in VmRSS.
const OVERHEAD: u64 = 32 << 20;
const PROJECTS: usize = 12;
const WRITERS: usize = 8;

/// Samples the child's RssAnon and VmRSS every 10 ms until stopped; the
/// peaks seen.
struct RssSampler {
    peak: Arc<AtomicU64>,
    peak_total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let peak_total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, peak_total, stop) = (peak.clone(), peak_total.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    // Gone only once the test has failed and killed it.
                    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                        return;
                    };
                    let (Some(anon), Some(total)) = (
                        kv_server::memory::rss_anon(&status),
                        kv_server::memory::vm_rss(&status),
                    ) else {
                        return;
                    };
                    peak.fetch_max(anon, Ordering::Relaxed);
                    peak_total.fetch_max(total, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Self {
            peak,
            peak_total,
            stop,
            thread,
        }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// (peak RssAnon, peak VmRSS).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler ran");
        (
            self.peak.load(Ordering::Relaxed),
            self.peak_total.load(Ordering::Relaxed),
        )
    }
}

fn assert_memory_refusal(e: &kv_client::Error) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("the server is at its memory limit")
            && text.contains("in use of 64.0 MiB (--max-memory)")
            && text.contains("MiB in use")
            && text.contains("reads, deletes and clears still work"),
        "{text}"
    );
}

async fn client(server: &BinaryServer, batched: bool) -> kv_client::Client {
    kv_client::Client::builder(format!("http://{}", server.addr))
        .timeout(Duration::from_secs(20))
        .auto_batching(batched)
        .connect()
        .await
        .expect("connects")
}

/// Writes values of 256 KiB to 1 MiB under fresh keys until the server has
/// refused three; (accepted, refused).
async fn fill(kv: kv_client::Project, writer: usize) -> (usize, usize) {
    let (mut accepted, mut refused) = (0, 0);
    let mut i = 0;
    while refused < 3 && i < 400 {
        let size = (256 << 10) << (i % 3);
        let value = "v".repeat(size.min(1 << 20));
        match kv.set(&format!("w{writer}-{i}"), &value).await {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert_memory_refusal(&e);
                refused += 1;
            }
        }
        i += 1;
    }
    (accepted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_limit_are_refused_and_the_server_stays_within_it() {
    let started = Instant::now();
    let server = BinaryServer::start(BIN, &["--max-memory", "64MiB", "--fsync", "never"]);
    // Logged as the service starts, just after the listening line.
    let logged = Instant::now() + Duration::from_secs(5);
    while !server
        .log()
        .iter()
        .any(|l| l.contains("memory limit 64.0 MiB (--max-memory)"))
    {
        assert!(Instant::now() < logged, "{:?}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss = RssSampler::start(server.pid());
    let batched = client(&server, true).await;
    let unary = client(&server, false).await;
    let silent = client(&server, true).await;
    // A value known to be stored before the writers race to the limit
    // (which of theirs get in first is up to the scheduler), to read,
    // list and delete once the limit is reached.
    batched
        .project("p0")
        .set("known", &"k".repeat(256 << 10))
        .await
        .expect("a write well below the limit");

    // Watchers that never read (on their own connection, which they
    // stall), and watchers that read everything.
    let mut silent_watches = Vec::new();
    for p in 0..PROJECTS {
        for _ in 0..4 {
            let watch = silent
                .project(&format!("p{p}"))
                .watch(WatchOptions::all())
                .await
                .expect("a watch opens below the limit");
            silent_watches.push(watch);
        }
    }
    let reading: Vec<_> = (0..4)
        .map(|p| {
            let kv = batched.project(&format!("p{p}"));
            tokio::spawn(async move {
                let mut watch = kv.watch(WatchOptions::all()).await.expect("watch opens");
                let mut events = 0u64;
                while let Some(event) = watch.next_event().await {
                    if event.is_err() {
                        break;
                    }
                    events += 1;
                }
                events
            })
        })
        .collect();

    // Writers in many projects, half pipelined, half unary, until refused.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let kv =
                if w % 2 == 0 { &batched } else { &unary }.project(&format!("p{}", w % PROJECTS));
            tokio::spawn(fill(kv, w))
        })
        .collect();
    // Small values in many more projects at the same time.
    let small = tokio::spawn({
        let batched = batched.clone();
        async move {
            let mut refused = 0;
            for p in 0..200 {
                let kv = batched.project(&format!("small{p}"));
                let writes = (0..16).map(|i| {
                    let kv = kv.clone();
                    async move { kv.set(&format!("k{i}"), &"s".repeat(4096)).await }
                });
                for result in futures_util::future::join_all(writes).await {
                    if let Err(e) = result {
                        assert_memory_refusal(&e);
                        refused += 1;
                    }
                }
            }
            refused
        }
    });
    let (mut accepted, mut refused) = (0, 0);
    for writer in writers {
        let (a, r) = writer.await.expect("writer ran");
        accepted += a;
        refused += r;
    }
    let small_refused = small.await.expect("small writers ran");
    assert_eq!(refused, 3 * WRITERS, "every writer met the limit");
    assert!(accepted >= 4, "some large values fit: {accepted}");
    eprintln!(
        "accepted {accepted} large values, refused {refused} large and {small_refused} small; peak RssAnon so far {} MiB",
        rss.peak() >> 20
    );

    // At the limit: reads, lists, deletes and clears still work; new
    // watches and writes do not.
    let kv = batched.project("p0");
    let first: Option<String> = kv.get("known").await.expect("get at the limit");
    assert_eq!(first.map(|v| v.len()), Some(256 << 10));
    assert!(kv.has("known").await.expect("has at the limit"));
    let page = kv.list_all("kno").await.expect("list at the limit");
    assert!(!page.is_empty());
    let refused_write = kv.set("one-more", &"x".repeat(1 << 20)).await.unwrap_err();
    assert_memory_refusal(&refused_write);
    assert!(kv.delete("known").await.expect("delete at the limit"));

    // Deleting frees memory: writes are admitted again.
    for p in 0..PROJECTS {
        unary
            .project(&format!("p{p}"))
            .clear()
            .await
            .expect("clear at the limit");
    }
    for p in 0..200 {
        batched
            .project(&format!("small{p}"))
            .clear()
            .await
            .expect("clear at the limit");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match kv.set("after", &"a".repeat(1 << 20)).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_memory_refusal(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("still refused 5 s after deleting everything: {e}"),
        }
    }
    let back: Option<String> = kv.get("after").await.expect("read back");
    assert_eq!(back.map(|v| v.len()), Some(1 << 20));

    // The server is alive and answers; its memory stayed bounded.
    drop(silent_watches);
    for reader in reading {
        reader.abort();
    }
    assert!(
        std::path::Path::new(&format!("/proc/{}", server.pid())).exists(),
        "the server is alive"
    );
    let (peak, peak_total) = rss.finish();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "peak RssAnon {:.1} MiB, peak VmRSS {:.1} MiB, with a {} MiB limit, in {:?}",
        mib(peak),
        mib(peak_total),
        LIMIT >> 20,
        started.elapsed()
    );
    assert!(
        peak <= LIMIT + OVERHEAD,
        "peak RssAnon {:.1} MiB is over the limit plus the documented overhead ({} MiB)",
        mib(peak),
        (LIMIT + OVERHEAD) >> 20
    );
    let status = server.terminate();
    assert!(status.success(), "clean exit: {status:?}");
}
