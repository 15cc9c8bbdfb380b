//! Ref records: which manifest a name (tag, local source) resolved to when last pulled.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{IoContext, OciError, Result};

use super::{FileLock, Store};

/// One `refs/<name>.json` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// The canonical source name (e.g. `docker.io/library/alpine:3.20`).
    pub reference: String,
    /// The platform image manifest the name resolved to (the disk is keyed by it).
    pub manifest: Digest,
    /// The index the manifest was selected from, if the name pointed to an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// The platform selected (`os/arch[/variant]`).
    pub platform: String,
    /// When the record was written (seconds since the epoch).
    pub updated_unix: u64,
}

/// The platform whose records carry no platform suffix.
const DEFAULT_PLATFORM: &str = "linux/amd64";

/// Escapes a reference into a single safe file name.
fn file_name_of(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len() + 8);
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Names like "." or ".." cannot appear: '.' alone is allowed but a canonical reference
    // always contains '/' or ':' which are escaped; guard anyway.
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    out + ".json"
}

impl Store {
    /// `refs/<name>.json` for the default platform (linux/amd64), `refs/<name>#<platform>.json`
    /// (escaped) for others, so each platform of a multi-arch tag has its own record.
    fn ref_path(&self, reference: &str, platform: &str) -> PathBuf {
        let key = if platform == DEFAULT_PLATFORM {
            reference.to_string()
        } else {
            format!("{reference}#{platform}")
        };
        self.root.join("refs").join(file_name_of(&key))
    }

    fn refs_lock(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("locks/refs.lock"))
    }

    /// The linux/amd64 record for `reference` (a canonical name), if any.
    pub fn read_ref(&self, reference: &str) -> Result<Option<RefRecord>> {
        self.read_ref_for(reference, DEFAULT_PLATFORM)
    }

    /// The record for `reference` on `platform` (`os/arch[/variant]`), if any.
    pub fn read_ref_for(&self, reference: &str, platform: &str) -> Result<Option<RefRecord>> {
        let path = self.ref_path(reference, platform);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| OciError::BadSource {
                    source_name: path.display().to_string(),
                    reason: format!(
                        "corrupt ref record ({e}); remove it with `voidbox image rm {reference}`"
                    ),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OciError::io(path, e)),
        }
    }

    /// Writes a record atomically; returns the one it replaced. A moved tag is logged.
    pub fn write_ref(&self, record: &RefRecord) -> Result<Option<RefRecord>> {
        let _lock = self.refs_lock()?;
        let previous = self.read_ref_for(&record.reference, &record.platform)?;
        if let Some(prev) = &previous {
            if prev.manifest != record.manifest {
                tracing::warn!(
                    reference = %record.reference,
                    old = %prev.manifest,
                    new = %record.manifest,
                    "tag moved: the reference now points to another manifest"
                );
            } else if prev == record {
                return Ok(previous);
            }
        }
        let mut temp = self.temp_file()?;
        let data = serde_json::to_vec_pretty(record).expect("RefRecord serializes");
        std::io::Write::write_all(&mut temp, &data).at(temp.path())?;
        temp.as_file().sync_all().at(temp.path())?;
        let dest = self.ref_path(&record.reference, &record.platform);
        let temp_path = temp.into_temp_path();
        Store::durable_rename(&temp_path, &dest)?;
        let _ = temp_path.keep();
        Ok(previous)
    }

    /// Removes the records of `reference` for every platform; `false` if there was none.
    pub fn remove_ref(&self, reference: &str) -> Result<bool> {
        let records: Vec<RefRecord> = self
            .list_refs()?
            .into_iter()
            .filter(|r| r.reference == reference)
            .collect();
        let _lock = self.refs_lock()?;
        let mut removed = false;
        for record in records {
            let path = self.ref_path(&record.reference, &record.platform);
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(OciError::io(path, e)),
            }
        }
        Ok(removed)
    }

    /// All records, sorted by reference.
    pub fn list_refs(&self) -> Result<Vec<RefRecord>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let path = entry.at(&dir)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let data = std::fs::read(&path).at(&path)?;
            match serde_json::from_slice::<RefRecord>(&data) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping corrupt ref record")
                }
            }
        }
        out.sort_by(|a, b| (&a.reference, &a.platform).cmp(&(&b.reference, &b.platform)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_flat_and_distinct() {
        let a = file_name_of("127.0.0.1:5000/a/b:v1");
        assert!(!a.contains('/') && !a.contains(':'));
        assert_ne!(a, file_name_of("127.0.0.1:5000/a/b:v2"));
        assert_ne!(file_name_of("a/b"), file_name_of("a%2Fb"));
        assert!(!file_name_of("..").starts_with('.'));
    }
}
