//! kws-proto: the kws v1 gRPC API (`proto/kws/v1/kws.proto`), generated at build time.
//!
//! - [`v1`]: messages, `keyword_spotting_client::KeywordSpottingClient` and
//!   `keyword_spotting_server::KeywordSpottingServer`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for `tonic-reflection`.

/// kws.v1 messages and services.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("kws.v1");
}

/// Encoded `FileDescriptorSet` of the kws protos (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kws_descriptor.bin"));
