//! Re-verifying the log after a failed fsync, before writes resume.
//!
//! After `fdatasync` fails the kernel may already have dropped the dirty
//! pages (or marked them clean without writing them), so syncing again
//! proves nothing. Instead the writer checks what it knows was synced,
//! cuts everything after it through a new descriptor, and goes on in a new
//! segment.

use std::{
    fs::OpenOptions,
    io::{self, BufReader, Read},
    path::Path,
};

use super::{
    codec::{FrameReader, LOG_MAGIC},
    dir::segment_name,
};

/// Checks that segment `seq` reads back whole up to `synced` (the end of
/// its last synced write): every frame, its length check and checksum.
/// Then cuts what follows `synced` (the write whose sync failed) and makes
/// the cut durable with an fsync through a new descriptor.
///
/// # Errors
///
/// The segment cannot be read, is shorter than `synced`, a frame before
/// `synced` is damaged, or the cut cannot be made durable.
pub(super) fn verify_and_cut(dir: &Path, seq: u64, synced: u64) -> io::Result<()> {
    let path = dir.join(segment_name(seq));
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let len = file.metadata()?.len();
    if len < synced {
        return Err(io::Error::other(format!(
            "{} is {len} bytes, shorter than the {synced} bytes already synced",
            path.display()
        )));
    }
    let damaged = |e| io::Error::other(format!("{}: {e}", path.display()));
    let reader = BufReader::with_capacity(1 << 20, (&file).take(synced));
    let mut frames = FrameReader::open(reader, synced, LOG_MAGIC).map_err(damaged)?;
    let mut payload = Vec::new();
    while frames.next_into(&mut payload).map_err(damaged)? {}
    file.set_len(synced)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::wal::{codec, dir::create_segment};

    #[test]
    fn verifies_the_synced_part_and_cuts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = create_segment(dir.path(), 7).unwrap();
        let mut record = Vec::new();
        let p = crate::project::ProjectName::parse("p").unwrap();
        codec::encode_version(&mut record, &p, 3);
        file.write_all(&record).unwrap();
        let synced = (codec::FILE_HEADER_LEN + record.len()) as u64;
        file.write_all(b"the unsynced write").unwrap();

        verify_and_cut(dir.path(), 7, synced).unwrap();
        let path = dir.path().join(segment_name(7));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), synced);

        // A damaged frame before the synced end fails the check.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = verify_and_cut(dir.path(), 7, synced).unwrap_err();
        assert!(
            e.to_string().contains("incomplete record") || e.to_string().contains("checksum"),
            "{e}"
        );
        assert!(verify_and_cut(dir.path(), 7, synced + 1).is_err());
    }
}
