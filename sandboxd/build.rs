//! Generates sandboxd's own gRPC API (the Services API beside CRI) from its proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/services.proto");
    tonic_prost_build::configure().compile_protos(&["proto/services.proto"], &["proto"])?;
    Ok(())
}
