//! voidbox-guest-image: guest kernel acquisition (Debian packages), initramfs builder, guest OCI image.
//!
//! - [`kernel`]: fetch the Debian amd64 kernel package with `apt-get download`, record its
//!   exact version and sha256, unpack it into the kernel store (never install it on the host),
//!   and expose the bzImage, an extracted ELF `vmlinux` and the modules a guest needs.
//! - [`modules`]: kernel module dependency resolution (from each module's `.modinfo`), giving
//!   the load order that `modules.dep` would give.
//! - [`bzimage`]: find and decompress the payload of a bzImage into an ELF `vmlinux`.
//! - [`initramfs`]: a deterministic cpio `newc` writer (plain or gzip).

pub mod bzimage;
pub mod error;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod modules;

pub use error::Error;
