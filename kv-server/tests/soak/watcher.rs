//! A watcher following one project (or a prefix of it) through the proxy
//! and the restarts: it resumes after any error from the last version it
//! saw, checks versions only go up (and, for a whole project, without a
//! gap), and replays the events into the state they describe.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use kv_client::{Code, EventKind, ListOptions, Project, WatchOptions};
use serde_json::Value;

/// What the events of one watcher add up to.
#[derive(Debug, Default)]
pub(crate) struct WatchReport {
    /// Key to (value, deadline), as the events left it.
    pub(crate) state: BTreeMap<String, (Value, Option<u64>)>,
    pub(crate) last_version: u64,
    pub(crate) events: u64,
    /// Watches opened again after the stream ended or failed.
    pub(crate) resumes: u64,
    /// Resumes refused with `OUT_OF_RANGE` (history lost), then read again.
    pub(crate) out_of_range: u64,
    /// Other errors opening or reading the watch.
    pub(crate) errors: Vec<String>,
}

pub(crate) struct Watcher {
    pub(crate) kv: Project,
    /// Empty for the whole project.
    pub(crate) prefix: String,
    /// The watcher stops once it has seen this version (set at the end).
    pub(crate) until: Arc<AtomicU64>,
    /// It gives up (and the run fails) past this.
    pub(crate) deadline: tokio::time::Instant,
}

impl Watcher {
    fn options(&self) -> WatchOptions {
        if self.prefix.is_empty() {
            WatchOptions::all()
        } else {
            WatchOptions::prefix(self.prefix.clone())
        }
    }

    fn done(&self, report: &WatchReport) -> bool {
        let until = self.until.load(Ordering::SeqCst);
        until != 0 && report.last_version >= until
    }

    /// Reads the project again (one page: the projects are small) and
    /// takes its state and version as the new starting point.
    async fn reread(&self, report: &mut WatchReport) -> bool {
        let options = ListOptions::new().prefix(self.prefix.clone()).limit(1000);
        let page = match tokio::time::timeout(Duration::from_secs(30), self.kv.list(options)).await
        {
            Ok(Ok(page)) if page.next_start_after.is_none() => page,
            other => {
                report.errors.push(format!("reread: {other:?}"));
                return false;
            }
        };
        report.state = page
            .entries
            .into_iter()
            .map(|e| (e.key, (e.value.unwrap_or(Value::Null), e.expires_at_ms)))
            .collect();
        report.last_version = page.version;
        true
    }

    /// Follows the project until told to stop; `Err` on a broken rule.
    pub(crate) async fn run(self) -> Result<WatchReport, String> {
        let mut report = WatchReport::default();
        let mut incarnation = None;
        // After a reread, the next event is the first after the page.
        while !self.done(&report) {
            if tokio::time::Instant::now() > self.deadline {
                return Err(format!(
                    "watcher of {:?} {:?} at version {} never reached {}",
                    self.kv,
                    self.prefix,
                    report.last_version,
                    self.until.load(Ordering::SeqCst)
                ));
            }
            let mut options = self.options().from_version(report.last_version);
            if let Some(incarnation) = incarnation {
                options = options.incarnation(incarnation);
            }
            let opened =
                tokio::time::timeout(Duration::from_secs(30), self.kv.watch(options)).await;
            let mut watch = match opened {
                Ok(Ok(watch)) => watch,
                Ok(Err(e)) if e.code() == Code::OutOfRange => {
                    report.out_of_range += 1;
                    self.reread(&mut report).await;
                    continue;
                }
                other => {
                    report.errors.push(format!("open: {other:?}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            loop {
                if self.done(&report) {
                    break;
                }
                let next =
                    tokio::time::timeout(Duration::from_millis(500), watch.next_event()).await;
                let event = match next {
                    Err(_) if tokio::time::Instant::now() > self.deadline => break,
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(Err(e))) if e.code() == Code::OutOfRange => {
                        report.out_of_range += 1;
                        self.reread(&mut report).await;
                        break;
                    }
                    // A cut connection or a restart: resume.
                    Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(event))) => event,
                };
                let gapless = self.prefix.is_empty();
                if event.version <= report.last_version
                    || (gapless && event.version != report.last_version + 1)
                {
                    return Err(format!(
                        "watcher of {:?} {:?}: event at version {} after {}: {event:?}",
                        self.kv, self.prefix, event.version, report.last_version
                    ));
                }
                report.last_version = event.version;
                report.events += 1;
                incarnation = Some(event.incarnation);
                match event.kind {
                    EventKind::Set => {
                        let value = event.value.unwrap_or(Value::Null);
                        report.state.insert(event.key, (value, event.expires_at_ms));
                    }
                    EventKind::Deleted | EventKind::Expired => {
                        report.state.remove(&event.key);
                    }
                    EventKind::Cleared => report.state.clear(),
                }
            }
            if !self.done(&report) {
                report.resumes += 1;
            }
        }
        Ok(report)
    }
}
