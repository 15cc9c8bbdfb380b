//! `voidbox image pull|ls|inspect|rm|prune`: manage the local image store.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use voidbox_oci::{
    ImageSource, Platform, PullOptions, PullPolicy, RegistryOptions, Store, UnpackLimits,
};

/// Options shared by commands that resolve images.
#[derive(Debug, Args, Clone, Default)]
pub struct ResolveArgs {
    /// Platform to select from multi-platform images (os/arch[/variant]).
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Registry (host[:port]) that may be reached over plain HTTP; repeatable.
    /// Loopback registries (localhost, 127.0.0.1, ::1) always may.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Never contact a registry or source: resolve from the local store only.
    #[arg(long)]
    pub offline: bool,
}

impl ResolveArgs {
    /// The pull options these arguments describe, with `policy` unless `--offline`.
    pub fn pull_options(&self, policy: PullPolicy) -> Result<PullOptions> {
        Ok(PullOptions {
            platform: Platform::parse(&self.platform)?,
            registry: RegistryOptions {
                insecure_registries: self.insecure_registries.clone(),
                auth: None,
            },
            policy: if self.offline {
                PullPolicy::Never
            } else {
                policy
            },
            progress: true,
            limits: UnpackLimits::default(),
            build_disk: true,
        })
    }
}

/// `voidbox image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch, verify and unpack an image and build its rootfs disk.
    /// Sources: NAME[:TAG|@DIGEST], oci:DIR[:TAG], docker-archive:FILE.
    Pull {
        /// The image reference.
        reference: String,
        #[command(flatten)]
        resolve: ResolveArgs,
    },
    /// List the images in the store.
    Ls,
    /// Show an image's record, manifest and config.
    Inspect {
        /// The image reference.
        reference: String,
        /// Which platform's record to show.
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
    },
    /// Remove an image (its record, and its disk and blobs unless other images use them).
    Rm {
        /// The image references.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove blobs and disks no image uses, and temp files of dead processes.
    Prune,
}

/// Prints a line to stdout; a closed pipe (`voidbox image inspect x | head`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        match writeln!(out, $($arg)*) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }};
}

/// Runs an image subcommand against the store at $VOIDBOX_HOME.
pub fn run(cmd: ImageCommand) -> Result<()> {
    let store = Store::open_default().context("opening the image store")?;
    match cmd {
        ImageCommand::Pull { reference, resolve } => {
            let source = ImageSource::parse(&reference)?;
            let options = resolve.pull_options(PullPolicy::Always)?;
            let image = voidbox_oci::pull_blocking(&store, &source, &options)
                .with_context(|| format!("pulling {reference}"))?;
            if let Some(old) = &image.moved_from {
                eprintln!(
                    "note: {} moved from {old} to {}",
                    image.reference, image.manifest
                );
            }
            say!("{} {}", image.reference, image.manifest);
            say!("disk: {}", image.disk.display());
        }
        ImageCommand::Ls => {
            say!(
                "{:<60} {:<14} {:<20} {:>12}  DISK",
                "REFERENCE",
                "PLATFORM",
                "MANIFEST",
                "SIZE"
            );
            for record in store.list_refs()? {
                let size: u64 = store
                    .blobs_of(&record)
                    .iter()
                    .filter_map(|d| std::fs::metadata(store.blob_path(d)).ok())
                    .map(|m| m.len())
                    .sum();
                let disk = if store.disk_path(&record.manifest).is_file() {
                    "yes"
                } else {
                    "no"
                };
                say!(
                    "{:<60} {:<14} {:<20} {:>12}  {disk}",
                    record.reference,
                    record.platform,
                    &record.manifest.to_string()[..19],
                    size
                );
            }
        }
        ImageCommand::Inspect {
            reference,
            platform,
        } => {
            let name = ImageSource::parse(&reference)?.canonical_name();
            let platform = Platform::parse(&platform)?.to_string();
            let Some(record) = store.read_ref_for(&name, &platform)? else {
                bail!(
                    "{name} ({platform}) is not in the store; run `voidbox image pull --platform {platform} {reference}`"
                );
            };
            let manifest: serde_json::Value =
                serde_json::from_slice(&store.read_manifest(&record.manifest)?)?;
            let config_digest = manifest["config"]["digest"]
                .as_str()
                .context("manifest has no config digest")?;
            let config: serde_json::Value = serde_json::from_slice(
                &store.read_blob(&voidbox_oci::Digest::parse(config_digest)?)?,
            )?;
            let disk = store.disk_path(&record.manifest);
            let out = serde_json::json!({
                "record": record,
                "disk": disk.is_file().then(|| disk.display().to_string()),
                "manifest": manifest,
                "config": config,
            });
            say!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm { references } => {
            for reference in references {
                let name = ImageSource::parse(&reference)?.canonical_name();
                if !store.remove_image(&name)? {
                    bail!("{name} is not in the store (see `voidbox image ls`)");
                }
                say!("removed {name}");
            }
        }
        ImageCommand::Prune => {
            let report = store.prune()?;
            say!(
                "removed {} blobs and {} disks, freed {} bytes",
                report.blobs_removed,
                report.disks_removed,
                report.bytes_freed
            );
        }
    }
    Ok(())
}
