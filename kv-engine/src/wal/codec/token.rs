//! The PutToken record (kind 7): id, project, read-only flag, the secret's
//! SHA-256, creation time, then the token's rate limits only when it has
//! some, so a token without them is byte for byte the record written before
//! token limits existed and such records decode unchanged.

use super::{Cursor, DecodeError, PUT_TOKEN, put_bytes, put_project};
use crate::catalog::{TokenLimits, TokenMeta};

/// Limit flags of the tail: bit 0 ops_per_second, bit 1
/// write_bytes_per_second.
const LIMIT_BITS: u8 = 1 | 2;

pub(super) fn encode(payload: &mut Vec<u8>, token: &TokenMeta) {
    payload.push(PUT_TOKEN);
    put_bytes(payload, token.id.as_bytes());
    put_project(payload, &token.project);
    payload.push(u8::from(token.read_only));
    payload.extend_from_slice(&token.secret_sha256);
    payload.extend_from_slice(&token.created_at_ms.to_le_bytes());
    let limits = token.limits;
    if limits.is_set() {
        let has = u8::from(limits.ops_per_second.is_some())
            | (u8::from(limits.write_bytes_per_second.is_some()) << 1);
        payload.push(has);
        payload.extend_from_slice(&limits.ops_per_second.unwrap_or(0).to_le_bytes());
        let bytes = limits.write_bytes_per_second.unwrap_or(0);
        payload.extend_from_slice(&bytes.to_le_bytes());
    }
}

/// Decodes what follows the kind byte.
pub(super) fn decode(r: &mut Cursor<'_, '_>) -> Result<TokenMeta, DecodeError> {
    let id = r.text()?;
    let project = r.project()?;
    let read_only = r.u8()? != 0;
    let secret_sha256 = r.take(32)?.try_into().expect("32 bytes");
    let created_at_ms = r.u64()?;
    // Records from before token limits end here.
    let limits = if r.0.is_empty() {
        TokenLimits::default()
    } else {
        let has = r.u8()?;
        if has & !LIMIT_BITS != 0 || has == 0 {
            return Err(DecodeError::TokenLimitFlags(has));
        }
        let (ops, bytes) = (r.u64()?, r.u64()?);
        TokenLimits {
            ops_per_second: (has & 1 != 0).then_some(ops),
            write_bytes_per_second: (has & 2 != 0).then_some(bytes),
        }
    };
    Ok(TokenMeta {
        id,
        project,
        read_only,
        secret_sha256,
        created_at_ms,
        limits,
    })
}
