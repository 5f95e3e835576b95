//! One stored entry: a reference-counted block holding the entry's
//! version, deadline and value (the value's own allocation, taken over from
//! the write without a copy), followed by the key's bytes.
//!
//! A handle is one pointer wide. The namespace's map (or small list) and
//! its ordered index hold handles to the same block, so a key is stored
//! once. Before, an entry was the key as an `Arc<str>` (shared by the map
//! and the index), the value in a box of its own, and 40 bytes of metadata
//! inline in a map slot that also held the key's 16-byte fat pointer.
//!
//! The value stays in the box the write decoded (allocated on the thread
//! that decoded the request) rather than being copied into the block on
//! the log writer's thread: a copy would cost the single writer a memcpy
//! per write, and an allocator with thread-local heaps (mimalloc) then
//! holds every stored value in the writer's pages, interleaved with the
//! change history's copies, which after a mass delete kept the resident
//! memory well above the live heap (the memory-limit test saw it).
//!
//! A block never changes: an overwrite makes a new block and replaces the
//! old one wherever it is held, so a reader holding a handle (a List page)
//! keeps a consistent entry.
//!
//! Handles hash, compare and order as their keys do as `str`, and borrow as
//! `str`, so maps and sets of blocks are searched by `&str`.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
};

use triomphe::ThinArc;

use crate::Deadline;

/// What a block holds beside the key's bytes.
struct Meta {
    version: u64,
    expires_at: Option<Deadline>,
    value: Box<[u8]>,
}

/// A handle to one stored entry (see the module documentation).
#[derive(Clone)]
pub(super) struct Block(ThinArc<Meta, u8>);

impl Block {
    /// A block holding `key` and `value`.
    pub(super) fn new(
        key: &str,
        value: Box<[u8]>,
        expires_at: Option<Deadline>,
        version: u64,
    ) -> Self {
        let meta = Meta {
            version,
            expires_at,
            value,
        };
        Self(ThinArc::from_header_and_slice(meta, key.as_bytes()))
    }

    fn meta(&self) -> &Meta {
        &self.0.header.header
    }

    fn key_bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// The entry's key.
    pub(super) fn key(&self) -> &str {
        // Built from a `str`, whole.
        std::str::from_utf8(self.key_bytes()).expect("a block's key is the str it was built from")
    }

    /// The entry's value, encoded.
    pub(super) fn value(&self) -> &[u8] {
        &self.meta().value
    }

    /// The version that wrote the entry.
    pub(super) fn version(&self) -> u64 {
        self.meta().version
    }

    /// The entry's deadline, if any.
    pub(super) fn expires_at(&self) -> Option<Deadline> {
        self.meta().expires_at
    }

    /// Bytes of key and value: what the entry counts in a project's usage.
    pub(super) fn size(&self) -> usize {
        self.key_bytes().len() + self.value().len()
    }

    /// Whether the entry is still live at `now` (unix ms).
    pub(super) fn is_live(&self, now: u64) -> bool {
        self.expires_at().is_none_or(|d| !d.passed(now))
    }

    /// Whether both handles are the same block.
    #[cfg(test)]
    pub(super) fn ptr_eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0.slice.as_ptr(), other.0.slice.as_ptr())
    }
}

impl Borrow<str> for Block {
    fn borrow(&self) -> &str {
        self.key()
    }
}

impl Hash for Block {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Exactly as the `str` lookups are hashed.
        self.key().hash(state);
    }
}

impl PartialEq for Block {
    fn eq(&self, other: &Self) -> bool {
        self.key_bytes() == other.key_bytes()
    }
}

impl Eq for Block {}

impl PartialOrd for Block {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Block {
    /// Byte order of keys, which is `str`'s order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.key_bytes().cmp(other.key_bytes())
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.key(), f)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeSet, HashSet},
        ops::Bound,
    };

    use super::*;

    #[test]
    fn holds_key_value_and_meta_behind_one_thin_handle() {
        assert_eq!(size_of::<Block>(), size_of::<usize>());
        let b = Block::new("key", b"\x20\x01"[..].into(), Deadline::at(7), 3);
        assert_eq!(
            (b.key(), b.value(), b.version(), b.expires_at(), b.size()),
            ("key", &b"\x20\x01"[..], 3, Deadline::at(7), 5)
        );
        assert!(b.is_live(6) && !b.is_live(7));
        let empty = Block::new("", Box::default(), None, 0);
        assert_eq!(
            (empty.key(), empty.value(), empty.size()),
            ("", &b""[..], 0)
        );
        assert!(empty.is_live(u64::MAX));
    }

    #[test]
    fn hashes_compares_and_orders_as_its_key() {
        let hasher = ahash::RandomState::new();
        for key in ["", "a", "ab", "é", "zz"] {
            let b = Block::new(key, b"v"[..].into(), None, 1);
            assert_eq!(hasher.hash_one(&b), hasher.hash_one(key));
        }
        let set: HashSet<Block> = ["a", "b"]
            .into_iter()
            .map(|k| Block::new(k, b"v"[..].into(), None, 1))
            .collect();
        assert!(set.contains("a") && !set.contains("c"));
        // Another value under the same key is the same element.
        assert!(set.contains(&Block::new("b", b"other"[..].into(), None, 2)));
        let tree: BTreeSet<Block> = ["b", "a", "ab", "B"]
            .into_iter()
            .map(|k| Block::new(k, Box::default(), None, 1))
            .collect();
        let keys: Vec<&str> = tree.iter().map(Block::key).collect();
        assert_eq!(keys, ["B", "a", "ab", "b"]);
        let from_a: Vec<&str> = tree
            .range::<str, _>((Bound::Included("a"), Bound::Unbounded))
            .map(Block::key)
            .collect();
        assert_eq!(from_a, ["a", "ab", "b"]);
    }
}
