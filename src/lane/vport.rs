//! virtio-serial ports inside L2: find a port by name, wait for the host side to connect.
//!
//! busybox L2 has no udev, so ports are found through `/sys/class/virtio-ports/*/name` and
//! opened as `/dev/<vportNpM>` (devtmpfs creates the node). A read returns 0 and poll reports
//! POLLHUP while no host client is connected to the port's QEMU chardev, so callers wait for
//! the connection before treating EOF as the end.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Finds the device node of the port named `name`, waiting up to `timeout` for it to appear.
pub fn find_port(name: &str, timeout: Duration) -> std::io::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.filter_map(|e| e.ok()) {
                let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim() == name {
                    let dev = PathBuf::from("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name} (is virtio_console loaded?)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a port for reading and writing.
pub fn open_port(dev: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(dev)
}

/// Waits until a host client is connected to the port (poll stops reporting POLLHUP).
pub fn wait_host_connected(port: &File, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pfd = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pfd.revents & libc::POLLHUP == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no host client connected to the virtio-serial port",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
