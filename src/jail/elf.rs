//! The files a dynamically linked VMM binary needs to start: its ELF
//! interpreter (`PT_INTERP`) and the shared libraries it names
//! (`DT_NEEDED`, recursively), looked up where glibc's loader looks without
//! an `ld.so.cache`. A static binary needs nothing.

use std::path::{Path, PathBuf};

use super::error::{JailError, Result};

/// Where the loader finds libraries when no `/etc/ld.so.cache` exists (the
/// jail has none), in its order.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

struct Elf {
    interp: Option<PathBuf>,
    needed: Vec<String>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn cstr_at(b: &[u8], o: usize) -> Option<String> {
    let rest = b.get(o..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parses the interpreter and `DT_NEEDED` names of a little-endian ELF64 file.
fn parse(b: &[u8]) -> Option<Elf> {
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(b, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    let mut interp = None;
    let mut dynamic = None;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (ty, off, vaddr, filesz) = (
            u32_at(b, ph)?,
            u64_at(b, ph + 8)?,
            u64_at(b, ph + 16)?,
            u64_at(b, ph + 32)?,
        );
        match ty {
            PT_INTERP => interp = cstr_at(b, usize::try_from(off).ok()?).map(PathBuf::from),
            PT_DYNAMIC => dynamic = Some((off, filesz)),
            PT_LOAD => loads.push((vaddr, off, filesz)),
            _ => {}
        }
    }
    let mut needed = Vec::new();
    if let Some((off, size)) = dynamic {
        let mut strtab = None;
        let mut names = Vec::new();
        for i in 0..(size / 16) {
            let e = usize::try_from(off + i * 16).ok()?;
            let (tag, val) = (u64_at(b, e)?, u64_at(b, e + 8)?);
            match tag {
                0 => break,
                DT_NEEDED => names.push(val),
                DT_STRTAB => strtab = Some(val),
                _ => {}
            }
        }
        // DT_STRTAB is an address: map it to a file offset through PT_LOAD.
        if let Some(addr) = strtab {
            let base = loads
                .iter()
                .find(|(va, _, sz)| addr >= *va && addr < va + sz)
                .map(|(va, off, _)| addr - va + off)?;
            for n in names {
                needed.push(cstr_at(b, usize::try_from(base + n).ok()?)?);
            }
        }
    }
    Some(Elf { interp, needed })
}

/// The interpreter and libraries `bin` loads, each at the path the loader
/// will open inside the jail (the same path as on the host).
pub fn runtime_files(bin: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut todo = vec![bin.to_path_buf()];
    let mut first = true;
    while let Some(file) = todo.pop() {
        let bytes = std::fs::read(&file)
            .map_err(|e| JailError::io(format!("read {}", file.display()), e))?;
        let Some(elf) = parse(&bytes) else {
            if first {
                return Err(JailError::BadCommand(format!(
                    "{} is not an x86-64 ELF executable: pass the voidbox-vmm binary after `--`",
                    bin.display()
                )));
            }
            continue;
        };
        first = false;
        let mut found = Vec::new();
        if let Some(i) = elf.interp {
            found.push(i);
        }
        for name in elf.needed {
            let lib = if name.contains('/') {
                Some(PathBuf::from(&name))
            } else {
                LIB_DIRS
                    .iter()
                    .map(|d| Path::new(d).join(&name))
                    .find(|p| p.is_file())
            };
            match lib {
                Some(l) => found.push(l),
                None => {
                    return Err(JailError::BadCommand(format!(
                    "{} needs {name}, which is not in {}: install it or build the VMM statically",
                    file.display(),
                    LIB_DIRS.join(", ")
                )))
                }
            }
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f.clone());
                todo.push(f);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_loader_and_libc_of_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let files = runtime_files(&exe).unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("ld-linux")),
            "{files:?}"
        );
        assert!(files.iter().any(|f| f.ends_with("libc.so.6")), "{files:?}");
    }

    #[test]
    fn rejects_non_elf_and_ignores_truncated_input() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(runtime_files(&f)
            .unwrap_err()
            .to_string()
            .contains("not an x86-64 ELF"));
        assert!(parse(b"\x7fELF\x02\x01\x01").is_none());
    }
}
