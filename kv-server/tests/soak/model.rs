//! One task's exact model of its project: what each key must hold, what it
//! may hold (a key whose TTL ends about now, a write whose call failed),
//! and the checks of what the server answers against it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Slack for the wall clock the server reads against the monotonic one
/// the test reads, and for deadlines rounded to whole milliseconds.
const CLOCK_SLACK: Duration = Duration::from_millis(15);

/// A key's deadline as far as the model knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ttl {
    /// No deadline.
    None,
    /// A deadline far beyond the run: the key must survive it.
    Long,
    /// A deadline set by a call made between the two instants: the key
    /// expires between `earliest` and `latest`.
    Short { earliest: Instant, latest: Instant },
}

/// A value the model is sure of.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) value: Value,
    /// `None` after a write whose reply does not give the version.
    pub(crate) version: Option<u64>,
    pub(crate) ttl: Ttl,
}

#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Known(Known),
    /// A write to the key failed: it may or may not have applied.
    Unknown,
}

/// Whether a key must, must not, or may be there when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Present,
    Absent,
    Either,
}

/// What a read returned for one key.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) value: Value,
    pub(crate) version: u64,
    pub(crate) expires_at_ms: Option<u64>,
}

/// The model of one project. A key not in `keys` is absent.
#[derive(Debug, Default)]
pub(crate) struct Model {
    pub(crate) keys: BTreeMap<String, Slot>,
    /// The highest version any write returned: every new write's is above.
    pub(crate) last_version: u64,
}

/// JSON values equal as the server keeps them (numbers are doubles).
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
        }
        _ => a == b,
    }
}

/// RFC 7386: what `patch` makes of `target` (`None` when absent).
pub(crate) fn merge_patch(target: Option<&Value>, patch: &Value) -> Value {
    let Value::Object(members) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Some(Value::Object(object)) => object.clone(),
        _ => serde_json::Map::new(),
    };
    for (name, value) in members {
        if value.is_null() {
            out.remove(name);
        } else {
            let merged = merge_patch(out.get(name), value);
            out.insert(name.clone(), merged);
        }
    }
    Value::Object(out)
}

impl Model {
    /// What a read that ran from `start` to `end` may find at `key`.
    pub(crate) fn presence(&self, key: &str, start: Instant, end: Instant) -> Presence {
        match self.keys.get(key) {
            None => Presence::Absent,
            Some(Slot::Unknown) => Presence::Either,
            Some(Slot::Known(known)) => match known.ttl {
                Ttl::Short { earliest, latest } => {
                    if end + CLOCK_SLACK < earliest {
                        Presence::Present
                    } else if start > latest + CLOCK_SLACK {
                        Presence::Absent
                    } else {
                        Presence::Either
                    }
                }
                Ttl::None | Ttl::Long => Presence::Present,
            },
        }
    }

    /// The known value at `key`, if the model is sure it is there now.
    pub(crate) fn known(&self, key: &str) -> Option<&Known> {
        let now = Instant::now();
        match self.keys.get(key) {
            Some(Slot::Known(known)) if self.presence(key, now, now) == Presence::Present => {
                Some(known)
            }
            _ => None,
        }
    }

    /// Whether the model is sure `key` is absent now.
    pub(crate) fn surely_absent(&self, key: &str) -> bool {
        let now = Instant::now();
        self.presence(key, now, now) == Presence::Absent
    }

    /// Checks a read of `key` made from `start` to `end`, then settles the
    /// model with it.
    pub(crate) fn check_read(
        &mut self,
        key: &str,
        got: Option<Read>,
        start: Instant,
        end: Instant,
    ) -> Result<(), String> {
        let presence = self.presence(key, start, end);
        match (presence, &got) {
            (Presence::Absent, Some(read)) => {
                return Err(format!("{key} should be absent, read {read:?}"));
            }
            (Presence::Present, None) => {
                return Err(format!(
                    "{key} should be {:?}, read absent",
                    self.keys.get(key)
                ));
            }
            _ => {}
        }
        let Some(read) = got else {
            self.keys.remove(key);
            return Ok(());
        };
        let slot = self.keys.get_mut(key).expect("present or either");
        if let Slot::Known(known) = slot {
            if !same(&known.value, &read.value) {
                return Err(format!("{key} should be {known:?}, read {read:?}"));
            }
            if known.version.is_some_and(|v| v != read.version) {
                return Err(format!("{key} should be {known:?}, read {read:?}"));
            }
            if matches!(known.ttl, Ttl::None) != read.expires_at_ms.is_none() {
                return Err(format!("{key}'s deadline: model {known:?}, read {read:?}"));
            }
            known.version = Some(read.version);
        } else {
            let ttl = match read.expires_at_ms {
                None => Ttl::None,
                Some(ms) => deadline_ttl(ms),
            };
            *slot = Slot::Known(Known {
                value: read.value,
                version: Some(read.version),
                ttl,
            });
        }
        Ok(())
    }

    /// Records a write acknowledged with `version` (0 when the reply has
    /// none), checking versions only go up.
    pub(crate) fn wrote(
        &mut self,
        key: &str,
        value: Value,
        version: Option<u64>,
        ttl: Ttl,
    ) -> Result<(), String> {
        if let Some(v) = version {
            self.bump(v).map_err(|e| format!("write of {key}: {e}"))?;
        }
        self.keys.insert(
            key.to_string(),
            Slot::Known(Known {
                value,
                version,
                ttl,
            }),
        );
        Ok(())
    }

    /// A change of the project acknowledged at `version`.
    pub(crate) fn bump(&mut self, version: u64) -> Result<(), String> {
        if version <= self.last_version {
            return Err(format!(
                "write acknowledged at version {version}, not above the last one, {}",
                self.last_version
            ));
        }
        self.last_version = version;
        Ok(())
    }

    /// The key's deadline as the model knows it, for a write that keeps it.
    pub(crate) fn ttl_of(&self, key: &str) -> Ttl {
        match self.keys.get(key) {
            Some(Slot::Known(known)) => known.ttl,
            _ => Ttl::None,
        }
    }

    /// How many keys are surely, and at most, present for a call made from
    /// `start` to `end`.
    pub(crate) fn live_counts(&self, start: Instant, end: Instant) -> (u64, u64) {
        let (mut sure, mut maybe) = (0, 0);
        for key in self.keys.keys() {
            match self.presence(key, start, end) {
                Presence::Present => sure += 1,
                Presence::Either => maybe += 1,
                Presence::Absent => {}
            }
        }
        (sure, sure + maybe)
    }
}

/// A deadline read from the server, as a short TTL ending then.
fn deadline_ttl(expires_at_ms: u64) -> Ttl {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let now = Instant::now();
    if expires_at_ms > now_ms + 600_000 {
        return Ttl::Long;
    }
    let at = now + Duration::from_millis(expires_at_ms.saturating_sub(now_ms));
    Ttl::Short {
        earliest: at,
        latest: at,
    }
}
