//! `Pipeline` reply frames written as protobuf bytes while the replies are
//! made, instead of as `Reply` structs encoded by prost at the end.
//!
//! The server's view of `kv.v1.PipelineResponse` is [`ReplyFrame`]: the
//! already encoded fields of one frame, which tonic's codec copies into its
//! buffer as they are. A frame is built with a [`FrameWriter`], one reply
//! after another: a found value is copied once, from where the store keeps
//! it into the frame, and no reply allocates. The bytes are exactly those
//! prost writes for a `kv.v1.PipelineResponse` of the same replies, so
//! clients decode them with the ordinary types.
//!
//! ```
//! use kv_proto::frame::{FoundValue, FrameWriter};
//! use kv_proto::v1::{reply::Response, PipelineResponse};
//! use prost::Message;
//!
//! let mut writer = FrameWriter::default();
//! let stored = [0x20, 0x01]; // the encoded google.protobuf.Value `true`
//! writer.push_get(7, 3, Some(FoundValue { value: &stored, version: 12, expires_at_ms: None }));
//! let frame = writer.take_frame();
//! let seen = PipelineResponse::decode(frame.encode_to_vec().as_slice()).unwrap();
//! assert_eq!(seen.replies[0].id, 7);
//! let Some(Response::Get(get)) = &seen.replies[0].response else { panic!() };
//! assert!(get.found && get.version == 12 && get.incarnation == 3);
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{
    DecodeError, Message,
    encoding::{
        DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, message, skip_field,
    },
};

use crate::wire::Reply;

/// `PipelineResponse.replies`.
const REPLIES: u32 = 1;
/// `Reply.id` and `Reply.get`.
const REPLY_ID: u32 = 1;
const REPLY_GET: u32 = 2;
/// The fields of `GetResponse`.
const GET_FOUND: u32 = 1;
const GET_VALUE: u32 = 2;
const GET_VERSION: u32 = 3;
const GET_EXPIRES_AT_MS: u32 = 4;
const GET_INCARNATION: u32 = 5;

/// A `kv.v1.PipelineResponse` as its encoded fields: sent as is.
///
/// Decoding one (which the server never does) keeps the frame's replies
/// and drops unknown fields, as prost would.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ReplyFrame {
    encoded: Bytes,
}

impl ReplyFrame {
    /// The frame's encoded fields (the message without a length prefix).
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }
}

impl std::fmt::Debug for ReplyFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyFrame")
            .field("bytes", &self.encoded.len())
            .finish()
    }
}

impl Message for ReplyFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != REPLIES {
            return skip_field(wire_type, tag, buf, ctx);
        }
        // Checked as a Reply, then kept as the bytes it came in.
        let mut reply = Reply::default();
        message::merge(wire_type, &mut reply, buf, ctx)?;
        let mut encoded = BytesMut::from(&self.encoded[..]);
        message::encode(REPLIES, &reply, &mut encoded);
        self.encoded = encoded.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        self.encoded = Bytes::new();
    }
}

/// What a Get found: the stored value (an encoded `google.protobuf.Value`)
/// and its metadata.
#[derive(Debug, Clone, Copy)]
pub struct FoundValue<'a> {
    /// The encoded value, as stored.
    pub value: &'a [u8],
    /// The entry's version.
    pub version: u64,
    /// Its deadline (unix ms), if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

/// Builds reply frames; see the [module](self) docs.
///
/// One writer serves a whole stream: a taken frame shares the writer's
/// buffer until it is sent, so a busy stream reuses its memory.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: BytesMut,
}

/// The bytes of a varint-encoded field of `value` under a one-byte key,
/// prost's proto3 way: nothing for zero.
fn uint64_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

fn put_uint64(field: u32, value: u64, buf: &mut BytesMut) {
    if value != 0 {
        encode_key(field, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

impl FrameWriter {
    /// A writer whose buffer starts with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
        }
    }

    /// Bytes written and not yet taken.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is written since the last frame was taken.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends `reply` as prost encodes it.
    pub fn push_reply(&mut self, reply: &Reply) {
        message::encode(REPLIES, reply, &mut self.buf);
    }

    /// Appends the reply to Get call `id`: `found` or not, in project
    /// incarnation `incarnation`. The value is copied once, into the frame.
    pub fn push_get(&mut self, id: u64, incarnation: u64, found: Option<FoundValue<'_>>) {
        let value_len = found.map_or(0, |f| f.value.len());
        let get_len = match found {
            Some(f) => {
                // `found`, then `value` unless empty (proto3 bytes).
                2 + if value_len == 0 {
                    0
                } else {
                    1 + encoded_len_varint(value_len as u64) + value_len
                } + uint64_len(f.version)
                    + f.expires_at_ms.map_or(0, |ms| 1 + encoded_len_varint(ms))
            }
            None => 0,
        } + uint64_len(incarnation);
        let reply_len = uint64_len(id) + 1 + encoded_len_varint(get_len as u64) + get_len;
        self.buf
            .reserve(1 + encoded_len_varint(reply_len as u64) + reply_len);
        let buf = &mut self.buf;
        encode_key(REPLIES, WireType::LengthDelimited, buf);
        encode_varint(reply_len as u64, buf);
        put_uint64(REPLY_ID, id, buf);
        encode_key(REPLY_GET, WireType::LengthDelimited, buf);
        encode_varint(get_len as u64, buf);
        if let Some(f) = found {
            encode_key(GET_FOUND, WireType::Varint, buf);
            buf.put_u8(1);
            if value_len > 0 {
                encode_key(GET_VALUE, WireType::LengthDelimited, buf);
                encode_varint(value_len as u64, buf);
                buf.put_slice(f.value);
            }
            put_uint64(GET_VERSION, f.version, buf);
            if let Some(ms) = f.expires_at_ms {
                // `optional`: present even when zero.
                encode_key(GET_EXPIRES_AT_MS, WireType::Varint, buf);
                encode_varint(ms, buf);
            }
        }
        put_uint64(GET_INCARNATION, incarnation, buf);
    }

    /// Takes what is written since the last frame as a frame of its own.
    pub fn take_frame(&mut self) -> ReplyFrame {
        ReplyFrame {
            encoded: self.buf.split().freeze(),
        }
    }

    /// Takes the first `len` bytes written (whole replies: a length
    /// [`FrameWriter::len`] returned between pushes) as a frame, keeping the
    /// rest for the next.
    pub fn take_first(&mut self, len: usize) -> ReplyFrame {
        ReplyFrame {
            encoded: self.buf.split_to(len).freeze(),
        }
    }
}
