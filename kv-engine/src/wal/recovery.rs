//! Recovery: lock a data directory, load the newest snapshot, replay the
//! segments after it, cut a torn tail, refuse (or with `--repair`, cut)
//! corruption, and hand back what it found ([`Loaded`]); the store then
//! starts its writer on it.

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, BufReader},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use super::{
    codec::{self, DecodeError, FrameDamage, FrameError, FrameReader, Record},
    dir::{
        Kind, LOCK_FILE, create_segment, parse_name, remove_file_logged, remove_older,
        segment_name, snapshot_name,
    },
};
use crate::{
    Clock, Mutation, Versioned,
    catalog::{Catalog, apply_logged},
    memory::{
        Horizons, MemoryStore,
        load::OrderBuild,
        replay::{Replayer, replay_workers},
        requests::Remembered,
    },
};

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another server holds the directory's lock.
    #[error("data directory {dir} is in use by another kv-server (it holds the lock on {lock})", dir = .dir.display(), lock = .lock.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A file in the log is damaged before its end.
    #[error(
        "{file}: corrupt at offset {offset}: {damage}; start with --repair to truncate the log there and drop what follows",
        file = .file.display()
    )]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        damage: Damage,
    },
    /// The file system refused.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What is wrong with a damaged file of the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The framing is broken (magic, version, length, checksum).
    #[error(transparent)]
    Frame(#[from] FrameDamage),
    /// A whole frame whose payload is not a record.
    #[error(transparent)]
    Record(#[from] DecodeError),
    /// A file ends early where a crash cannot have cut it: a snapshot
    /// (renamed into place only once complete) or a segment that is not
    /// the last (the writer only starts a new segment after syncing the
    /// old one).
    #[error("{0} cut short")]
    CutShort(&'static str),
    /// A well-formed record of a kind that does not belong in this file.
    #[error("{record} record in a {file}")]
    Misplaced {
        /// The record's kind.
        record: &'static str,
        /// The kind of file it was found in.
        file: &'static str,
    },
    /// Records after a snapshot's end record.
    #[error("data after the snapshot's end record")]
    AfterEnd,
    /// A snapshot's end record disagrees with what it holds.
    #[error("end record counts {counted} entries, the snapshot holds {held}")]
    EndCount {
        /// The count in the end record.
        counted: u64,
        /// Entries actually read.
        held: u64,
    },
    /// A snapshot without its end record.
    #[error("snapshot ends without its end record")]
    NoEnd,
}

/// Why reading the records of a file stopped early.
enum Stop {
    /// The file ends inside a record (see [`FrameError::Torn`]).
    Torn(u64),
    /// Damage at an offset.
    Damaged(u64, Damage),
    /// The read itself failed.
    Io(io::Error),
}

impl From<FrameError> for Stop {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Torn { offset } => Stop::Torn(offset),
            FrameError::Corrupt { offset, damage } => Stop::Damaged(offset, damage.into()),
            FrameError::Io { source, .. } => Stop::Io(source),
        }
    }
}

pub(super) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let context = context.into();
    move |source| OpenError::Io { context, source }
}

/// What start-up found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The snapshot loaded (its sequence number), if any.
    pub snapshot: Option<u64>,
    /// Entries read from it.
    pub snapshot_entries: u64,
    /// Segments replayed after it.
    pub segments: usize,
    /// Records replayed from those segments.
    pub records: u64,
    /// Bytes of an interrupted last append, cut off.
    pub torn_bytes: u64,
    /// Bytes dropped by `--repair` at a corrupt record (and after it).
    pub repaired_bytes: u64,
    /// Unfinished snapshot files removed.
    pub removed_temp_files: usize,
    /// How long start-up took.
    pub took: Duration,
    /// Of which: building the ordered key indexes of small projects (large
    /// ones are built in the background after start-up).
    pub index_took: Duration,
    /// Keys of the projects whose ordered indexes are built in the
    /// background.
    pub index_deferred_keys: u64,
    /// Keys whose index is built from a snapshot's key order, without a
    /// sort (a snapshot of an older build lists keys in hash order).
    pub index_presorted_keys: u64,
    /// Logged changes replayed without rebuilding their history events:
    /// their project's ring would have dropped them by the end.
    pub history_skipped: u64,
}

enum SegmentEnd {
    /// Read to the end (possibly after cutting a torn tail).
    Complete(u64),
    /// `--repair` cut it at a corrupt record: later segments are void.
    Cut(u64),
}

