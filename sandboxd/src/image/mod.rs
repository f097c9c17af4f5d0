//! Images, offline: a content-addressed local store that OCI image layouts, OCI archives and
//! `docker save` archives are imported into; nothing is ever pulled from a registry.
//!
//! * [`reference`]: image names, normalized as Docker and the kubelet do;
//! * [`store`]: the store on disk (blobs by digest, layers unpacked once by diff id, an index
//!   of images and tags), locked so `sandboxctl image import` and the daemon can share it;
//! * [`import`]: reading the three archive formats, verifying every digest;
//! * [`unpack`]: extracting a layer, turning OCI whiteouts into overlayfs ones;
//! * [`build`]: writing an OCI image layout from root filesystem directories.

pub mod build;
pub mod import;
pub mod reference;
pub mod store;
pub mod unpack;

pub use reference::Reference;
pub use store::{ImageConfig, ImageRecord, ImageStore, LayerRecord};
