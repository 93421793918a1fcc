//! Compiles the normative schema `spec/proto/tern.proto` with protox (pure Rust, no `protoc`).

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest.join("../spec/proto");
    let proto = proto_dir.join("tern.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir])?;
    // The descriptor set is exported so tools can decode bodies by reflection (JSON vectors,
    // conformance transcripts).
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("tern.bin"), prost::Message::encode_to_vec(&descriptors))?;
    // The two largest bodies (a key publish, a key bundle: ~450 and ~370 bytes inline) are
    // boxed in their oneofs, or every `Frame` would be as large as they are and each move of
    // a DELIVER (224 bytes) through the codec would copy 456.
    prost_build::Config::new()
        .bytes(["."])
        .boxed(".tern.v1.Request.op.key_publish")
        .boxed(".tern.v1.Response.result.key_bundle")
        .compile_fds(descriptors)?;
    Ok(())
}
