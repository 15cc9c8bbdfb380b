//! The command allowlist.
//!
//! With no allowlist every command may run. With one, argv[0] is looked up on
//! the exec's PATH (or taken as a path when it contains `/`) and the result is
//! compared as an absolute path whose directories are canonicalized but whose
//! last component is NOT followed: busybox makes `/bin/cat` and `/bin/echo`
//! symlinks to one binary, and allowing `echo` must not allow `cat`. The agent
//! then executes exactly the path it checked, so no second PATH lookup can
//! pick another file. Allowing a shell (or any interpreter) allows everything
//! it runs.
//!
//! Under an allowlist the agent also refuses an exec environment that could
//! inject code ([`env`]), an allowed program that the workload can write
//! ([`owner`]), and puts onto allowed programs (see [`CommandPolicy::protects`]).

pub mod env;
pub mod owner;

use crate::protocol::UserSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// PATH used when the exec does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command may not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Empty argv.
    #[error("exec needs a non-empty argv")]
    EmptyArgv,
    /// Not found on PATH.
    #[error("command `{command}` not found on PATH `{path}`")]
    NotFound {
        /// argv[0].
        command: String,
        /// PATH searched.
        path: String,
    },
    /// Found, but not on the allowlist.
    #[error(
        "command `{command}` (resolved to {resolved}) is not allowed; the allowlist is [{allowed}]"
    )]
    Denied {
        /// argv[0].
        command: String,
        /// Where it resolved.
        resolved: String,
        /// The allowlist, comma-separated.
        allowed: String,
    },
    /// The exec environment sets a variable that can inject code.
    #[error(
        "environment variable `{name}` is not allowed while a command allowlist is in force: \
         it can make an allowed program load or run other code; remove it from the exec's \
         env (or from the image's); see docs/security.md for the list"
    )]
    EnvDenied {
        /// The variable.
        name: String,
    },
    /// The allowed program, or a directory above it, is writable by the workload.
    #[error(
        "command {program} is allowed, but {path} is writable by the workload (uid {uid}): \
         it could replace the program; an allowed program and every directory above it must \
         be owned by root and not group- or world-writable (put it with owner root, mode 0755)"
    )]
    Writable {
        /// The checked program.
        program: String,
        /// The writable file or directory.
        path: String,
        /// The workload uid that can write it.
        uid: u32,
    },
}

/// The allowlist in normalized form.
#[derive(Debug, Clone, Default)]
pub struct CommandPolicy {
    allow: Option<Vec<PathBuf>>,
    listed: Vec<String>,
}

/// Makes `p` absolute and lexically clean, canonicalizes its parent directory
/// when it exists, and keeps the last component as is (not followed).
pub fn normalize(p: &Path, cwd: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    let mut clean = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(s) => clean.push(s),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => match std::fs::canonicalize(parent) {
            Ok(dir) => dir.join(name),
            Err(_) => clean,
        },
        _ => clean,
    }
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves argv[0] the way `execvp` would, returning a normalized absolute path.
pub fn resolve_command(argv0: &str, path_env: &str, cwd: &Path) -> Result<PathBuf, PolicyError> {
    if argv0.is_empty() {
        return Err(PolicyError::EmptyArgv);
    }
    let not_found = || PolicyError::NotFound {
        command: argv0.into(),
        path: path_env.into(),
    };
    if argv0.contains('/') {
        let p = normalize(Path::new(argv0), cwd);
        return if is_executable_file(&p) {
            Ok(p)
        } else {
            Err(not_found())
        };
    }
    for dir in path_env.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(argv0);
        if is_executable_file(&cand) {
            return Ok(normalize(&cand, cwd));
        }
    }
    Err(not_found())
}

impl CommandPolicy {
    /// Builds the policy from the boot data's `allow_commands`.
    pub fn new(allow: Option<&[String]>) -> Self {
        match allow {
            None => Self::default(),
            Some(list) => Self {
                allow: Some(
                    list.iter()
                        .map(|c| normalize(Path::new(c), Path::new("/")))
                        .collect(),
                ),
                listed: list.to_vec(),
            },
        }
    }

