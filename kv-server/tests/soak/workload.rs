//! One task's workload: every method of the SDK on its own project, each
//! result checked against the task's model as it goes.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use kv_client::{IncrOptions, Project, SetOptions};
use serde_json::{Value, json};

use super::model::{Known, Model, Presence, Read, Slot, Ttl, merge_patch, same};

/// Documents: set, merged, swapped, deleted, written in bulk.
const DOCS: usize = 8;
/// Numbers: incremented, set, swapped, deleted.
const NUMS: usize = 4;
/// Keys only ever written with a short TTL.
const SHORT: usize = 4;
/// The short TTL: such keys must be gone at the end.
pub(crate) const SHORT_TTL: Duration = Duration::from_millis(300);
/// A TTL that outlives any run: such keys must survive.
const LONG_TTL: Duration = Duration::from_secs(3600);
/// Past this a call is hung, not slow: the SDK's own deadline is shorter.
const CALL_LIMIT: Duration = Duration::from_secs(40);

/// What one task did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) calls: BTreeMap<&'static str, u64>,
    /// Calls that returned an error: (method, key, error).
    pub(crate) failures: Vec<String>,
}

pub(crate) struct Worker {
    pub(crate) task: usize,
    pub(crate) kv: Project,
    pub(crate) model: Model,
    pub(crate) rng: fastrand::Rng,
    serial: u64,
    pub(crate) report: Report,
}

pub(crate) type Checked<T> = Result<T, String>;

impl Worker {
    pub(crate) fn new(task: usize, kv: Project, seed: u64) -> Self {
        Worker {
            task,
            kv,
            model: Model::default(),
            rng: fastrand::Rng::with_seed(seed),
            serial: 0,
            report: Report::default(),
        }
    }

    /// Runs `call` as `method`, bounded; `None` (counted, printed) when it
    /// failed, with the instants it ran between otherwise.
    pub(crate) async fn call<T>(
        &mut self,
        method: &'static str,
        what: &str,
        call: impl Future<Output = Result<T, kv_client::Error>>,
    ) -> Checked<Option<(T, Instant, Instant)>> {
        *self.report.calls.entry(method).or_default() += 1;
        let start = Instant::now();
        let outcome = tokio::time::timeout(CALL_LIMIT, call).await.map_err(|_| {
            format!(
                "task {}: {method} {what} hung for {CALL_LIMIT:?}",
                self.task
            )
        })?;
        match outcome {
            Ok(value) => Ok(Some((value, start, Instant::now()))),
            Err(e) => {
                let failure = format!("task {}: {method} {what}: {e}", self.task);
                eprintln!("soak call failed: {failure}");
                self.report.failures.push(failure);
                Ok(None)
            }
        }
    }

    pub(crate) fn fail(&self, what: impl std::fmt::Display) -> String {
        format!("task {} (project soak-{}): {what}", self.task, self.task)
    }

    pub(crate) fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    pub(crate) fn doc(&mut self) -> String {
        format!("d{}", self.rng.usize(..DOCS))
    }

    pub(crate) fn num(&mut self) -> String {
        format!("n{}", self.rng.usize(..NUMS))
    }

    pub(crate) fn short(&mut self) -> String {
        format!("s{}", self.rng.usize(..SHORT))
    }

    pub(crate) fn any_key(&mut self) -> String {
        match self.rng.usize(..3) {
            0 => self.doc(),
            1 => self.num(),
            _ => self.short(),
        }
    }

    /// Every key the task may write.
    pub(crate) fn all_keys() -> Vec<String> {
        let docs = (0..DOCS).map(|i| format!("d{i}"));
        let nums = (0..NUMS).map(|i| format!("n{i}"));
        let short = (0..SHORT).map(|i| format!("s{i}"));
        docs.chain(nums).chain(short).collect()
    }

    pub(crate) fn check(
        &mut self,
        key: &str,
        got: Option<Read>,
        start: Instant,
        end: Instant,
    ) -> Checked<()> {
        self.model
            .check_read(key, got, start, end)
            .map_err(|e| self.fail(e))
    }

