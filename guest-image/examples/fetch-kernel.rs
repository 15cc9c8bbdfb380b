//! Fetches Debian's amd64 kernel into the kernel store and prints where it is.
//!
//! `cargo run -p voidbox-guest-image --example fetch-kernel [-- PATH.deb]`
//! Honours `VOIDBOX_HOME` (store location) and `VOIDBOX_DEB_CACHE` (directories with .debs
//! to use instead of downloading).

use voidbox_guest_image::kernel::{FetchOptions, KernelStore};

fn main() {
    let store = KernelStore::default_store();
    let res = match std::env::args_os().nth(1) {
        Some(deb) => store.add_deb(std::path::Path::new(&deb)),
        None => store.ensure(&FetchOptions::from_env()),
    };
    match res {
        Ok(k) => {
            println!("package  {} {}", k.manifest.package, k.manifest.version);
            println!("sha256   {}", k.manifest.deb_sha256);
            println!("release  {}", k.manifest.release);
            println!("bzImage  {}", k.bzimage().display());
            println!("vmlinux  {}", k.vmlinux().display());
            println!("modules  {}", k.modules_dir().display());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
