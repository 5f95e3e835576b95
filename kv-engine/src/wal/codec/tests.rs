use super::*;
use crate::wal::frame::{FRAME_HEADER_LEN, len_check};
use proptest::prelude::*;

fn project(name: &str) -> ProjectName {
    ProjectName::parse(name).unwrap()
}

fn sample() -> Vec<(ProjectName, Mutation)> {
    vec![
        (
            project("a"),
            Mutation::Set {
                key: "k".into(),
                value: vec![0x20, 0x01].into(),
                expires_at: Deadline::at(42),
            },
        ),
        (
            project("b-2"),
            Mutation::Set {
                key: "ключ".into(),
                value: vec![0x1a, 0x00].into(),
                expires_at: None,
            },
        ),
        (project("a"), Mutation::Delete { key: "k".into() }),
        (project("a"), Mutation::Clear),
    ]
}

fn file(records: &[(ProjectName, Mutation)]) -> Vec<u8> {
    let mut out = file_header(LOG_MAGIC).to_vec();
    for (p, m) in records {
        encode_mutation(&mut out, p, m);
    }
    out
}

fn read_all(bytes: &[u8]) -> (Vec<Record>, Result<(), FrameError>) {
    let mut records = Vec::new();
    let mut reader = match FrameReader::open(bytes, bytes.len() as u64, LOG_MAGIC) {
        Ok(r) => r,
        Err(e) => return (records, Err(e)),
    };
    let mut payload = Vec::new();
    loop {
        match reader.next_into(&mut payload) {
            Ok(true) => match decode_payload(&payload) {
                Ok(r) => records.push(r),
                Err(e) => panic!("a whole frame that is not a record: {e}"),
            },
            Ok(false) => return (records, Ok(())),
            Err(e) => return (records, Err(e)),
        }
    }
}

#[test]
fn records_round_trip() {
    let sample = sample();
    let (records, end) = read_all(&file(&sample));
    end.unwrap();
    let expected: Vec<Record> = sample
        .into_iter()
        .map(|(project, mutation)| Record::Mutation { project, mutation })
        .collect();
    assert_eq!(records, expected);
}

fn txn_sample() -> Vec<Record> {
    let outcome = TxnOutcome {
        applied: true,
        failed_check: None,
        current_version: 0,
        results: vec![
            OpOutcome::Set { version: 7 },
            OpOutcome::Delete {
                deleted: true,
                version: 8,
            },
            OpOutcome::Incr {
                value: -2.5,
                version: 9,
            },
            OpOutcome::Merge {
                value: bytes::Bytes::from_static(&[0x2a, 0x00]),
                version: 10,
            },
            OpOutcome::Clear {
                removed: 3,
                version: 11,
            },
        ],
    };
    let failed = TxnOutcome {
        applied: false,
        failed_check: Some(2),
        current_version: 41,
        results: Vec::new(),
    };
    vec![
        Record::Txn {
            project: project("a"),
            at: 1_700_000_000_000,
            mutations: vec![
                Versioned {
                    version: 7,
                    mutation: Mutation::Set {
                        key: "k".into(),
                        value: vec![0x20, 0x01].into(),
                        expires_at: Deadline::at(42),
                    },
                },
                Versioned {
                    version: 8,
                    mutation: Mutation::Delete { key: "d".into() },
                },
                Versioned {
                    version: 9,
                    mutation: Mutation::Expire { key: "e".into() },
                },
                Versioned {
                    version: 11,
                    mutation: Mutation::Clear,
                },
            ],
            request: Some(("req-1".into(), 0xfeed, outcome)),
        },
        Record::Txn {
            project: project("b"),
            at: 5,
            mutations: Vec::new(),
            request: Some(("req-2".into(), 1, failed)),
        },
        Record::Txn {
            project: project("b"),
            at: 6,
            mutations: vec![Versioned {
                version: 2,
                mutation: Mutation::Set {
                    key: "ключ".into(),
                    value: vec![0x08, 0x00].into(),
                    expires_at: None,
                },
            }],
            request: None,
        },
        Record::Version {
            project: project("c"),
            version: u64::MAX,
        },
        Record::Incarnation {
            project: project("c"),
            base: 1_764_600_000_000,
        },
        Record::Retired {
            project: project("d"),
            last: 77,
        },
    ]
}

