//! The default guest's initramfs: the static musl agent as `/init`, the
//! kernel modules it loads (with a `modules.dep` in load order), and Debian's
//! busybox-static with its applet links so the guest has a shell.
//!
//! ```text
//! /init                                  voidbox-guest-agent (static)
//! /bin/busybox, /bin/sh, /usr/bin/...    busybox-static and its applets
//! /lib/modules/<release>/kernel/...ko    GUEST_MODULES and their dependencies
//! /lib/modules/<release>/modules.dep     `path: deps...`, dependencies first
//! /etc/passwd, /etc/group, /etc/hostname root and nobody
//! /dev/console                           so the kernel gives PID 1 a console
//! /skills                                a mount point for a skill image
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::initramfs::Initramfs;
use crate::kernel::{GuestKernel, GUEST_MODULES};

/// Modules loaded on demand by the kernel (crypto API), not listed as
/// dependencies in any `.modinfo`: ext4 needs crc32c for its checksums.
pub const EXTRA_MODULES: &[&str] = &["crc32c_generic"];

/// Debian's package with a static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

const AGENT_FIX: &str = "build it with `cargo build -p voidbox-guest-agent --profile agent --target x86_64-unknown-linux-musl` (rustup target add x86_64-unknown-linux-musl first), or pass --agent PATH";
const BUSYBOX_FIX: &str =
    "run `apt-get update`, or pass --busybox-deb PATH to a downloaded busybox-static .deb";

/// Whether an ELF64 file is statically linked (no `PT_INTERP`). Offsets are
/// bounds-checked; a malformed file is reported as not static.
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let rd16 = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    if phentsize < 4 {
        return false;
    }
    for i in 0..u64::from(phnum) {
        let Some(off) = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|o| usize::try_from(o).ok())
        else {
            return false;
        };
        match rd32(off) {
            Some(PT_INTERP) => return false,
            Some(_) => {}
            None => return false,
        }
    }
    true
}

/// Where the agent binary is looked for, in order, when `--agent` is not
/// given: `$VOIDBOX_AGENT`, then under each target directory
/// `x86_64-unknown-linux-musl/agent/` and `x86_64-unknown-linux-musl/release/`.
pub fn agent_candidates(target_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("VOIDBOX_AGENT").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    for dir in target_dirs {
        for profile in ["agent", "release"] {
            out.push(
                dir.join("x86_64-unknown-linux-musl")
                    .join(profile)
                    .join("voidbox-guest-agent"),
            );
        }
    }
    out
}

/// Reads the agent: `explicit` if given, else the first candidate that
/// exists. It must be a static ELF (it runs as PID 1 with no libc around).
pub fn load_agent(explicit: Option<&Path>, candidates: &[PathBuf]) -> Result<(PathBuf, Vec<u8>)> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| Error::Tool {
                tool: "voidbox-guest-agent".into(),
                detail: format!(
                    "the static guest agent was not found (looked at {})",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                fix: AGENT_FIX,
            })?,
    };
    let data = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    if !is_static_elf(&data) {
        return Err(Error::Tool {
            tool: "voidbox-guest-agent".into(),
            detail: format!("{} is not a statically linked ELF binary", path.display()),
            fix: AGENT_FIX,
        });
    }
    Ok((path, data))
}

fn tool(cmd: &mut Command, fix: &'static str) -> Result<Vec<u8>> {
    let name = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: name.clone(),
        detail: e.to_string(),
        fix,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: name,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            fix,
        });
    }
    Ok(out.stdout)
}

/// Finds a busybox-static `.deb`: `explicit`, else one in `dirs`, else
/// `apt-get download busybox-static` into `download_dir`.
pub fn find_busybox_deb(
    explicit: Option<&Path>,
    dirs: &[PathBuf],
    download_dir: &Path,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let find_in = |dir: &Path| -> Option<PathBuf> {
        let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{BUSYBOX_PACKAGE}_")) && n.ends_with(".deb")
                })
            })
            .collect();
        debs.sort();
        debs.pop()
    };
    for dir in dirs.iter().map(PathBuf::as_path).chain([download_dir]) {
        if let Some(deb) = find_in(dir) {
            return Ok(deb);
        }
    }
    std::fs::create_dir_all(download_dir).map_err(|e| Error::io("create", download_dir, e))?;
    tracing::info!("downloading {BUSYBOX_PACKAGE} with apt-get");
    tool(
        Command::new("apt-get")
            .args(["download", "-q", BUSYBOX_PACKAGE])
            .current_dir(download_dir),
        BUSYBOX_FIX,
    )?;
    find_in(download_dir).ok_or_else(|| Error::Tool {
        tool: format!("apt-get download {BUSYBOX_PACKAGE}"),
        detail: "no .deb appeared".into(),
        fix: BUSYBOX_FIX,
    })
}

