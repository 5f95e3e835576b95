//! PutToken records with and without rate limits: records written before
//! token limits decode unchanged, new ones round-trip.

use super::*;
use crate::catalog::{TokenLimits, TokenMeta};

fn token(limits: TokenLimits) -> TokenMeta {
    TokenMeta {
        id: "0a1b2c3d4e5f6071".into(),
        project: ProjectName::parse("shop").unwrap(),
        read_only: true,
        secret_sha256: [7; 32],
        created_at_ms: 1_700_000_000_000,
        limits,
    }
}

/// The payload of a PutToken record exactly as the encoding before token
/// limits wrote it (kind, id, project, read_only, hash, created_at_ms).
fn old_put_token() -> Vec<u8> {
    let mut payload = vec![PUT_TOKEN];
    payload.extend_from_slice(&16u32.to_le_bytes());
    payload.extend_from_slice(b"0a1b2c3d4e5f6071");
    payload.push(4);
    payload.extend_from_slice(b"shop");
    payload.push(1);
    payload.extend_from_slice(&[7; 32]);
    payload.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    payload
}

fn encoded_payload(change: &CatalogChange) -> Vec<u8> {
    let mut framed = Vec::new();
    encode_catalog(&mut framed, change);
    framed[crate::wal::frame::FRAME_HEADER_LEN..].to_vec()
}

#[test]
fn put_token_records_written_before_token_limits_still_decode() {
    let decoded = decode_payload(&old_put_token()).unwrap();
    assert_eq!(
        decoded,
        Record::Catalog(CatalogChange::PutToken(token(TokenLimits::default())))
    );
}

#[test]
fn a_token_without_limits_is_encoded_as_before() {
    let change = CatalogChange::PutToken(token(TokenLimits::default()));
    assert_eq!(encoded_payload(&change), old_put_token());
}

#[test]
fn token_limits_round_trip() {
    let cases = [
        TokenLimits {
            ops_per_second: Some(20),
            write_bytes_per_second: None,
        },
        TokenLimits {
            ops_per_second: None,
            write_bytes_per_second: Some(1 << 20),
        },
        TokenLimits {
            ops_per_second: Some(0),
            write_bytes_per_second: Some(u64::MAX),
        },
    ];
    for limits in cases {
        let change = CatalogChange::PutToken(token(limits));
        let payload = encoded_payload(&change);
        assert_eq!(payload.len(), old_put_token().len() + 17);
        assert_eq!(decode_payload(&payload).unwrap(), Record::Catalog(change));
        // A record cut inside the limits is an error, not a token.
        assert!(decode_payload(&payload[..payload.len() - 1]).is_err());
        assert!(decode_payload(&payload[..old_put_token().len() + 1]).is_err());
    }
}

#[test]
fn unknown_token_limit_flags_are_refused() {
    for has in [0u8, 4, 0x83] {
        let mut payload = old_put_token();
        payload.push(has);
        payload.extend_from_slice(&[0; 16]);
        assert_eq!(
            decode_payload(&payload),
            Err(DecodeError::TokenLimitFlags(has)),
            "flags {has}"
        );
    }
}
