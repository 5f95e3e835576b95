//! Reply frames written by `FrameWriter` are byte for byte what prost
//! writes for a `kv.v1.PipelineResponse` of the same replies, and decode
//! with the public types: every reply kind, errors included, and Gets over
//! arbitrary ids, versions, deadlines, incarnations and values.

use bytes::Bytes;
use kv_proto::{
    frame::{FoundValue, FrameWriter, ReplyFrame},
    v1,
    wire::{
        self, CallError, DeleteManyResponse, DeleteResponse, GetManyResponse, GetResponse,
        HasResponse, IncrResponse, MergeResponse, Reply, SetManyResponse, SetResponse,
        reply::Response as Res,
    },
};
use proptest::prelude::*;
use prost::Message;
use prost_types::{Struct, Value, value::Kind};

fn encoded_value(kind: Kind) -> Bytes {
    Value { kind: Some(kind) }.encode_to_vec().into()
}

/// A Get's reply as the unary method's response.
fn get_reply(id: u64, incarnation: u64, found: Option<(&Bytes, u64, Option<u64>)>) -> Reply {
    let response = match found {
        Some((value, version, expires_at_ms)) => GetResponse {
            found: true,
            value: value.clone(),
            version,
            expires_at_ms,
            incarnation,
        },
        None => GetResponse {
            incarnation,
            ..GetResponse::default()
        },
    };
    Reply {
        id,
        response: Some(Res::Get(response)),
    }
}

fn push_get(writer: &mut FrameWriter, reply: &Reply) {
    let Some(Res::Get(get)) = &reply.response else {
        unreachable!("only Gets are pushed as Gets")
    };
    let found = get.found.then_some(FoundValue {
        value: &get.value,
        version: get.version,
        expires_at_ms: get.expires_at_ms,
    });
    writer.push_get(reply.id, get.incarnation, found);
}

/// The frame `replies` make through the writer (Gets through `push_get`,
/// the rest as structs), checked against prost's encoding of the same
/// replies and against the public types' decoding and encoding.
fn check_frame(replies: &[Reply]) -> Result<(), TestCaseError> {
    let mut writer = FrameWriter::default();
    let mut prost_bytes = Vec::new();
    for reply in replies {
        match &reply.response {
            Some(Res::Get(_)) => push_get(&mut writer, reply),
            _ => writer.push_reply(reply),
        }
        prost::encoding::message::encode(1, reply, &mut prost_bytes);
    }
    prop_assert_eq!(writer.len(), prost_bytes.len());
    let frame = writer.take_frame();
    prop_assert!(writer.is_empty());
    let sent = frame.encode_to_vec();
    prop_assert_eq!(&sent, &prost_bytes);

    // Clients decode it with the public types, and those encode it back
    // to the same bytes.
    let public = v1::PipelineResponse::decode(sent.as_slice())
        .map_err(|e| TestCaseError::fail(format!("a client cannot decode the frame: {e}")))?;
    prop_assert_eq!(public.replies.len(), replies.len());
    prop_assert_eq!(public.encode_to_vec(), prost_bytes);
    for (seen, sent) in public.replies.iter().zip(replies) {
        let expected = v1::Reply::decode(sent.encode_to_vec().as_slice())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(seen, &expected);
    }

    // The frame decoded as the server's own type keeps its bytes.
    let back =
        ReplyFrame::decode(sent.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back.as_bytes(), sent.as_slice());
    Ok(())
}

