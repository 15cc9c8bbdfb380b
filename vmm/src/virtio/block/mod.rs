//! virtio-blk over a raw image file: read-only or read-write, FLUSH, GET_ID
//! (the disk serial), capacity, seg_max and size_max.

mod disk;
mod request;
pub mod worker;

use std::path::Path;

use super::worker::DeviceThread;
use super::{
    ActivateContext, Error, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::seccomp;
pub use disk::{Disk, SECTOR_SIZE, SERIAL_LEN};
pub use worker::BlockWorker;

/// Feature bit: `size_max` in the config is valid.
const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature bit: `seg_max` in the config is valid.
const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the device is read-only.
const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: the device accepts FLUSH (it has a write cache).
const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest segment (one descriptor) the driver may use, in bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request: the queue size minus header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    disk: std::sync::Arc<Disk>,
    config: [u8; 64],
    queue_sizes: [u16; 1],
    thread: DeviceThread,
}

impl Block {
    /// Open `path` (read-only or read-write) as a virtio-blk disk with an
    /// optional serial (at most 20 bytes, returned by GET_ID), and start its
    /// device thread (from the calling thread: see [`crate::seccomp`]).
    pub fn new(path: &Path, read_only: bool, serial: Option<String>) -> Result<Block, Error> {
        let disk = Disk::open(path, read_only, serial)?;
        let mut config = [0u8; 64];
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32), ...
        config[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            disk: std::sync::Arc::new(disk),
            config,
            queue_sizes: [QUEUE_SIZE],
            thread: DeviceThread::spawn("virtio-blk", seccomp::Thread::VirtioBlock)?,
        })
    }

    /// The disk behind the device.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), Error> {
        self.reset();
        let ActivateContext {
            mem,
            mut queues,
            mut queue_events,
            interrupt,
            ..
        } = ctx;
        if queues.len() != 1 || queue_events.len() != 1 {
            return Err(Error::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        let queue_event = queue_events.remove(0);
        let disk = self.disk.clone();
        let worker_interrupt = interrupt.clone();
        self.thread.start(
            Box::new(move || {
                Ok(Box::new(worker::BlockWorker::new(
                    mem,
                    queue,
                    queue_event,
                    worker_interrupt,
                    disk,
                )))
            }),
            interrupt,
        )
    }

    fn reset(&mut self) {
        self.thread.stop();
    }
}

#[cfg(test)]
mod tests;
