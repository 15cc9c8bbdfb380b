//! The RX half of the Unix backend: choosing what goes into the guest's next
//! receive buffer (a reset, a connection's control packet, or host data read
//! straight into the buffer within the guest's credit), round robin over
//! connections so none can take every buffer.

use std::io::{self, Read, Write};
use std::ops::Bound;

use virtio_queue::Writer;

use super::Muxer;
use crate::virtio::vsock::connection::ConnKey;
use crate::virtio::vsock::packet::{op, HEADER_SIZE};

impl Muxer {
    /// Fill `buf` (room for at least a header) with the next packet for the guest.
    pub(super) fn fill_buffer(&mut self, buf: &mut Writer) -> Option<u32> {
        if let Some(h) = self.rst_queue.front() {
            if buf.write_all(&h.to_bytes()).is_err() {
                return None;
            }
            self.rst_queue.pop_front();
            return Some(HEADER_SIZE as u32);
        }
        // Connections after the one served last, then the rest.
        let keys: Vec<ConnKey> = match self.rx_cursor {
            Some(c) => self
                .conns
                .range((Bound::Excluded(c), Bound::Unbounded))
                .chain(self.conns.range(..=c))
                .map(|(k, _)| *k)
                .collect(),
            None => self.conns.keys().copied().collect(),
        };
        for key in keys {
            if let Some(n) = self.fill_for_conn(key, buf) {
                self.rx_cursor = Some(key);
                return Some(n);
            }
        }
        None
    }

    /// A packet of connection `key`, if it has one to send now.
    fn fill_for_conn(&mut self, key: ConnKey, buf: &mut Writer) -> Option<u32> {
        // A read may turn into a control packet (end of file → SHUTDOWN, error → RST).
        loop {
            let conn = self.conns.get_mut(&key)?;
            if let Some((op, flags)) = conn.next_control() {
                let h = conn.header(self.guest_cid, op, flags, 0);
                if buf.write_all(&h.to_bytes()).is_err() {
                    return None;
                }
                // Only now, with the packet in a buffer, does it count as sent.
                if op == op::RST {
                    self.remove_conn(key);
                } else {
                    conn.packet_delivered(&h);
                }
                return Some(HEADER_SIZE as u32);
            }
            if !conn.can_send_data() {
                return None;
            }
            let room = (buf.available_bytes() - HEADER_SIZE)
                .min(conn.peer_credit() as usize)
                .min(self.bounce.len());
            if room == 0 {
                return None;
            }
            let n = match conn.stream.read(&mut self.bounce[..room]) {
                Ok(0) => {
                    conn.host_closed();
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.host_readable = false;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("vsock: host stream read failed: {e}");
                    conn.schedule_rst();
                    continue;
                }
            };
            let h = conn.header(self.guest_cid, op::RW, 0, n as u32);
            let written =
                buf.write_all(&h.to_bytes()).is_ok() && buf.write_all(&self.bounce[..n]).is_ok();
            if !written {
                // Cannot happen after the size check; never hand back a torn packet.
                conn.schedule_rst();
                return None;
            }
            conn.sent_to_guest(n as u32);
            conn.packet_delivered(&h);
            return Some((HEADER_SIZE + n) as u32);
        }
    }
}
