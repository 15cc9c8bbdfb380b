//! Loads the kernel modules the initramfs carries, dependencies first
//! (modules.dep), with finit_module. Parameters come from the boot data: a
//! module loaded this way does not see `mod.param=` on the kernel cmdline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn module_name(path: &str) -> String {
    let file = Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    file.split(".ko")
        .next()
        .unwrap_or_default()
        .replace('-', "_")
}

/// Loads every module listed in `/lib/modules/$(uname -r)/modules.dep`.
pub fn load_all(params: &BTreeMap<String, String>) -> Result<(), String> {
    let dir = PathBuf::from("/lib/modules").join(release());
    let dep = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!("no modules to load ({}: {e})", dir.display());
            return Ok(());
        }
    };
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut order = Vec::new();
    for line in dep.lines() {
        let Some((m, d)) = line.split_once(':') else {
            continue;
        };
        order.push(m.to_string());
        deps.insert(
            m.to_string(),
            d.split_whitespace().map(String::from).collect(),
        );
    }
    let mut done = HashSet::new();
    for m in &order {
        load(&dir, m, &deps, params, &mut done, 0);
    }
    Ok(())
}

fn load(
    dir: &Path,
    m: &str,
    deps: &HashMap<String, Vec<String>>,
    params: &BTreeMap<String, String>,
    done: &mut HashSet<String>,
    depth: usize,
) {
    if depth > 64 || !done.insert(m.to_string()) {
        return;
    }
    for d in deps.get(m).into_iter().flatten().rev() {
        load(dir, d, deps, params, done, depth + 1);
    }
    let path = dir.join(m);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("module {}: {e}", path.display());
            return;
        }
    };
    let name = module_name(m);
    let p = CString::new(params.get(&name).cloned().unwrap_or_default()).unwrap_or_default();
    let flags = if m.ends_with(".ko") {
        0
    } else {
        MODULE_INIT_COMPRESSED_FILE
    };
    // SAFETY: finit_module with a valid fd, a NUL-terminated params string and flags.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), p.as_ptr(), flags) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            tracing::warn!("loading module {name}: {e}");
        }
    }
}
