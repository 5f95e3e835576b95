//! Reads: single keys, multi-key reads and List pages, each as of one
//! moment of its namespace.

use super::*;
use crate::EntryView;

impl MemoryStore {
    /// The live value of `key` at the clock's current time.
    pub fn get_now(&self, project: &ProjectName, key: &str) -> Option<Bytes> {
        self.entry_now(project, key).map(|e| e.value)
    }

    /// The live entry under `key` at the clock's current time.
    pub fn entry_now(&self, project: &ProjectName, key: &str) -> Option<Entry> {
        let now = self.clock.now_ms();
        let ns = self.namespace(project)?;
        Self::read_entry(&ns, key, now, false)
    }

    /// The live entry under `key` if `project` is incarnation
    /// `incarnation` (the outer `None` when it is not), with one lookup of
    /// the project: the namespace read is the one whose incarnation is
    /// compared, so a successor's entry is never answered.
    pub fn entry_in(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> Option<Option<Entry>> {
        self.read_in(project, incarnation, |ns, now| {
            Self::read_entry(ns, key, now, false)
        })
        .map(Option::flatten)
    }

    /// The live entry under `key` lent to `read`, as [`Self::entry_in`]
    /// (the outer `None` when `project` is not incarnation `incarnation`,
    /// and `read` is not run): the value is not copied, and `read` runs
    /// while the entry's shard is read-locked.
    pub fn entry_with<T>(
        &self,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
        read: impl FnOnce(Option<EntryView<'_>>) -> T,
    ) -> Option<T> {
        let mut read = Some(read);
        let lent = self.read_in(project, incarnation, |ns, now| {
            let entry = ns.entries.get(key);
            let view = entry
                .as_ref()
                .filter(|e| e.is_live(now))
                .map(|e| EntryView {
                    value: e.value(),
                    version: e.version(),
                    expires_at: e.expires_at(),
                });
            read.take().map(|read| read(view))
        })?;
        // No namespace: nothing was lent yet.
        lent.flatten()
            .or_else(|| read.take().map(|read| read(None)))
    }

    /// Whether `key` is live, as [`Self::entry_in`].
    pub fn has_in(&self, project: &ProjectName, incarnation: u64, key: &str) -> Option<bool> {
        self.read_in(project, incarnation, |ns, now| {
            ns.entries.get(key).is_some_and(|e| e.is_live(now))
        })
        .map(|found| found.unwrap_or(false))
    }

    /// `read` of `project`'s namespace if it is incarnation `incarnation`
    /// (`Some(None)`: it has none, and a namespace made now would be it).
    fn read_in<T>(
        &self,
        project: &ProjectName,
        incarnation: u64,
        read: impl FnOnce(&Namespace, u64) -> T,
    ) -> Option<Option<T>> {
        let now = self.clock.now_ms();
        // Read under the shard guard, without cloning the namespace's Arc
        // (a count shared by every reader of a hot project). Nothing that
        // holds a lock of the entries takes a projects shard, so the
        // guard cannot be waited on in a cycle.
        if let Some(ns) = self.projects.get(project) {
            return (ns.incarnation == incarnation).then(|| Some(read(&ns, now)));
        }
        (self.incarnation(project) == incarnation).then_some(None)
    }

    pub(super) fn read_entry(
        ns: &Namespace,
        key: &str,
        now: u64,
        keys_only: bool,
    ) -> Option<Entry> {
        let entry = ns.entries.get(key)?;
        entry.is_live(now).then(|| Entry {
            value: if keys_only {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(entry.value())
            },
            version: entry.version(),
            expires_at: entry.expires_at(),
        })
    }

    /// The live entries under `keys`, as of one moment.
    pub fn entries_now<K: AsRef<str>>(
        &self,
        project: &ProjectName,
        keys: &[K],
    ) -> Vec<Option<Entry>> {
        let now = self.clock.now_ms();
        let Some(ns) = self.namespace(project) else {
            return vec![None; keys.len()];
        };
        let _consistent = read_lock(&ns.consistency);
        keys.iter()
            .map(|key| Self::read_entry(&ns, key.as_ref(), now, false))
            .collect()
    }

    /// One page of live entries in byte order of key.
    ///
    /// ```
    /// use kv_engine::{memory::MemoryStore, ListQuery, Mutation};
    /// use kv_engine::project::ProjectName;
    /// let store = MemoryStore::new();
    /// let p = ProjectName::parse("p").unwrap();
    /// for key in ["b", "a", "c"] {
    ///     store.apply(&p, Mutation::Set { key: key.into(), value: vec![0x20, 0x01].into(), expires_at: None });
    /// }
    /// let query = ListQuery { limit: 2, ..ListQuery::default() };
    /// let page = store.list_now(&p, &query);
    /// let keys: Vec<&str> = page.entries.iter().map(|(k, _)| &**k).collect();
    /// assert_eq!((keys, page.more), (vec!["a", "b"], true));
    /// ```
    pub fn list_now(&self, project: &ProjectName, query: &ListQuery) -> ListPage {
        let now = self.clock.now_ms();
        let Some(ns) = self.namespace(project) else {
            return ListPage {
                version: self.incarnation(project),
                ..ListPage::default()
            };
        };
        let limit = query.limit.max(1);
        // Before the consistency lock: the builder's install must not wait
        // for this reader. Once ready, an index stays ready.
        if !ns.order_built() {
            ns.cold().built.wait();
        }
        let _consistent = read_lock(&ns.consistency);
        let version = ns.version.load(Ordering::Acquire);
        let prefix = query.prefix.as_str();
        // A small namespace has no ordered index: its few keys are sorted
        // here.
        let small = ns.entries.sorted_small(|entry| {
            let key = entry.key();
            let after_start = if query.start_after.as_str() >= prefix {
                key > query.start_after.as_str()
            } else {
                true
            };
            (after_start && key.starts_with(prefix) && entry.is_live(now)).then(|| Entry {
                value: if query.keys_only {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(entry.value())
                },
                version: entry.version(),
                expires_at: entry.expires_at(),
            })
        });
        if let Some(mut picked) = small {
            let more = picked.len() > limit;
            picked.truncate(limit);
            // A page's keys are the API's `Arc<str>`s: made for the page
            // (the store keeps each key only in its entry's block).
            let entries = picked
                .into_iter()
                .map(|(block, entry)| (Arc::from(block.key()), entry))
                .collect();
            return ListPage {
                entries,
                more,
                version,
            };
        }
        let mut entries = Vec::new();
        let mut after: Option<Block> = None;
        let mut more = false;
        'pages: loop {
            // Collect candidates under the order lock, then read them with it
            // released: the lock is never held while waiting for a map shard.
            let candidates: Vec<Block> = {
                let order = read_lock(&ns.cold().order);
                let OrderIndex::Ready(order) = &*order else {
                    unreachable!("the index was built before the lock was taken")
                };
                let start = match &after {
                    Some(block) => Bound::Excluded(block.key()),
                    None if query.start_after.as_str() >= prefix => {
                        Bound::Excluded(query.start_after.as_str())
                    }
                    None => Bound::Included(prefix),
                };
                order
                    .range::<str, _>((start, Bound::Unbounded))
                    .take_while(|block| block.key().starts_with(prefix))
                    .take(limit + 1 - entries.len())
                    .cloned()
                    .collect()
            };
            let exhausted = candidates.len() < limit + 1 - entries.len();
            for block in candidates {
                // Read from the map, not the candidate's block: a write
                // since the candidates were taken is seen, as before.
                if let Some(entry) = Self::read_entry(&ns, block.key(), now, query.keys_only) {
                    if entries.len() == limit {
                        more = true;
                        break 'pages;
                    }
                    entries.push((Arc::from(block.key()), entry));
                }
                after = Some(block);
            }
            if exhausted {
                break;
            }
        }
        ListPage {
            entries,
            more,
            version,
        }
    }

    /// Whether `key` is live at the clock's current time.
    pub fn has_now(&self, project: &ProjectName, key: &str) -> bool {
        let now = self.clock.now_ms();
        self.namespace(project)
            .and_then(|ns| ns.entries.get(key).map(|e| e.is_live(now)))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    /// A lent entry's value, version and deadline, copied.
    type Copied = (Vec<u8>, u64, Option<u64>);

    /// Copies what [`MemoryStore::entry_with`] lends, or `None` when it
    /// did not run `read`.
    fn lent(
        store: &MemoryStore,
        project: &ProjectName,
        incarnation: u64,
        key: &str,
    ) -> Option<Option<Copied>> {
        store.entry_with(project, incarnation, key, |entry| {
            entry.map(|e| (e.value.to_vec(), e.version, e.expires_at.map(Deadline::ms)))
        })
    }

    #[test]
    fn entry_with_lends_only_live_entries_of_the_admitted_incarnation() {
        let clock = Arc::new(ManualClock::new(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        let p = ProjectName::parse("p").unwrap();
        // No namespace yet: read runs, with nothing found.
        assert_eq!(lent(&store, &p, 0, "k"), Some(None));
        let set = |key: &str, value: &[u8], expires_at: Option<u64>| {
            store.apply(
                &p,
                Mutation::Set {
                    key: key.into(),
                    value: value.into(),
                    expires_at: expires_at.and_then(Deadline::at),
                },
            );
        };
        set("k", &[0x20, 0x01], None);
        set("t", &[0x08, 0x00], Some(2_000));
        let incarnation = store.incarnation(&p);
        assert_eq!(
            lent(&store, &p, incarnation, "k"),
            Some(Some((vec![0x20, 0x01], 1, None)))
        );
        assert_eq!(
            lent(&store, &p, incarnation, "t"),
            Some(Some((vec![0x08, 0x00], 2, Some(2_000))))
        );
        assert_eq!(lent(&store, &p, incarnation, "missing"), Some(None));
        clock.advance(1_000);
        assert_eq!(lent(&store, &p, incarnation, "t"), Some(None), "expired");
        // Another incarnation: read does not run.
        store.delete_project(&p);
        let mut ran = false;
        assert_eq!(store.entry_with(&p, incarnation, "k", |_| ran = true), None);
        assert!(!ran);
    }
}