/// What a recovery leaves: the state as of the last whole record, and
/// where the writer goes on.
pub(super) struct Loaded {
    pub(super) mem: Arc<MemoryStore>,
    pub(super) catalog: Arc<Catalog>,
    /// The directory's lock, held for as long as the writer runs.
    pub(super) lock: File,
    /// The fresh segment the writer appends to, and its number.
    pub(super) file: File,
    pub(super) seq: u64,
    /// Bytes of the segments a later recovery would replay, before `file`.
    pub(super) log_bytes: u64,
    /// Ordered key indexes still to build (large projects).
    pub(super) build: OrderBuild,
    pub(super) recovered: Recovered,
}

/// Locks `dir` (creating it if needed), loads the newest snapshot, replays
/// the segments after it, and starts a fresh segment after everything that
/// exists. See [`super::DurableStore::open`] for the rules on damage.
pub(super) fn recover(
    dir: &Path,
    repair: bool,
    clock: Arc<dyn Clock>,
    settings: crate::Settings,
) -> Result<Loaded, OpenError> {
    fs::create_dir_all(dir).map_err(io_error(format!(
        "cannot create data directory {}",
        dir.display()
    )))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(format!("cannot open {}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                lock: lock_path,
            });
        }
        Err(TryLockError::Error(e)) => {
            return Err(io_error(format!("cannot lock {}", lock_path.display()))(e));
        }
    }

    let mut recovered = Recovered::default();
    let (snapshots, segments) = list(dir, &mut recovered)?;
    let mem = Arc::new(MemoryStore::with_settings(clock, settings));
    mem.begin_load();
    // What the projects held when the log was last closed cleanly, if
    // nothing was written since: their maps are made that size at once.
    let last = segments
        .last()
        .and_then(|&seq| Some((seq, fs::metadata(dir.join(segment_name(seq))).ok()?.len())));
    mem.expect_sizes(super::sizes::take(dir, last));
    let catalog = Arc::new(Catalog::default());

    let base = snapshots.last().copied();
    // Which changes the histories will keep, found while the snapshot
    // loads. Not with a repair: a cut log would end the replay early.
    let to_replay: Vec<u64> = segments.range(base.unwrap_or(0)..).copied().collect();
    let horizons =
        (!repair && !to_replay.is_empty()).then(|| super::scan::start(dir, to_replay, settings));
    // The workers apply keys while this thread keeps everything else in
    // log order (see `Replayer`); they are gone when the scope ends.
    let log_bytes = std::thread::scope(|scope| {
        let mut replayer = Replayer::start(scope, &mem, replay_workers());
        let replay = Replay {
            mem: &mem,
            catalog: &catalog,
            replayer: &mut replayer,
        };
        load_and_replay(
            dir,
            base,
            &segments,
            replay,
            horizons,
            repair,
            &mut recovered,
        )
    })?;
    let base = base.unwrap_or(0);

    // Start a fresh segment after everything that exists.
    let next = segments.last().map_or(base, |&s| s + 1).max(base);
    let file = create_segment(dir, next).map_err(io_error(format!(
        "cannot create log segment {}",
        dir.join(segment_name(next)).display()
    )))?;
    remove_older(dir, base);
    let indexing = Instant::now();
    let build = mem.end_load();
    recovered.index_took = indexing.elapsed();
    recovered.index_deferred_keys = build.keys() as u64;
    recovered.index_presorted_keys = build.presorted as u64;
    Ok(Loaded {
        mem,
        catalog,
        lock,
        file,
        seq: next,
        log_bytes,
        build,
        recovered,
    })
}

/// Where replayed records go.
struct Replay<'a, 'env> {
    mem: &'env MemoryStore,
    catalog: &'a Catalog,
    replayer: &'a mut Replayer<'env>,
}

