//! Reading one layer (tar, optionally gzip) and applying its entries to the [`Tree`].

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use std::sync::atomic::Ordering;

use super::guard::{HeaderGuard, Violation, MAX_EXTENSION_BYTES};
use super::meta::{EntryMeta, NodeKind};
use super::path::normalize;
use super::Tree;
use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, OciError, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

impl Tree {
    /// Applies the layer stored at `blob`. `layer` names it in errors; when `diff_id` is
    /// given, the uncompressed stream must hash to it.
    pub fn apply_layer_file(
        &mut self,
        layer: &str,
        blob: &Path,
        diff_id: Option<&Digest>,
    ) -> Result<()> {
        let file = std::fs::File::open(blob).at(blob)?;
        self.apply_layer(layer, BufReader::with_capacity(256 * 1024, file), diff_id)
    }

    /// Applies a layer read from `input` (gzip or plain tar, detected by magic bytes).
    pub fn apply_layer(
        &mut self,
        layer: &str,
        mut input: impl BufRead,
        diff_id: Option<&Digest>,
    ) -> Result<()> {
        let bad = |reason: String| OciError::BadLayer {
            layer: layer.to_string(),
            reason,
        };
        let head = input.fill_buf().map_err(|e| bad(e.to_string()))?;
        let uncompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(input))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(bad(
                "zstd-compressed layers are not supported yet; push the image with gzip layers"
                    .into(),
            ));
        } else {
            Box::new(input)
        };
        let mut hashing = HashingReader::new(uncompressed);
        self.layer_created.clear();
        {
            // Headers, extension entries and padding count against the cap too.
            let cap = self.limits.max_total_bytes.saturating_sub(self.total_bytes);
            let mut guard = HeaderGuard::new(&mut hashing, self.meta_bytes.clone(), cap);
            let result = (|| {
                let mut archive = tar::Archive::new(&mut guard);
                let entries = archive
                    .entries()
                    .map_err(|e| bad(format!("not a tar stream: {e}")))?;
                for entry in entries {
                    let entry = entry.map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
                    self.apply_entry(layer, entry)?;
                }
                Ok(())
            })();
            if let Some(v) = guard.violation() {
                return Err(match v.clone() {
                    Violation::Extension { entry, kind, size } => OciError::UnsafeEntry {
                        layer: layer.to_string(),
                        entry,
                        reason: format!(
                            "tar extension entry (type `{kind}`) of {size} bytes; at most \
                             {MAX_EXTENSION_BYTES} bytes are accepted (long names, links and \
                             PAX records are small; rebuild the layer)"
                        ),
                    },
                    Violation::Overhead { entry } => OciError::SizeCapExceeded {
                        layer: layer.to_string(),
                        entry,
                        cap: self.limits.max_total_bytes,
                    },
                });
            }
            result?;
        }
        let (actual, _) = hashing
            .finish()
            .map_err(|e| bad(format!("reading trailing data: {e}")))?;
        if let Some(expected) = diff_id {
            if &actual != expected {
                return Err(OciError::DigestMismatch {
                    what: format!("uncompressed layer {layer} (diff_id)"),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, layer: &str, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let unsafe_entry = |reason: String| OciError::UnsafeEntry {
            layer: layer.to_string(),
            entry: String::from_utf8_lossy(&raw_path).into_owned(),
            reason,
        };
        let entry_type = entry.header().entry_type();
        if matches!(entry_type, EntryType::XGlobalHeader) {
            return Ok(());
        }
        self.total_entries += 1;
        if self.total_entries > self.limits.max_entries {
            return Err(unsafe_entry(format!(
                "more than {} entries in the image",
                self.limits.max_entries
            )));
        }
        let rel = normalize(&raw_path).map_err(unsafe_entry)?;
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();

        // Whiteouts.
        if name.starts_with(WHITEOUT_PREFIX) {
            self.ensure_parents(&rel).map_err(unsafe_entry)?;
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            if name == OPAQUE_MARKER {
                return self.make_opaque(&parent);
            }
            let hidden = &name[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty()
                || hidden == b"."
                || hidden == b".."
                || hidden.starts_with(WHITEOUT_PREFIX)
            {
                return Err(unsafe_entry("malformed whiteout name".into()));
            }
            return self.remove(&parent.join(OsStr::from_bytes(hidden)));
        }

        let meta = self.meta_of(&mut entry).map_err(unsafe_entry)?;
        if rel.as_os_str().is_empty() {
            // The root directory itself ("./"): only its metadata matters.
            if entry_type != EntryType::Directory {
                return Err(unsafe_entry("the root must be a directory".into()));
            }
            let root = self
                .entries
                .get_mut(Path::new(""))
                .expect("root is always recorded");
            *root = EntryMeta {
                kind: NodeKind::Dir,
                ..meta
            };
            return Ok(());
        }
        self.ensure_parents(&rel).map_err(unsafe_entry)?;

        // A directory over a directory merges; anything else replaces what was there.
        if entry_type == EntryType::Directory {
            if let Some(existing) = self.entries.get_mut(&rel) {
                if existing.kind == NodeKind::Dir {
                    *existing = EntryMeta {
                        kind: NodeKind::Dir,
                        ..meta
                    };
                    self.layer_created.insert(rel);
                    return Ok(());
                }
            }
        }
        self.remove(&rel)?;
        let host = self.host(&rel);
        let kind = match entry_type {
            EntryType::Directory => {
                std::fs::create_dir(&host).at(&host)?;
                NodeKind::Dir
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let claimed = claimed_size(&entry);
                let remaining = self
                    .limits
                    .max_total_bytes
                    .saturating_sub(self.total_bytes)
                    .saturating_sub(self.meta_bytes.load(Ordering::Relaxed));
                if claimed > remaining {
                    return Err(OciError::SizeCapExceeded {
                        layer: layer.to_string(),
                        entry: String::from_utf8_lossy(&raw_path).into_owned(),
                        cap: self.limits.max_total_bytes,
                    });
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&host)
                    .at(&host)?;
                let copied = std::io::copy(
                    &mut (&mut entry).take(remaining.saturating_add(1)),
                    &mut file,
                )
                .map_err(|e| unsafe_entry(format!("reading content: {e}")))?;
                self.total_bytes += copied;
                if self.total_bytes + self.meta_bytes.load(Ordering::Relaxed)
                    > self.limits.max_total_bytes
                {
                    return Err(OciError::SizeCapExceeded {
                        layer: layer.to_string(),
                        entry: String::from_utf8_lossy(&raw_path).into_owned(),
                        cap: self.limits.max_total_bytes,
                    });
                }
                NodeKind::File
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("symlink without a target".into()))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(unsafe_entry("empty or invalid symlink target".into()));
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &host).at(&host)?;
                NodeKind::Symlink
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("hardlink without a target".into()))?
                    .into_owned();
                let target = normalize(&raw_target)
                    .map_err(|reason| unsafe_entry(format!("hardlink target: {reason}")))?;
                self.check_reachable(&target).map_err(|reason| {
                    unsafe_entry(format!("hardlink target {target:?}: {reason}"))
                })?;
                let target_meta = match self.entries.get(&target) {
                    Some(m) if m.kind == NodeKind::File => m.clone(),
                    Some(_) => {
                        return Err(unsafe_entry(format!(
                            "hardlink target {target:?} is not a regular file"
                        )))
                    }
                    None => {
                        return Err(unsafe_entry(format!(
                            "hardlink target {target:?} does not exist in the image"
                        )))
                    }
                };
                let target_host = self.host(&target);
                std::fs::hard_link(&target_host, &host).at(&host)?;
                let mut meta = target_meta;
                meta.hardlink_of = Some(target.clone());
                self.entries.insert(rel.clone(), meta);
                self.layer_created.insert(rel);
                return Ok(());
            }
            EntryType::Char | EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                tracing::debug!(layer, entry = ?rel, major, minor, "device node recorded for the ext4 writer, not created on the host");
                if entry_type == EntryType::Char {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            }
            EntryType::Fifo => NodeKind::Fifo,
            other => {
                return Err(unsafe_entry(format!(
                    "unsupported tar entry type {other:?}"
                )));
            }
        };
        self.entries.insert(rel.clone(), EntryMeta { kind, ..meta });
        self.layer_created.insert(rel);
        Ok(())
    }

    /// Whether `rel` can be reached through directories only (no symlink on the way).
    fn check_reachable(&self, rel: &Path) -> std::result::Result<(), String> {
        let mut prefix = PathBuf::new();
        for component in rel.parent().unwrap_or(Path::new("")).components() {
            prefix.push(component);
            match self.entries.get(&prefix).map(|m| &m.kind) {
                Some(NodeKind::Dir) => {}
                Some(NodeKind::Symlink) => {
                    return Err(format!("goes through the symlink {prefix:?}"))
                }
                _ => return Err(format!("{prefix:?} is not a directory in the image")),
            }
        }
        Ok(())
    }

    /// Owner, mode, mtime and xattrs of an entry, with PAX overrides.
    fn meta_of<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
    ) -> std::result::Result<EntryMeta, String> {
        let header = entry.header();
        let mut uid = header.uid().map_err(|e| format!("bad uid: {e}"))?;
        let mut gid = header.gid().map_err(|e| format!("bad gid: {e}"))?;
        let mode = header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
        let mut mtime = header.mtime().map_err(|e| format!("bad mtime: {e}"))?;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| format!("bad PAX header: {e}"))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| format!("bad PAX record: {e}"))?;
                let key = ext.key().map_err(|_| "non-UTF-8 PAX key".to_string())?;
                let value = ext.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| format!("bad PAX {key} value"))
                };
                match key {
                    "uid" => uid = number()?,
                    "gid" => gid = number()?,
                    "mtime" => mtime = number()?,
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            check_xattr_name(name)?;
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?;
        Ok(EntryMeta {
            kind: NodeKind::Dir,
            uid,
            gid,
            mode,
            mtime,
            xattrs,
            hardlink_of: None,
        })
    }
}

/// The size an entry claims to expand to: its header size, or a GNU sparse file's real size.
fn claimed_size<R: Read>(entry: &tar::Entry<'_, R>) -> u64 {
    let header = entry.header();
    let mut size = header.entry_size().unwrap_or(u64::MAX);
    if let Some(gnu) = header.as_gnu() {
        if header.entry_type() == EntryType::GNUSparse {
            size = size.max(gnu.real_size().unwrap_or(u64::MAX));
        }
    }
    size.max(entry.size())
}

/// Xattr names must be in a namespace ext4 knows and carry no control characters (they go
/// into the ext4 writer's command script).
fn check_xattr_name(name: &str) -> std::result::Result<(), String> {
    const NAMESPACES: &[&str] = &["user.", "trusted.", "security.", "system."];
    let known = NAMESPACES
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns));
    if !known || name.len() > 255 || name.chars().any(|c| c.is_control() || c == '"') {
        return Err(format!(
            "bad xattr name {name:?} (expected user.*, trusted.*, security.* or system.*)"
        ));
    }
    Ok(())
}
