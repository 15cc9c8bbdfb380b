//! Parsing and executing one virtio-blk request (one descriptor chain).
//!
//! Layout: a device-readable header {type: le32, reserved: le32, sector: le64},
//! the data buffers (device-readable for writes, device-writable for reads and
//! GET_ID), then one device-writable status byte. Every length comes from the
//! guest, so the data moves through a bounded bounce buffer and every sector
//! range is checked against the disk size.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap, Le32, Le64};

use super::disk::{Disk, SECTOR_SIZE};

/// Request types (virtio 1.x §5.2.6).
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status values written in the last byte.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// The request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// The request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Bounce buffer size: the most host memory a request ever uses (the worker
/// keeps one buffer of this size).
pub const CHUNK: usize = 128 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestHeader {
    type_: Le32,
    reserved: Le32,
    sector: Le64,
}

// SAFETY: plain little-endian integers, no padding; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// Execute the request in `chain` against `disk`. Returns the number of bytes
/// written into the guest's buffers (data + status), the used-ring length.
pub fn process(
    bounce: &mut [u8; CHUNK],
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let mut reader: Reader = match chain.clone().reader(mem) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("virtio-blk: bad request chain: {e}");
            return 0;
        }
    };
    let mut data: Writer = match chain.writer(mem) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("virtio-blk: bad request chain: {e}");
            return 0;
        }
    };
    let writable = data.available_bytes();
    if writable == 0 {
        tracing::warn!("virtio-blk: request without a status byte");
        return 0;
    }
    let mut status_byte = match data.split_at(writable - 1) {
        Ok(w) => w,
        Err(_) => return 0,
    };
    let (status, written) = match reader.read_obj::<RequestHeader>() {
        Ok(header) => execute(bounce, disk, header, &mut reader, &mut data),
        Err(_) => {
            tracing::warn!("virtio-blk: request header shorter than 16 bytes");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    if status_byte.write_all(&[status]).is_err() {
        return 0;
    }
    // `written` is at most the writable length, which fits a descriptor chain (u32).
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

fn execute(
    buf: &mut [u8; CHUNK],
    disk: &Disk,
    header: RequestHeader,
    reader: &mut Reader,
    data: &mut Writer,
) -> (u8, usize) {
    let sector = header.sector.to_native();
    match header.type_.to_native() {
        VIRTIO_BLK_T_IN => match read_sectors(buf, disk, sector, data) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(n) => (VIRTIO_BLK_S_IOERR, n),
        },
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                tracing::debug!("virtio-blk: write to read-only disk refused");
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            (write_sectors(buf, disk, sector, reader), 0)
        }
        VIRTIO_BLK_T_FLUSH => match disk.flush() {
            Ok(()) => (VIRTIO_BLK_S_OK, 0),
            Err(e) => {
                tracing::error!("virtio-blk: flush of {} failed: {e}", disk.path().display());
                (VIRTIO_BLK_S_IOERR, 0)
            }
        },
        VIRTIO_BLK_T_GET_ID => match disk.serial() {
            Some(id) => {
                let n = id.len().min(data.available_bytes());
                match data.write_all(&id[..n]) {
                    Ok(()) => (VIRTIO_BLK_S_OK, n),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            None => (VIRTIO_BLK_S_UNSUPP, 0),
        },
        other => {
            tracing::debug!("virtio-blk: unsupported request type {other}");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

/// Read into the guest's buffers; Ok(bytes) or Err(bytes written before failing).
fn read_sectors(
    buf: &mut [u8; CHUNK],
    disk: &Disk,
    sector: u64,
    data: &mut Writer,
) -> Result<usize, usize> {
    let len = data.available_bytes();
    let Some(mut offset) = disk.checked_range(sector, len as u64) else {
        tracing::debug!("virtio-blk: read of {len} bytes at sector {sector} beyond the disk");
        return Err(0);
    };
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        tracing::debug!("virtio-blk: read length {len} is not a multiple of 512");
        return Err(0);
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        if let Err(e) = disk.read_at(&mut buf[..n], offset) {
            tracing::error!("virtio-blk: read of {} failed: {e}", disk.path().display());
            return Err(done);
        }
        if data.write_all(&buf[..n]).is_err() {
            return Err(done);
        }
        done += n;
        offset += n as u64;
    }
    Ok(done)
}

fn write_sectors(buf: &mut [u8; CHUNK], disk: &Disk, sector: u64, reader: &mut Reader) -> u8 {
    let len = reader.available_bytes();
    let Some(mut offset) = disk.checked_range(sector, len as u64) else {
        tracing::debug!("virtio-blk: write of {len} bytes at sector {sector} beyond the disk");
        return VIRTIO_BLK_S_IOERR;
    };
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        tracing::debug!("virtio-blk: write length {len} is not a multiple of 512");
        return VIRTIO_BLK_S_IOERR;
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        if reader.read_exact(&mut buf[..n]).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        if let Err(e) = disk.write_at(&buf[..n], offset) {
            tracing::error!("virtio-blk: write of {} failed: {e}", disk.path().display());
            return VIRTIO_BLK_S_IOERR;
        }
        done += n;
        offset += n as u64;
    }
    VIRTIO_BLK_S_OK
}
