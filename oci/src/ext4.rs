//! Writing the unpacked tree as an ext4 image the guest mounts read-only.
//!
//! Approach (works the same as root and unprivileged): `mkfs.ext4 -d` copies the host tree
//! (content, directories, symlinks, hardlinks), then one `debugfs -w -f` script sets every
//! inode's owner, full mode, mtime and xattrs from the unpacker's records and creates device
//! nodes and FIFOs, none of which ever exist on the host. The image is sized from the
//! content, has no journal (it is read-only) and no reserved blocks.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use crate::error::{IoContext, OciError, Result};
use crate::unpack::{NodeKind, Tree};

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;

/// Quotes a path or name for the debugfs command parser (`"` doubled inside quotes).
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn abs(rel: &Path) -> Vec<u8> {
    let mut out = b"/".to_vec();
    out.extend_from_slice(rel.as_os_str().as_bytes());
    out
}

/// Bytes and inodes the image needs, with headroom for ext4 metadata.
fn size_for(tree: &Tree) -> Result<(u64, u64)> {
    let mut blocks: u64 = 0;
    let mut inodes: u64 = 0;
    let mut seen = std::collections::HashSet::new();
    for (rel, meta) in tree.entries() {
        inodes += 1;
        if !meta.xattrs.is_empty() {
            blocks += 1;
        }
        match meta.kind {
            NodeKind::File => {
                if meta.hardlink_of.is_some() {
                    continue;
                }
                let host = tree.root().join(rel);
                let md = std::fs::symlink_metadata(&host).at(&host)?;
                if !seen.insert(std::os::unix::fs::MetadataExt::ino(&md)) {
                    continue;
                }
                // Extent tree blocks for fragmented large files: ~1 per 128 MiB is generous
                // (small files keep their extents in the inode).
                blocks += md.len().div_ceil(BLOCK) + md.len() / (128 << 20);
            }
            NodeKind::Dir => blocks += 1,
            // Targets up to 59 bytes live in the inode.
            NodeKind::Symlink => {
                let host = tree.root().join(rel);
                if std::fs::read_link(&host).at(&host)?.as_os_str().len() > 59 {
                    blocks += 1;
                }
            }
            _ => {}
        }
    }
    // Directory blocks grow with entries: ~ 1 block per 64 names.
    blocks += inodes / 64;
    let inodes = (inodes + 64).max(1024) * 5 / 4;
    let data = blocks * BLOCK;
    let metadata = inodes * INODE_SIZE + data / 64 + (4 << 20);
    let size = (data + metadata) * 21 / 20;
    Ok((size.div_ceil(BLOCK) * BLOCK, inodes))
}

fn run(tool: &str, cmd: &mut Command) -> Result<std::process::Output> {
    let output = cmd.output().map_err(|e| OciError::Tool {
        tool: tool.to_string(),
        message: format!("cannot run it ({e}); install e2fsprogs (apt-get install e2fsprogs)"),
    })?;
    if !output.status.success() {
        return Err(OciError::Tool {
            tool: tool.to_string(),
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output)
}

/// Builds the ext4 image of `tree` at `out` (a new file). `scratch` holds the debugfs script
/// and xattr value files.
pub fn build_ext4(tree: &Tree, out: &Path, scratch: &Path) -> Result<()> {
    let (mut size, mut inodes) = size_for(tree)?;
    // The estimate is tight; if mkfs runs out of room, grow and retry.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match mkfs(tree, out, size, inodes) {
            Ok(()) => break,
            Err(OciError::Tool { message, .. }) if attempt < 4 && message.contains("allocate") => {
                tracing::debug!(size, "ext4 image too small, growing");
                size = (size * 3 / 2).div_ceil(BLOCK) * BLOCK;
                inodes = inodes * 3 / 2;
            }
            Err(e) => return Err(e),
        }
    }
    apply_metadata(tree, out, scratch)
}

fn mkfs(tree: &Tree, out: &Path, size: u64, inodes: u64) -> Result<()> {
    let file = std::fs::File::create(out).at(out)?;
    file.set_len(size).at(out)?;
    drop(file);
    run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .args(["-O", "^has_journal,^resize_inode", "-L", "voidbox-rootfs"])
            .args(["-E", "root_owner=0:0"])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(tree.root())
            .arg(out),
    )?;
    Ok(())
}

/// The debugfs script of [`apply_metadata`]: one line per command; every path and name in
/// it is quoted, so no file name can add a command. Writes the xattr value files to `scratch`.
pub(crate) fn metadata_script(tree: &Tree, scratch: &Path) -> Result<String> {
    let mut script = String::new();
    let mut xattr_files = 0usize;
    for (rel, meta) in tree.entries() {
        let path = quote(&abs(rel));
        if meta.kind.is_recorded_only() {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or_default();
            let spec = match meta.kind {
                NodeKind::CharDevice { major, minor } => format!("c {major} {minor}"),
                NodeKind::BlockDevice { major, minor } => format!("b {major} {minor}"),
                _ => "p".to_string(),
            };
            // debugfs mknod takes a name in the current directory.
            let _ = writeln!(script, "cd {}", quote(&abs(parent)));
            let _ = writeln!(script, "mknod {} {spec}", quote(name));
            let _ = writeln!(script, "cd /");
        }
        let _ = writeln!(script, "sif {path} uid {}", meta.uid);
        let _ = writeln!(script, "sif {path} gid {}", meta.gid);
        let _ = writeln!(script, "sif {path} mode 0{:o}", meta.full_mode());
        let _ = writeln!(script, "sif {path} mtime @{}", meta.mtime);
        for (name, value) in &meta.xattrs {
            let value_file = scratch.join(format!("xattr-{xattr_files}"));
            xattr_files += 1;
            std::fs::write(&value_file, value).at(&value_file)?;
            let _ = writeln!(
                script,
                "ea_set -f {} {path} {}",
                quote(value_file.as_os_str().as_bytes()),
                quote(name.as_bytes())
            );
        }
    }
    Ok(script)
}

/// Sets owners, modes, times and xattrs, and creates device nodes and FIFOs, with one
/// debugfs script.
fn apply_metadata(tree: &Tree, out: &Path, scratch: &Path) -> Result<()> {
    let script = metadata_script(tree, scratch)?;
    let script_path = scratch.join("debugfs.cmds");
    let mut f = std::fs::File::create(&script_path).at(&script_path)?;
    f.write_all(script.as_bytes()).at(&script_path)?;
    drop(f);
    let output = run(
        "debugfs",
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(out),
    )?;
    // debugfs exits 0 even when a command fails; every failure prints to stderr.
    let errors: Vec<&str> = std::str::from_utf8(&output.stderr)
        .unwrap_or("")
        .lines()
        .filter(|l| {
            !l.starts_with("debugfs ") && !l.trim().is_empty() && !l.starts_with("Allocated inode")
        })
        .collect();
    if !errors.is_empty() {
        return Err(OciError::Tool {
            tool: "debugfs".into(),
            message: format!("setting owners/modes/xattrs failed: {}", errors.join("; ")),
        });
    }
    Ok(())
}