/// Loads snapshot `base` (if any) and replays the segments after it;
/// returns the bytes of the segments a later recovery would replay.
fn load_and_replay(
    dir: &Path,
    base: Option<u64>,
    segments: &BTreeSet<u64>,
    mut replay: Replay<'_, '_>,
    horizons: Option<(mpsc::Receiver<Option<Arc<Horizons>>>, bool)>,
    repair: bool,
    recovered: &mut Recovered,
) -> Result<u64, OpenError> {
    if let Some(base) = base {
        load_snapshot(dir, base, &mut replay, repair, recovered)?;
        recovered.snapshot = Some(base);
    }
    // From here on, records are changes: they rebuild the change history
    // after the snapshot's, as live application built it.
    replay.mem.begin_log_replay();
    if let Some((horizons, short)) = horizons {
        replay.replayer.begin_log(horizons, short);
    }

    let to_replay: Vec<u64> = segments.range(base.unwrap_or(0)..).copied().collect();
    let mut log_bytes = 0;
    for (i, &seq) in to_replay.iter().enumerate() {
        let last = i + 1 == to_replay.len();
        match replay_segment(dir, seq, &mut replay, last, repair, recovered)? {
            SegmentEnd::Complete(len) => log_bytes += len,
            SegmentEnd::Cut(len) => {
                log_bytes += len;
                for &later in &to_replay[i + 1..] {
                    let path = dir.join(segment_name(later));
                    recovered.repaired_bytes += fs::metadata(&path).map_or(0, |m| m.len());
                    remove_file_logged(&path, "segment after a repaired corruption");
                }
                break;
            }
        }
        recovered.segments += 1;
    }
    recovered.history_skipped = replay.replayer.skipped();
    Ok(log_bytes)
}

