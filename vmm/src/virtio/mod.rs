//! Virtio devices over the virtio-mmio transport (virtio 1.x), on virtio-queue.
//!
//! One queue implementation ([`virtio_queue::Queue`]) serves every device. The
//! transport ([`MmioTransport`]) owns the register window and the driver
//! handshake; when the driver sets DRIVER_OK it hands the configured queues to
//! the device, which processes them in its own worker thread (see
//! [`VirtioDevice::activate`]). vCPU threads only ever touch registers.

pub mod block;
mod interrupt;
pub mod mmio;
mod queue;
pub mod vsock;
mod worker;

#[cfg(test)]
mod test_driver;

use std::io;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use block::Block;
pub use interrupt::Interrupt;
pub use mmio::MmioTransport;
pub use vsock::Vsock;

/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type of a socket (vsock) device.
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit: the device conforms to virtio 1.x (the only mode we support).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event index notification suppression.
/// Deliberately never offered by our devices.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status bits written by the driver (virtio 1.x §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// The driver acknowledged the features it understands.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Errors of the virtio devices and transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk image could not be opened.
    #[error("cannot open disk image {path}: {source} (check the path and its permissions)")]
    DiskOpen {
        /// Path of the image.
        path: std::path::PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The disk image is locked by another process.
    #[error("disk image {path} is in use by another process (a read-write disk can be attached to one VM only)")]
    DiskLocked {
        /// Path of the image.
        path: std::path::PathBuf,
    },
    /// The disk image is not a regular file of a usable size.
    #[error("disk image {path} is not usable: {reason}")]
    DiskInvalid {
        /// Path of the image.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The block serial is too long.
    #[error("disk serial {0:?} is longer than 20 bytes (virtio-blk ids are at most 20 bytes)")]
    SerialTooLong(String),
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved (use a value of 3 or more, below 2^32 - 1)")]
    InvalidCid(u64),
    /// The vsock Unix socket path is already in use.
    #[error("vsock socket path {0} is in use by another process (pick another --vsock-uds path or stop the other VMM)")]
    UdsInUse(std::path::PathBuf),
    /// The vsock Unix socket path exists and is not a socket.
    #[error(
        "vsock socket path {0} exists and is not a Unix socket (remove it or pick another path)"
    )]
    UdsNotSocket(std::path::PathBuf),
    /// The vsock Unix socket path is too long for a sockaddr_un.
    #[error("vsock socket path {0} is too long for a Unix socket (at most 96 bytes, leaving room for the _<port> suffix); use a shorter path")]
    UdsPathTooLong(std::path::PathBuf),
    /// Binding the vsock Unix socket failed.
    #[error("cannot bind vsock socket {path}: {source}")]
    UdsBind {
        /// Path of the socket.
        path: std::path::PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Creating an EventFd failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(io::Error),
    /// Creating an epoll instance or registering with it failed.
    #[error("epoll: {0}")]
    Epoll(io::Error),
    /// Spawning a device worker thread failed.
    #[error("cannot spawn device worker thread: {0}")]
    SpawnWorker(io::Error),
    /// A device thread could not install its seccomp filter.
    #[error("device thread: {0}")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    /// The device reported invalid queue limits.
    #[error(
        "device declares an invalid queue (max size {0}): sizes must be powers of two <= 32768"
    )]
    InvalidQueueMax(u16),
    /// The device was activated with the wrong number of queues.
    #[error("device expects {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues it got.
        got: usize,
    },
}

/// Everything a device needs to start processing queues, handed over by the
/// transport when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory (a cheap clone sharing the mappings).
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them, in queue-index order.
    pub queues: Vec<Queue>,
    /// Clones of the transport's queue-notify EventFds, in queue-index order.
    pub queue_events: Vec<EventFd>,
    /// Where to signal used buffers and configuration changes.
    pub interrupt: Interrupt,
    /// The features the driver acknowledged.
    pub acked_features: u64,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device type (2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue, in queue-index order (powers of two).
    fn queue_max_sizes(&self) -> &[u16];
    /// The device-specific configuration space (little endian, as the guest sees it).
    fn config_space(&self) -> &[u8];
    /// Start processing queues (hand the device thread a worker). Called once per DRIVER_OK.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), Error>;
    /// Stop processing and return to the pre-activation state.
    fn reset(&mut self);
}
