//! Generated protobuf messages and gRPC stubs of the `kv.v1` API.
//!
//! This crate is a leaf: generated code and the file descriptor set, nothing
//! else. The typed SDK is `kv-client`; the server is `kv-server`.
//!
//! # Layout
//!
//! - [`v1`]: the messages of `proto/kv/v1/kv.proto` and `admin.proto`, tonic
//!   clients ([`v1::kv_service_client::KvServiceClient`],
//!   [`v1::admin_service_client::AdminServiceClient`]) and server traits.
//!   `google.protobuf.Value` fields are [`prost_types::Value`].
//! - [`wire`]: the same service as the server sees it, with every
//!   `google.protobuf.Value` field kept as its encoded bytes. The bytes on the
//!   wire are identical; the server uses this view to validate values itself
//!   and to send stored values back without re-encoding them. Its
//!   `PipelineResponse` is [`frame::ReplyFrame`], written reply by reply.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of the API and of
//!   everything it imports, for gRPC server reflection.
//!
//! # Example
//!
//! ```
//! use kv_proto::v1::{GetRequest, SetRequest};
//! use prost_types::{value::Kind, Value};
//!
//! let set = SetRequest {
//!     key: "greeting".into(),
//!     value: Some(Value { kind: Some(Kind::StringValue("hello".into())) }),
//!     ttl_ms: Some(60_000),
//!     ..SetRequest::default()
//! };
//! assert_eq!(set.ttl_ms, Some(60_000));
//! let get = GetRequest { key: set.key };
//! assert_eq!(get.key, "greeting");
//! ```

pub mod codec;
pub mod frame;

/// Messages, client and server of `kv.v1` as users see them.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/kv.v1.rs"));
}

/// The `kv.v1` service as the server sees it: identical on the wire to
/// [`v1`], but each `google.protobuf.Value` field is its encoded bytes.
///
/// ```
/// use kv_proto::wire::GetResponse;
/// use prost::Message;
/// use prost_types::{value::Kind, Value};
///
/// // A value encoded once and stored can be sent as is...
/// let stored = Value { kind: Some(Kind::BoolValue(true)) }.encode_to_vec();
/// let on_wire = GetResponse { found: true, value: stored.into(), ..Default::default() }.encode_to_vec();
/// // ...and clients decode it as an ordinary `google.protobuf.Value`.
/// let seen = kv_proto::v1::GetResponse::decode(on_wire.as_slice()).unwrap();
/// assert_eq!(seen.value.unwrap().kind, Some(Kind::BoolValue(true)));
/// ```
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/wire/kv.v1.rs"));
}

/// Encoded `google.protobuf.FileDescriptorSet` of `kv/v1/kv.proto`,
/// `kv/v1/admin.proto` and their imports, for `tonic-reflection`.
///
/// ```
/// use prost::Message;
/// let set = prost_types::FileDescriptorSet::decode(kv_proto::FILE_DESCRIPTOR_SET).unwrap();
/// assert!(set.file.iter().any(|f| f.name() == "kv/v1/kv.proto"));
/// ```
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kv_descriptor.bin"));

/// The rules of the contract the server and every SDK share (metadata
/// names, the project-name rule, limits).
pub use kv_contract as contract;

/// The gRPC service name, as used by health checks and reflection.
pub const SERVICE_NAME: &str = "kv.v1.KvService";

/// The admin service's gRPC name.
pub const ADMIN_SERVICE_NAME: &str = "kv.v1.AdminService";
