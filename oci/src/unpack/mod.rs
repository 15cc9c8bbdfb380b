//! Safe application of image layers onto a private staging tree plus metadata records.
//!
//! Rules: entry paths are normalised ([`path::normalize`]) so absolute paths and `..` are
//! rejected; a path may only descend through directories recorded in this tree, so nothing
//! is ever written through a symlink (an entry "through" a symlink is rejected); hardlink
//! targets must be regular files already in the tree; device nodes and FIFOs are only
//! recorded, never created on the host; the sum of entry sizes (sparse files count at their
//! full size) plus every non-content byte (tar headers, extension entries, padding) is
//! capped, and extension entries (GNU long names, PAX records) over 1 MiB are refused
//! before the `tar` crate reads them into memory ([`guard`]). Whiteouts (`.wh.<name>`) and opaque markers (`.wh..wh..opq`)
//! follow the OCI layer spec. Every error names the layer and the entry.

mod guard;
mod layer;
pub mod meta;
pub mod path;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use meta::{EntryMeta, NodeKind};

use crate::error::{IoContext, Result};

/// Limits applied while unpacking.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Total bytes of file content plus tar headers, extension entries and padding over
    /// all layers.
    pub max_total_bytes: u64,
    /// Total number of entries over all layers.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        let max_total_bytes = std::env::var("VOIDBOX_MAX_IMAGE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16 << 30);
        UnpackLimits {
            max_total_bytes,
            max_entries: 2_000_000,
        }
    }
}

/// The image's file tree being assembled: host files under `root`, metadata in `entries`.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    entries: BTreeMap<PathBuf, EntryMeta>,
    limits: UnpackLimits,
    total_bytes: u64,
    /// Bytes of tar headers, extension entries and padding (shared with the
    /// layer's [`guard::HeaderGuard`]); they count against the same cap.
    meta_bytes: Arc<AtomicU64>,
    total_entries: u64,
    /// Paths created by the layer being applied (opaque dirs keep these).
    layer_created: BTreeSet<PathBuf>,
}

impl Tree {
    /// Starts an empty tree in the existing, empty directory `root`.
    pub fn new(root: &Path, limits: UnpackLimits) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(PathBuf::new(), EntryMeta::implicit_dir());
        Tree {
            root: root.to_path_buf(),
            entries,
            limits,
            total_bytes: 0,
            meta_bytes: Arc::new(AtomicU64::new(0)),
            total_entries: 0,
            layer_created: BTreeSet::new(),
        }
    }

    /// The host directory holding the regular files, directories and symlinks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All paths (relative, root = empty path) with their metadata, parents before children.
    pub fn entries(&self) -> &BTreeMap<PathBuf, EntryMeta> {
        &self.entries
    }

    /// Total content bytes unpacked so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn host(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Removes `rel` and everything under it from records and host tree.
    fn remove(&mut self, rel: &Path) -> Result<()> {
        let doomed: Vec<PathBuf> = self
            .entries
            .range(rel.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(rel))
            .map(|(p, _)| p.clone())
            .collect();
        let Some(meta) = self.entries.get(rel) else {
            return Ok(());
        };
        let host = self.host(rel);
        match meta.kind {
            NodeKind::Dir => std::fs::remove_dir_all(&host).at(&host)?,
            ref k if k.is_recorded_only() => {}
            _ => std::fs::remove_file(&host).at(&host)?,
        }
        for p in doomed {
            self.entries.remove(&p);
            self.layer_created.remove(&p);
        }
        Ok(())
    }

    /// Makes sure every ancestor of `rel` is a directory in the tree, creating missing ones.
    /// Fails if an ancestor is a symlink or a non-directory.
    fn ensure_parents(&mut self, rel: &Path) -> std::result::Result<(), String> {
        let mut prefix = PathBuf::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for component in parent.components() {
            prefix.push(component);
            match self.entries.get(&prefix).map(|m| &m.kind) {
                Some(NodeKind::Dir) => {}
                Some(NodeKind::Symlink) => {
                    return Err(format!(
                        "path goes through the symlink {:?}; refusing to write through symlinks",
                        prefix
                    ))
                }
                Some(_) => return Err(format!("parent {prefix:?} is not a directory")),
                None => {
                    let host = self.host(&prefix);
                    std::fs::create_dir(&host).map_err(|e| format!("creating {host:?}: {e}"))?;
                    self.entries
                        .insert(prefix.clone(), EntryMeta::implicit_dir());
                }
            }
        }
        Ok(())
    }

    /// Applies the opaque marker found in directory `dir`: hides everything below it that
    /// lower layers created.
    fn make_opaque(&mut self, dir: &Path) -> Result<()> {
        let children: Vec<PathBuf> = self
            .entries
            .range(dir.to_path_buf()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, _)| p.clone())
            .collect();
        for child in children {
            if !self.layer_created.contains(&child) {
                self.remove(&child)?;
            }
        }
        Ok(())
    }
}
