//! `voidbox guest build|push`: the guest image (kernel + initramfs).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use voidbox_oci::{ImageSource, RegistryClient, RegistryOptions};

use crate::runtime::guest::{build, BuildOptions, DEFAULT_GUEST_REF};
use crate::runtime::rundir::voidbox_home;

/// `voidbox guest ...`
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Build the default guest image (Debian kernel, the static agent as
    /// /init, its kernel modules, busybox-static) into the local store.
    Build {
        /// The static musl guest agent (default: target/x86_64-unknown-linux-musl/{agent,release}/voidbox-guest-agent).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// A busybox-static .deb (default: VOIDBOX_DEB_CACHE, the store's debs/, else apt-get download).
        #[arg(long, value_name = "DEB")]
        busybox_deb: Option<PathBuf>,
        /// Name to record it under in the store.
        #[arg(long, value_name = "REF", default_value = DEFAULT_GUEST_REF)]
        tag: String,
    },
    /// Publish the default guest image to a registry.
    Push {
        /// Target reference, e.g. registry.example.com/voidbox/guest:v1.
        reference: String,
        /// Registry (host[:port]) that may be reached over plain HTTP.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
    },
}

/// Runs a guest subcommand.
pub fn run(cmd: GuestCommand) -> Result<u8> {
    let home = voidbox_home();
    let store = voidbox_oci::Store::open(&home)
        .with_context(|| format!("cannot open the image store at {}", home.display()))?;
    match cmd {
        GuestCommand::Build {
            agent,
            busybox_deb,
            tag,
        } => {
            let built = build(
                &store,
                &home,
                &BuildOptions {
                    agent,
                    busybox_deb,
                    reference: Some(tag),
                },
            )?;
            println!(
                "built guest image {} -> {} (kernel {}, initramfs {} KiB, agent {})",
                built.reference,
                built.manifest,
                built.kernel_release,
                built.initramfs_bytes / 1024,
                built.agent.display()
            );
            Ok(0)
        }
        GuestCommand::Push {
            reference,
            insecure_registries,
        } => {
            let record = store
                .read_ref(DEFAULT_GUEST_REF)?
                .context("no default guest image in the store; run `voidbox guest build` first")?;
            let ImageSource::Registry(target) = ImageSource::parse(&reference)? else {
                anyhow::bail!("`{reference}` is not a registry reference (NAME[:TAG])");
            };
            let client = RegistryClient::new(
                &target,
                &RegistryOptions {
                    insecure_registries,
                    auth: None,
                },
            );
            tokio_block_on(client.push(&store, &record.manifest, &target))??;
            println!("pushed {} -> {reference}", record.manifest);
            Ok(0)
        }
    }
}

fn tokio_block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f))
}
