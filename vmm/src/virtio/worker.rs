//! The one event loop every device worker thread runs: wait on the device's
//! fds and a stop event, hand ready fds to the device, process its queues.
//! A worker that fails (an epoll error, a panic) is reported to the driver as
//! DEVICE_NEEDS_RESET instead of stopping silently.

use std::os::unix::io::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Error, Interrupt};

/// Token of the stop event; devices must not use it.
const TOKEN_STOP: u64 = u64::MAX;

/// The device side of a worker thread.
pub(crate) trait DeviceWorker: Send + 'static {
    /// The fds to wait on (readable), each with the token passed to [`DeviceWorker::ready`].
    fn fds(&self) -> Vec<(RawFd, u64)>;
    /// Do what can be done now. Returns true when a budget ran out with work
    /// left, so the loop polls again without sleeping.
    fn process(&mut self) -> bool;
    /// The fd registered with `token` is ready (`events` as epoll reports them).
    fn ready(&mut self, token: u64, events: u32);
}

/// Handle to a running device worker. Dropping it stops and joins the thread.
pub(crate) struct WorkerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Run `worker` on a named thread until stopped. If the loop fails, the
    /// device is marked as needing a reset through `interrupt`.
    pub(crate) fn spawn<W: DeviceWorker>(
        name: &str,
        worker: W,
        interrupt: Interrupt,
    ) -> Result<Self, Error> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let worker_stop = stop.try_clone().map_err(Error::EventFd)?;
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut worker = worker;
                let outcome = catch_unwind(AssertUnwindSafe(|| run(&mut worker, &worker_stop)));
                let why = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the worker panicked".to_string(),
                };
                tracing::error!("{thread_name}: device worker failed ({why}); device needs reset");
                interrupt.device_failed();
            })
            .map_err(Error::SpawnWorker)?;
        Ok(WorkerHandle {
            stop,
            thread: Some(thread),
        })
    }

    /// Ask the worker to stop and wait for it.
    pub(crate) fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                tracing::error!("virtio: cannot signal worker stop: {e}");
                return;
            }
            if thread.join().is_err() {
                tracing::error!("virtio: device worker thread panicked");
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The loop: process (the driver may have queued work before DRIVER_OK took
/// effect), then wait and dispatch, until `stop` is readable.
fn run<W: DeviceWorker>(worker: &mut W, stop: &EventFd) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let epoll = Epoll::new()?;
    let watch = |fd: RawFd, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    watch(stop.as_raw_fd(), TOKEN_STOP)?;
    for (fd, token) in worker.fds() {
        watch(fd, token)?;
    }
    let mut events = [EpollEvent::default(); 16];
    let mut more = worker.process();
    loop {
        let n = match epoll.wait(if more { 0 } else { -1 }, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            if ev.data() == TOKEN_STOP {
                return Ok(());
            }
            worker.ready(ev.data(), ev.events());
        }
        more = worker.process();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::interrupt::INT_CONFIG;

    struct Panics(EventFd);

    impl DeviceWorker for Panics {
        fn fds(&self) -> Vec<(RawFd, u64)> {
            use std::os::unix::io::AsRawFd;
            vec![(self.0.as_raw_fd(), 0)]
        }
        fn process(&mut self) -> bool {
            false
        }
        fn ready(&mut self, _: u64, _: u32) {
            panic!("device bug");
        }
    }

    #[test]
    fn a_failed_worker_marks_the_device_for_reset() {
        let interrupt = Interrupt::new().unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut h = WorkerHandle::spawn(
            "test-worker",
            Panics(kick.try_clone().unwrap()),
            interrupt.clone(),
        )
        .unwrap();
        assert!(!interrupt.failed());
        kick.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !interrupt.failed() {
            assert!(
                std::time::Instant::now() < deadline,
                "failure never reported"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_ne!(interrupt.status() & INT_CONFIG, 0, "driver is interrupted");
        h.stop();
    }
}