/// The `bin/busybox` of a busybox-static `.deb` (unpacked with `dpkg-deb -x`
/// into a temp directory; nothing is installed).
pub fn busybox_from_deb(deb: &Path) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    tool(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()),
        "install dpkg (`apt-get install -y dpkg`)",
    )?;
    for rel in ["bin/busybox", "usr/bin/busybox"] {
        let path = dir.path().join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        if !is_static_elf(&data) {
            return Err(Error::BadStoreEntry {
                path: deb.to_path_buf(),
                reason: "its busybox is not statically linked".into(),
            });
        }
        return Ok(data);
    }
    Err(Error::BadStoreEntry {
        path: deb.to_path_buf(),
        reason: "no bin/busybox in the package".into(),
    })
}

/// The applet paths busybox provides (`busybox --list-full`), e.g.
/// `bin/sh`, `usr/bin/env`. Runs the (static) binary from a temp file.
pub fn busybox_applets(busybox: &[u8]) -> Result<Vec<String>> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    let path = dir.path().join("busybox");
    {
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        f.write_all(busybox)
            .map_err(|e| Error::io("write", &path, e))?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io("chmod", &path, e))?;
    let out = tool(
        Command::new(&path).arg("--list-full"),
        "the busybox binary did not run",
    )?;
    let applets: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect();
    if !applets.iter().any(|a| a == "bin/sh") {
        return Err(Error::BadStoreEntry {
            path,
            reason: "busybox --list-full does not list bin/sh".into(),
        });
    }
    Ok(applets)
}

/// The parts of a guest initramfs.
pub struct GuestParts<'a> {
    /// The static agent.
    pub agent: Vec<u8>,
    /// busybox-static.
    pub busybox: Vec<u8>,
    /// Its applet paths (relative, e.g. `bin/sh`).
    pub applets: Vec<String>,
    /// The kernel whose modules are included.
    pub kernel: &'a GuestKernel,
}

/// Composes the initramfs (not yet encoded).
pub fn compose(parts: &GuestParts<'_>) -> Result<Initramfs> {
    let mut fs = Initramfs::new();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "root",
        "mnt", "var", "lib", "home", "skills",
    ] {
        fs.add_dir(dir, 0o755)?;
    }
    fs.add_dir("tmp", 0o1777)?;
    fs.add_dir("root", 0o700)?;
    fs.add_char_device("dev/console", 0o600, 5, 1)?;
    fs.add_file("init", 0o755, parts.agent.clone())?;
    fs.add_file("bin/busybox", 0o755, parts.busybox.clone())?;
    for applet in &parts.applets {
        if applet == "bin/busybox" {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        fs.add_symlink(applet, &target)?;
    }
    fs.add_file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
            .to_vec(),
    )?;
    fs.add_file(
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
    )?;
    fs.add_file("etc/hostname", 0o644, b"voidbox\n".to_vec())?;

    let release = &parts.kernel.manifest.release;
    let base = format!("lib/modules/{release}");
    let tree = parts.kernel.module_tree()?;
    let wanted: Vec<&str> = EXTRA_MODULES.iter().chain(GUEST_MODULES).copied().collect();
    let modules = tree.resolve(&wanted)?;
    let mut dep_lines = String::new();
    for m in &modules {
        let rel = m.rel_path.to_string_lossy();
        fs.add_file_from(&format!("{base}/{rel}"), 0o644, &m.path)?;
        let deps: Vec<String> = tree
            .depends(&m.name)?
            .iter()
            .filter_map(|d| modules.iter().find(|x| &x.name == d))
            .map(|x| x.rel_path.to_string_lossy().into_owned())
            .collect();
        dep_lines.push_str(&format!("{rel}: {}\n", deps.join(" ")));
    }
    fs.add_file(
        &format!("{base}/modules.dep"),
        0o644,
        dep_lines.into_bytes(),
    )?;
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        // The test binary itself is dynamically linked (glibc target).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"\x7fELF"));
        assert!(!is_static_elf(b"not an elf at all"));
        // A minimal static ELF64 header with no program headers.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x36] = 56;
        assert!(is_static_elf(&elf));
        // Truncated program header table: refused, no panic.
        elf[0x20] = 64;
        elf[0x38] = 3;
        assert!(!is_static_elf(&elf));
    }

    #[test]
    fn missing_agent_says_how_to_build_it() {
        let err = load_agent(None, &[PathBuf::from("/nonexistent/agent")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--profile agent"), "{text}");
        assert!(text.contains("/nonexistent/agent"), "{text}");
    }

    #[test]
    fn busybox_from_the_debian_package() {
        // A cached .deb if there is one (VOIDBOX_DEB_CACHE), else apt-get download.
        let dirs: Vec<PathBuf> = std::env::var_os("VOIDBOX_DEB_CACHE")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        let download = tempfile::tempdir().unwrap();
        let deb = find_busybox_deb(None, &dirs, download.path()).unwrap();
        let bb = busybox_from_deb(&deb).unwrap();
        assert!(is_static_elf(&bb));
        let applets = busybox_applets(&bb).unwrap();
        assert!(applets.iter().any(|a| a == "bin/sh"));
        assert!(applets.iter().any(|a| a == "bin/ls"));
    }
}
