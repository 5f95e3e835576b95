//! The workload's calls on several keys at once: SetMany, DeleteMany,
//! GetMany, Batch and List, each checked against the task's model.

use std::collections::{BTreeMap, BTreeSet};

use kv_client::{ListOptions, OpResult};
use serde_json::{Value, json};

use super::{
    model::{Known, Presence, Read, Slot, Ttl},
    workload::{Checked, Worker},
};

impl Worker {
    /// 2 to 4 distinct keys drawn by `draw`.
    fn some_keys(&mut self, draw: fn(&mut Self) -> String) -> Vec<String> {
        let count = self.rng.usize(2..=4);
        let mut keys = BTreeSet::new();
        for _ in 0..count * 3 {
            if keys.len() == count {
                break;
            }
            keys.insert(draw(self));
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        self.rng.shuffle(&mut keys);
        keys
    }

    pub(crate) async fn set_many(&mut self) -> Checked<()> {
        let keys = self.some_keys(Self::doc);
        let values: Vec<Value> = keys.iter().map(|_| self.new_doc()).collect();
        let kv = self.kv.clone();
        let call = kv.set_many(keys.iter().map(String::as_str).zip(&values));
        let what = keys.join(",");
        let Some((versions, ..)) = self.call("set_many", &what, call).await? else {
            for key in keys {
                self.model.keys.insert(key, Slot::Unknown);
            }
            return Ok(());
        };
        if versions.len() != keys.len() {
            return Err(self.fail(format!("set_many of {what} gave {versions:?}")));
        }
        // One transaction: its entries may share a version.
        let top = versions.iter().copied().max().unwrap_or_default();
        if versions.iter().any(|&v| v <= self.model.last_version) {
            return Err(self.fail(format!(
                "set_many of {what} gave {versions:?}, after version {}",
                self.model.last_version
            )));
        }
        for ((key, value), version) in keys.into_iter().zip(values).zip(versions) {
            self.model.keys.insert(
                key,
                Slot::Known(Known {
                    value,
                    version: Some(version),
                    ttl: Ttl::None,
                }),
            );
        }
        self.model.last_version = top;
        Ok(())
    }

    pub(crate) async fn delete_many(&mut self) -> Checked<()> {
        let keys = self.some_keys(Self::any_key);
        let kv = self.kv.clone();
        let what = keys.join(",");
        let Some((deleted, start, end)) = self
            .call("delete_many", &what, kv.delete_many(&keys))
            .await?
        else {
            for key in keys {
                self.model.keys.insert(key, Slot::Unknown);
            }
            return Ok(());
        };
        let presences: Vec<Presence> = keys
            .iter()
            .map(|k| self.model.presence(k, start, end))
            .collect();
        let sure = presences
            .iter()
            .filter(|p| **p == Presence::Present)
            .count() as u64;
        let most = presences.iter().filter(|p| **p != Presence::Absent).count() as u64;
        if deleted < sure || deleted > most {
            return Err(self.fail(format!(
                "delete_many {what} removed {deleted}; the model had {sure} to {most}"
            )));
        }
        for key in keys {
            self.model.keys.remove(&key);
        }
        Ok(())
    }

    pub(crate) async fn get_many(&mut self) -> Checked<()> {
        let keys = self.some_keys(Self::any_key);
        let kv = self.kv.clone();
        let what = keys.join(",");
        let Some((entries, start, end)) = self
            .call("get_many", &what, kv.get_many::<Value, _>(&keys))
            .await?
        else {
            return Ok(());
        };
        if entries.len() != keys.len() {
            return Err(self.fail(format!("get_many {what}: {} results", entries.len())));
        }
        for (key, entry) in keys.iter().zip(entries) {
            let read = entry.map(|e| Read {
                value: e.value,
                version: e.version,
                expires_at_ms: e.expires_at_ms,
            });
            self.check(key, read, start, end)?;
        }
        Ok(())
    }

    pub(crate) async fn list(&mut self) -> Checked<()> {
        let prefix = ["", "d", "n", "s"][self.rng.usize(..4)];
        let kv = self.kv.clone();
        let (entries, start, end) = if self.rng.bool() {
            let Some(found) = self.call("list_all", prefix, kv.list_all(prefix)).await? else {
                return Ok(());
            };
            found
        } else {
            let options = ListOptions::new().prefix(prefix).limit(1000);
            let Some((page, start, end)) = self.call("list", prefix, kv.list(options)).await?
            else {
                return Ok(());
            };
            if page.next_start_after.is_some() || page.version < self.model.last_version {
                return Err(self.fail(format!(
                    "list {prefix:?}: a second page or version {} below {}",
                    page.version, self.model.last_version
                )));
            }
            (page.entries, start, end)
        };
        let mut listed: BTreeMap<String, Read> = BTreeMap::new();
        for entry in entries {
            let value = entry
                .value
                .ok_or_else(|| self.fail(format!("list entry {} without a value", entry.key)))?;
            let read = Read {
                value,
                version: entry.version,
                expires_at_ms: entry.expires_at_ms,
            };
            if listed.insert(entry.key.clone(), read).is_some() {
                return Err(self.fail(format!("list {prefix:?} gave {} twice", entry.key)));
            }
        }
        let mut keys: BTreeSet<String> = listed.keys().cloned().collect();
        keys.extend(
            self.model
                .keys
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned(),
        );
        for key in keys {
            let read = listed.remove(&key);
            self.check(&key, read, start, end)?;
        }
        Ok(())
    }

    pub(crate) async fn batch(&mut self) -> Checked<()> {
        let keys = self.some_keys(Self::doc);
        let checked = keys[0].clone();
        let set_key = keys[1].clone();
        let num = self.num();
        let Some(current) = self.current(&checked).await? else {
            if self.model.surely_absent(&checked) {
                return self.batch_on(None, &checked, &set_key, &num).await;
            }
            return Ok(());
        };
        self.batch_on(current.version, &checked, &set_key, &num)
            .await
    }

    /// A batch checking `checked` (at `version`, or absent), setting
    /// `set_key`, incrementing `num` and deleting `checked`.
    async fn batch_on(
        &mut self,
        version: Option<u64>,
        checked: &str,
        set_key: &str,
        num: &str,
    ) -> Checked<()> {
        let stale = self.rng.u32(..5) == 0;
        let value = self.new_doc();
        let mut batch = self.kv.batch();
        batch = match (version, stale) {
            (Some(v), false) => batch.check_version(checked, v),
            (Some(_), true) => batch.check_absent(checked),
            (None, false) => batch.check_absent(checked),
            (None, true) => batch.check_version(checked, 1 + self.rng.u64(..1000)),
        };
        let old_num = match self.model.keys.get(num) {
            None => Some(0.0),
            Some(Slot::Known(k)) => k.value.as_f64(),
            Some(Slot::Unknown) => None,
        };
        let num_ttl = self.model.ttl_of(num);
        let batch = batch.set(set_key, &value).incr(num, 2.0).delete(checked);
        let what = format!("{checked},{set_key},{num}");
        let Some((outcome, ..)) = self.call("batch", &what, batch.commit()).await? else {
            for key in [checked, set_key, num] {
                self.model.keys.insert(key.to_string(), Slot::Unknown);
            }
            return Ok(());
        };
        if outcome.applied == stale {
            return Err(self.fail(format!("batch {what} (stale check: {stale}): {outcome:?}")));
        }
        if stale {
            if outcome.failed_check != Some(0) || outcome.current_version != version.unwrap_or(0) {
                return Err(self.fail(format!("batch {what} refused as {outcome:?}")));
            }
            return Ok(());
        }
        let [
            OpResult::Set { version: set_v },
            OpResult::Incr {
                value: n,
                version: incr_v,
            },
            OpResult::Delete {
                deleted,
                version: del_v,
            },
        ] = outcome.results[..]
        else {
            return Err(self.fail(format!("batch {what} results {:?}", outcome.results)));
        };
        if deleted != version.is_some() || old_num.is_some_and(|old| n != old + 2.0) {
            return Err(self.fail(format!("batch {what} gave {:?}", outcome.results)));
        }
        // A delete of an absent key changes nothing and has version 0.
        let top = set_v.max(incr_v).max(del_v);
        let low = if deleted {
            set_v.min(incr_v).min(del_v)
        } else {
            set_v.min(incr_v)
        };
        if low <= self.model.last_version {
            return Err(self.fail(format!("batch {what} versions {:?}", outcome.results)));
        }
        self.model.last_version = top;
        self.model.keys.remove(checked);
        self.model.keys.insert(
            set_key.to_string(),
            Slot::Known(Known {
                value,
                version: Some(set_v),
                ttl: Ttl::None,
            }),
        );
        let num_slot = if old_num.is_some() {
            Slot::Known(Known {
                value: json!(n),
                version: Some(incr_v),
                ttl: if self.model.keys.contains_key(num) {
                    num_ttl
                } else {
                    Ttl::None
                },
            })
        } else {
            Slot::Unknown
        };
        self.model.keys.insert(num.to_string(), num_slot);
        Ok(())
    }
}
