//! The CRI v1 `ImageService`, over the local image store. Images come from
//! `sandboxctl image import`; PullImage resolves a name in the store and never reaches a
//! registry (this node has none), answering NotFound with how to import instead.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use crate::image::{ImageRecord, ImageStore};

pub struct CriImageService {
    store: Arc<ImageStore>,
}

impl CriImageService {
    pub fn new(store: Arc<ImageStore>) -> Self {
        CriImageService { store }
    }

    fn resolve(
        &self,
        spec: Option<cri::ImageSpec>,
    ) -> Result<(String, Option<ImageRecord>), Status> {
        let name = spec.map(|s| s.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument(
                "invalid image.image of the request: is empty",
            ));
        }
        let found = self
            .store
            .resolve(&name)
            .map_err(|e| Status::internal(format!("read the image store: {e:#}")))?;
        Ok((name, found))
    }
}

fn to_cri(image: &ImageRecord) -> cri::Image {
    // A numeric USER is the uid CRI reports; a name goes in username.
    let user = image.config.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn not_found(name: &str) -> Status {
    crate::error::Error::ImageNotFound(name.to_string()).into()
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Reply<cri::ListImagesResponse> {
        let wanted = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match wanted {
            Some(name) => self
                .resolve(Some(cri::ImageSpec {
                    image: name,
                    ..Default::default()
                }))?
                .1
                .into_iter()
                .collect(),
            None => self
                .store
                .list()
                .map_err(|e| Status::internal(format!("read the image store: {e:#}")))?,
        };
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Reply<cri::ImageStatusResponse> {
        let request = request.into_inner();
        // CRI: an unknown image is not an error here, just no image.
        let (_, found) = self.resolve(request.image)?;
        let mut info = std::collections::HashMap::new();
        if let (true, Some(image)) = (request.verbose, &found) {
            let detail = serde_json::json!({ "config": image.config, "layers": image.layers });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: found.as_ref().map(to_cri),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Reply<cri::PullImageResponse> {
        match self.resolve(request.into_inner().image)? {
            (_, Some(image)) => Ok(Response::new(cri::PullImageResponse {
                image_ref: image.id,
            })),
            (name, None) => Err(not_found(&name)),
        }
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Reply<cri::RemoveImageResponse> {
        let (name, _) = self.resolve(request.into_inner().image)?;
        // Idempotent, as the CRI asks: removing an absent image succeeds.
        self.store
            .remove(&name)
            .map_err(|e| Status::internal(format!("remove image {name}: {e:#}")))?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Reply<cri::ImageFsInfoResponse> {
        let (bytes, inodes) = self.store.usage();
        let usage = cri::FilesystemUsage {
            timestamp: crate::runtime::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.store.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}
