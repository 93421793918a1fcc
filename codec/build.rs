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
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