fn txn_file(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
    let mut out = file_header(LOG_MAGIC).to_vec();
    let mut boundaries = vec![out.len()];
    for record in records {
        match record {
            Record::Txn {
                project,
                at,
                mutations,
                request,
            } => {
                let request = request.as_ref().map(|(id, fp, o)| (&**id, *fp, o));
                encode_txn(&mut out, project, *at, mutations, request);
            }
            Record::Version { project, version } => encode_version(&mut out, project, *version),
            Record::Incarnation { project, base } => encode_incarnation(&mut out, project, *base),
            Record::Retired { project, last } => encode_retired(&mut out, project, *last),
            other => panic!("not in the sample: {other:?}"),
        }
        boundaries.push(out.len());
    }
    (out, boundaries)
}

#[test]
fn txn_and_version_records_round_trip_and_tear_only_at_the_tail() {
    let sample = txn_sample();
    let (bytes, boundaries) = txn_file(&sample);
    let (records, end) = read_all(&bytes);
    end.unwrap();
    assert_eq!(records, sample);
    // A transaction is one frame: a cut inside it loses all of it.
    for cut in FILE_HEADER_LEN..bytes.len() {
        let (records, end) = read_all(&bytes[..cut]);
        let whole = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
        assert_eq!(records, sample[..whole], "cut at {cut}");
        if !boundaries.contains(&cut) {
            assert!(matches!(end, Err(FrameError::Torn { .. })), "cut at {cut}");
        }
    }
    // A snapshot entry is a one-set transaction with its version.
    let mut entry = Vec::new();
    encode_entry(
        &mut entry,
        &project("p"),
        "k",
        &[0x20, 0x01],
        Deadline::at(9),
        3,
    );
    let payload = &entry[FRAME_HEADER_LEN..];
    assert_eq!(
        decode_payload(payload).unwrap(),
        Record::Txn {
            project: project("p"),
            at: 0,
            mutations: vec![Versioned {
                version: 3,
                mutation: Mutation::Set {
                    key: "k".into(),
                    value: vec![0x20, 0x01].into(),
                    expires_at: Deadline::at(9),
                },
            }],
            request: None,
        }
    );
}

#[test]
fn first_format_files_are_still_read() {
    let mut bytes = file(&sample());
    bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
    let (records, end) = read_all(&bytes);
    end.unwrap();
    assert_eq!(records.len(), sample().len());
}

#[test]
fn every_truncation_is_a_torn_tail_after_the_whole_records() {
    let sample = sample();
    let bytes = file(&sample);
    let mut boundaries = vec![FILE_HEADER_LEN];
    let mut out = file_header(LOG_MAGIC).to_vec();
    for (p, m) in &sample {
        encode_mutation(&mut out, p, m);
        boundaries.push(out.len());
    }
    for cut in 0..bytes.len() {
        let (records, end) = read_all(&bytes[..cut]);
        let whole = boundaries
            .iter()
            .filter(|&&b| b <= cut)
            .count()
            .saturating_sub(1);
        assert_eq!(records.len(), whole, "cut at {cut}");
        if boundaries.contains(&cut) {
            end.unwrap_or_else(|e| panic!("cut at boundary {cut}: {e}"));
        } else {
            let expected = boundaries
                .iter()
                .copied()
                .filter(|&b| b <= cut)
                .max()
                .unwrap_or(0);
            match end {
                Err(FrameError::Torn { offset }) => {
                    assert_eq!(offset as usize, expected, "cut at {cut}")
                }
                other => panic!("cut at {cut}: expected torn, got {other:?}"),
            }
        }
    }
}

#[test]
fn flipped_bytes_before_the_tail_are_corruption() {
    let sample = sample();
    let bytes = file(&sample);
    let last_start = {
        let mut out = file_header(LOG_MAGIC).to_vec();
        for (p, m) in &sample[..sample.len() - 1] {
            encode_mutation(&mut out, p, m);
        }
        out.len()
    };
    for i in FILE_HEADER_LEN..last_start {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        let (_, end) = read_all(&bad);
        assert!(
            matches!(end, Err(FrameError::Corrupt { .. })),
            "flip at {i}: {end:?}"
        );
    }
}