fn list(
    dir: &Path,
    recovered: &mut Recovered,
) -> Result<(BTreeSet<u64>, BTreeSet<u64>), OpenError> {
    let mut snapshots = BTreeSet::new();
    let mut segments = BTreeSet::new();
    let entries = fs::read_dir(dir).map_err(io_error(format!("cannot list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_error(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_name) {
            Some((seq, Kind::Segment)) => {
                segments.insert(seq);
            }
            Some((seq, Kind::Snapshot)) => {
                snapshots.insert(seq);
            }
            Some((_, Kind::Temp)) => {
                tracing::warn!(file = %entry.path().display(), "removing an unfinished snapshot");
                remove_file_logged(&entry.path(), "unfinished snapshot");
                recovered.removed_temp_files += 1;
            }
            None => {}
        }
    }
    Ok((snapshots, segments))
}

type FileReader = FrameReader<BufReader<File>>;

fn open_reader(
    path: &Path,
    magic: [u8; 6],
) -> Result<(u64, Result<FileReader, FrameError>), OpenError> {
    let file = File::open(path).map_err(io_error(format!("cannot open {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(io_error(format!("cannot read {}", path.display())))?
        .len();
    Ok((
        len,
        FrameReader::open(BufReader::with_capacity(4 << 20, file), len, magic),
    ))
}

fn corrupt(path: &Path, offset: u64, damage: Damage) -> OpenError {
    OpenError::Corrupt {
        file: path.to_path_buf(),
        offset,
        damage,
    }
}

/// Replays a Txn record: its changes, then its remembered outcome, as the
/// writer's apply path applied them.
fn apply_txn_record(
    replayer: &mut Replayer<'_>,
    project: &crate::project::ProjectName,
    at: u64,
    mutations: Vec<Versioned>,
    request: Option<(Box<str>, u64, crate::TxnOutcome)>,
) {
    let request = request.map(|(id, fingerprint, outcome)| {
        let remembered = Remembered {
            fingerprint,
            at,
            outcome: Arc::new(outcome),
        };
        (Arc::from(id), remembered)
    });
    replayer.apply_commit(project, mutations, request);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Snapshot,
    Segment,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Snapshot => "snapshot",
            FileKind::Segment => "log segment",
        }
    }
}

/// Applies one record read from a file of `kind` (a snapshot's end record
/// is its reader's business) and returns how many entries it set. A
/// snapshot holds the state (sets, version counters, incarnations, retired
/// names, the catalog); a segment holds changes.
fn apply_record(replay: &mut Replay, record: Record, kind: FileKind) -> Result<u64, Damage> {
    let mem = replay.mem;
    let misplaced = |record| Damage::Misplaced {
        record,
        file: kind.name(),
    };
    let is_set = |m: &Mutation| matches!(m, Mutation::Set { .. });
    match record {
        Record::Mutation { mutation, .. } if kind == FileKind::Snapshot && !is_set(&mutation) => {
            Err(misplaced("change other than a set"))
        }
        Record::Mutation { project, mutation } => {
            // A single-mutation record of the first log format.
            let versioned = vec![Versioned::unnumbered(mutation)];
            replay.replayer.apply_commit(&project, versioned, None);
            Ok(1)
        }
        Record::Txn { mutations, .. }
            if kind == FileKind::Snapshot && !mutations.iter().all(|m| is_set(&m.mutation)) =>
        {
            Err(misplaced("change other than a set"))
        }
        Record::Txn {
            project,
            at,
            mutations,
            request,
        } => {
            let entries = mutations.len() as u64;
            apply_txn_record(replay.replayer, &project, at, mutations, request);
            Ok(entries)
        }
        // These replace or empty namespaces: the keys' changes before
        // them are applied first.
        Record::Catalog(change) => {
            replay.replayer.flush();
            apply_logged(mem, replay.catalog, change);
            Ok(0)
        }
        Record::Incarnation { project, base } => {
            replay.replayer.flush();
            mem.start_incarnation(&project, base);
            Ok(0)
        }
        Record::Version { .. } if kind == FileKind::Segment => Err(misplaced("snapshot version")),
        Record::Version { project, version } => {
            mem.restore_version(&project, version);
            Ok(0)
        }
        Record::Retired { .. } if kind == FileKind::Segment => {
            Err(misplaced("snapshot retired-name"))
        }
        Record::Retired { project, last } => {
            mem.restore_retired(&project, last);
            Ok(0)
        }
        Record::History { .. } | Record::HistoryEvent { .. } if kind == FileKind::Segment => {
            Err(misplaced("snapshot history"))
        }
        Record::History {
            project,
            incarnation,
            floor,
        } => {
            mem.restore_history(&project, incarnation, floor);
            Ok(0)
        }
        Record::HistoryEvent {
            project,
            incarnation,
            event,
        } => {
            mem.restore_history_event(&project, incarnation, event);
            Ok(0)
        }
        Record::End { .. } => Err(misplaced("snapshot end")),
    }
}

fn load_snapshot(
    dir: &Path,
    base: u64,
    replay: &mut Replay,
    repair: bool,
    recovered: &mut Recovered,
) -> Result<(), OpenError> {
    let path = dir.join(snapshot_name(base));
    let (len, reader) = open_reader(&path, codec::SNAPSHOT_MAGIC)?;
    let fail = |offset: u64, damage: Damage, recovered: &mut Recovered| {
        if repair {
            recovered.repaired_bytes += len.saturating_sub(offset);
            tracing::warn!(file = %path.display(), offset, "repair: snapshot corrupt ({damage}); keeping the {} entries before it", recovered.snapshot_entries);
            Ok(())
        } else {
            Err(corrupt(&path, offset, damage))
        }
    };
    // A snapshot is renamed into place only once complete: a short one is
    // damage, not a crash.
    let stopped = |stop: Stop, recovered: &mut Recovered| match stop {
        Stop::Torn(offset) => fail(offset, Damage::CutShort("snapshot"), recovered),
        Stop::Damaged(offset, damage) => fail(offset, damage, recovered),
        Stop::Io(source) => Err(io_error(format!("cannot read {}", path.display()))(source)),
    };
    let reader = match reader {
        Ok(reader) => reader,
        Err(e) => return stopped(e.into(), recovered),
    };
    let mut end = None;
    let mut entries = 0;
    let streamed = for_each_record(reader, |at, record| match record {
        _ if end.is_some() => Err(Damage::AfterEnd),
        Record::End { count } => {
            end = Some((at, count));
            Ok(())
        }
        record => {
            entries += apply_record(replay, record, FileKind::Snapshot)?;
            Ok(())
        }
    });
    // Whatever comes next (the log, a repair's cut) follows the snapshot's
    // whole state.
    replay.replayer.flush();
    recovered.snapshot_entries = entries;
    match (streamed, end) {
        (Ok(()), Some((_, count))) if count == entries => Ok(()),
        (Ok(()), Some((at, count))) => fail(
            at,
            Damage::EndCount {
                counted: count,
                held: entries,
            },
            recovered,
        ),
        (Ok(()), None) => fail(len, Damage::NoEnd, recovered),
        (Err(stop), _) => stopped(stop, recovered),
    }
}

/// Calls `each` with every record of `reader`, in order, with its offset.
/// Frames are read and decoded on a second thread while `each` applies
/// them, which splits a replay over two cores. A decode error, or an error
/// `each` returns, ends the stream as corruption at that record's offset.
fn for_each_record(
    mut reader: FileReader,
    mut each: impl FnMut(u64, Record) -> Result<(), Damage>,
) -> Result<(), Stop> {
    const BATCH: usize = 4096;
    // Or fewer records, when they are large: a batch of 4096 records of a
    // thousand changes each would be a whole segment, decoded before any
    // of it is applied (no overlap left between the two threads).
    const BATCH_BYTES: usize = 1 << 20;
    type Batch = Vec<Result<(u64, Record), Stop>>;
    let (batches, received) = mpsc::sync_channel::<Batch>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut payload = Vec::new();
            let mut last_project = None;
            let mut batch = Vec::with_capacity(BATCH);
            let mut bytes = 0;
            loop {
                let at = reader.offset();
                let item = match reader.next_into(&mut payload) {
                    Ok(true) => codec::decode_payload_cached(&payload, &mut last_project)
                        .map(|record| (at, record))
                        .map_err(|e| Stop::Damaged(at, e.into())),
                    Ok(false) => break,
                    Err(e) => Err(e.into()),
                };
                let stop = item.is_err();
                batch.push(item);
                bytes += payload.len();
                if stop || batch.len() == BATCH || bytes >= BATCH_BYTES {
                    bytes = 0;
                    // The next batch sized like this one: a batch of 4096
                    // records' room for a few large ones would be fresh
                    // memory each time, zeroed by the kernel on first use.
                    let room = batch.len().clamp(16, BATCH);
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(room));
                    // A send fails when the consumer stopped early.
                    if batches.send(full).is_err() || stop {
                        return;
                    }
                }
            }
            let _ = batches.send(batch);
        });
        for batch in received {
            for item in batch {
                let (at, record) = item?;
                each(at, record).map_err(|damage| Stop::Damaged(at, damage))?;
            }
        }
        Ok(())
    })
}