#[test]
fn every_reply_kind_is_encoded_as_prost_encodes_it() {
    let text = encoded_value(Kind::StringValue("hello".into()));
    let null = encoded_value(Kind::NullValue(0));
    let object = encoded_value(Kind::StructValue(Struct {
        fields: [(
            "n".to_string(),
            Value {
                kind: Some(Kind::NumberValue(1.5)),
            },
        )]
        .into(),
    }));
    let large = encoded_value(Kind::StringValue("x".repeat(70_000)));
    let replies = vec![
        get_reply(1, 4, Some((&text, 9, Some(1_700_000_000_000)))),
        get_reply(0, 0, Some((&null, 0, Some(0)))),
        get_reply(u64::MAX, u64::MAX, Some((&object, u64::MAX, None))),
        get_reply(3, 2, None),
        get_reply(0, 0, None),
        get_reply(300, 1, Some((&large, 1 << 40, None))),
        Reply {
            id: 5,
            response: Some(Res::Set(SetResponse {
                applied: true,
                version: 17,
            })),
        },
        Reply {
            id: 6,
            response: Some(Res::Has(HasResponse { exists: false })),
        },
        Reply {
            id: 7,
            response: Some(Res::Delete(DeleteResponse {
                deleted: true,
                version: 18,
            })),
        },
        Reply {
            id: 8,
            response: Some(Res::Incr(IncrResponse {
                value: -2.5,
                version: 19,
            })),
        },
        Reply {
            id: 9,
            response: Some(Res::Merge(MergeResponse {
                value: object.clone(),
                version: 20,
            })),
        },
        Reply {
            id: 10,
            response: Some(Res::Error(CallError {
                code: 8,
                message: "the project's rate limit of 10 writes/s is spent".into(),
                retry_after_ms: Some(250),
            })),
        },
        Reply {
            id: 11,
            response: Some(Res::Error(CallError {
                code: 3,
                message: String::new(),
                retry_after_ms: None,
            })),
        },
        Reply {
            id: 12,
            response: Some(Res::GetMany(GetManyResponse {
                results: vec![
                    GetResponse {
                        found: true,
                        value: text.clone(),
                        version: 3,
                        expires_at_ms: None,
                        incarnation: 1,
                    },
                    GetResponse::default(),
                ],
            })),
        },
        Reply {
            id: 13,
            response: Some(Res::SetMany(SetManyResponse {
                versions: vec![1, 2, 300],
            })),
        },
        Reply {
            id: 14,
            response: Some(Res::DeleteMany(DeleteManyResponse { deleted: 2 })),
        },
        Reply {
            id: 15,
            response: None,
        },
    ];
    check_frame(&replies).unwrap();
    // One at a time too: each reply is a frame of its own.
    for reply in &replies {
        check_frame(std::slice::from_ref(reply)).unwrap();
    }
}

#[test]
fn a_frame_split_before_a_reply_holds_the_replies_before_it() {
    let value = encoded_value(Kind::BoolValue(true));
    let mut writer = FrameWriter::with_capacity(64);
    writer.push_get(1, 1, None);
    let first = writer.len();
    writer.push_get(
        2,
        1,
        Some(FoundValue {
            value: &value,
            version: 5,
            expires_at_ms: None,
        }),
    );
    let before = writer.take_first(first);
    let after = writer.take_frame();
    let decode = |frame: &ReplyFrame| {
        v1::PipelineResponse::decode(frame.as_bytes())
            .unwrap()
            .replies
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(decode(&before), [1]);
    assert_eq!(decode(&after), [2]);
}

#[test]
fn decoding_a_frame_skips_unknown_fields_and_refuses_garbage() {
    let reply = get_reply(4, 1, None);
    let mut bytes = Vec::new();
    prost::encoding::message::encode(1, &reply, &mut bytes);
    let known = bytes.clone();
    // An unknown varint field 7, as a newer server might send.
    bytes.extend_from_slice(&[7 << 3, 42]);
    assert_eq!(
        ReplyFrame::decode(bytes.as_slice()).unwrap().as_bytes(),
        known
    );
    // A reply whose length runs past the end.
    assert!(ReplyFrame::decode(&[0x0a, 0x05, 0x08][..]).is_err());
    assert_eq!(wire::Reply::decode(&known[2..]).unwrap(), reply);
}

fn value_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::NullValue(0)),
        any::<bool>().prop_map(Kind::BoolValue),
        any::<i32>().prop_map(|n| Kind::NumberValue(f64::from(n) / 4.0)),
        ".{0,40}".prop_map(Kind::StringValue),
        proptest::collection::vec(0u8..255, 0..300)
            .prop_map(|b| Kind::StringValue(b.iter().map(|&c| char::from(c)).collect())),
    ]
}

proptest! {
    #[test]
    fn gets_are_encoded_as_prost_encodes_them(
        gets in proptest::collection::vec(
            (
                any::<u64>(),
                prop_oneof![Just(0u64), any::<u64>()],
                proptest::option::of((
                    value_kind(),
                    prop_oneof![Just(0u64), any::<u64>()],
                    proptest::option::of(prop_oneof![Just(0u64), any::<u64>()]),
                )),
            ),
            1..8,
        )
    ) {
        let values: Vec<Option<Bytes>> = gets
            .iter()
            .map(|(_, _, found)| found.as_ref().map(|(kind, _, _)| encoded_value(kind.clone())))
            .collect();
        let replies: Vec<Reply> = gets
            .iter()
            .zip(&values)
            .map(|((id, incarnation, found), value)| {
                let found = found
                    .as_ref()
                    .zip(value.as_ref())
                    .map(|((_, version, expires), value)| (value, *version, *expires));
                get_reply(*id, *incarnation, found)
            })
            .collect();
        check_frame(&replies)?;
    }
}
