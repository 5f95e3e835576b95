//! What each operation is: keys, values, and the choice of the next
//! operation.

use std::time::Duration;

use crate::cli::{Mix, RunArgs, Workload};

/// One generator per task (`fastrand`'s wyrand: a few instructions a
/// draw). The harness draws a key for every operation, so a generator
/// shared between tasks would be a lock or a contended atomic on the hot
/// path; seeding task i with `seed + i` gives independent, reproducible
/// streams.
pub(crate) type TaskRng = fastrand::Rng;

/// Names keys: `k` followed by the key's number, zero-padded so every key has
/// exactly `width + 1` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeySpace {
    pub(crate) keys: u64,
    width: usize,
}

impl KeySpace {
    /// `key_bytes` must leave room for the largest number (checked by
    /// `RunArgs::validate`).
    pub(crate) fn new(keys: u64, key_bytes: usize) -> Self {
        Self {
            keys,
            width: key_bytes - 1,
        }
    }

    pub(crate) fn name(&self, n: u64) -> String {
        format!("k{n:0width$}", width = self.width)
    }

    /// The key's name after a hash tag (`{b3}k000000000000042`): Redis
    /// Cluster batches, whose keys must share a slot.
    pub(crate) fn tagged_name(&self, tag: &str, n: u64) -> String {
        format!("{tag}k{n:0width$}", width = self.width)
    }
}

/// One operation, by key numbers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Get(u64),
    Set { key: u64, ttl: bool },
    Has(u64),
    Delete(u64),
    GetMany(Vec<u64>),
    SetMany { keys: Vec<u64>, ttl: bool },
}

impl Op {
    /// The operation's name, as `--workload` spells it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Get(_) => "get",
            Op::Set { .. } => "set",
            Op::Has(_) => "has",
            Op::Delete(_) => "delete",
            Op::GetMany(_) => "get-many",
            Op::SetMany { .. } => "set-many",
        }
    }

    /// How many keys the operation touches.
    pub(crate) fn keys(&self) -> u64 {
        match self {
            Op::GetMany(keys) | Op::SetMany { keys, .. } => keys.len() as u64,
            _ => 1,
        }
    }

    /// The operation's (first) key: which project a spread key space
    /// sends it to (batches hold keys of one project).
    pub(crate) fn first_key(&self) -> u64 {
        match self {
            Op::Get(key) | Op::Set { key, .. } | Op::Has(key) | Op::Delete(key) => *key,
            Op::GetMany(keys) | Op::SetMany { keys, .. } => keys.first().copied().unwrap_or(0),
        }
    }
}

/// Draws each task's operations.
pub(crate) struct OpGen {
    rng: TaskRng,
    workload: Workload,
    /// Cumulative weights of get, set, has, delete for `mixed`.
    thresholds: [u64; 4],
    keys: u64,
    batch: usize,
    ttl_share: f64,
}

impl OpGen {
    pub(crate) fn new(args: &RunArgs, task: u64) -> Self {
        let Mix {
            get,
            set,
            has,
            delete,
        } = args.mix();
        let get = u64::from(get);
        let set = get + u64::from(set);
        let has = set + u64::from(has);
        let delete = has + u64::from(delete);
        Self {
            rng: TaskRng::with_seed(args.seed.wrapping_add(task)),
            workload: args.workload,
            thresholds: [get, set, has, delete],
            keys: args.keys,
            batch: args.batch,
            ttl_share: args.ttl_share,
        }
    }

    fn key(&mut self) -> u64 {
        self.rng.u64(..self.keys)
    }

    pub(crate) fn next_op(&mut self) -> Op {
        match self.workload {
            Workload::Get => Op::Get(self.key()),
            Workload::Set => self.set(),
            Workload::Has => Op::Has(self.key()),
            Workload::Delete => Op::Delete(self.key()),
            Workload::Mixed => {
                let pick = self.rng.u64(..self.thresholds[3]);
                if pick < self.thresholds[0] {
                    Op::Get(self.key())
                } else if pick < self.thresholds[1] {
                    self.set()
                } else if pick < self.thresholds[2] {
                    Op::Has(self.key())
                } else {
                    Op::Delete(self.key())
                }
            }
            Workload::GetMany => Op::GetMany((0..self.batch).map(|_| self.key()).collect()),
            Workload::SetMany => {
                let keys = (0..self.batch).map(|_| self.key()).collect();
                // One TTL decision per call: SetMany's SDK options give every
                // entry of a call the same expiry.
                Op::SetMany {
                    keys,
                    ttl: self.rng.f64() < self.ttl_share,
                }
            }
        }
    }

    fn set(&mut self) -> Op {
        Op::Set {
            key: self.key(),
            ttl: self.rng.f64() < self.ttl_share,
        }
    }
}

/// The value every write stores, in each target's form, and the TTL.
pub(crate) struct Payload {
    /// kv via the SDK: a JSON string.
    pub(crate) json: serde_json::Value,
    /// kv via unary calls: the same string as a `google.protobuf.Value`.
    pub(crate) proto: prost_types::Value,
    /// Redis, Redis Cluster and etcd: raw bytes.
    pub(crate) raw: bytes::Bytes,
    pub(crate) ttl: Duration,
}

impl Payload {
    pub(crate) fn new(value_bytes: usize, ttl_ms: u64) -> Self {
        let text = filler(kv_string_len(value_bytes));
        Self {
            json: serde_json::Value::String(text.clone()),
            proto: prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(text)),
            },
            raw: bytes::Bytes::from(filler(value_bytes).into_bytes()),
            ttl: Duration::from_millis(ttl_ms),
        }
    }
}

/// `len` bytes of printable ASCII (not one repeated byte, so nothing on the
/// way compresses it to nothing).
fn filler(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// The longest string whose encoded `google.protobuf.Value` (a tag byte, the
/// length as a varint, the bytes) is at most `encoded` bytes. Exactly
/// `encoded` except just past a varint boundary (130 bytes: 127, encoding to
/// 129), where no string fits exactly.
pub(crate) fn kv_string_len(encoded: usize) -> usize {
    let mut len = encoded.saturating_sub(2);
    while len > 0 && 1 + varint_len(len) + len > encoded {
        len -= 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn keys_have_the_exact_length() {
        let space = KeySpace::new(1_000_000, 16);
        assert_eq!(space.name(0), "k000000000000000");
        assert_eq!(space.name(999_999), "k000000000999999");
        assert_eq!(space.name(42).len(), 16);
        assert_eq!(space.tagged_name("{b3}", 42), "{b3}k000000000000042");
    }

    #[test]
    fn kv_values_encode_to_the_asked_size() {
        for size in [2, 3, 50, 100, 129, 200, 1000, 16_384, 100_000] {
            let payload = Payload::new(size, 1);
            assert_eq!(payload.proto.encoded_len(), size, "size {size}");
            assert_eq!(payload.raw.len(), size);
        }
        // No string encodes to exactly 130 bytes: the nearest below is used.
        assert_eq!(Payload::new(130, 1).proto.encoded_len(), 129);
    }
}