#[test]
fn zeroed_tail_is_torn_and_wrong_version_is_corrupt() {
    let mut bytes = file(&sample());
    let len = bytes.len();
    bytes.extend_from_slice(&[0; 100]);
    match read_all(&bytes) {
        (records, Err(FrameError::Torn { offset })) => {
            assert_eq!(records.len(), 4);
            assert_eq!(offset as usize, len);
        }
        other => panic!("{other:?}"),
    }
    let mut wrong = file(&sample());
    wrong[6] = 9;
    match read_all(&wrong).1 {
        Err(FrameError::Corrupt { damage, .. }) => {
            assert_eq!(damage, FrameDamage::UnsupportedVersion(9));
            assert!(damage.to_string().contains("version 9"), "{damage}")
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Arbitrary bytes never panic the decoder, and never make it
    /// allocate past the input.
    #[test]
    fn decode_payload_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_payload(&bytes);
    }

    /// The same for transaction records: a valid head, then anything
    /// (counts and lengths that lie included).
    #[test]
    fn txn_payloads_survive_arbitrary_tails(tail in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut payload = vec![TXN, 1, b'p'];
        payload.extend_from_slice(&tail);
        let _ = decode_payload(&payload);
    }

    /// Arbitrary file contents: no panic, and no payload buffer larger
    /// than the file, whatever a length field claims.
    #[test]
    fn frame_reader_survives_arbitrary_files(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = file_header(LOG_MAGIC).to_vec();
        bytes.extend_from_slice(&tail);
        let mut reader = FrameReader::open(bytes.as_slice(), bytes.len() as u64, LOG_MAGIC).unwrap();
        let mut payload = Vec::new();
        while let Ok(true) = reader.next_into(&mut payload) {
            prop_assert!(payload.capacity() <= bytes.len());
            let _ = decode_payload(&payload);
        }
    }

    /// A huge length field with a valid check is refused before any
    /// allocation when the file cannot hold it.
    #[test]
    fn bogus_lengths_never_allocate(len in 1u32.., rest in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = file_header(LOG_MAGIC).to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&len_check(len).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&rest);
        let mut reader = FrameReader::open(bytes.as_slice(), bytes.len() as u64, LOG_MAGIC).unwrap();
        let mut payload = Vec::new();
        let result = reader.next_into(&mut payload);
        prop_assert!(payload.capacity() <= bytes.len());
        if len as usize > rest.len() {
            let refused = matches!(result, Err(FrameError::Torn { .. }) | Err(FrameError::Corrupt { .. }));
            prop_assert!(refused);
        }
    }

    #[test]
    fn valid_frames_with_garbage_payloads_are_rejected_cleanly(payload in prop::collection::vec(any::<u8>(), 1..128)) {
        let mut out = file_header(LOG_MAGIC).to_vec();
        frame(&mut out, |p| p.extend_from_slice(&payload));
        let mut reader = FrameReader::open(out.as_slice(), out.len() as u64, LOG_MAGIC).unwrap();
        let mut read = Vec::new();
        prop_assert!(reader.next_into(&mut read).unwrap());
        prop_assert_eq!(&read, &payload);
        let _ = decode_payload(&read);
    }
}

#[test]
fn history_records_round_trip_and_bad_ones_are_refused() {
    use crate::watch::{Event, EventKind};
    let p = project("h");
    let events = [
        Event {
            version: 8,
            kind: EventKind::Set,
            key: "k".into(),
            value: Some(bytes::Bytes::from_static(&[0x20, 0x01])),
            expires_at: Deadline::at(99),
        },
        Event {
            version: 9,
            kind: EventKind::Deleted,
            key: "k".into(),
            value: None,
            expires_at: None,
        },
        Event {
            version: 10,
            kind: EventKind::Expired,
            key: "j".into(),
            value: None,
            expires_at: None,
        },
        Event {
            version: 11,
            kind: EventKind::Cleared,
            key: "".into(),
            value: None,
            expires_at: None,
        },
    ];
    let mut out = Vec::new();
    encode_history(&mut out, &p, 5, 7);
    assert_eq!(
        decode_payload(&out[FRAME_HEADER_LEN..]).unwrap(),
        Record::History {
            project: p.clone(),
            incarnation: 5,
            floor: 7
        }
    );
    for event in &events {
        out.clear();
        encode_history_event(&mut out, &p, 5, event);
        let payload = &out[FRAME_HEADER_LEN..];
        assert_eq!(
            decode_payload(payload).unwrap(),
            Record::HistoryEvent {
                project: p.clone(),
                incarnation: 5,
                event: event.clone()
            }
        );
        // Every cut is refused, never misread.
        for cut in 0..payload.len() {
            assert!(decode_payload(&payload[..cut]).is_err(), "cut at {cut}");
        }
    }
    // Kind byte: after the record kind, the project (1 + 1 byte) and two u64s.
    out.clear();
    encode_history_event(&mut out, &p, 5, &events[0]);
    let mut payload = out[FRAME_HEADER_LEN..].to_vec();
    payload[1 + 2 + 16] = 9;
    assert_eq!(decode_payload(&payload), Err(DecodeError::EventKind(9)));
    // A set's key may not be empty (only a clear's is).
    let mut empty = events[1].clone();
    empty.key = "".into();
    out.clear();
    encode_history_event(&mut out, &p, 5, &empty);
    assert_eq!(
        decode_payload(&out[FRAME_HEADER_LEN..]),
        Err(DecodeError::EmptyKey)
    );
}
