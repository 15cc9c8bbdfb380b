//! The VMM jail: `voidbox vmm-jail --spec jail.json -- voidbox-vmm ARGS...`
//! runs the VMM isolated the same way on both launch paths (local, and inside
//! the nested lane's L2), modelled on Firecracker's jailer:
//!
//! - a cleared environment (only `VOIDBOX_VMM_LOG` is passed) and no
//!   inherited file descriptor above 2;
//! - new mount, IPC, UTS, network and PID namespaces: the VMM is PID 1 of
//!   its own PID namespace; the jailer stays outside as its parent, waits,
//!   exits with its status, forwards SIGTERM/SIGINT, and kills it when its
//!   own parent dies (watched through a pidfd);
//! - a root on a private, read-only tmpfs holding only the paths the
//!   [`JailSpec`] exposes (plus the VMM binary and its shared libraries),
//!   at their host paths so `vm.json` needs no rewrite; `pivot_root`, old
//!   root detached ([`root`]);
//! - rlimits, no capabilities but `CAP_DAC_OVERRIDE` (or an unprivileged
//!   uid/gid), `no_new_privs` ([`limits`]);
//! - cgroup v2 `memory.max` / `pids.max` where the host delegates them
//!   ([`cgroup`]).
//!
//! It reports what holds in one `voidbox vmm-jail:` line on stderr. Setting
//! `VOIDBOX_JAIL=off` makes the runtime start the VMM unjailed (debugging).

pub mod cgroup;
pub mod elf;
pub mod error;
pub mod limits;
pub mod root;
pub mod spec;
mod supervise;

use std::path::PathBuf;

pub use error::{JailError, Result};
pub use spec::{JailSpec, JailUser, Limits, Mount};

/// Exit status when the jail cannot be set up (the VMM's "VMM error").
pub const JAIL_ERROR: u8 = 1;

/// Environment variable that turns the jail off (`VOIDBOX_JAIL=off`).
pub const ENV_SWITCH: &str = "VOIDBOX_JAIL";

/// Whether the runtime should jail the VMM: yes unless `VOIDBOX_JAIL=off`.
pub fn enabled() -> bool {
    std::env::var(ENV_SWITCH).map_or(true, |v| v != "off")
}

/// Arguments of `voidbox vmm-jail`.
#[derive(Debug, clap::Args)]
pub struct JailArgs {
    /// The jail spec (jail.json, written next to vm.json by the runtime).
    #[arg(long, value_name = "JAIL.json")]
    pub spec: PathBuf,
    /// The VMM command line: an absolute path to voidbox-vmm, then its arguments.
    #[arg(last = true, required = true, value_name = "VMM ARGV")]
    pub vmm: Vec<String>,
}

/// Runs `voidbox vmm-jail`; returns the exit status (the VMM's, or
/// [`JAIL_ERROR`] after printing why the jail could not be set up). A VMM
/// killed by a signal kills the jailer with the same signal.
pub fn main(args: JailArgs) -> u8 {
    match supervise::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("voidbox vmm-jail: error: {e}");
            JAIL_ERROR
        }
    }
}