fn replay_segment(
    dir: &Path,
    seq: u64,
    replay: &mut Replay,
    last: bool,
    repair: bool,
    recovered: &mut Recovered,
) -> Result<SegmentEnd, OpenError> {
    let path = dir.join(segment_name(seq));
    let (len, reader) = open_reader(&path, codec::LOG_MAGIC)?;
    let cut =
        |offset: u64, damage: Damage, recovered: &mut Recovered| -> Result<SegmentEnd, OpenError> {
            if !repair {
                return Err(corrupt(&path, offset, damage));
            }
            truncate(&path, offset)?;
            recovered.repaired_bytes += len - offset;
            tracing::warn!(
                file = %path.display(),
                offset,
                dropped_bytes = len - offset,
                "repair: log corrupt ({damage}); truncated here, later segments dropped"
            );
            Ok(SegmentEnd::Cut(offset))
        };
    let torn = |offset: u64, recovered: &mut Recovered| -> Result<SegmentEnd, OpenError> {
        recovered.torn_bytes += len - offset;
        if offset < codec::FILE_HEADER_LEN as u64 {
            tracing::warn!(file = %path.display(), "removing a segment whose creation was interrupted");
            fs::remove_file(&path)
                .map_err(io_error(format!("cannot remove {}", path.display())))?;
            return Ok(SegmentEnd::Complete(0));
        }
        tracing::warn!(
            file = %path.display(),
            offset,
            dropped_bytes = len - offset,
            "truncating an incomplete last record (torn write from a crash)"
        );
        truncate(&path, offset)?;
        Ok(SegmentEnd::Complete(offset))
    };
    // Only the last segment can end in a crash's torn append.
    let stopped = |stop: Stop, recovered: &mut Recovered| match stop {
        Stop::Torn(offset) if last => torn(offset, recovered),
        Stop::Torn(offset) => cut(
            offset,
            Damage::CutShort("segment that is not the last"),
            recovered,
        ),
        Stop::Damaged(offset, damage) => cut(offset, damage, recovered),
        Stop::Io(source) => Err(io_error(format!("cannot read {}", path.display()))(source)),
    };
    let reader = match reader {
        Ok(reader) => reader,
        Err(e) => return stopped(e.into(), recovered),
    };
    let mut records = 0;
    let streamed = for_each_record(reader, |_, record| {
        apply_record(replay, record, FileKind::Segment)?;
        records += 1;
        Ok(())
    });
    replay.replayer.flush();
    recovered.records += records;
    match streamed {
        Ok(()) => Ok(SegmentEnd::Complete(len)),
        Err(stop) => stopped(stop, recovered),
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), OpenError> {
    let context = || format!("cannot truncate {}", path.display());
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(context()))?;
    file.set_len(len).map_err(io_error(context()))?;
    file.sync_all().map_err(io_error(context()))
}
