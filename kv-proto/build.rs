//! Compiles `proto/kv/v1/kv.proto` with the pure-Rust `protox` compiler (no
//! system `protoc`) and generates two views of it:
//!
//! - the public messages and client/server stubs, with `google.protobuf.Value`
//!   as `prost_types::Value`;
//! - a server-side "wire" view of the same service in which every
//!   `google.protobuf.Value` field is its encoded bytes. Both views have the
//!   same wire format. The server decodes values itself (so over-deep nesting
//!   is an INVALID_ARGUMENT it words, not a codec INTERNAL error) and returns
//!   stored values without decoding and re-encoding them. The keys of the
//!   calls are `bytes` too, slices of the received frame rather than one
//!   `String` each. Its
//!   `PipelineResponse` is `crate::frame::ReplyFrame`, a frame encoded as
//!   its replies are made.
//!
//! Output goes to `OUT_DIR` only, never into `src/`.

use std::{env, fs, path::PathBuf};

use prost::Message;
use prost_types::field_descriptor_proto::Type;

const PROTO_ROOT: &str = "../proto";
const PROTO_FILES: &[&str] = &["kv/v1/kv.proto", "kv/v1/admin.proto"];
/// The file whose `google.protobuf.Value` fields the server sees as bytes.
const KV_FILE: &str = "kv/v1/kv.proto";
const VALUE_TYPE: &str = ".google.protobuf.Value";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    // protox includes every import (the well-known types too), which is what
    // server reflection needs for grpcurl to describe google.protobuf.Value.
    let fds = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    fs::write(out_dir.join("kv_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_fds(fds.clone())?;

    let wire_dir = out_dir.join("wire");
    fs::create_dir_all(&wire_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // A request that does not decode is the caller's INVALID_ARGUMENT.
        .codec_path("crate::codec::RequestCodec")
        .bytes(".")
        // Reply frames are written as encoded bytes while the replies are
        // made (see `frame.rs`); identical on the wire.
        .extern_path(".kv.v1.PipelineResponse", "crate::frame::ReplyFrame")
        .out_dir(&wire_dir)
        .compile_fds(values_as_bytes(fds))?;
    Ok(())
}

/// The messages of single-key and multi-key calls (the calls a Pipeline
/// frame carries, and Batch's checks and ops) whose `key` and `keys`
/// fields the server sees as bytes.
const KEYED_MESSAGES: &[&str] = &[
    "GetRequest",
    "SetRequest",
    "HasRequest",
    "DeleteRequest",
    "IncrRequest",
    "MergeRequest",
    "GetManyRequest",
    "DeleteManyRequest",
    "SetOp",
    "DeleteOp",
    "IncrOp",
    "MergeOp",
    "Check",
];

/// Rewrites every `google.protobuf.Value` field of the kv files as `bytes`,
/// and the keys of [`KEYED_MESSAGES`] too: identical on the wire, but
/// decoded as slices of the received buffer instead of one `String` each
/// (the server checks that they are UTF-8).
fn values_as_bytes(mut fds: prost_types::FileDescriptorSet) -> prost_types::FileDescriptorSet {
    // Only the data service: the admin API has no values, and the well-known
    // types would clash with prost-types.
    fds.file.retain(|f| f.name() == KV_FILE);
    for file in &mut fds.file {
        file.dependency.clear();
        file.message_type
            .iter_mut()
            .for_each(message_values_as_bytes);
        for message in &mut file.message_type {
            if KEYED_MESSAGES.contains(&message.name()) {
                keys_as_bytes(message);
            }
        }
    }
    fds
}

fn keys_as_bytes(message: &mut prost_types::DescriptorProto) {
    for field in &mut message.field {
        if matches!(field.name(), "key" | "keys") && field.r#type() == Type::String {
            field.set_type(Type::Bytes);
        }
    }
}

fn message_values_as_bytes(message: &mut prost_types::DescriptorProto) {
    for field in &mut message.field {
        if field.type_name() == VALUE_TYPE {
            field.set_type(Type::Bytes);
            field.type_name = None;
        }
    }
    message
        .nested_type
        .iter_mut()
        .for_each(message_values_as_bytes);
}
