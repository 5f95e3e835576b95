//! Entries as stored in a project's hash, and the replies of the function
//! library as Rust values.

use bytes::Bytes;
use kv_engine::{Deadline, EngineError, Entry, txn::KeyMeta};
use redis::Value;

/// Bytes before an entry's value: its version and its deadline (0 for
/// none), little endian. `library.lua` reads the deadline at bytes 9..16.
pub(crate) const HEADER: usize = 16;

/// An entry as `kv_apply` stores it.
pub(crate) fn pack(version: u64, expires_at: Option<Deadline>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&Deadline::ms_or_zero(expires_at).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// A stored entry, live or dead.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) version: u64,
    pub(crate) expires_at: Option<Deadline>,
    pub(crate) value: Bytes,
}

impl Stored {
    pub(crate) fn parse(raw: Vec<u8>) -> Result<Self, EngineError> {
        if raw.len() < HEADER {
            return Err(EngineError::Internal(
                "a stored entry is shorter than its header",
            ));
        }
        let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let (version, deadline) = (word(0), word(8));
        let mut value = Bytes::from(raw);
        Ok(Self {
            version,
            expires_at: Deadline::at(deadline),
            value: value.split_off(HEADER),
        })
    }

    pub(crate) fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|d| !d.passed(now))
    }

    pub(crate) fn meta(&self, key: &str) -> KeyMeta {
        KeyMeta {
            expires_at: self.expires_at,
            version: self.version,
            size: (key.len() + self.value.len()) as u64,
        }
    }

    pub(crate) fn entry(self) -> Entry {
        Entry {
            value: self.value,
            version: self.version,
            expires_at: self.expires_at,
        }
    }
}

/// A reply that does not have the shape the library gives it: a library
/// of another version, or a bug.
pub(crate) fn malformed(what: &'static str) -> EngineError {
    EngineError::Internal(what)
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>, EngineError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(malformed("expected an array from the kv library")),
    }
}

pub(crate) fn int(value: &Value) -> Result<u64, EngineError> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| malformed("a negative counter")),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("expected a number from the kv library")),
        _ => Err(malformed("expected a number from the kv library")),
    }
}

pub(crate) fn signed(value: &Value) -> Result<i64, EngineError> {
    match value {
        Value::Int(n) => Ok(*n),
        _ => Err(malformed("expected a number from the kv library")),
    }
}

/// A bulk string, or `None` for nil / false (Lua's false is a nil reply).
pub(crate) fn bytes(value: Value) -> Result<Option<Vec<u8>>, EngineError> {
    match value {
        Value::BulkString(b) => Ok(Some(b)),
        Value::Nil => Ok(None),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        _ => Err(malformed("expected a string from the kv library")),
    }
}

pub(crate) fn text(value: &Value) -> Result<&str, EngineError> {
    match value {
        Value::BulkString(b) => {
            std::str::from_utf8(b).map_err(|_| malformed("a status that is not UTF-8"))
        }
        Value::SimpleString(s) => Ok(s),
        _ => Err(malformed("expected a status from the kv library")),
    }
}

/// The entries of an XREAD answer: (id, fields as name, value, ...).
pub(crate) fn stream_entries(reply: Value) -> Result<Vec<(Value, Vec<Value>)>, EngineError> {
    let mut out = Vec::new();
    for stream in array(reply)? {
        let entries = array(stream)?
            .into_iter()
            .nth(1)
            .ok_or_else(|| malformed("an XREAD stream without entries"))?;
        for entry in array(entries)? {
            let mut entry = array(entry)?.into_iter();
            let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
                return Err(malformed("an XREAD entry without fields"));
            };
            out.push((id, array(fields)?));
        }
    }
    Ok(out)
}

/// The stored entries of an HMGET answer.
pub(crate) fn entries(value: Value) -> Result<Vec<Option<Stored>>, EngineError> {
    array(value)?
        .into_iter()
        .map(|v| bytes(v)?.map(Stored::parse).transpose())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_put_the_deadline_where_the_library_reads_it() {
        let packed = pack(7, Deadline::at(0x0102_0304_0506), b"\x08\x01");
        assert_eq!(&packed[8..16], &0x0102_0304_0506u64.to_le_bytes());
        let stored = Stored::parse(packed).unwrap();
        assert_eq!(stored.version, 7);
        assert_eq!(stored.expires_at, Deadline::at(0x0102_0304_0506));
        assert_eq!(&stored.value[..], b"\x08\x01");
        assert!(stored.live(0x0102_0304_0505));
        assert!(!stored.live(0x0102_0304_0506));
        assert!(Stored::parse(vec![0; 15]).is_err());
    }
}
