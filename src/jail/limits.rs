//! Per-process limits and privileges of the jailed VMM: rlimits, the
//! capability bounding set, `no_new_privs`, and the optional switch to an
//! unprivileged uid/gid.

use super::error::{JailError, Result};
use super::spec::{JailUser, Limits};

/// `CAP_DAC_OVERRIDE`: the one capability a root VMM keeps (see [`drop_privileges`]).
const CAP_DAC_OVERRIDE: u32 = 1;

fn setrlimit(resource: libc::__rlimit_resource_t, name: &str, value: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit(2) with a valid rlimit struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(JailError::last_os(format!("set {name}={value}"), ""));
    }
    Ok(())
}

/// Sets RLIMIT_CORE=0, RLIMIT_NOFILE, RLIMIT_FSIZE, and RLIMIT_NPROC when
/// the VMM has a uid of its own; returns the summary for the jail's report.
/// RLIMIT_NPROC counts every process of the uid host-wide, so it is not set
/// for root (whose count includes the whole system) — `pids.max` bounds the
/// VMM there when the cgroup controller is available.
pub fn apply_rlimits(limits: &Limits, user: Option<JailUser>) -> Result<String> {
    setrlimit(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    setrlimit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.nofile)?;
    setrlimit(libc::RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.fsize_bytes)?;
    let mut s = format!(
        "core=0 nofile={} fsize={}MiB",
        limits.nofile,
        limits.fsize_bytes >> 20
    );
    match (user, limits.pids_max) {
        (Some(_), Some(n)) => {
            setrlimit(libc::RLIMIT_NPROC, "RLIMIT_NPROC", n)?;
            s.push_str(&format!(" nproc={n}"));
        }
        _ => s.push_str(" nproc=unset(root: per-uid count is host-wide)"),
    }
    Ok(s)
}

/// Drops privileges for the exec. With a jail user: no supplementary
/// groups, then gid and uid (real, effective, saved), so no capability
/// survives. Without one the VMM stays uid 0 but its capability bounding
/// set keeps only `CAP_DAC_OVERRIDE` (what it gets after exec): it cannot
/// mount, mknod, ptrace, load modules, or change ids. DAC_OVERRIDE stays
/// because in the nested lane the run directory is a 9p share whose files
/// show the host user's ownership; every file the VMM can reach is one the
/// spec exposes, and read-only binds stay read-only. Both ways set
/// `no_new_privs` and clear ambient and inheritable capabilities.
pub fn drop_privileges(user: Option<JailUser>) -> Result<String> {
    // SAFETY: prctl(2) with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let summary = match user {
        Some(u) => {
            // SAFETY: setgroups(2) with an empty list; setresgid/setresuid with plain ids.
            let ok = unsafe {
                libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(u.gid, u.gid, u.gid) == 0
                    && libc::setresuid(u.uid, u.uid, u.uid) == 0
            };
            if !ok {
                return Err(JailError::last_os(
                    format!("switch to uid {} gid {}", u.uid, u.gid),
                    "the jailer must start as root to switch users",
                ));
            }
            format!("uid={} gid={} (no capabilities)", u.uid, u.gid)
        }
        None => {
            for cap in 0..64 {
                if cap == CAP_DAC_OVERRIDE {
                    continue;
                }
                // SAFETY: prctl(2) with integer arguments only.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                        break; // past the last capability this kernel knows
                    }
                    return Err(JailError::last_os(
                        format!("drop capability {cap} from the bounding set"),
                        "the jailer must start as root (CAP_SETPCAP)",
                    ));
                }
            }
            clear_inheritable()?;
            "uid=0 (capabilities: dac_override only)".to_string()
        }
    };
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::last_os("set no_new_privs", ""));
    }
    Ok(summary)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn clear_inheritable() -> Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a v3 header and room for its two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(JailError::last_os("read capabilities", ""));
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: capset(2) with the same header and data words, inheritable cleared.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(JailError::last_os("clear inheritable capabilities", ""));
    }
    Ok(())
}
