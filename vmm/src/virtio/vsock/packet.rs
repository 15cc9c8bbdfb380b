//! The virtio-vsock packet header (virtio 1.x §5.10.6) and its wire format.
//!
//! Headers come from the guest, so parsing never trusts a length: the payload
//! length is checked against what the descriptor chain really holds and
//! against [`MAX_PKT_LEN`].

use std::io::Read;

use virtio_queue::Reader;

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = 44;
/// Largest payload we accept in one packet (Linux sends at most 64 KiB).
pub const MAX_PKT_LEN: u32 = 64 * 1024;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// Socket type: stream (the only one we support).
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// Orderly shutdown (flags say which direction).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Here is my current buf_alloc/fwd_cnt.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded packet header (native endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer (wrapping).
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decode the little-endian wire format.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or([0; 2]));
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encode to the little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a packet from the guest's TX queue was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain holds fewer than 44 readable bytes.
    #[error("packet shorter than the 44-byte header")]
    ShortHeader,
    /// The header announces more payload than we accept.
    #[error("payload length {0} above the {MAX_PKT_LEN}-byte limit")]
    TooLong(u32),
    /// The header announces more payload than the chain holds.
    #[error("payload length {len} but only {available} bytes in the descriptors")]
    Truncated {
        /// Announced length.
        len: u32,
        /// Bytes readable after the header.
        available: usize,
    },
}

/// Read and check a TX packet header; the payload (if any) is left in `reader`
/// and is exactly `header.len` bytes long for RW packets.
pub fn read_tx_header(reader: &mut Reader) -> Result<PacketHeader, PacketError> {
    let mut raw = [0u8; HEADER_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::ShortHeader)?;
    let header = PacketHeader::from_bytes(&raw);
    check_payload(&header, reader.available_bytes())?;
    Ok(header)
}

/// Check the payload length of a header against the bytes that follow it.
pub fn check_payload(header: &PacketHeader, available: usize) -> Result<(), PacketError> {
    if header.op != op::RW {
        return Ok(());
    }
    if header.len > MAX_PKT_LEN {
        return Err(PacketError::TooLong(header.len));
    }
    if header.len as usize > available {
        return Err(PacketError::Truncated {
            len: header.len,
            available,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 5000,
            len: 10,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 77,
        };
        assert_eq!(PacketHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(check_payload(&h, 10), Ok(()));
        assert_eq!(
            check_payload(&h, 9),
            Err(PacketError::Truncated {
                len: 10,
                available: 9
            })
        );
        let big = PacketHeader {
            len: MAX_PKT_LEN + 1,
            ..h
        };
        assert_eq!(
            check_payload(&big, usize::MAX),
            Err(PacketError::TooLong(MAX_PKT_LEN + 1))
        );
        // Non-data packets ignore the length field.
        let ctl = PacketHeader {
            op: op::REQUEST,
            len: u32::MAX,
            ..h
        };
        assert_eq!(check_payload(&ctl, 0), Ok(()));
    }
}
