//! How much of the log a recovery's change histories can still hold at
//! the end ([`scan`], making the replay's [`Horizons`]): a project's ring
//! keeps only its last
//! `watch_history_events` changes, so a replayed change followed by that
//! many more of its project need not be published at all (no value copy,
//! no event), and the rings come out the same.
//!
//! Why the same: a project's versions have no gaps (outside a repair,
//! which the scan is not used with), so a change at version `v` is
//! followed by every version up to the project's last. If `v ≤ last - N`,
//! at least N newer changes of the same incarnation reach its ring after
//! it, and the count bound drops `v`; the byte bounds only ever drop
//! oldest-first, so a ring fed only the changes above `last - N` ends
//! holding the same suffix, with the same floor (the first change
//! published after skipped ones is a gap, which restarts the ring just
//! below it). An older incarnation's changes end in a closed ring, which
//! nothing reads. One bound crosses projects: the shared byte budget,
//! where a project's old changes held for a while could make another
//! project drop its own. `Horizons::fits` admits the scan only when no
//! ring can ever reach that budget in a full replay: every ring's bytes
//! are at most its project's share (the restored ring plus the lesser of
//! all its logged changes and the per-project byte bound, or its largest
//! change).

use std::{
    collections::HashMap,
    fs::File,
    io::BufReader,
    path::Path,
    sync::{Arc, mpsc},
};

use super::{
    codec::LOG_MAGIC,
    dir::segment_name,
    frame::{FrameError, FrameReader},
};
use crate::{Settings, memory::Horizons, project::ProjectName, watch::EVENT_OVERHEAD};

/// One project's changes in the log.
#[derive(Default)]
struct Tally {
    last: u64,
    /// A change without a version (the first log format): its version is
    /// only known when applied, so the project is published in full.
    unnumbered: bool,
    bytes: u64,
    largest: u64,
}

/// Logs up to this size are scanned before their replay begins, in about
/// a millisecond; a longer one's replay starts at once and uses the scan's
/// answer from when it arrives.
const SHORT_LOG_BYTES: u64 = 4 << 20;

/// Starts [`scan`] of `segments` on a thread of its own; its result
/// arrives on the receiver (nothing, when the thread could not start).
/// True with it when the log is short enough to wait for the result.
pub(crate) fn start(
    dir: &Path,
    segments: Vec<u64>,
    settings: Settings,
) -> (mpsc::Receiver<Option<Arc<Horizons>>>, bool) {
    let short = segments
        .iter()
        .map(|&seq| std::fs::metadata(dir.join(segment_name(seq))).map_or(u64::MAX, |m| m.len()))
        .try_fold(0u64, u64::checked_add)
        .is_some_and(|bytes| bytes <= SHORT_LOG_BYTES);
    let (tx, rx) = mpsc::sync_channel(1);
    let dir = dir.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("kv-replay-scan".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let horizons = scan(&dir, &segments, &settings);
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                projects = horizons.as_ref().map_or(0, |h| h.through.len()),
                "log scanned for the histories' horizons"
            );
            let _ = tx.send(horizons.map(Arc::new));
        });
    (rx, short)
}

/// Reads `segments` (in order) once, without decoding keys or values:
/// per project, the newest version and the bytes its changes' events
/// would take. `None` when a segment cannot be read or a record is not
/// understood (the replay then publishes everything, as it reports the
/// problem itself).
pub(crate) fn scan(dir: &Path, segments: &[u64], settings: &Settings) -> Option<Horizons> {
    let mut tallies: HashMap<ProjectName, Tally> = HashMap::new();
    let mut payload = Vec::new();
    for (i, &seq) in segments.iter().enumerate() {
        let file = File::open(dir.join(segment_name(seq))).ok()?;
        let len = file.metadata().ok()?.len();
        let reader = FrameReader::open(BufReader::with_capacity(1 << 20, file), len, LOG_MAGIC);
        // What the replay reads of the last segment ends where a torn
        // append does; any other damage fails the replay.
        let last = i + 1 == segments.len();
        if let Err(FrameError::Torn { .. }) = reader {
            continue;
        }
        let mut reader = reader.ok()?;
        let mut current: Option<(Vec<u8>, ProjectName)> = None;
        loop {
            match reader.next_into(&mut payload) {
                Ok(true) => {}
                Ok(false) => break,
                Err(FrameError::Torn { .. }) if last => break,
                Err(_) => return None,
            }
            tally(&payload, &mut current, &mut tallies)?;
        }
    }
    let ring = settings.watch_history_events.max(1) as u64;
    let per_project = settings.watch_history_bytes as u64;
    let mut horizons = Horizons::default();
    for (project, t) in tallies {
        horizons.ring_bytes = horizons
            .ring_bytes
            .saturating_add(t.bytes.min(per_project.max(t.largest)));
        if !t.unnumbered && t.last > ring {
            horizons.through.insert(project, t.last - ring);
        }
    }
    Some(horizons)
}

/// Adds one record's changes to its project's tally; `None` for a record
/// the scan cannot read.
fn tally(
    payload: &[u8],
    current: &mut Option<(Vec<u8>, ProjectName)>,
    tallies: &mut HashMap<ProjectName, Tally>,
) -> Option<()> {
    // Record and change tags, as the codec writes them.
    const SET: u8 = 1;
    const DELETE: u8 = 2;
    const CLEAR: u8 = 3;
    const TXN: u8 = 9;
    const CHANGE_SET: u8 = 1;
    const CHANGE_DELETE: u8 = 2;
    const CHANGE_CLEAR: u8 = 3;
    const CHANGE_EXPIRE: u8 = 4;
    let mut r = Bytes(payload);
    let kind = r.u8()?;
    if !matches!(kind, SET | DELETE | CLEAR | TXN) {
        // Catalog, incarnation and snapshot-only records publish nothing.
        return Some(());
    }
    let len = r.u8()?;
    let name = r.take(usize::from(len))?;
    let project = match current {
        Some((raw, project)) if raw == name => project.clone(),
        _ => {
            let project = ProjectName::parse(std::str::from_utf8(name).ok()?).ok()?;
            *current = Some((name.to_vec(), project.clone()));
            project
        }
    };
    let t = tallies.entry(project).or_default();
    let mut add = |size: u64| {
        t.bytes = t.bytes.saturating_add(size);
        t.largest = t.largest.max(size);
    };
    let overhead = EVENT_OVERHEAD as u64;
    if kind != TXN {
        // A record of the first format: one change, no version.
        let key = if kind == CLEAR { 0 } else { r.bytes()? };
        let value = if kind == SET {
            r.take(8)?;
            r.bytes()?
        } else {
            0
        };
        add(overhead + key + value);
        t.unnumbered = true;
        return Some(());
    }
    r.take(8)?;
    let count = r.u32()?;
    for _ in 0..count {
        let version = r.u64()?;
        let size = match r.u8()? {
            CHANGE_SET => {
                let key = r.bytes()?;
                r.take(8)?;
                overhead + key + r.bytes()?
            }
            CHANGE_DELETE | CHANGE_EXPIRE => overhead + r.bytes()?,
            CHANGE_CLEAR => overhead,
            _ => return None,
        };
        add(size);
        if version == 0 {
            t.unnumbered = true;
        }
        t.last = t.last.max(version);
    }
    Some(())
}

/// A payload read from its start; each read checks the length left.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A length-prefixed field, skipped: its length.
    fn bytes(&mut self) -> Option<u64> {
        let len = self.u32()?;
        self.take(len as usize)?;
        Some(u64::from(len))
    }
}
