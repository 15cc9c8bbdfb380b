//! Kernel module lookup and load order.
//!
//! Debian's kernel package ships no `modules.dep` (depmod writes it at install time, and we
//! never install). Each module records its dependencies in its ELF `.modinfo` section
//! (`depends=a,b`), so we read those directly and order modules dependencies-first, the
//! order `modules.dep` would give and the order `finit_module` needs.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One module file, ready to be copied into an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Canonical module name (underscores), e.g. `virtio_mmio`.
    pub name: String,
    /// Absolute path of the `.ko` file.
    pub path: PathBuf,
    /// Path relative to `lib/modules/<release>/`, e.g. `kernel/drivers/virtio/virtio_mmio.ko`.
    pub rel_path: PathBuf,
}

/// All modules of one kernel release, by canonical name.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    dir: PathBuf,
    by_name: BTreeMap<String, PathBuf>,
}

/// Module names treat `-` and `_` alike; the kernel uses `_`.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleTree {
    /// Indexes every `*.ko` under `dir` (a `lib/modules/<release>` directory).
    pub fn scan(dir: &Path) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| Error::io("list", &d, e))?;
            for ent in rd {
                let ent = ent.map_err(|e| Error::io("list", &d, e))?;
                let path = ent.path();
                let ft = ent.file_type().map_err(|e| Error::io("stat", &path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    by_name.insert(canonical_name(stem), path);
                }
            }
        }
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            by_name,
        })
    }

    /// The `lib/modules/<release>` directory this tree indexes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of modules found.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when no module was found.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn module(&self, name: &str) -> Result<KernelModule> {
        let name = canonical_name(name);
        let path = self
            .by_name
            .get(&name)
            .ok_or_else(|| Error::ModuleNotFound {
                name: name.clone(),
                dir: self.dir.clone(),
            })?
            .clone();
        let rel_path = path
            .strip_prefix(&self.dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.clone());
        Ok(KernelModule {
            name,
            path,
            rel_path,
        })
    }

    /// The dependencies of one module, read from its `.modinfo`.
    pub fn depends(&self, name: &str) -> Result<Vec<String>> {
        let m = self.module(name)?;
        let data = std::fs::read(&m.path).map_err(|e| Error::io("read", &m.path, e))?;
        let info = modinfo(&data).ok_or_else(|| Error::BadStoreEntry {
            path: m.path.clone(),
            reason: "no readable .modinfo section".into(),
        })?;
        Ok(info
            .iter()
            .filter_map(|kv| kv.strip_prefix("depends="))
            .flat_map(|v| v.split(','))
            .filter(|d| !d.is_empty())
            .map(canonical_name)
            .collect())
    }

    /// `names` and everything they depend on, each once, dependencies first.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<KernelModule>> {
        let mut done = HashSet::new();
        let mut order = Vec::new();
        for n in names {
            self.visit(&canonical_name(n), &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<KernelModule>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::ModuleCycle(name.to_string()));
        }
        path.push(name.to_string());
        for dep in self.depends(name)? {
            self.visit(&dep, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(self.module(name)?);
        Ok(())
    }
}

/// The NUL-separated `key=value` strings of an ELF64 module's `.modinfo` section.
/// Every offset is bounds-checked: a malformed file yields `None`, never a panic.
pub fn modinfo(elf: &[u8]) -> Option<Vec<String>> {
    let rd16 = |o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(
            elf.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let rd32 = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            elf.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let rd64 = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            elf.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    // ELF64, little endian.
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = usize::try_from(rd64(0x28)?).ok()?;
    let shentsize = usize::from(rd16(0x3a)?);
    let shnum = usize::from(rd16(0x3c)?);
    let shstrndx = usize::from(rd16(0x3e)?);
    if shentsize < 0x40 {
        return None;
    }
    let section = |i: usize| -> Option<(u32, &[u8])> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = rd32(base)?;
        let off = usize::try_from(rd64(base.checked_add(0x18)?)?).ok()?;
        let size = usize::try_from(rd64(base.checked_add(0x20)?)?).ok()?;
        Some((name, elf.get(off..off.checked_add(size)?)?))
    };
    let (_, strtab) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = strtab.get(name_off as usize..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        if name == b".modinfo" {
            return Some(
                data.split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_rejects_garbage_without_panicking() {
        assert!(modinfo(b"").is_none());
        assert!(modinfo(b"\x7fELF\x02\x01").is_none());
        let mut bogus = vec![0u8; 0x40];
        bogus[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bogus[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        bogus[0x3a] = 0x40;
        bogus[0x3c] = 3;
        assert!(modinfo(&bogus).is_none());
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("kvm-amd"), "kvm_amd");
    }
}
