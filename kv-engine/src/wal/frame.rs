//! Frames: how a file of the log or a snapshot is cut into records, and
//! how a reader tells a torn tail (a crash mid-append) from corruption.
//! What a frame's payload holds is [`super::codec`]'s business.

use std::io::{self, Read};

use crate::MAX_VALUE_LIMIT;

/// Magic bytes of a log segment.
pub(crate) const LOG_MAGIC: [u8; 6] = *b"KVLOG\0";

/// Magic bytes of a snapshot.
pub(crate) const SNAPSHOT_MAGIC: [u8; 6] = *b"KVSNAP";

/// The format version this build writes.
pub(crate) const FORMAT_VERSION: u16 = 4;

/// The oldest format version this build reads.
pub(crate) const OLDEST_READABLE_VERSION: u16 = 1;

/// Bytes of a file header.
pub(crate) const FILE_HEADER_LEN: usize = 8;

/// Bytes of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 12;

/// Largest payload any build of this server writes: the largest allowed
/// value and key plus framing. A longer length is corruption, never an
/// allocation.
pub(crate) const MAX_PAYLOAD_LEN: usize = MAX_VALUE_LIMIT + (1 << 20) + 1024;

const MASK: u32 = 0xa282_ead8;

/// The 8-byte file header for `magic`.
pub(crate) fn file_header(magic: [u8; 6]) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0; FILE_HEADER_LEN];
    header[..6].copy_from_slice(&magic);
    header[6..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

pub(super) fn frame(out: &mut Vec<u8>, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    write_payload(out);
    let payload = &out[start + FRAME_HEADER_LEN..];
    let len = u32::try_from(payload.len()).expect("payloads are bounded by the value limit");
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&len_check(len).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn len_check(len: u32) -> u32 {
    crc32c::crc32c(&len.to_le_bytes()) ^ MASK
}

/// Why reading frames stopped short of a clean end of file.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file ends inside a frame, or in zeros where a frame should
    /// start: what an interrupted append leaves. Everything from `offset`
    /// on is the remains of the interrupted write.
    #[error("incomplete record at offset {offset}")]
    Torn {
        /// Where the incomplete frame starts.
        offset: u64,
    },
    /// Bytes that no append of this format produces.
    #[error("corrupt record at offset {offset}: {damage}")]
    Corrupt {
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong.
        damage: FrameDamage,
    },
    /// Reading failed.
    #[error("read failed at offset {offset}: {source}")]
    Io {
        /// Where reading failed.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What is wrong with a frame (or a file header) that no append of this
/// format produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameDamage {
    /// The file does not start with the magic bytes of its kind.
    #[error("not a kv file of this kind (wrong magic bytes)")]
    WrongMagic,
    /// The file header names a format this build cannot read.
    #[error(
        "format version {0} is not supported (this build reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    /// The frame's length does not match the check word beside it.
    #[error("record length fails its check")]
    LengthCheck,
    /// A length that passes its check but no record can have.
    #[error("record length {0} is out of range (at most {MAX_PAYLOAD_LEN})")]
    LengthOutOfRange(usize),
    /// The payload's checksum does not match, and data follows it.
    #[error("checksum mismatch")]
    Checksum,
}

/// Reads frames from a file of known length.
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: Read> FrameReader<R> {
    /// Checks the file header (`magic`, version) and positions after it.
    ///
    /// # Errors
    ///
    /// [`FrameError::Torn`] when the file is shorter than a header (an
    /// interrupted creation), [`FrameError::Corrupt`] for a wrong magic or
    /// an unsupported version.
    pub fn open(mut inner: R, len: u64, magic: [u8; 6]) -> Result<Self, FrameError> {
        if len < FILE_HEADER_LEN as u64 {
            return Err(FrameError::Torn { offset: 0 });
        }
        let mut header = [0; FILE_HEADER_LEN];
        inner
            .read_exact(&mut header)
            .map_err(|source| FrameError::Io { offset: 0, source })?;
        if header[..6] != magic {
            return Err(FrameError::Corrupt {
                offset: 0,
                damage: FrameDamage::WrongMagic,
            });
        }
        let version = u16::from_le_bytes([header[6], header[7]]);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(FrameError::Corrupt {
                offset: 6,
                damage: FrameDamage::UnsupportedVersion(version),
            });
        }
        Ok(Self {
            inner,
            offset: FILE_HEADER_LEN as u64,
            len,
        })
    }

    /// Offset of the next frame: after a clean end, the file's valid length.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next payload into `payload`; `Ok(false)` at a clean end of
    /// file.
    ///
    /// # Errors
    ///
    /// [`FrameError`] as documented on its variants.
    pub fn next_into(&mut self, payload: &mut Vec<u8>) -> Result<bool, FrameError> {
        let start = self.offset;
        let left = self.len - start;
        if left == 0 {
            return Ok(false);
        }
        if left < FRAME_HEADER_LEN as u64 {
            return Err(FrameError::Torn { offset: start });
        }
        let io = |source| FrameError::Io {
            offset: start,
            source,
        };
        let mut header = [0; FRAME_HEADER_LEN];
        self.inner.read_exact(&mut header).map_err(io)?;
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let (len, check, crc) = (word(0), word(4), word(8));
        if check != len_check(len) {
            // Zeros where a frame should be: space allocated by an append
            // that never landed.
            return if header.iter().all(|&b| b == 0) && self.rest_is_zero().map_err(io)? {
                Err(FrameError::Torn { offset: start })
            } else {
                Err(FrameError::Corrupt {
                    offset: start,
                    damage: FrameDamage::LengthCheck,
                })
            };
        }
        let len = len as usize;
        if len == 0 || len > MAX_PAYLOAD_LEN {
            return Err(FrameError::Corrupt {
                offset: start,
                damage: FrameDamage::LengthOutOfRange(len),
            });
        }
        let end = start + (FRAME_HEADER_LEN + len) as u64;
        if end > self.len {
            return Err(FrameError::Torn { offset: start });
        }
        // `len` is bounded by MAX_PAYLOAD_LEN and by what the file holds.
        payload.clear();
        payload.resize(len, 0);
        self.inner.read_exact(payload).map_err(io)?;
        if crc32c::crc32c(payload) != crc {
            // A crash can leave the last frame's sectors half written; a bad
            // checksum with data after it cannot come from an append.
            return if end == self.len {
                Err(FrameError::Torn { offset: start })
            } else {
                Err(FrameError::Corrupt {
                    offset: start,
                    damage: FrameDamage::Checksum,
                })
            };
        }
        self.offset = end;
        Ok(true)
    }

    fn rest_is_zero(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 8192];
        loop {
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                return Ok(true);
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
    }
}
