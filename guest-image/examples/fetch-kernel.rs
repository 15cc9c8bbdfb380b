//! Fetches Debian's amd64 kernel into the kernel store, records it as the pinned kernel in
//! the deb cache (`$VOIDBOX_HOME/debs/kernel.pin.json`, the `.deb` kept beside it) and prints
//! where it is. With a pin whose `.deb` is cached, nothing is downloaded.
//!
//! `cargo run -p voidbox-guest-image --example fetch-kernel [-- PATH.deb]`
//! Honours `VOIDBOX_HOME` (store and cache location).

use voidbox_guest_image::kernel::{default_deb_cache, KernelStore, PinChange};

fn main() {
    let store = KernelStore::default_store();
    let res = match std::env::args_os().nth(1) {
        Some(deb) => store.add_deb(std::path::Path::new(&deb)),
        None => store
            .refresh_pin(&default_deb_cache(), None)
            .map(|(k, change)| {
                match change {
                    PinChange::Kept => {}
                    PinChange::New => println!(
                        "pinned   {}",
                        default_deb_cache().join("kernel.pin.json").display()
                    ),
                    PinChange::Replaced { old, why } => {
                        eprintln!("!!! WARNING: the recorded guest kernel {} {} cannot be had any more ({why}).", old.package, old.version);
                        eprintln!("!!! Debian replaces kernel packages with security updates: the current one, {} {}, is now pinned instead.", k.manifest.package, k.manifest.version);
                    }
                }
                k
            }),
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
