//! A namespace's map of entries: a short list under one lock while the
//! project is small, a sharded map once it grows.
//!
//! A sharded map costs about a kilobyte before it holds anything (one
//! cache-line-padded lock per shard, and a table per shard once a key lands
//! in it). Most projects of a platform with many tenants hold a handful of
//! keys, so a namespace starts with a list (searched by 16-bit tags of the
//! keys' hashes), the size of its entries and nothing more, and moves its
//! entries to a
//! sharded map for good when the list would pass [`SMALL_KEYS`]. Only the
//! writer (one at a time, see the parent module) changes the map, so the
//! move races nothing but readers, which it holds off with the list's
//! write lock for the few keys it moves.
//!
//! The namespace's ordered index (a `BTreeSet`, whose first node is about
//! two hundred bytes) is kept only for a sharded map: a List of a small
//! namespace sorts its few keys instead ([`Entries::sorted_small`]). The
//! keys enter the index when they move to the sharded map.

use std::{
    ops::Deref,
    sync::{LazyLock, OnceLock, RwLock, RwLockReadGuard},
};

use dashmap::{DashMap, mapref::entry::Entry as MapEntry, mapref::one::Ref};

pub(super) use super::block::Block;
use super::{
    hash::MapHasher,
    locks::{read_lock, write_lock},
};

/// Keys a namespace keeps in its list; the next one moves them all to a
/// sharded map. A search of the list compares 16-bit tags of the keys'
/// hashes, one cache line for all of them, and looks at a key only when
/// its tag matches; past this many keys a sharded map is cheaper.
pub(super) const SMALL_KEYS: usize = 16;

/// The list: the tag of `slots[i]`'s key in `tags[i]`. The tags live in
/// the namespace itself (32 bytes, about what a vector of them would cost
/// with its allocation), so a search reads no memory but the namespace's
/// until a tag matches.
#[derive(Default)]
pub(super) struct Small {
    tags: [u16; SMALL_KEYS],
    slots: Vec<Block>,
}

/// Hashes keys into tags; seeded at random, like the maps' hasher, so no
/// tenant can choose keys that all share a tag.
static TAGS: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);

fn tag(key: &str) -> u16 {
    // The low bits: any 16 of a good hash are as good as others.
    TAGS.hash_one(key) as u16
}

impl Small {
    fn position(&self, key: &str) -> Option<usize> {
        let tag = tag(key);
        self.tags[..self.slots.len()]
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == tag)
            .map(|(at, _)| at)
            .find(|at| self.slots[*at].key() == key)
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn push(&mut self, block: Block) {
        // Grown one slot at a time at first: a project of one key holds
        // one slot, not the four a doubling vector starts with.
        let len = self.slots.len();
        if len == self.slots.capacity() {
            let more = len.clamp(1, SMALL_KEYS - len);
            self.slots.reserve_exact(more);
        }
        self.tags[len] = tag(block.key());
        self.slots.push(block);
    }

    fn swap_remove(&mut self, at: usize) {
        self.tags[at] = self.tags[self.slots.len() - 1];
        self.slots.swap_remove(at);
        self.shrink();
    }

    fn retain(&mut self, mut f: impl FnMut(&Block) -> bool) {
        let mut at = 0;
        while at < self.slots.len() {
            if f(&self.slots[at]) {
                at += 1;
            } else {
                self.tags[at] = self.tags[self.slots.len() - 1];
                self.slots.swap_remove(at);
            }
        }
        self.shrink();
    }

    /// Gives back the list's room once it is mostly unused.
    fn shrink(&mut self) {
        if self.slots.len() * 2 <= self.slots.capacity() {
            self.slots.shrink_to_fit();
        }
    }
}

/// Blocks by key: a slot is one handle (8 bytes) and nothing else.
type Big = DashMap<Block, (), MapHasher>;

/// A namespace's entries by key.
pub(super) struct Entries {
    /// Every entry while `big` is unset; empty for good once it is set.
    small: RwLock<Small>,
    /// Set (under `small`'s write lock) when the project outgrows the list.
    big: OnceLock<Box<Big>>,
}

/// A read-locked entry.
pub(super) enum EntryRef<'a> {
    Small(RwLockReadGuard<'a, Small>, usize),
    Big(Ref<'a, Block, ()>),
}

impl Deref for EntryRef<'_> {
    type Target = Block;

    fn deref(&self) -> &Block {
        match self {
            Self::Small(list, at) => &list.slots[*at],
            Self::Big(entry) => entry.key(),
        }
    }
}

impl Entries {
    pub(super) fn new() -> Self {
        Self {
            small: RwLock::new(Small::default()),
            big: OnceLock::new(),
        }
    }

    /// Entries expected to hold `keys` (a restart's recorded count): past
    /// [`SMALL_KEYS`] they start as a sharded map of that capacity, so
    /// loading them never grows it.
    pub(super) fn with_capacity(keys: usize) -> Self {
        let entries = Self::new();
        if keys > SMALL_KEYS {
            let big = Big::with_capacity_and_hasher(keys, MapHasher::default());
            let _ = entries.big.set(Box::new(big));
        }
        entries
    }

