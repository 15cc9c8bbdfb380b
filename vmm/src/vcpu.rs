//! vCPU threads: run KVM_RUN, route port and MMIO exits to the buses, and
//! turn guest-initiated endings into [`ExitEvent`]s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::devices::{ExitEvent, ExitSender, PanicSource};
use crate::seccomp;

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// What one exit means for the run loop.
enum Step {
    Continue,
    Stop(ExitEvent),
}

/// Exit counts of one vCPU, logged at debug level when it stops (to find
/// exits worth avoiding).
#[derive(Default)]
struct ExitStats {
    ports: BTreeMap<(u16, bool), u64>,
    mmio: u64,
    other: u64,
}

impl ExitStats {
    fn record(&mut self, exit: &VcpuExit<'_>) {
        match exit {
            VcpuExit::IoIn(port, _) => *self.ports.entry((*port, false)).or_default() += 1,
            VcpuExit::IoOut(port, _) => *self.ports.entry((*port, true)).or_default() += 1,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => self.mmio += 1,
            _ => self.other += 1,
        }
    }

    fn log(&self, id: usize) {
        let mut top: Vec<_> = self.ports.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = top
            .iter()
            .take(8)
            .map(|((port, out), n)| format!("{}{port:#x}={n}", if *out { "out" } else { "in" }))
            .collect();
        tracing::debug!(
            "vCPU {id} exits: mmio={} other={} ports: {}",
            self.mmio,
            self.other,
            top.join(" ")
        );
    }
}

fn handle_exit(exit: VcpuExit<'_>, id: usize, pio: &Bus, mmio: &Bus) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(port.into(), data) {
                tracing::trace!("vCPU {id}: unhandled port read {port:#x}");
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(port.into(), data) {
                tracing::trace!("vCPU {id}: unhandled port write {port:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::debug!("vCPU {id}: unhandled MMIO read {addr:#x}");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::debug!("vCPU {id}: unhandled MMIO write {addr:#x}");
            }
        }
        // Triple fault.
        VcpuExit::Shutdown => return Step::Stop(ExitEvent::Reset),
        VcpuExit::SystemEvent(kind, _) => {
            return Step::Stop(match kind {
                KVM_SYSTEM_EVENT_RESET => ExitEvent::Reset,
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitEvent::Poweroff,
                KVM_SYSTEM_EVENT_CRASH => ExitEvent::Panic(PanicSource::Pvpanic),
                other => ExitEvent::VcpuError(format!("vCPU {id}: unknown system event {other}")),
            })
        }
        // With the in-kernel irqchip HLT stays in KVM; this only happens
        // when the guest halts with interrupts it can never get.
        VcpuExit::Hlt => {
            return Step::Stop(ExitEvent::VcpuError(format!(
                "vCPU {id} halted with no way to wake up"
            )))
        }
        VcpuExit::Intr => {}
        VcpuExit::FailEntry(reason, cpu) => {
            return Step::Stop(ExitEvent::VcpuError(format!(
                "vCPU {id}: VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            )))
        }
        VcpuExit::InternalError => {
            return Step::Stop(ExitEvent::VcpuError(format!(
                "vCPU {id}: KVM internal error (the guest state is invalid)"
            )))
        }
        other => {
            return Step::Stop(ExitEvent::VcpuError(format!(
                "vCPU {id}: unexpected exit {other:?}"
            )))
        }
    }
    Step::Continue
}

fn run_vcpu(
    mut vcpu: VcpuFd,
    id: usize,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitSender,
    stop: Arc<AtomicBool>,
) {
    let mut stats = ExitStats::default();
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    while !stop.load(Ordering::Acquire) {
        let step = match vcpu.run() {
            Ok(e) => {
                if debug {
                    stats.record(&e);
                }
                handle_exit(e, id, &pio, &mmio)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => Step::Stop(ExitEvent::VcpuError(format!(
                "vCPU {id}: KVM_RUN failed: {e}"
            ))),
        };
        if let Step::Stop(event) = step {
            if debug {
                stats.log(id);
            }
            let _ = exit.send(event);
            return;
        }
    }
    if debug {
        stats.log(id);
    }
}

/// The running vCPU threads.
pub struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU. Each installs the vCPU seccomp filter (when
    /// filters are enabled) before it first enters the guest.
    pub fn spawn(
        vcpus: Vec<VcpuFd>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: ExitSender,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        let mut handles = Vec::with_capacity(vcpus.len());
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let (pio, mmio, exit, stop) = (pio.clone(), mmio.clone(), exit.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                // The run loop needs little stack; keep the VMM's RSS small.
                .stack_size(256 * 1024)
                .spawn(move || {
                    if let Err(e) = seccomp::apply(seccomp::Thread::Vcpu) {
                        let _ = exit.send(ExitEvent::VcpuError(format!("vCPU {id}: {e}")));
                        return;
                    }
                    run_vcpu(vcpu, id, pio, mmio, exit, stop)
                })?;
            handles.push(h);
        }
        Ok(VcpuThreads { handles, stop })
    }

    /// Stops every vCPU: sets the stop flag and kicks threads still in
    /// KVM_RUN until they return (bounded to one second).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && self.handles.iter().any(|h| !h.is_finished()) {
            for h in self.handles.iter().filter(|h| !h.is_finished()) {
                let _ = h.kill(kick_signal());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for h in self.handles {
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!("a vCPU thread did not stop within 1 s; exiting without it");
            }
        }
    }
}
