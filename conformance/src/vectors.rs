//! The test vectors of `spec/vectors/`, embedded so that `tern-conformance vectors --out DIR`
//! hands third parties the exact files this runner was built with (frames, fragments,
//! delivery, packages, and the E2EE transcripts and negative cases).

/// (path under `spec/vectors/`, contents).
pub const VECTORS: &[(&str, &str)] = &[
    ("delivery/ordered_receive_test.json", include_str!("../../spec/vectors/delivery/ordered_receive_test.json")),
    ("e2ee/group_test.json", include_str!("../../spec/vectors/e2ee/group_test.json")),
    ("e2ee/primitives_test.json", include_str!("../../spec/vectors/e2ee/primitives_test.json")),
    ("e2ee/session_test.json", include_str!("../../spec/vectors/e2ee/session_test.json")),
    ("fragments/reassembly_test.json", include_str!("../../spec/vectors/fragments/reassembly_test.json")),
    ("frames/frame_codec_test.json", include_str!("../../spec/vectors/frames/frame_codec_test.json")),
    ("packages/package_reorder_test.json", include_str!("../../spec/vectors/packages/package_reorder_test.json")),
];

/// Writes every vector file under `dir`, keeping the relative paths; returns how many.
pub fn write_all(dir: &std::path::Path) -> std::io::Result<usize> {
    for (path, text) in VECTORS {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, text)?;
    }
    Ok(VECTORS.len())
}
