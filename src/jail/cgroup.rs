//! cgroup v2 limits for the jailed VMM: `memory.max` and `pids.max` on a
//! child cgroup `voidbox-vmm-<pid>` of the jailer's own cgroup, applied only
//! where the host delegates those controllers. The outcome (applied, or
//! why not) goes into the jail's one-line report.
//!
//! When no cgroup2 file system is mounted (the nested lane's L2), the jailer
//! mounts one at `/sys/fs/cgroup` in its own mount namespace. A controller
//! not in the cgroup's `cgroup.controllers` is not delegated: nothing is
//! applied. One that is delegated but not enabled for children is enabled
//! in `cgroup.subtree_control`; the kernel refuses that in a non-root cgroup
//! that holds processes ("no internal processes"), reported as such.

use std::path::{Path, PathBuf};

use super::spec::Limits;

/// A child cgroup holding the VMM; removed by [`Cgroup::remove`].
#[derive(Debug)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

/// The cgroup (if any) and the report line.
pub struct Outcome {
    /// Where the VMM goes, when limits were applied.
    pub cgroup: Option<Cgroup>,
    /// `memory.max=… pids.max=…`, or what was not applied and why.
    pub summary: String,
}

fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let dir = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn mount_cgroup2() -> Option<PathBuf> {
    let dir = Path::new("/sys/fs/cgroup");
    // SAFETY: mount(2) with valid C strings, in the jailer's private mount namespace.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            c"/sys/fs/cgroup".as_ptr(),
            c"cgroup2".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    (rc == 0).then(|| dir.to_path_buf())
}

fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Creates the VMM's cgroup with the limits that can hold. Never fails the
/// jail: limits that cannot be applied are reported, not enforced.
pub fn setup(limits: &Limits) -> Outcome {
    let wanted: Vec<(&str, &str, String)> = [
        limits
            .memory_max_mib
            .map(|m| ("memory", "memory.max", (m << 20).to_string())),
        limits.pids_max.map(|p| ("pids", "pids.max", p.to_string())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if wanted.is_empty() {
        return none("cgroup: no limits asked");
    }
    let names = wanted.iter().map(|w| w.1).collect::<Vec<_>>().join(", ");
    let Some(root) = cgroup2_mount().or_else(mount_cgroup2) else {
        return none(&format!(
            "cgroup: {names} not applied: no cgroup2 file system (cgroup v1-only host)"
        ));
    };
    let Some(own) = own_cgroup() else {
        return none(&format!(
            "cgroup: {names} not applied: this process has no cgroup v2 membership"
        ));
    };
    let own = own.trim_start_matches('/');
    let dir = if own.is_empty() { root } else { root.join(own) };
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    let (usable, missing): (Vec<_>, Vec<_>) =
        wanted.into_iter().partition(|w| available.contains(&w.0));
    let mut notes = Vec::new();
    if !missing.is_empty() {
        notes.push(format!(
            "{} not applied: {} offers only `{}` (the host does not delegate {})",
            missing.iter().map(|w| w.1).collect::<Vec<_>>().join(", "),
            dir.display(),
            available.join(" "),
            missing.iter().map(|w| w.0).collect::<Vec<_>>().join("/"),
        ));
    }
    if usable.is_empty() {
        return none(&format!("cgroup: {}", notes.join("; ")));
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for w in &usable {
        if !enabled.split_whitespace().any(|c| c == w.0) {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{}", w.0))
            {
                notes.push(format!(
                    "{} not applied: cannot enable `{}` for children of {}: {e} (a non-root cgroup with processes cannot; give voidbox a delegated cgroup)",
                    usable.iter().map(|w| w.1).collect::<Vec<_>>().join(", "),
                    w.0,
                    dir.display()
                ));
                return none(&format!("cgroup: {}", notes.join("; ")));
            }
        }
    }
    let path = dir.join(format!("voidbox-vmm-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&path) {
        notes.push(format!(
            "not applied: cannot create {}: {e}",
            path.display()
        ));
        return none(&format!("cgroup: {}", notes.join("; ")));
    }
    let cg = Cgroup { path };
    let mut applied = Vec::new();
    for (_, file, value) in &usable {
        match std::fs::write(cg.path.join(file), value) {
            Ok(()) => applied.push(format!("{file}={value}")),
            Err(e) => notes.push(format!("{file} not applied: {e}")),
        }
    }
    if applied.is_empty() {
        cg.remove();
        return none(&format!("cgroup: {}", notes.join("; ")));
    }
    let mut summary = format!("cgroup {} {}", cg.path.display(), applied.join(" "));
    if !notes.is_empty() {
        summary.push_str(&format!("; {}", notes.join("; ")));
    }
    Outcome {
        cgroup: Some(cg),
        summary,
    }
}

fn none(summary: &str) -> Outcome {
    Outcome {
        cgroup: None,
        summary: summary.to_string(),
    }
}

impl Cgroup {
    /// Moves the calling process into the cgroup.
    pub fn join(&self) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), "0")
    }

    /// Removes the (empty) cgroup, waiting briefly for exited tasks to go.
    pub fn remove(&self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!("cannot remove the VMM cgroup {}", self.path.display());
    }
}