    /// How many entries fit without growing.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.big().map_or(SMALL_KEYS, |big| big.capacity())
    }

    fn big(&self) -> Option<&Big> {
        self.big.get().map(|big| &**big)
    }

    /// Whether the entries moved to a sharded map (for good), so the
    /// ordered index holds their keys. Stable for the writer: only it
    /// moves them.
    pub(super) fn is_big(&self) -> bool {
        self.big.get().is_some()
    }

    /// While the entries are still a list: those `pick` keeps (with what it
    /// made of each), in byte order of key, as of one moment. `None` once
    /// they are a sharded map: read the ordered index then.
    pub(super) fn sorted_small<T>(
        &self,
        mut pick: impl FnMut(&Block) -> Option<T>,
    ) -> Option<Vec<(Block, T)>> {
        if self.is_big() {
            return None;
        }
        let list = read_lock(&self.small);
        if self.is_big() {
            return None;
        }
        let mut picked: Vec<(Block, T)> = list
            .slots
            .iter()
            .filter_map(|block| pick(block).map(|t| (block.clone(), t)))
            .collect();
        drop(list);
        picked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(picked)
    }

    /// The entry under `key`, read-locked (its shard, or the whole list)
    /// while the reference lives.
    pub(super) fn get(&self, key: &str) -> Option<EntryRef<'_>> {
        if let Some(big) = self.big() {
            return big.get(key).map(EntryRef::Big);
        }
        let list = read_lock(&self.small);
        // Moved while this reader waited for the lock.
        if let Some(big) = self.big() {
            drop(list);
            return big.get(key).map(EntryRef::Big);
        }
        let at = list.position(key)?;
        Some(EntryRef::Small(list, at))
    }

    #[cfg(test)]
    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn len(&self) -> usize {
        if let Some(big) = self.big() {
            return big.len();
        }
        let list = read_lock(&self.small);
        match self.big() {
            Some(big) => big.len(),
            None => list.len(),
        }
    }

    /// Calls `f` with every entry until it fails. Fuzzy like a walk of a
    /// sharded map: one shard (or the list) is read-locked at a time.
    pub(super) fn try_for_each<E>(
        &self,
        mut f: impl FnMut(&Block) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.big().is_none() {
            let list = read_lock(&self.small);
            if self.big().is_none() {
                return list.slots.iter().try_for_each(&mut f);
            }
        }
        let big = self.big().expect("set before the list was found empty");
        big.iter().try_for_each(|e| f(e.key()))
    }

    /// Stores `block` under its key, in place of the block held there if
    /// any (the whole block: a map that kept its old key would keep the
    /// old block). Before the entry changes, under the lock that guards it:
    /// `replaced` sees the block it replaces and the new one, or
    /// `inserted` a new one, and `indexed` every block that enters the
    /// sharded map as a new key (a new key there, or each block the move to
    /// it takes along). Returns whether it replaced an entry.
    pub(super) fn upsert(
        &self,
        block: Block,
        replaced: impl FnOnce(&Block, &Block),
        inserted: impl FnOnce(&Block),
        mut indexed: impl FnMut(&Block),
    ) -> bool {
        if let Some(big) = self.big() {
            return upsert_big(big, block, replaced, inserted, indexed);
        }
        let mut list = write_lock(&self.small);
        if let Some(big) = self.big() {
            drop(list);
            return upsert_big(big, block, replaced, inserted, indexed);
        }
        if let Some(at) = list.position(block.key()) {
            let slot = &mut list.slots[at];
            replaced(slot, &block);
            *slot = block;
            return true;
        }
        inserted(&block);
        if list.len() < SMALL_KEYS {
            list.push(block);
            return false;
        }
        let big = Big::with_capacity_and_hasher(2 * SMALL_KEYS, MapHasher::default());
        for b in std::mem::take(&mut *list).slots {
            indexed(&b);
            big.insert(b, ());
        }
        indexed(&block);
        big.insert(block, ());
        if self.big.set(Box::new(big)).is_err() {
            unreachable!("only the list's write lock holder sets the map, once");
        }
        false
    }

    /// Removes the entry under `key` if `f` (called under its lock) says
    /// so; returns whether it did.
    pub(super) fn remove_if(&self, key: &str, f: impl FnOnce(&Block) -> bool) -> bool {
        if let Some(big) = self.big() {
            return big.remove_if(key, |b, ()| f(b)).is_some();
        }
        let mut list = write_lock(&self.small);
        if let Some(big) = self.big() {
            drop(list);
            return big.remove_if(key, |b, ()| f(b)).is_some();
        }
        let Some(at) = list.position(key) else {
            return false;
        };
        if !f(&list.slots[at]) {
            return false;
        }
        list.swap_remove(at);
        true
    }

    /// Keeps the entries `f` (called under their lock) says to keep.
    pub(super) fn retain(&self, mut f: impl FnMut(&Block) -> bool) {
        if self.big().is_none() {
            let mut list = write_lock(&self.small);
            if self.big().is_none() {
                list.retain(&mut f);
                return;
            }
        }
        let big = self.big().expect("set before the list was found empty");
        big.retain(|block, ()| f(block));
    }
}

