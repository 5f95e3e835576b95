//! PutProject records with and without rate limits: old records decode
//! unchanged, new ones round-trip.

use super::*;

fn shop() -> ProjectName {
    ProjectName::parse("shop").unwrap()
}

/// The payload of a PutProject record exactly as the encoding before rate
/// limits wrote it (kind, name, has bits 0-1, max_keys, max_bytes).
fn old_put_project(has: u8, max_keys: u64, max_bytes: u64) -> Vec<u8> {
    let mut payload = vec![PUT_PROJECT, 4];
    payload.extend_from_slice(b"shop");
    payload.push(has);
    payload.extend_from_slice(&max_keys.to_le_bytes());
    payload.extend_from_slice(&max_bytes.to_le_bytes());
    payload
}

fn encoded_payload(change: &CatalogChange) -> Vec<u8> {
    let mut framed = Vec::new();
    encode_catalog(&mut framed, change);
    framed[crate::wal::frame::FRAME_HEADER_LEN..].to_vec()
}

#[test]
fn put_project_records_written_before_rate_limits_still_decode() {
    let cases = [
        (0, Quota::UNLIMITED),
        (
            1,
            Quota {
                max_keys: Some(10),
                ..Quota::UNLIMITED
            },
        ),
        (
            3,
            Quota {
                max_keys: Some(10),
                max_bytes: Some(4096),
                ..Quota::UNLIMITED
            },
        ),
    ];
    for (has, quota) in cases {
        let old = old_put_project(has, 10, 4096);
        let decoded = decode_payload(&old).unwrap();
        assert_eq!(
            decoded,
            Record::Catalog(CatalogChange::PutProject {
                project: shop(),
                quota,
            })
        );
    }
}

#[test]
fn a_quota_without_rate_limits_is_encoded_as_before() {
    let change = CatalogChange::PutProject {
        project: shop(),
        quota: Quota {
            max_keys: Some(10),
            max_bytes: Some(4096),
            ..Quota::UNLIMITED
        },
    };
    assert_eq!(encoded_payload(&change), old_put_project(3, 10, 4096));
}

#[test]
fn rate_limits_round_trip() {
    let quotas = [
        Quota {
            ops_per_second: Some(100),
            ..Quota::UNLIMITED
        },
        Quota {
            write_bytes_per_second: Some(1 << 20),
            ..Quota::UNLIMITED
        },
        Quota {
            max_keys: Some(1),
            max_bytes: Some(2),
            ops_per_second: Some(0),
            write_bytes_per_second: Some(u64::MAX),
        },
    ];
    for quota in quotas {
        let change = CatalogChange::PutProject {
            project: shop(),
            quota,
        };
        let payload = encoded_payload(&change);
        assert_eq!(decode_payload(&payload).unwrap(), Record::Catalog(change));
        // A record cut inside the rate pair is an error, not a quota.
        assert!(decode_payload(&payload[..payload.len() - 1]).is_err());
    }
}
