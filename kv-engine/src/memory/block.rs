//! One stored entry in one heap block: a reference count, the entry's
//! version and deadline, the key's length, then the key's bytes followed by
//! the value's.
//!
//! A handle is one pointer wide. The namespace's map (or small list) and
//! its ordered index hold handles to the same block, so a key is stored
//! once and an entry costs one allocation: before, it took three (the key
//! as an `Arc<str>`, shared by the map and the index, the value in a box of
//! its own, and 40 bytes of metadata inline in a map slot that also held
//! the key's 16-byte fat pointer).
//!
//! A block never changes: an overwrite makes a new block and replaces the
//! old one wherever it is held, so a reader holding a handle (a List page,
//! a change event) keeps a consistent entry.
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

/// What a block holds beside its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Meta {
    version: u64,
    expires_at: Option<Deadline>,
    /// Bytes of the key at the start of the slice; the value follows.
    key_len: u32,
}

/// A handle to one stored entry (see the module documentation).
#[derive(Clone)]
pub(super) struct Block(ThinArc<Meta, u8>);

impl Block {
    /// A block holding `key` and `value`.
    pub(super) fn new(key: &str, value: &[u8], expires_at: Option<Deadline>, version: u64) -> Self {
        // Keys are bounded far below 4 GiB by the API (and the log's key
        // length is a u32).
        let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
        let key = &key.as_bytes()[..key_len as usize];
        let meta = Meta {
            version,
            expires_at,
            key_len,
        };
        let bytes = key.iter().chain(value).copied();
        Self(ThinArc::from_header_and_iter(
            meta,
            Exact {
                inner: bytes,
                left: key.len() + value.len(),
            },
        ))
    }

    fn meta(&self) -> &Meta {
        &self.0.header.header
    }

    fn key_bytes(&self) -> &[u8] {
        &self.0.slice[..self.meta().key_len as usize]
    }

    /// The entry's key.
    pub(super) fn key(&self) -> &str {
        // Built from a `str` (whole: its length fits the u32 checked above).
        std::str::from_utf8(self.key_bytes()).expect("a block's key is the str it was built from")
    }

    /// The entry's value, encoded.
    pub(super) fn value(&self) -> &[u8] {
        &self.0.slice[self.meta().key_len as usize..]
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
        self.0.slice.len()
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

/// Key bytes then value bytes, with the exact length the block's
/// allocation is sized by (a `Chain` does not report one).
struct Exact<I> {
    inner: I,
    left: usize,
}

impl<I: Iterator<Item = u8>> Iterator for Exact<I> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let next = self.inner.next()?;
        self.left -= 1;
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<I: Iterator<Item = u8>> ExactSizeIterator for Exact<I> {}

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

/// The value of a block as the owner of a [`bytes::Bytes`]: a change event
/// shares the stored block instead of copying the value.
pub(super) struct ValueOf(pub(super) Block);

impl AsRef<[u8]> for ValueOf {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
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
    fn holds_key_value_and_meta_in_one_thin_handle() {
        assert_eq!(size_of::<Block>(), size_of::<usize>());
        let b = Block::new("key", b"\x20\x01", Deadline::at(7), 3);
        assert_eq!(
            (b.key(), b.value(), b.version(), b.expires_at(), b.size()),
            ("key", &b"\x20\x01"[..], 3, Deadline::at(7), 5)
        );
        assert!(b.is_live(6) && !b.is_live(7));
        let empty = Block::new("", b"", None, 0);
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
            let b = Block::new(key, b"v", None, 1);
            assert_eq!(hasher.hash_one(&b), hasher.hash_one(key));
        }
        let set: HashSet<Block> = ["a", "b"]
            .into_iter()
            .map(|k| Block::new(k, b"v", None, 1))
            .collect();
        assert!(set.contains("a") && !set.contains("c"));
        // Another value under the same key is the same element.
        assert!(set.contains(&Block::new("b", b"other", None, 2)));
        let tree: BTreeSet<Block> = ["b", "a", "ab", "B"]
            .into_iter()
            .map(|k| Block::new(k, b"", None, 1))
            .collect();
        let keys: Vec<&str> = tree.iter().map(Block::key).collect();
        assert_eq!(keys, ["B", "a", "ab", "b"]);
        let from_a: Vec<&str> = tree
            .range::<str, _>((Bound::Included("a"), Bound::Unbounded))
            .map(Block::key)
            .collect();
        assert_eq!(from_a, ["a", "ab", "b"]);
    }

    #[test]
    fn a_shared_value_outlives_the_stored_handle() {
        let b = Block::new("k", b"value", None, 1);
        let shared = bytes::Bytes::from_owner(ValueOf(b.clone()));
        drop(b);
        assert_eq!(&shared[..], b"value");
    }
}
