//! Generates sandboxd's own gRPC APIs beside CRI (Services, Cluster) from their protos.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/services.proto");
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/services.proto", "proto/cluster.proto"], &["proto"])?;
    Ok(())
}