    /// True when an allowlist is in force.
    pub fn is_restricted(&self) -> bool {
        self.allow.is_some()
    }

    /// Under an allowlist, refuses an environment that can inject code
    /// ([`env::first_denied`]).
    pub fn check_env<'a>(&self, names: impl Iterator<Item = &'a str>) -> Result<(), PolicyError> {
        match (&self.allow, env::first_denied(names)) {
            (Some(_), Some(name)) => Err(PolicyError::EnvDenied { name: name.into() }),
            _ => Ok(()),
        }
    }

    /// Under an allowlist, refuses `program` (as returned by [`Self::check`])
    /// when one of `users` can write it, the file it links to, or a directory
    /// above either.
    pub fn check_not_writable(
        &self,
        program: &Path,
        users: &[UserSpec],
    ) -> Result<(), PolicyError> {
        if self.allow.is_none() {
            return Ok(());
        }
        match owner::first_writable(program, users) {
            Some((path, u)) => Err(PolicyError::Writable {
                program: program.display().to_string(),
                path: path.display().to_string(),
                uid: u.uid,
            }),
            None => Ok(()),
        }
    }

    /// True when writing `path` (absolute) could replace an allowed program:
    /// it is an allowed path, a directory above one, or (after following
    /// symlinks) the file an allowed path runs or a directory above it.
    pub fn protects(&self, path: &Path) -> bool {
        let Some(list) = &self.allow else {
            return false;
        };
        let lexical = normalize(path, Path::new("/"));
        let real = std::fs::canonicalize(path).ok();
        let hits =
            |a: &Path| a.starts_with(&lexical) || real.as_ref().is_some_and(|r| a.starts_with(r));
        list.iter()
            .any(|a| hits(a) || std::fs::canonicalize(a).is_ok_and(|real_a| hits(&real_a)))
    }

    /// Resolves argv[0] and checks it; returns the path to execute.
    pub fn check(&self, argv0: &str, path_env: &str, cwd: &Path) -> Result<PathBuf, PolicyError> {
        let resolved = resolve_command(argv0, path_env, cwd)?;
        match &self.allow {
            None => Ok(resolved),
            Some(list) if list.iter().any(|a| a == &resolved) => Ok(resolved),
            Some(_) => Err(PolicyError::Denied {
                command: argv0.into(),
                resolved: resolved.display().to_string(),
                allowed: self.listed.join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinked_multicall_binaries_are_distinct() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let multi = bin.join("busybox");
        std::fs::write(&multi, b"#!/bin/true\n").unwrap();
        std::fs::set_permissions(&multi, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("busybox", bin.join("echo")).unwrap();
        symlink("busybox", bin.join("cat")).unwrap();
        // A symlinked directory on PATH is canonicalized (merged-/usr layouts).
        symlink(&bin, d.path().join("linkbin")).unwrap();
        let path_env = d.path().join("linkbin").display().to_string();
        let bin = std::fs::canonicalize(&bin).unwrap();

        let p = CommandPolicy::new(Some(&[bin.join("echo").display().to_string()]));
        assert_eq!(
            p.check("echo", &path_env, Path::new("/")).unwrap(),
            bin.join("echo")
        );
        match p.check("cat", &path_env, Path::new("/")) {
            Err(PolicyError::Denied {
                command, allowed, ..
            }) => {
                assert_eq!(command, "cat");
                assert!(allowed.contains("echo"));
            }
            other => panic!("cat must be denied: {other:?}"),
        }
        // Absolute and relative spellings resolve the same way.
        let rel = format!("../{}/echo", bin.file_name().unwrap().to_str().unwrap());
        assert!(p.check(&rel, &path_env, &bin).is_ok());
        assert!(matches!(
            p.check("nope", &path_env, Path::new("/")),
            Err(PolicyError::NotFound { .. })
        ));
        assert_eq!(
            p.check("", &path_env, Path::new("/")),
            Err(PolicyError::EmptyArgv)
        );
        assert!(CommandPolicy::new(None)
            .check("cat", &path_env, Path::new("/"))
            .is_ok());
    }
}
