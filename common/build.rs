//! Compiles `proto/hotdeploy/v1/*.proto` with a vendored protoc, so that a fresh clone builds
//! with nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    // Read at run time, not baked in with `env!`: cargo may reuse one compiled build script for
    // two checkouts of the workspace (a clone sharing a target directory), and the protos must be
    // this checkout's.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = ["coordinator.proto", "peer.proto", "agent.proto"]
        .map(|f| root.join("hotdeploy/v1").join(f));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Small per-call buffers: see `src/codec.rs`.
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out.join("hotdeploy_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
