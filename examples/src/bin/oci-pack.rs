//! oci-pack: writes an OCI image layout from root filesystem directories, one layer each,
//! offline. `examples/build-images.sh` packs the demo images with it.
//!
//!   oci-pack --out DIR --name REF --layer DIR [--layer DIR]... [--gzip]
//!            [--entrypoint ARG]... [--cmd ARG]... [--env K=V]... [--port 8080/tcp]...
//!            [--workdir DIR] [--user UID[:GID]] [--label K=V]...

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sandboxd::image::{build, ImageConfig};

fn main() -> Result<()> {
    let mut out: Option<PathBuf> = None;
    let mut name: Option<String> = None;
    let mut layers: Vec<PathBuf> = Vec::new();
    let mut gzip = false;
    let mut config = ImageConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(value()?.into()),
            "--name" => name = Some(value()?),
            "--layer" => layers.push(value()?.into()),
            "--gzip" => gzip = true,
            "--entrypoint" => config.entrypoint.push(value()?),
            "--cmd" => config.cmd.push(value()?),
            "--env" => config.env.push(value()?),
            "--port" => config.exposed_ports.push(value()?),
            "--workdir" => config.working_dir = value()?,
            "--user" => config.user = value()?,
            "--label" => {
                let label = value()?;
                let (key, val) = label
                    .split_once('=')
                    .with_context(|| format!("--label {label:?}: expected KEY=VALUE"))?;
                config.labels.insert(key.to_string(), val.to_string());
            }
            other => bail!("unknown argument {other:?} (see the usage at the top of oci-pack.rs)"),
        }
    }
    let out = out.context("--out DIR is required")?;
    let name = name.context("--name REF is required")?;
    sandboxd::image::Reference::parse(&name).map_err(anyhow::Error::msg)?;
    if layers.is_empty() {
        bail!("at least one --layer DIR is required");
    }
    for layer in &layers {
        if !layer.is_dir() {
            bail!("--layer {}: not a directory", layer.display());
        }
    }
    let layer_refs: Vec<&std::path::Path> = layers.iter().map(PathBuf::as_path).collect();
    let digest = build::write_layout(&out, &name, &layer_refs, &config, gzip)?;
    println!("{name} {digest} -> {}", out.display());
    Ok(())
}
