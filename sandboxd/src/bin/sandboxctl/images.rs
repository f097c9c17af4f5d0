//! `images`, `inspecti`, `pull`, `rmi` (CRI ImageService) and `image import` (the node's
//! store, directly: archives are files on this machine, and the store's lock keeps the
//! daemon's readers consistent while an import writes).

use std::path::PathBuf;

use anyhow::bail;
use k8s_cri::v1 as cri;

use crate::output::{crictl_table, human_size, print_doc, Format};
use crate::ImageClient;

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this image (name or id).
    image: Option<String>,
    /// Print ids only.
    #[arg(long, short)]
    quiet: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    output: Format,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    images: Vec<String>,
    #[arg(long, short, value_enum, default_value = "json")]
    output: Format,
}

#[derive(clap::Args)]
pub struct PullArgs {
    image: String,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout dir, an OCI archive, or a `docker save` archive.
    Import {
        /// The layout directory or the archive (.tar, .tar.gz).
        source: PathBuf,
        /// Name for the image (required when the archive does not name it).
        #[arg(long)]
        name: Option<String>,
        /// The node's image store.
        #[arg(long, default_value = "/var/lib/sandboxd/images")]
        store: PathBuf,
    },
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

pub async fn list(client: &mut ImageClient, args: ListArgs) -> anyhow::Result<()> {
    let filter = args
        .image
        .as_deref()
        .map(|i| cri::ImageFilter { image: spec(i) });
    let mut images = client
        .list_images(cri::ListImagesRequest { filter })
        .await?
        .into_inner()
        .images;
    // crictl's order: by the first tag.
    images.sort_by(|a, b| a.repo_tags.first().cmp(&b.repo_tags.first()));
    if args.quiet {
        for image in &images {
            println!("{}", image.id);
        }
        return Ok(());
    }
    if args.output != Format::Table {
        return print_doc(&serde_json::json!({ "images": images }), args.output);
    }
    let mut rows = Vec::new();
    for image in &images {
        let id = image
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect::<String>();
        let tags: Vec<(String, String)> = image
            .repo_tags
            .iter()
            .filter_map(|t| {
                t.rsplit_once(':')
                    .map(|(r, t)| (r.to_string(), t.to_string()))
            })
            .collect();
        if tags.is_empty() {
            rows.push(vec![
                "<none>".into(),
                "<none>".into(),
                id.clone(),
                human_size(image.size),
            ]);
        }
        for (repository, tag) in tags {
            rows.push(vec![repository, tag, id.clone(), human_size(image.size)]);
        }
    }
    crictl_table(&["IMAGE", "TAG", "IMAGE ID", "SIZE"], &rows);
    Ok(())
}

pub async fn inspect(client: &mut ImageClient, args: InspectArgs) -> anyhow::Result<()> {
    for image in args.images {
        let reply = client
            .image_status(cri::ImageStatusRequest {
                image: spec(&image),
                verbose: true,
            })
            .await?
            .into_inner();
        let Some(status) = reply.image else {
            bail!("image {image} not found")
        };
        let mut doc = serde_json::json!({ "status": status });
        if let Some(info) = reply.info.get("info") {
            doc["info"] = crate::output::info_value(info);
        }
        print_doc(&doc, args.output)?;
    }
    Ok(())
}

pub async fn pull(client: &mut ImageClient, args: PullArgs) -> anyhow::Result<()> {
    let reply = client
        .pull_image(cri::PullImageRequest {
            image: spec(&args.image),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("Image is up to date for {}", reply.image_ref);
    Ok(())
}

pub async fn remove(client: &mut ImageClient, args: RemoveArgs) -> anyhow::Result<()> {
    for image in args.images {
        let present = client
            .image_status(cri::ImageStatusRequest {
                image: spec(&image),
                verbose: false,
            })
            .await?
            .into_inner()
            .image;
        let Some(present) = present else {
            bail!("image {image} not found")
        };
        client
            .remove_image(cri::RemoveImageRequest {
                image: spec(&image),
            })
            .await?;
        println!(
            "Deleted: {}",
            present.repo_tags.first().cloned().unwrap_or(present.id)
        );
    }
    Ok(())
}

pub fn image_command(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import {
            source,
            name,
            store,
        } => {
            let store = sandboxd::image::ImageStore::open(store)?;
            let imported = sandboxd::image::import::import(&store, &source, name.as_deref())?;
            for image in imported {
                let names = if image.repo_tags.is_empty() {
                    "<unnamed>".to_string()
                } else {
                    image.repo_tags.join(", ")
                };
                println!("imported {} {names}", image.id);
            }
            Ok(())
        }
    }
}
