//! Listing what the store holds, removing images, pruning, and a consistency check.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::disk::DISK_BUILDER_VERSION;
use crate::error::{IoContext, Result};
use crate::manifest::{image_blobs, parse_manifest, Manifest};

use super::{RefRecord, Store};

/// Unreferenced blobs and disks younger than this survive `prune`.
pub const PRUNE_GRACE: Duration = Duration::from_secs(15 * 60);

/// What `prune` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs no ref reaches.
    pub blobs_removed: usize,
    /// Disks of unreferenced manifests or older builder versions.
    pub disks_removed: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// One inconsistency found by [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreProblem {
    /// The file involved.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl Store {
    /// Where the ext4 disk derived from `manifest` by the current builder lives.
    pub fn disk_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("disks")
            .join(format!("{}-b{}.ext4", manifest.hex(), DISK_BUILDER_VERSION))
    }

    /// Blobs reachable from one record (index, manifest, config, layers); missing or
    /// unreadable manifests contribute what they can.
    pub fn blobs_of(&self, record: &RefRecord) -> BTreeSet<Digest> {
        let mut live = BTreeSet::new();
        if let Some(index) = &record.index {
            live.insert(index.clone());
        }
        live.insert(record.manifest.clone());
        if let Ok(data) = self.read_blob(&record.manifest) {
            if let Ok(Manifest::Image(m)) = parse_manifest(&data, "manifest") {
                live.extend(image_blobs(&m).unwrap_or_default());
            }
        }
        live
    }

    /// Removes a reference, its disk and its blobs when no other reference uses them.
    /// Returns `false` if the reference was unknown.
    pub fn remove_image(&self, reference: &str) -> Result<bool> {
        let _lock = self.lock_exclusive()?;
        let removed: Vec<RefRecord> = self
            .list_refs()?
            .into_iter()
            .filter(|r| r.reference == reference)
            .collect();
        if !self.remove_ref(reference)? {
            return Ok(false);
        }
        let others = self.list_refs()?;
        let still_live: BTreeSet<Digest> = others.iter().flat_map(|r| self.blobs_of(r)).collect();
        for record in &removed {
            if !others.iter().any(|r| r.manifest == record.manifest) {
                let disk = self.disk_path(&record.manifest);
                if disk.exists() {
                    std::fs::remove_file(&disk).at(&disk)?;
                }
            }
            for digest in self.blobs_of(record) {
                if !still_live.contains(&digest) {
                    let path = self.blob_path(&digest);
                    if path.exists() {
                        std::fs::remove_file(&path).at(&path)?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Removes blobs and disks that no reference reaches and that are older than
    /// [`PRUNE_GRACE`], and temp files of dead processes. The grace period protects images
    /// being assembled by another process that has not recorded its reference yet.
    pub fn prune(&self) -> Result<PruneReport> {
        self.prune_older_than(PRUNE_GRACE)
    }

    /// [`Store::prune`] with an explicit grace period (`Duration::ZERO` prunes everything
    /// unreferenced).
    pub fn prune_older_than(&self, grace: Duration) -> Result<PruneReport> {
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let young = |entry: &std::fs::DirEntry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > cutoff)
        };
        let _lock = self.lock_exclusive()?;
        self.remove_dead_sessions()?;
        let refs = self.list_refs()?;
        let live: BTreeSet<Digest> = refs.iter().flat_map(|r| self.blobs_of(r)).collect();
        let live_disks: BTreeSet<PathBuf> =
            refs.iter().map(|r| self.disk_path(&r.manifest)).collect();
        let mut report = PruneReport::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).at(&blobs)? {
            let entry = entry.at(&blobs)?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                .is_some_and(|d| live.contains(&d));
            if !keep && !young(&entry) {
                report.bytes_freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path()).at(entry.path())?;
                report.blobs_removed += 1;
            }
        }
        let disks = self.root.join("disks");
        for entry in std::fs::read_dir(&disks).at(&disks)? {
            let entry = entry.at(&disks)?;
            if !live_disks.contains(&entry.path()) && !young(&entry) {
                report.bytes_freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path()).at(entry.path())?;
                report.disks_removed += 1;
            }
        }
        // Per-disk lock files: pulls hold the shared store lock while building, so none is in
        // use now; even a direct `ensure_disk` caller racing this only builds twice (each
        // build renames a complete disk into place).
        let locks = self.root.join("locks");
        for entry in std::fs::read_dir(&locks).at(&locks)? {
            let entry = entry.at(&locks)?;
            if entry.file_name().to_string_lossy().starts_with("disk-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(report)
    }

    /// Checks every blob's digest, that each ref's blobs exist, and that no stray files
    /// sit in `blobs/`, `refs/` or `disks/`. An empty result means consistent.
    pub fn check(&self) -> Result<Vec<StoreProblem>> {
        let mut problems = Vec::new();
        let blobs = self.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).at(&blobs)? {
            let path = entry.at(&blobs)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match Digest::from_hex(name) {
                Err(_) => problems.push(StoreProblem {
                    path,
                    problem: "not a sha256 blob name".into(),
                }),
                Ok(d) => match hash_file(&path) {
                    Err(e) => problems.push(StoreProblem {
                        path,
                        problem: e.to_string(),
                    }),
                    Ok(actual) if actual != d => problems.push(StoreProblem {
                        path,
                        problem: format!("content hashes to {actual}"),
                    }),
                    Ok(_) => {}
                },
            }
        }
        for record in self.list_refs()? {
            for digest in self.blobs_of(&record) {
                if !self.has_blob(&digest) {
                    problems.push(StoreProblem {
                        path: self.blob_path(&digest),
                        problem: format!("missing blob of {}", record.reference),
                    });
                }
            }
        }
        let refs = self.root.join("refs");
        for entry in std::fs::read_dir(&refs).at(&refs)? {
            let path = entry.at(&refs)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                problems.push(StoreProblem {
                    path,
                    problem: "stray file in refs/".into(),
                });
            } else if let Err(e) = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<RefRecord>(&d).map_err(|e| e.to_string()))
            {
                problems.push(StoreProblem {
                    path,
                    problem: format!("unreadable ref record: {e}"),
                });
            }
        }
        let disks = self.root.join("disks");
        for entry in std::fs::read_dir(&disks).at(&disks)? {
            let path = entry.at(&disks)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ok = name
                .strip_suffix(".ext4")
                .and_then(|s| s.split_once("-b"))
                .is_some_and(|(hex, _)| Digest::from_hex(hex).is_ok());
            if !ok {
                problems.push(StoreProblem {
                    path,
                    problem: "stray file in disks/".into(),
                });
            }
        }
        Ok(problems)
    }
}

fn hash_file(path: &std::path::Path) -> Result<Digest> {
    let file = std::fs::File::open(path).at(path)?;
    let (digest, _) = crate::digest::HashingReader::new(std::io::BufReader::new(file))
        .finish()
        .at(path)?;
    Ok(digest)
}