    /// One random operation.
    pub(crate) async fn step(&mut self) -> Checked<()> {
        match self.rng.u32(..1000) {
            0..100 => self.get().await,
            100..160 => self.has().await,
            160..250 => self.set().await,
            250..300 => self.set_long_ttl().await,
            300..380 => self.set_short_ttl().await,
            380..430 => self.set_if_absent().await,
            430..500 => self.compare_and_swap().await,
            500..550 => self.delete().await,
            550..590 => self.delete_if_version().await,
            590..596 => self.clear().await,
            596..700 => self.incr().await,
            700..780 => self.merge().await,
            780..820 => self.set_many().await,
            820..850 => self.delete_many().await,
            850..900 => self.get_many().await,
            900..960 => self.batch().await,
            _ => self.list().await,
        }
    }

    async fn get(&mut self) -> Checked<()> {
        let key = self.any_key();
        let kv = self.kv.clone();
        if self.rng.bool() {
            let Some((entry, start, end)) = self
                .call("get_entry", &key, kv.get_entry::<Value>(&key))
                .await?
            else {
                return Ok(());
            };
            let read = entry.map(|e| Read {
                value: e.value,
                version: e.version,
                expires_at_ms: e.expires_at_ms,
            });
            self.check(&key, read, start, end)
        } else {
            let Some((value, start, end)) = self.call("get", &key, kv.get::<Value>(&key)).await?
            else {
                return Ok(());
            };
            let presence = self.model.presence(&key, start, end);
            match (&value, self.model.keys.get(&key), presence) {
                (Some(_), _, Presence::Absent) | (None, _, Presence::Present) => {
                    Err(self.fail(format!("get {key}: {value:?}, model {presence:?}")))
                }
                (Some(v), Some(Slot::Known(known)), _) if !same(v, &known.value) => {
                    Err(self.fail(format!("get {key}: {v}, model {known:?}")))
                }
                (None, _, _) => {
                    self.model.keys.remove(&key);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }

    async fn has(&mut self) -> Checked<()> {
        let key = self.any_key();
        let kv = self.kv.clone();
        let Some((exists, start, end)) = self.call("has", &key, kv.has(&key)).await? else {
            return Ok(());
        };
        match (exists, self.model.presence(&key, start, end)) {
            (true, Presence::Absent) | (false, Presence::Present) => {
                Err(self.fail(format!("has {key} = {exists} against the model")))
            }
            (false, _) => {
                self.model.keys.remove(&key);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn new_doc(&mut self) -> Value {
        let n = self.next_serial();
        json!({"w": n, "task": self.task})
    }

    async fn set(&mut self) -> Checked<()> {
        let (key, value) = if self.rng.bool() {
            (self.doc(), self.new_doc())
        } else {
            (self.num(), json!(self.rng.i64(-1000..1000)))
        };
        let kv = self.kv.clone();
        if self
            .call("set", &key, kv.set(&key, &value))
            .await?
            .is_none()
        {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        }
        self.model
            .wrote(&key, value, None, Ttl::None)
            .map_err(|e| self.fail(e))
    }

    async fn set_long_ttl(&mut self) -> Checked<()> {
        let (key, value) = (self.doc(), self.new_doc());
        let kv = self.kv.clone();
        let call = kv.set_with_ttl(&key, &value, LONG_TTL);
        if self.call("set_with_ttl", &key, call).await?.is_none() {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        }
        self.model
            .wrote(&key, value, None, Ttl::Long)
            .map_err(|e| self.fail(e))
    }

    async fn set_short_ttl(&mut self) -> Checked<()> {
        let key = self.short();
        let value = json!(self.next_serial());
        let kv = self.kv.clone();
        let options = SetOptions::new().ttl(SHORT_TTL);
        let call = kv.set_with(&key, &value, options);
        let Some((outcome, start, end)) = self.call("set_with(ttl)", &key, call).await? else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        if !outcome.applied {
            return Err(self.fail(format!("unconditional set of {key} not applied")));
        }
        let ttl = Ttl::Short {
            earliest: start + SHORT_TTL,
            latest: end + SHORT_TTL,
        };
        self.model
            .wrote(&key, value, Some(outcome.version), ttl)
            .map_err(|e| self.fail(e))
    }

    async fn set_if_absent(&mut self) -> Checked<()> {
        let (key, value) = (self.doc(), self.new_doc());
        let kv = self.kv.clone();
        let call = kv.set_if_absent(&key, &value);
        let Some((outcome, ..)) = self.call("set_if_absent", &key, call).await? else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        match (self.model.known(&key).cloned(), outcome.applied) {
            (Some(known), true) => {
                Err(self.fail(format!("set_if_absent {key} applied over {known:?}")))
            }
            (Some(known), false) => match known.version {
                Some(v) if v != outcome.version => Err(self.fail(format!(
                    "set_if_absent {key}: current version {} against {v}",
                    outcome.version
                ))),
                _ => Ok(()),
            },
            (None, true) => self
                .model
                .wrote(&key, value, Some(outcome.version), Ttl::None)
                .map_err(|e| self.fail(e)),
            (None, false) if self.model.surely_absent(&key) => {
                Err(self.fail(format!("set_if_absent {key} refused on an absent key")))
            }
            (None, false) => Ok(()),
        }
    }

    /// The key's entry, known or read now; `None` when absent or unsure.
    pub(crate) async fn current(&mut self, key: &str) -> Checked<Option<Known>> {
        if let Some(known) = self.model.known(key).filter(|k| k.version.is_some()) {
            return Ok(Some(known.clone()));
        }
        let kv = self.kv.clone();
        let Some((entry, start, end)) = self
            .call("get_entry", key, kv.get_entry::<Value>(key))
            .await?
        else {
            return Ok(None);
        };
        let read = entry.map(|e| Read {
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        });
        self.check(key, read, start, end)?;
        Ok(self.model.known(key).cloned())
    }

    async fn compare_and_swap(&mut self) -> Checked<()> {
        let key = if self.rng.bool() {
            self.doc()
        } else {
            self.num()
        };
        let Some(known) = self.current(&key).await? else {
            return Ok(());
        };
        let version = known.version.expect("current gives a version");
        let stale = self.rng.u32(..4) == 0;
        let expected = if stale {
            version + 1 + self.rng.u64(..5)
        } else {
            version
        };
        let value = if key.starts_with('d') {
            self.new_doc()
        } else {
            json!(self.rng.i64(-1000..1000))
        };
        let kv = self.kv.clone();
        let call = kv.compare_and_swap(&key, expected, &value);
        let Some((outcome, ..)) = self.call("compare_and_swap", &key, call).await? else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        if outcome.applied == stale || (stale && outcome.version != version) {
            return Err(self.fail(format!(
                "compare_and_swap {key} at {expected} (current {version}): {outcome:?}"
            )));
        }
        if stale {
            return Ok(());
        }
        self.model
            .wrote(&key, value, Some(outcome.version), Ttl::None)
            .map_err(|e| self.fail(e))
    }

    async fn delete(&mut self) -> Checked<()> {
        let key = self.any_key();
        let kv = self.kv.clone();
        let Some((deleted, start, end)) = self.call("delete", &key, kv.delete(&key)).await? else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        match (deleted, self.model.presence(&key, start, end)) {
            (true, Presence::Absent) | (false, Presence::Present) => {
                return Err(self.fail(format!("delete {key} = {deleted} against the model")));
            }
            _ => {}
        }
        self.model.keys.remove(&key);
        Ok(())
    }

    async fn delete_if_version(&mut self) -> Checked<()> {
        let key = if self.rng.bool() {
            self.doc()
        } else {
            self.num()
        };
        let Some(known) = self.current(&key).await? else {
            return Ok(());
        };
        let version = known.version.expect("current gives a version");
        let stale = self.rng.u32(..3) == 0;
        let expected = if stale {
            version.saturating_sub(1).max(1)
        } else {
            version
        };
        let stale = expected != version;
        let kv = self.kv.clone();
        let call = kv.delete_if_version(&key, expected);
        let Some((outcome, ..)) = self.call("delete_if_version", &key, call).await? else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        if outcome.deleted == stale || (stale && outcome.version != version) {
            return Err(self.fail(format!(
                "delete_if_version {key} at {expected} (current {version}): {outcome:?}"
            )));
        }
        if !stale {
            self.model
                .bump(outcome.version)
                .map_err(|e| self.fail(format!("delete_if_version: {e}")))?;
            self.model.keys.remove(&key);
        }
        Ok(())
    }

    async fn clear(&mut self) -> Checked<()> {
        let kv = self.kv.clone();
        let Some((outcome, start, end)) = self
            .call("clear", "", kv.clear_with(kv_client::ClearOptions::new()))
            .await?
        else {
            for slot in self.model.keys.values_mut() {
                *slot = Slot::Unknown;
            }
            return Ok(());
        };
        // A short-TTL key that expired during the call may or may not count.
        let (sure, most) = self.model.live_counts(start, end);
        if outcome.deleted < sure || outcome.deleted > most {
            return Err(self.fail(format!(
                "clear removed {} keys; the model had {sure} to {most}",
                outcome.deleted
            )));
        }
        // Version 0: the project held nothing, so nothing changed.
        if outcome.version != 0 || outcome.deleted != 0 {
            let bumped = self.model.bump(outcome.version);
            bumped.map_err(|e| self.fail(format!("clear: {e}")))?;
        }
        self.model.keys.clear();
        Ok(())
    }

    async fn incr(&mut self) -> Checked<()> {
        let key = self.num();
        let delta = self.rng.i64(-5..=20) as f64;
        let with_ttl = self.rng.u32(..4) == 0;
        let kv = self.kv.clone();
        let (old, old_ttl) = match self.model.keys.get(&key) {
            None => (Some(0.0), None),
            Some(Slot::Known(k)) => (k.value.as_f64(), Some(k.ttl)),
            Some(Slot::Unknown) => (None, None),
        };
        let options = if with_ttl {
            IncrOptions::new().ttl(LONG_TTL)
        } else {
            IncrOptions::new()
        };
        let Some((got, ..)) = self
            .call("incr_with", &key, kv.incr_with(&key, delta, options))
            .await?
        else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        if let Some(old) = old
            && got.value != old + delta
        {
            return Err(self.fail(format!(
                "incr {key} by {delta} from {old} gave {}",
                got.value
            )));
        }
        // The TTL applies only to a key the increment creates.
        let ttl = match (old_ttl, self.model.keys.get(&key)) {
            (Some(ttl), _) => ttl,
            (None, None) if with_ttl => Ttl::Long,
            (None, None) => Ttl::None,
            // Unsure whether it existed: the next read settles the TTL.
            (None, Some(_)) => {
                self.model.keys.insert(key, Slot::Unknown);
                return self
                    .model
                    .bump(got.version)
                    .map_err(|e| self.fail(format!("incr: {e}")));
            }
        };
        self.model
            .wrote(&key, json!(got.value), Some(got.version), ttl)
            .map_err(|e| self.fail(e))
    }

    async fn merge(&mut self) -> Checked<()> {
        let key = self.doc();
        let n = self.next_serial();
        let mut patch = json!({ format!("f{}", n % 5): n });
        if self.rng.u32(..4) == 0 {
            patch[format!("f{}", (n + 2) % 5)] = Value::Null;
        }
        let kv = self.kv.clone();
        let call = kv.merge_with::<_, Value>(&key, &patch, kv_client::MergeOptions::new());
        let before = self.model.keys.get(&key).cloned();
        let Some((merged, ..)) = self.call("merge", &key, call).await? else {
            self.model.keys.insert(key, Slot::Unknown);
            return Ok(());
        };
        let ttl = match &before {
            Some(Slot::Known(known)) => {
                let expected = merge_patch(Some(&known.value), &patch);
                if !same(&expected, &merged.value) {
                    return Err(self.fail(format!(
                        "merge {key} {patch} into {known:?} gave {}",
                        merged.value
                    )));
                }
                known.ttl
            }
            None => Ttl::None,
            Some(Slot::Unknown) => {
                self.model.keys.insert(key, Slot::Unknown);
                return self
                    .model
                    .bump(merged.version)
                    .map_err(|e| self.fail(format!("merge: {e}")));
            }
        };
        self.model
            .wrote(&key, merged.value, Some(merged.version), ttl)
            .map_err(|e| self.fail(e))
    }
}
