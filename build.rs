//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed)
//! and keeps the encoded descriptor set for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Both files are package metering.v1, so they generate one Rust module
    // and one descriptor set (ledger.proto imports metering.proto).
    let protos = [
        "proto/metering/v1/metering.proto",
        "proto/metering/v1/ledger.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // Relative relocations packed (DT_RELR, glibc 2.36+): the dynamic
    // loader reads a few KiB at start instead of a 500 KiB `.rela.dyn`,
    // which otherwise stays resident for the life of the process.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }

    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    // Kept for tonic-reflection, so grpcurl works without the .proto files.
    std::fs::write(
        out.join("metering_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Maps become BTreeMaps so that iterating them yields sorted keys,
        // which is what Go's encoding/json writes.
        .btree_map(".")
        // Our codec (src/pb/codec.rs): an undecodable request is
        // INVALID_ARGUMENT, not tonic's INTERNAL.
        .codec_path("crate::pb::codec::Codec")
        // Decoded entry by entry (src/pb/lenient.rs), so one bad entry or
        // batch does not fail its neighbours.
        .extern_path(
            ".metering.v1.EmitBatchRequest",
            "crate::pb::lenient::EmitBatchRequest",
        )
        .extern_path(
            ".metering.v1.SubmitBatchRequest",
            "crate::pb::lenient::SubmitBatchRequest",
        )
        .compile_fds(fds)?;
    Ok(())
}
