//! An exactly-once workload for fault tests: many tasks increment counters
//! through the SDK while the test breaks things, then every result is
//! checked. Each task's own counter must have counted 1, 2, 3... with no
//! gap and no repeat, and the results of the one counter all tasks share
//! must be exactly 1..=total: an increment applied twice, or lost after
//! it was acknowledged, shows as a repeat or a gap.
//!
//! ```no_run
//! # async fn demo(kv: kv_client::Project) {
//! use std::time::Duration;
//! let counters = kv_tests::counters::Counters::start(&kv, 64);
//! tokio::time::sleep(Duration::from_millis(500)).await;
//! // ... restart the server, cut connections, kill a front-end ...
//! let total = counters.finish(&kv, Duration::from_secs(40)).await;
//! assert!(total > 0);
//! # }
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinHandle;

/// Tasks incrementing `own<t>` and `shared` until told to stop.
pub struct Counters {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<(u64, Vec<u64>)>>,
}

impl Counters {
    /// Starts `tasks` tasks on `kv`. A call that fails panics its task
    /// (naming it and the error): with retries and request ids, none may.
    pub fn start(kv: &kv_client::Project, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|t| {
                let (kv, stop, done) = (kv.clone(), stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut own = 0u64;
                    let mut shared = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        own += 1;
                        let got = kv
                            .incr(&format!("own{t}"), 1.0)
                            .await
                            .unwrap_or_else(|e| panic!("task {t}, own incr {own}: {e}"));
                        assert_eq!(got, own as f64, "task {t}'s counter");
                        let got = kv
                            .incr("shared", 1.0)
                            .await
                            .unwrap_or_else(|e| panic!("task {t}, shared incr: {e}"));
                        shared.push(got as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    (own, shared)
                })
            })
            .collect();
        Self { stop, done, tasks }
    }

    /// Rounds (one own and one shared increment) completed so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the tasks, waits for them at most `within`, and checks every
    /// result and the stored counters; returns the number of rounds.
    ///
    /// # Panics
    ///
    /// When a task failed or is still running after `within`, or when a
    /// count is not exact.
    pub async fn finish(self, kv: &kv_client::Project, within: Duration) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + within;
        let mut total = 0;
        let mut all_shared = Vec::new();
        for (t, task) in self.tasks.into_iter().enumerate() {
            let (own, shared) = tokio::time::timeout_at(deadline, task)
                .await
                .unwrap_or_else(|_| panic!("task {t} still running {within:?} after the stop"))
                .unwrap_or_else(|e| panic!("task {t} failed: {e}"));
            let stored: Option<f64> = kv.get(&format!("own{t}")).await.unwrap();
            assert_eq!(stored, Some(own as f64), "task {t}'s counter as stored");
            total += own;
            all_shared.extend(shared);
        }
        all_shared.sort_unstable();
        assert!(
            all_shared == (1..=total).collect::<Vec<_>>(),
            "the shared counter's results are not exactly 1..={total}"
        );
        let stored: Option<f64> = kv.get("shared").await.unwrap();
        assert_eq!(stored, Some(total as f64), "the shared counter as stored");
        total
    }
}
