//! The sizes hint: how many keys each large project held when the writer
//! stopped cleanly, so the next start sizes those projects' maps once
//! instead of growing them by doubling while it replays.
//!
//! Growing a map of a million keys rehashes it about twenty times and
//! touches twice its final memory; on a restart that was a fifth of the
//! replay. The hint is only that: it changes no state. It is written
//! after the last segment's final fsync, while the directory's lock is
//! still held, and names that segment and its length; a start uses it
//! only when the directory's last segment is still exactly that (nothing
//! was written after it, and no other file was added), and removes it
//! either way. A torn or damaged hint fails its checksum and is ignored.
//!
//! Layout: [`MAGIC`], the segment number and length (u64 each), the
//! number of projects (u32), per project its name (u16 length, bytes)
//! and its keys (u64), then the CRC-32C of all of it (u32), all little
//! endian.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use crate::project::ProjectName;

/// The hint's file name in the data directory (not a name the log's
/// files use, so listing and backups pass over it).
pub(super) const SIZES_FILE: &str = "SIZES";

const MAGIC: &[u8; 8] = b"KVSIZES1";

/// Writes the hint for a log ending with segment `seq` of `len` bytes.
/// Best effort: a failure only costs the next start its head start.
pub(super) fn write(dir: &Path, seq: u64, len: u64, projects: &[(ProjectName, u64)]) {
    let mut out = Vec::with_capacity(32 + projects.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(projects.len() as u32).to_le_bytes());
    for (project, keys) in projects {
        let name = project.as_str().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&keys.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let path = dir.join(SIZES_FILE);
    let written = fs::File::create(&path).and_then(|mut file| file.write_all(&out));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), "could not write the sizes hint: {e}");
        let _ = fs::remove_file(&path);
    }
}

/// Reads and removes the hint; the projects' key counts when it was
/// written for segment `seq` of `len` bytes, the directory's last.
pub(super) fn take(dir: &Path, last: Option<(u64, u64)>) -> Sizes {
    let path = dir.join(SIZES_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), "could not read the sizes hint: {e}");
            return Vec::new();
        }
    };
    if let Err(e) = fs::remove_file(&path) {
        // Left in place it is stale at the next start, where its segment
        // is no longer the last: ignored then.
        tracing::warn!(file = %path.display(), "could not remove the sizes hint: {e}");
    }
    match parse(&bytes) {
        Some((seq, len, projects)) if last == Some((seq, len)) => projects,
        _ => Vec::new(),
    }
}

/// Projects and their key counts.
type Sizes = Vec<(ProjectName, u64)>;

/// The segment number and length a hint names, and its projects.
fn parse(bytes: &[u8]) -> Option<(u64, u64, Sizes)> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let seq = u64_at(take(8)?);
    let len = u64_at(take(8)?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut projects = Vec::new();
    for _ in 0..count {
        let name_len = u16::from_le_bytes(take(2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(usize::from(name_len))?).ok()?;
        let project = ProjectName::parse(name).ok()?;
        projects.push((project, u64_at(take(8)?)));
    }
    Some((seq, len, projects))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn projects() -> Vec<(ProjectName, u64)> {
        vec![
            (ProjectName::parse("a").unwrap(), 5000),
            (ProjectName::parse("big").unwrap(), 1_000_000),
        ]
    }

    #[test]
    fn a_hint_is_used_once_and_only_for_the_segment_it_names() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 7, 1234, &projects());
        assert_eq!(take(dir.path(), Some((7, 1234))), projects());
        // Taken: gone.
        assert!(!dir.path().join(SIZES_FILE).exists());
        assert_eq!(take(dir.path(), Some((7, 1234))), vec![]);
        // Written after the hint (longer), or a later segment: ignored,
        // and removed all the same.
        for last in [Some((7, 1300)), Some((8, 8)), None] {
            write(dir.path(), 7, 1234, &projects());
            assert_eq!(take(dir.path(), last), vec![], "{last:?}");
            assert!(!dir.path().join(SIZES_FILE).exists());
        }
    }

    /// A clean close records the large project's keys; the next open
    /// sizes its map from a hint naming the last segment as it is, and
    /// from no other.
    #[tokio::test]
    async fn a_clean_close_leaves_a_hint_the_next_open_sizes_maps_with() {
        use std::sync::Arc;

        use crate::{Backend, ManualClock, Settings, wal::DurableStore};

        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1));
        let open = || {
            let options = super::super::LogOptions {
                fsync: super::super::FsyncPolicy::Never,
                ..Default::default()
            };
            DurableStore::open_with(dir.path(), options, clock.clone(), Settings::DEFAULT).unwrap()
        };
        let (big, small) = (
            ProjectName::parse("big").unwrap(),
            ProjectName::parse("small").unwrap(),
        );
        let store = open();
        let set = |key: String, value: Vec<u8>| {
            crate::Txn::op(crate::Op::Set {
                key: key.into(),
                value: value.into(),
                ttl: crate::Ttl::Never,
            })
        };
        let writes: Vec<_> = (0..5000)
            .map(|i| store.submit(&big, set(format!("k{i}"), vec![0x20, 0x01])))
            .chain((0..10).map(|i| store.submit(&small, set(format!("k{i}"), vec![0x20]))))
            .collect();
        for write in writes {
            write.await.unwrap();
        }
        store.close().await.unwrap();
        drop(store);
        let segment = |dir: &Path| {
            let mut logs: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            let last = logs.pop().unwrap();
            let seq = last
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap();
            (seq, fs::metadata(&last).unwrap().len())
        };
        let written = parse(&fs::read(dir.path().join(SIZES_FILE)).unwrap()).unwrap();
        assert_eq!(
            written,
            (
                segment(dir.path()).0,
                segment(dir.path()).1,
                vec![(big.clone(), 5000)]
            )
        );

        // A hint for the last segment as it is: the map is made its size.
        let (seq, len) = segment(dir.path());
        write(dir.path(), seq, len, &[(big.clone(), 100_000)]);
        let store = open();
        assert!(!dir.path().join(SIZES_FILE).exists());
        assert!(store.memory().map_capacity(&big) >= 100_000);
        assert_eq!(store.memory().usage(&big).keys, 5000);
        assert_eq!(store.memory().usage(&small).keys, 10);
        store.close().await.unwrap();
        drop(store);

        // The same hint once the segment has changed: not used.
        let (seq, len) = segment(dir.path());
        write(dir.path(), seq, len - 1, &[(big.clone(), 100_000)]);
        let store = open();
        assert!(store.memory().map_capacity(&big) < 100_000);
        assert_eq!(store.memory().usage(&big).keys, 5000);
        store.close().await.unwrap();
    }

    #[test]
    fn a_torn_or_damaged_hint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1, 8, &projects());
        let whole = fs::read(dir.path().join(SIZES_FILE)).unwrap();
        for cut in [0, 3, 20, whole.len() - 1] {
            fs::write(dir.path().join(SIZES_FILE), &whole[..cut]).unwrap();
            assert_eq!(take(dir.path(), Some((1, 8))), vec![], "cut at {cut}");
        }
        for flip in [0, 9, 30, whole.len() - 1] {
            let mut bytes = whole.clone();
            bytes[flip] ^= 0x40;
            fs::write(dir.path().join(SIZES_FILE), &bytes).unwrap();
            assert_eq!(take(dir.path(), Some((1, 8))), vec![], "flip at {flip}");
        }
    }
}
