//! Per-VM boot data: the contract between the host runtime and the guest agent.
//!
//! The runtime serializes [`BootData`] as JSON to `/.voidbox/boot.json`
//! (mode 0400) inside a small uncompressed newc archive
//! ([`BootData::to_newc_archive`]) passed to the VMM as an extra initrd. The
//! agent reads it, deletes it, and only then listens. It is never on the
//! kernel command line (`/proc/cmdline` is readable by the workload).

use crate::protocol::auth::{AuthError, Secret};
use crate::protocol::{ExecLimits, UserSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Path of the boot data inside the initramfs.
pub const BOOT_DATA_PATH: &str = "/.voidbox/boot.json";
/// Largest boot data file the agent reads.
pub const MAX_BOOT_DATA_LEN: u64 = 1 << 20;

/// A read-only disk mounted in the guest, found by its virtio-blk serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMount {
    /// virtio-blk serial (as in `/sys/block/vdX/serial`), at most 20 bytes.
    pub serial: String,
    /// Absolute mount path in the guest.
    pub path: String,
    /// Filesystem type (default ext4).
    #[serde(default = "default_fstype")]
    pub fstype: String,
}

fn default_fstype() -> String {
    "ext4".into()
}

/// Disks to attach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMap {
    /// Serial of the base image disk (ext4): when present the agent switches
    /// into it (read-only lower under an overlay with a tmpfs upper);
    /// otherwise the guest stays in the initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_serial: Option<String>,
    /// Skill disks, mounted read-only, nosuid, nodev.
    #[serde(default)]
    pub skills: Vec<DiskMount>,
}

/// Wall clock the guest sets at boot (it has no RTC driver it can trust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Seconds since the epoch on the host when the boot data was written.
    pub unix_secs: i64,
    /// Nanoseconds part.
    #[serde(default)]
    pub nanos: u32,
}

/// Everything the agent needs at boot.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootData {
    /// Per-VM secret, hex (at least 16 bytes).
    pub secret: String,
    /// Command allowlist: absent = every command may run; present = only these
    /// absolute paths (compared without following the last symlink). Allowing
    /// a shell allows everything that shell runs. Present also refuses
    /// code-injecting exec env, puts over allowed programs, and allowed
    /// programs the workload can write (see `policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_commands: Option<Vec<String>>,
    /// Disks.
    #[serde(default)]
    pub disks: DiskMap,
    /// Default cgroup limits of every exec.
    #[serde(default)]
    pub limits: ExecLimits,
    /// Clock to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// Default user of execs and owner of put files (default 65534:65534).
    #[serde(default = "default_user")]
    pub user: UserSpec,
    /// Directories file transfers may touch (default `/`). Paths outside are denied.
    #[serde(default = "default_file_roots")]
    pub file_roots: Vec<String>,
    /// Hostname to set (default `voidbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra kernel module parameters: module name → "param=value ..." (a module
    /// loaded with finit_module does not see `mod.param=` on the cmdline).
    #[serde(default)]
    pub module_params: BTreeMap<String, String>,
}

impl std::fmt::Debug for BootData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootData")
            .field("secret", &"<redacted>")
            .field("allow_commands", &self.allow_commands)
            .field("disks", &self.disks)
            .field("limits", &self.limits)
            .field("clock", &self.clock)
            .field("user", &self.user)
            .field("file_roots", &self.file_roots)
            .finish_non_exhaustive()
    }
}

/// The unprivileged default user (`nobody`).
pub fn default_user() -> UserSpec {
    UserSpec {
        uid: 65534,
        gid: 65534,
    }
}

fn default_file_roots() -> Vec<String> {
    vec!["/".into()]
}

