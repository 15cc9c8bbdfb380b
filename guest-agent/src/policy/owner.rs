//! Is an allowed program (or a directory above it) writable by the workload?
//! Then the workload could replace it between steps, and the allowlist would
//! let its code run.

use crate::protocol::UserSpec;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// True when user `u` can write an object with this owner and mode (ignoring
/// ACLs): it owns it, or it is world-writable, or group-writable with the
/// user's group. Root (uid 0) is never "the workload" here.
fn writable_by(md: &Metadata, u: UserSpec) -> bool {
    u.uid != 0
        && (md.uid() == u.uid
            || md.mode() & 0o002 != 0
            || (md.mode() & 0o020 != 0 && md.gid() == u.gid))
}

/// True when user `u` can replace the entry `child` of directory `dir`: it
/// can write `dir`, unless `dir` is sticky (like `/tmp`) and `u` owns
/// neither `dir` nor `child`.
fn can_replace(dir: &Metadata, child: &Metadata, u: UserSpec) -> bool {
    let sticky = dir.mode() & libc::S_ISVTX != 0;
    writable_by(dir, u) && !(sticky && dir.uid() != u.uid && child.uid() != u.uid)
}

/// The first of `path` and the directories above it that one of `users` can
/// write or replace, skipping symlinks' own modes (they mean nothing).
fn first_in_chain(path: &Path, users: &[UserSpec]) -> Option<(PathBuf, UserSpec)> {
    let md = std::fs::symlink_metadata(path).ok()?;
    if !md.file_type().is_symlink() {
        if let Some(u) = users.iter().find(|u| writable_by(&md, **u)) {
            return Some((path.to_path_buf(), *u));
        }
    }
    let mut child = (path.to_path_buf(), md);
    for dir in path.ancestors().skip(1) {
        let dmd = std::fs::symlink_metadata(dir).ok()?;
        if let Some(u) = users.iter().find(|u| can_replace(&dmd, &child.1, **u)) {
            return Some((dir.to_path_buf(), *u));
        }
        child = (dir.to_path_buf(), dmd);
    }
    None
}

/// The first of `program` (the path checked, its last symlink not followed),
/// the file it resolves to, and every directory above either, that one of
/// `users` can write (or replace an entry of, on the way to the program).
/// Missing paths are not reported (the exec then fails on its own).
pub fn first_writable(program: &Path, users: &[UserSpec]) -> Option<(PathBuf, UserSpec)> {
    first_in_chain(program, users).or_else(|| {
        let real = std::fs::canonicalize(program).ok()?;
        first_in_chain(&real, users)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOBODY: UserSpec = UserSpec {
        uid: 65534,
        gid: 65534,
    };

    /// Runs as root in CI (chown); skipped otherwise.
    #[test]
    fn workload_owned_or_writable_programs_are_found() {
        if not_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(d.path()).unwrap();
        let tool = dir.join("tool.sh");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Root-owned in a root-owned 0700 dir below sticky /tmp: fine.
        assert_eq!(first_writable(&tool, &[NOBODY]), None);
        // Owned by the workload.
        std::os::unix::fs::chown(&tool, Some(NOBODY.uid), None).unwrap();
        assert_eq!(
            first_writable(&tool, &[NOBODY]),
            Some((tool.clone(), NOBODY))
        );
        std::os::unix::fs::chown(&tool, Some(0), None).unwrap();
        // Its directory is world-writable (not sticky).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            first_writable(&tool, &[NOBODY]),
            Some((dir.clone(), NOBODY))
        );
        // Sticky: the workload cannot replace a root-owned entry.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(first_writable(&tool, &[NOBODY]), None);
        // A link to a workload-owned file is found through the link.
        let real = dir.join("real");
        std::fs::write(&real, b"").unwrap();
        std::os::unix::fs::chown(&real, Some(NOBODY.uid), None).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(first_writable(&link, &[NOBODY]), Some((real, NOBODY)));
        // Root as the workload: nothing is reported.
        let root = UserSpec { uid: 0, gid: 0 };
        assert_eq!(first_writable(&link, &[root]), None);
    }

    fn not_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() != 0 }
    }
}
