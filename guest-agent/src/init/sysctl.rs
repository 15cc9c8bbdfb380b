//! Kernel hardening knobs PID 1 sets before any workload runs.
//!
//! Without systemd nobody sets `fs.protected_hardlinks` and
//! `fs.protected_symlinks`, so they stay at the kernel default 0. The agent
//! runs as root and works in directories the workload can write (`/work`,
//! `/tmp`); with these at 1, a link the workload planted there cannot make a
//! root open reach a file the workload does not own.

use std::io;

/// `(path under /proc/sys, value)` written at boot.
pub const HARDENING: &[(&str, &str)] = &[
    ("fs/protected_hardlinks", "1"),
    ("fs/protected_symlinks", "1"),
];

/// Writes every [`HARDENING`] sysctl. Returns the ones that failed, each with
/// its error; the caller reports them (the guest still runs, less hardened).
pub fn harden() -> Vec<(&'static str, io::Error)> {
    HARDENING
        .iter()
        .filter_map(|(name, value)| {
            std::fs::write(format!("/proc/sys/{name}"), value)
                .err()
                .map(|e| (*name, e))
        })
        .collect()
}