fn upsert_big(
    big: &Big,
    block: Block,
    replaced: impl FnOnce(&Block, &Block),
    inserted: impl FnOnce(&Block),
    indexed: impl FnOnce(&Block),
) -> bool {
    // The entry keeps the new block until it is placed, out of reach.
    let new = block.clone();
    match big.entry(block) {
        MapEntry::Occupied(slot) => {
            replaced(slot.key(), &new);
            // Puts the entry's new key (the new block) in the slot; an
            // insert would keep the old one.
            slot.replace_entry(());
            true
        }
        MapEntry::Vacant(slot) => {
            inserted(slot.key());
            indexed(slot.key());
            slot.insert(());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, version: u64) -> Block {
        Block::new(key, b"\x20\x01"[..].into(), None, version)
    }

    fn keys(entries: &Entries) -> Vec<String> {
        let mut keys = Vec::new();
        entries
            .try_for_each(|b| {
                keys.push(b.key().to_string());
                Ok::<_, ()>(())
            })
            .unwrap();
        keys.sort();
        keys
    }

    #[test]
    fn grows_from_a_list_into_a_sharded_map_keeping_every_entry() {
        let entries = Entries::new();
        let n = 3 * SMALL_KEYS as u64;
        let mut index = Vec::new();
        for i in 0..n {
            let (mut was_replaced, mut was_inserted) = (false, false);
            let replaced = entries.upsert(
                entry(&format!("k{i:02}"), i),
                |_, _| was_replaced = true,
                |_| was_inserted = true,
                |b| index.push(b.key().to_string()),
            );
            assert!(!replaced && !was_replaced && was_inserted);
            assert_eq!(entries.is_big(), i >= SMALL_KEYS as u64);
            assert_eq!(entries.len() as u64, i + 1);
            // The list's keys enter the index when they move, with the
            // key that made them move; later keys as they come.
            assert_eq!(index.len() as u64, if entries.is_big() { i + 1 } else { 0 });
        }
        index.sort();
        assert_eq!(index, keys(&entries));
        for i in 0..n {
            let mut old = None;
            let new = entry(&format!("k{i:02}"), 100 + i);
            let replaced = entries.upsert(
                new.clone(),
                |o, n| old = Some((o.version(), n.version())),
                |_| panic!("not new"),
                |_| panic!("not new"),
            );
            assert!(replaced);
            assert_eq!(old, Some((i, 100 + i)));
            // The whole block is replaced, key included: the map holds the
            // new one, and the old one is no longer held.
            assert!(entries.get(&format!("k{i:02}")).unwrap().ptr_eq(&new));
        }
        assert_eq!(keys(&entries).len() as u64, n);
        assert!(entries.get("k99").is_none());
    }

    #[test]
    fn removes_and_retains_in_both_forms() {
        for n in [SMALL_KEYS as u64, 2 * SMALL_KEYS as u64] {
            let entries = Entries::new();
            for i in 0..n {
                entries.upsert(entry(&format!("k{i:02}"), i), |_, _| {}, |_| {}, |_| {});
            }
            assert!(!entries.remove_if("k00", |_| false));
            assert!(entries.contains_key("k00"));
            assert!(entries.remove_if("k00", |b| b.key() == "k00" && b.version() == 0));
            assert!(!entries.contains_key("k00"));
            assert!(!entries.remove_if("k00", |_| true));
            entries.retain(|b| b.version() % 2 == 1);
            let odd: Vec<String> = (0..n)
                .filter(|i| i % 2 == 1)
                .map(|i| format!("k{i:02}"))
                .collect();
            assert_eq!(keys(&entries), odd);
            entries.retain(|_| false);
            assert_eq!(entries.len(), 0);
        }
    }

    #[test]
    fn a_small_list_sorts_what_it_picks_and_a_big_map_does_not_answer() {
        let entries = Entries::new();
        for key in ["c", "a", "d", "b"] {
            entries.upsert(entry(key, 0), |_, _| {}, |_| {}, |_| {});
        }
        let picked = entries
            .sorted_small(|b| (b.key() != "c").then_some(b.version()))
            .unwrap();
        let keys: Vec<&str> = picked.iter().map(|(b, _)| b.key()).collect();
        assert_eq!(keys, ["a", "b", "d"]);
        for i in 0..SMALL_KEYS {
            entries.upsert(entry(&format!("x{i}"), 0), |_, _| {}, |_| {}, |_| {});
        }
        assert!(entries.is_big());
        assert!(entries.sorted_small(|_| Some(())).is_none());
    }

    #[test]
    fn a_walk_stops_at_the_first_failure() {
        let entries = Entries::new();
        for i in 0..3 {
            entries.upsert(entry(&format!("k{i}"), i), |_, _| {}, |_| {}, |_| {});
        }
        let mut seen = 0;
        let failed = entries.try_for_each(|_| {
            seen += 1;
            if seen == 2 { Err("stop") } else { Ok(()) }
        });
        assert_eq!((failed, seen), (Err("stop"), 2));
    }
}
