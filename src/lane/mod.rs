//! The nested lane: QEMU (TCG, SVM-capable CPU) running a Debian kernel with kvm_amd, so stock
//! guests boot under real KVM on hosts whose own KVM cannot boot them (DESIGN.md §3, §8).
//!
//! ```text
//! host (L1)   Lane::start → qemu-system-x86_64 -accel tcg -cpu EPYC -M q35
//!               -kernel <Debian vmlinux, PVH> -initrd <L2 initramfs built here>
//!               9p: host / (read-only), lane dir + LaneConfig::shared_dirs (read-write)
//!               virtio-serial: voidbox.ctl (control), voidbox.relay.N (relays), host sockets
//! L2          busybox init: modules, 9p mounts, chroot into the host /, `<l2_program> serve`
//!               → commands run there unchanged (e.g. target/*/voidbox-vmm) under L2's KVM
//! ```
//! One lane serves many commands: [`Lane::run`], [`Lane::spawn`] (long-running, killable),
//! [`Lane::start_relay`] (a host socket bridged to a guest vsock port). [`Launcher`] runs the
//! same commands locally when the host has hardware KVM.
//!
//! The L2 side lives in [`l2_main`]; the host binary named in [`LaneConfig::l2_program`] must
//! call it with the arguments after its own prefix.

mod command;
mod config;
mod error;
mod host;
mod l2image;
mod launcher;
mod process;
pub mod protocol;
mod relay;
mod server;
mod vport;

use std::path::Path;
use std::time::Duration;

pub use command::{LaneProcess, MAX_CAPTURE, MAX_QUEUED};
pub use config::LaneConfig;
pub use error::LaneError;
pub use host::{tail_lines, Lane};
pub use launcher::{detect_host_kvm, HostKvm, Launcher, LocalProcess, Process};
pub use process::Output;
pub use protocol::{CommandSpec, ExitInfo};
pub use relay::connect_vsock;

/// Entry point of the L2 side. `args` are the arguments after the binary's own prefix:
/// `serve` (the command server) or `relay PORT_NAME L2_UDS VSOCK_PORT TIMEOUT_SECS`.
/// Returns the process exit code.
pub fn l2_main(args: &[String]) -> i32 {
    match args {
        [cmd] if cmd == "serve" => server::serve(),
        [cmd, port, uds, vport, secs] if cmd == "relay" => {
            let (Ok(vport), Ok(secs)) = (vport.parse::<u32>(), secs.parse::<u64>()) else {
                tracing::error!("lane relay: VSOCK_PORT and TIMEOUT_SECS must be numbers");
                return 2;
            };
            relay::relay(port, Path::new(uds), vport, Duration::from_secs(secs))
        }
        _ => {
            tracing::error!(
                "lane-l2 usage: serve | relay PORT_NAME L2_UDS VSOCK_PORT TIMEOUT_SECS"
            );
            2
        }
    }
}
