//! The hasher of every map of the memory store.

/// The hasher of every map here. SipHash (std's) dominated profiles of
/// replay and writes; aHash is several times faster on short keys and,
/// seeded at random per process, still resists hash flooding by tenants
/// who choose their keys.
pub(super) type MapHasher = ahash::RandomState;
