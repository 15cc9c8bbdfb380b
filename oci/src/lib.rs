//! voidbox-oci: registries, the local content-addressed image store, safe layer
//! unpacking, and read-only ext4 disks for rootfs and skill images.
//!
//! Entry points: [`Store`] (the store at `$VOIDBOX_HOME`), [`ImageSource`] (what to pull),
//! [`pull`]/[`pull_blocking`]/[`resolve_cached`] (get an image and its disk),
//! [`RegistryClient::push`] (publish from the store), and [`writer`] (build images
//! locally into the store).

pub mod auth;
pub mod digest;
pub mod disk;
pub mod error;
pub mod ext4;
#[doc(hidden)]
pub mod fuzzing;
pub mod local;
pub mod manifest;
mod manifest_fetch;
pub mod progress;
pub mod pull;
pub mod registry;
mod registry_error;
pub mod source;
pub mod store;
pub mod unpack;
pub mod writer;

pub use digest::Digest;
pub use disk::{ensure_disk, DISK_BUILDER_VERSION};
pub use error::{OciError, Result};
pub use pull::{pull, pull_blocking, resolve_cached, PullOptions, PullPolicy, PulledImage};
pub use registry::{RegistryClient, RegistryOptions};
pub use source::{ImageSource, Platform};
pub use store::{RefRecord, Store};
pub use unpack::UnpackLimits;
