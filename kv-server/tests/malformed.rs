//! Requests that are not valid protobuf, or whose fields have the wrong
//! wire type, are INVALID_ARGUMENT naming what is wrong: never INTERNAL,
//! which clients and retry policies read as a fault of the server.

use kv_proto::wire;
use kv_tests::{InProcess, Rng, Target};
use prost::{
    Message,
    bytes::{Buf, BufMut},
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Sends bytes as they are and takes the answer as bytes.
#[derive(Debug, Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("hello".into())),
    }
    .encode_to_vec();
    vec![
        (
            "/kv.v1.KvService/Set",
            wire::SetRequest {
                key: "greeting".into(),
                value: value.clone().into(),
                ttl_ms: Some(60_000),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/kv.v1.KvService/Get",
            wire::GetRequest {
                key: "greeting".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/kv.v1.KvService/Incr",
            wire::IncrRequest {
                key: "n".into(),
                delta: 2.0,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/kv.v1.KvService/Merge",
            wire::MergeRequest {
                key: "doc".into(),
                patch: value.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ]
}

/// One random damage: a flipped byte, a cut, a byte inserted, or a field
/// tag rewritten to another wire type.
fn damage(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.below(4) {
        0 if !out.is_empty() => {
            let i = rng.index(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        1 if !out.is_empty() => out.truncate(rng.index(out.len())),
        2 => {
            let i = rng.index(out.len() + 1);
            out.insert(i, rng.below(256) as u8);
        }
        _ if !out.is_empty() => {
            // The first byte is a field tag: keep the field, change the
            // wire type.
            out[0] = (out[0] & !7) | (rng.below(6) as u8);
        }
        _ => out.push(0xff),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_requests_are_invalid_argument_never_internal() {
    let server = InProcess::start().await;
    let channel = tonic::transport::Channel::from_shared(server.ctx().url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rng = Rng::from_env("damaged requests");
    let samples = samples();
    let mut counts = std::collections::BTreeMap::new();
    let mut undecodable = 0;
    for _ in 0..2000 {
        let (path, bytes) = &samples[rng.index(samples.len())];
        let body = damage(bytes, &mut rng);
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let answer = grpc
            .unary(
                tonic::Request::new(body.clone()),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await;
        let code = match &answer {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        assert_ne!(code, Code::Internal, "{path} {body:02x?}: {answer:?}");
        if let Err(status) = &answer
            && status
                .message()
                .starts_with("the request is not a valid kv.v1 message")
        {
            assert_eq!(status.code(), Code::InvalidArgument);
            undecodable += 1;
        }
        *counts.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    println!("answers to 2000 damaged requests: {counts:?}");
    assert!(
        undecodable > 100,
        "only {undecodable} requests failed to decode"
    );
    server.stop().await;
}

/// `bytes` with the marker `BADKEY` (a key of a call) replaced by bytes
/// that are not UTF-8.
fn with_bad_keys(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut replaced = 0;
    while let Some(at) = bytes.windows(6).position(|w| w == b"BADKEY") {
        bytes[at..at + 6].copy_from_slice(b"ok\xff\xfeok");
        replaced += 1;
    }
    assert!(replaced > 0, "the request has a BADKEY marker");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_not_utf8_are_refused_per_call_naming_the_byte() {
    use kv_proto::v1::{self, call::Request as Req, reply::Response as Res};

    let server =
        kv_tests::BinaryServer::start(env!("CARGO_BIN_EXE_kv-server"), &["--fsync", "never"]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let limit = std::time::Duration::from_secs(30);
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::BoolValue(true)),
    };

    // Unary: INVALID_ARGUMENT naming the key and where it stops being UTF-8.
    let get = with_bad_keys(
        v1::GetRequest {
            key: "BADKEY".into(),
        }
        .encode_to_vec(),
    );
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let status = tokio::time::timeout(
        limit,
        grpc.unary(
            tonic::Request::new(get),
            tonic::codegen::http::uri::PathAndQuery::from_static("/kv.v1.KvService/Get"),
            RawCodec,
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("key is not UTF-8 (byte 2 starts"),
        "{status:?}"
    );

    // Pipeline: the calls with such keys get that error, the others run,
    // and the stream goes on.
    let call = |id: u64, request: Req| v1::Call {
        id,
        request: Some(request),
        ..v1::Call::default()
    };
    let frame = v1::PipelineRequest {
        calls: vec![
            call(
                1,
                Req::Get(v1::GetRequest {
                    key: "BADKEY".into(),
                }),
            ),
            call(
                2,
                Req::Set(v1::SetRequest {
                    key: "BADKEY".into(),
                    value: Some(value.clone()),
                    ..v1::SetRequest::default()
                }),
            ),
            call(
                3,
                Req::GetMany(v1::GetManyRequest {
                    keys: vec!["fine".into(), "BADKEY".into()],
                }),
            ),
            call(
                4,
                Req::Set(v1::SetRequest {
                    key: "fine".into(),
                    value: Some(value.clone()),
                    ..v1::SetRequest::default()
                }),
            ),
            call(5, Req::Get(v1::GetRequest { key: "fine".into() })),
        ],
        project: String::new(),
    };
    let frame = with_bad_keys(frame.encode_to_vec());
    let (frames, outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    frames.send(frame).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut replies = tokio::time::timeout(
        limit,
        grpc.streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
            tonic::codegen::http::uri::PathAndQuery::from_static("/kv.v1.KvService/Pipeline"),
            RawCodec,
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 5 {
        let bytes = tokio::time::timeout(limit, replies.message())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream stays open");
        for reply in v1::PipelineResponse::decode(bytes.as_slice())
            .unwrap()
            .replies
        {
            got.insert(reply.id, reply.response.unwrap());
        }
    }
    for (id, at) in [(1, ""), (2, ""), (3, "keys[1]: ")] {
        let Res::Error(error) = &got[&id] else {
            panic!("call {id} was answered {:?}", got[&id]);
        };
        assert_eq!(error.code, Code::InvalidArgument as i32, "call {id}");
        assert!(
            error
                .message
                .starts_with(&format!("{at}key is not UTF-8 (byte 2 starts")),
            "call {id}: {}",
            error.message
        );
    }
    assert!(matches!(&got[&4], Res::Set(set) if set.applied));
    let Res::Get(found) = &got[&5] else {
        panic!("{:?}", got[&5]);
    };
    assert_eq!(found.value, Some(value));
    server.terminate();
}
