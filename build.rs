//! Generates the gRPC code and the reflection descriptor set from `proto/`.
//!
//! `protox` parses the `.proto` files in pure Rust, so the build needs no system
//! `protoc`. Imports resolve from `proto/`: the vendored
//! `google/api/field_behavior.proto` is there, and `protox` bundles the
//! `google/protobuf` files (`descriptor.proto`, `timestamp.proto`, ...). The
//! descriptor set (with its imports) is written to `OUT_DIR` for server
//! reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/loyalty/v1/audit.proto",
    "proto/loyalty/v1/common.proto",
    "proto/loyalty/v1/coupons.proto",
    "proto/loyalty/v1/events.proto",
    "proto/loyalty/v1/membership.proto",
    "proto/loyalty/v1/points.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds `migrations/` at compile time: a new or changed
    // migration must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();

    // Reflection serves the encoding that keeps extension options such as
    // `(google.api.field_behavior)`; `prost_types` (and so `descriptors`) drops them.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("loyalty_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Malformed request bodies are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
