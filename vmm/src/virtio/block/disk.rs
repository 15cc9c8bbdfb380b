//! The raw image file behind a virtio-blk device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::virtio::Error;

/// Bytes per virtio-blk sector (fixed by the spec, whatever the image's block size).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const SERIAL_LEN: usize = 20;

/// An open raw image, locked against concurrent writers.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    serial: Option<[u8; SERIAL_LEN]>,
}

impl Disk {
    /// Open and lock `path`: a shared lock for read-only disks, an exclusive
    /// one for read-write disks, so two VMs never write the same image.
    pub fn open(path: &Path, read_only: bool, serial: Option<String>) -> Result<Disk, Error> {
        let serial = match serial {
            Some(s) if s.len() > SERIAL_LEN => return Err(Error::SerialTooLong(s)),
            Some(s) => {
                let mut id = [0u8; SERIAL_LEN];
                id[..s.len()].copy_from_slice(s.as_bytes());
                Some(id)
            }
            None => None,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Error::DiskOpen {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| Error::DiskOpen {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Error::DiskInvalid {
                path: path.to_path_buf(),
                reason: "not a regular file (give a raw image file)".into(),
            });
        }
        if meta.len() < SECTOR_SIZE {
            return Err(Error::DiskInvalid {
                path: path.to_path_buf(),
                reason: format!("{} bytes is smaller than one 512-byte sector", meta.len()),
            });
        }
        if meta.len() % SECTOR_SIZE != 0 {
            tracing::warn!(
                "disk {}: size {} is not a multiple of 512; the last partial sector is not visible",
                path.display(),
                meta.len()
            );
        }
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::DiskLocked {
                path: path.to_path_buf(),
            });
        }
        Ok(Disk {
            path: path.to_path_buf(),
            file,
            read_only,
            capacity_sectors: meta.len() / SECTOR_SIZE,
            serial,
        })
    }

    /// Path of the image.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the guest may write.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The GET_ID answer (NUL padded), if a serial was given.
    pub fn serial(&self) -> Option<&[u8; SERIAL_LEN]> {
        self.serial.as_ref()
    }

    /// Byte offset of `sector` if `[sector, sector + len)` lies inside the disk.
    pub fn checked_range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.capacity_sectors * SECTOR_SIZE).then_some(start)
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Write all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Make written data durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}