/// Invalid boot data.
#[derive(Debug, thiserror::Error)]
pub enum BootDataError {
    /// Not JSON of the right shape.
    #[error("boot data is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Bad secret.
    #[error("boot data secret: {0}")]
    Secret(#[from] AuthError),
    /// A path that must be absolute is not.
    #[error("boot data {field} `{path}` must be an absolute path without `..`")]
    Path {
        /// Which field.
        field: &'static str,
        /// The offending path.
        path: String,
    },
    /// A disk serial is empty or longer than virtio-blk allows.
    #[error("disk serial `{0}` must be 1-20 bytes")]
    Serial(String),
}

fn check_abs(field: &'static str, path: &str) -> Result<(), BootDataError> {
    let p = std::path::Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(BootDataError::Path {
            field,
            path: path.into(),
        });
    }
    Ok(())
}

fn check_serial(s: &str) -> Result<(), BootDataError> {
    if s.is_empty() || s.len() > 20 {
        return Err(BootDataError::Serial(s.into()));
    }
    Ok(())
}

impl BootData {
    /// New boot data with defaults and the given secret.
    pub fn new(secret: &Secret) -> Self {
        Self {
            secret: secret.to_hex(),
            allow_commands: None,
            disks: DiskMap::default(),
            limits: ExecLimits::default(),
            clock: None,
            user: default_user(),
            file_roots: default_file_roots(),
            hostname: None,
            module_params: BTreeMap::new(),
        }
    }

    /// Parses and validates JSON.
    pub fn from_json(b: &[u8]) -> Result<Self, BootDataError> {
        let d: Self = serde_json::from_slice(b)?;
        d.validate()?;
        Ok(d)
    }

    /// Checks the secret, paths and serials.
    pub fn validate(&self) -> Result<(), BootDataError> {
        Secret::from_hex(&self.secret)?;
        for c in self.allow_commands.iter().flatten() {
            check_abs("allow_commands entry", c)?;
        }
        for r in &self.file_roots {
            check_abs("file_roots entry", r)?;
        }
        if let Some(s) = &self.disks.base_serial {
            check_serial(s)?;
        }
        for d in &self.disks.skills {
            check_serial(&d.serial)?;
            check_abs("skill mount path", &d.path)?;
        }
        Ok(())
    }

    /// The secret.
    pub fn secret(&self) -> Result<Secret, BootDataError> {
        Ok(Secret::from_hex(&self.secret)?)
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("boot data always serializes")
    }

    /// The uncompressed newc archive holding `/.voidbox/boot.json` (mode 0400),
    /// to pass as an extra initrd after the main initramfs.
    pub fn to_newc_archive(&self) -> Vec<u8> {
        let mut w = crate::newc::NewcWriter::new();
        w.dir(".voidbox", 0o700);
        w.file(".voidbox/boot.json", 0o400, &self.to_json());
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_validation() {
        let mut d = BootData::new(&Secret::generate());
        d.allow_commands = Some(vec!["/bin/echo".into()]);
        d.disks.skills.push(DiskMount {
            serial: "skill0".into(),
            path: "/skills/a".into(),
            fstype: "ext4".into(),
        });
        let back = BootData::from_json(&d.to_json()).unwrap();
        assert_eq!(back, d);
        assert!(!format!("{d:?}").contains(&d.secret));

        d.file_roots = vec!["relative".into()];
        assert!(matches!(d.validate(), Err(BootDataError::Path { .. })));
        d.file_roots = vec!["/ok".into()];
        d.disks.base_serial = Some("x".repeat(21));
        assert!(matches!(d.validate(), Err(BootDataError::Serial(_))));
        assert!(matches!(
            BootData::from_json(br#"{"secret":"00"}"#),
            Err(BootDataError::Secret(_))
        ));
    }

    #[test]
    fn defaults_fill_in() {
        let s = Secret::generate();
        let d =
            BootData::from_json(format!(r#"{{"secret":"{}"}}"#, s.to_hex()).as_bytes()).unwrap();
        assert_eq!(d.user, default_user());
        assert_eq!(d.file_roots, vec!["/".to_string()]);
        assert!(d.allow_commands.is_none());
    }
}
