//! The one event loop every device worker runs: wait on the device's fds and
//! a stop event, hand ready fds to the device, process its queues. A worker
//! that fails (an epoll error, a panic) is reported to the driver as
//! DEVICE_NEEDS_RESET instead of stopping silently.
//!
//! Each device owns one [`DeviceThread`] for its whole life, started when the
//! device is created (by the thread building the machine). The thread
//! installs its seccomp filter first, then runs one worker per activation:
//! the vCPU that sets DRIVER_OK only hands it the worker, so vCPU threads
//! never create threads (a seccomp filter passes to the threads its thread
//! creates, so a worker spawned there would run under the vCPU's filter too).

use std::os::unix::io::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Error, Interrupt};
use crate::seccomp;

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

/// Builds a device's worker on its device thread (so what the worker opens,
/// such as an epoll fd, is opened under the device's filter).
pub(crate) type MakeWorker = Box<dyn FnOnce() -> Result<Box<dyn DeviceWorker>, Error> + Send>;

/// One activation: the worker to build and where to report its failure.
struct Job {
    make: MakeWorker,
    interrupt: Interrupt,
}

/// A device's thread: idle until [`DeviceThread::start`], then runs one
/// worker until [`DeviceThread::stop`]. Dropping it stops and joins it.
pub(crate) struct DeviceThread {
    jobs: Option<Sender<Job>>,
    done: Receiver<()>,
    stop: EventFd,
    running: bool,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Start the thread `name`; it installs `kind`'s seccomp filter (when
    /// filters are enabled) before it takes any work.
    pub(crate) fn spawn(name: &str, kind: seccomp::Thread) -> Result<Self, Error> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let worker_stop = stop.try_clone().map_err(Error::EventFd)?;
        let (jobs_tx, jobs) = channel::<Job>();
        let (done_tx, done) = channel();
        let (ready_tx, ready) = channel();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let filtered = seccomp::apply(kind);
                let ok = filtered.is_ok();
                let _ = ready_tx.send(filtered);
                if ok {
                    serve(&thread_name, &jobs, &worker_stop, &done_tx);
                }
            })
            .map_err(Error::SpawnWorker)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::Seccomp(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::SpawnWorker(std::io::Error::other(
                    "the device thread ended before it was ready",
                )));
            }
        }
        Ok(DeviceThread {
            jobs: Some(jobs_tx),
            done,
            stop,
            running: false,
            thread: Some(thread),
        })
    }

    /// Run the worker `make` builds until [`DeviceThread::stop`]. If building
    /// or running it fails, the device is marked as needing a reset through
    /// `interrupt`.
    pub(crate) fn start(&mut self, make: MakeWorker, interrupt: Interrupt) -> Result<(), Error> {
        self.stop();
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job { make, interrupt }).is_ok());
        if !sent {
            return Err(Error::SpawnWorker(std::io::Error::other(
                "the device thread is gone",
            )));
        }
        self.running = true;
        Ok(())
    }

    /// Ask the running worker, if any, to stop and wait until it did.
    pub(crate) fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Err(e) = self.stop.write(1) {
            tracing::error!("virtio: cannot signal worker stop: {e}");
            return;
        }
        if self.done.recv().is_err() {
            tracing::error!("virtio: device thread ended while stopping its worker");
        }
        // The worker may have ended on its own before the stop event (a
        // failure): drop the stale event so the next worker does not see it.
        let _ = self.stop.read();
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop();
        // Closing the job channel ends the thread.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("virtio: device thread panicked");
            }
        }
    }
}

/// The device thread's body: run each job's worker until it stops or fails,
/// then report that it ended.
fn serve(name: &str, jobs: &Receiver<Job>, stop: &EventFd, done: &Sender<()>) {
    while let Ok(Job { make, interrupt }) = jobs.recv() {
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            let mut worker = make().map_err(|e| e.to_string())?;
            run(worker.as_mut(), stop).map_err(|e| e.to_string())
        }));
        let why = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("the worker panicked".to_string()),
        };
        if let Some(why) = why {
            tracing::error!("{name}: device worker failed ({why}); device needs reset");
            interrupt.device_failed();
        }
        if done.send(()).is_err() {
            return;
        }
    }
}

/// The loop: process (the driver may have queued work before DRIVER_OK took
/// effect), then wait and dispatch, until `stop` is readable.
fn run(worker: &mut dyn DeviceWorker, stop: &EventFd) -> std::io::Result<()> {
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
        crate::seccomp::enable_for_tests_if_requested();
        let interrupt = Interrupt::new().unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut h = DeviceThread::spawn("test-worker", seccomp::Thread::VirtioBlock).unwrap();
        let worker = Panics(kick.try_clone().unwrap());
        h.start(Box::new(move || Ok(Box::new(worker))), interrupt.clone())
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
