//! The RX half of the muxer: filling the guest's receive buffers with resets,
//! control packets and host data (read straight into the buffer, within credit).

use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;

use super::Muxer;
use crate::virtio::vsock::connection::ConnKey;
use crate::virtio::vsock::packet::{op, PacketHeader, HEADER_SIZE};
use crate::virtio::worker::{pop_chain, Pop};

/// Result of trying to put one packet in the RX queue.
pub(super) enum RxOutcome {
    Sent,
    /// An unusable RX buffer was returned empty; the packet is still pending.
    Consumed,
    NoBuffer,
    Nothing,
}

impl Muxer {
    /// Fill the guest's RX buffers with resets, control packets and host data.
    pub(super) fn fill_rx(&mut self) {
        if self.rx_broken || !self.rxq.ready() {
            return;
        }
        while let Some(h) = self.rst_queue.front().copied() {
            match self.write_rx(&h) {
                RxOutcome::Sent => {
                    self.rst_queue.pop_front();
                }
                RxOutcome::Consumed => {}
                RxOutcome::NoBuffer | RxOutcome::Nothing => return,
            }
        }
        loop {
            let mut progress = false;
            let mut keys: Vec<ConnKey> = self.conns.keys().copied().collect();
            // Start each pass at a different connection so none can take every buffer.
            if !keys.is_empty() {
                self.rx_rotation = self.rx_rotation.wrapping_add(1);
                let start = self.rx_rotation % keys.len();
                keys.rotate_left(start);
            }
            for key in keys {
                match self.rx_for_conn(key) {
                    RxOutcome::Sent | RxOutcome::Consumed => progress = true,
                    RxOutcome::NoBuffer => return,
                    RxOutcome::Nothing => {}
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn rx_for_conn(&mut self, key: ConnKey) -> RxOutcome {
        let guest_cid = self.guest_cid;
        let Some(conn) = self.conns.get_mut(&key) else {
            return RxOutcome::Nothing;
        };
        if let Some((op, flags)) = conn.next_control() {
            // The header's effects (credit told, pending bit cleared) are
            // committed only once a buffer took it; otherwise it stays due.
            let h = conn.header(guest_cid, op, flags, 0);
            let out = self.write_rx(&h);
            match out {
                RxOutcome::Sent if op == op::RST => self.remove_conn(key),
                RxOutcome::Sent => {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.packet_delivered(&h);
                    }
                }
                RxOutcome::NoBuffer => {
                    tracing::trace!(
                        "vsock: control op {op} of port {} waits for an rx buffer",
                        key.0
                    );
                }
                RxOutcome::Consumed | RxOutcome::Nothing => {}
            }
            return out;
        }
        if !conn.can_send_data() {
            return RxOutcome::Nothing;
        }
        self.send_host_data(key)
    }

    /// The next RX buffer; a corrupted ring stops RX until the device is reset.
    fn next_rx_chain<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Result<DescriptorChain<&'m GuestMemoryMmap>, RxOutcome> {
        match pop_chain(&mut self.rxq, mem) {
            Pop::Chain(c) => Ok(c),
            Pop::Empty => Err(RxOutcome::NoBuffer),
            Pop::Broken => {
                self.rx_broken = true;
                Err(RxOutcome::NoBuffer)
            }
        }
    }

    /// Read host data for connection `key` straight into the next RX buffer.
    fn send_host_data(&mut self, key: ConnKey) -> RxOutcome {
        let mem = self.mem.clone();
        let chain = match self.next_rx_chain(&mem) {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        let head = chain.head_index();
        let mut writer: Writer = match chain.writer(&mem) {
            Ok(w) if w.available_bytes() > HEADER_SIZE => w,
            _ => {
                // Unusable buffer: hand it back empty rather than stall the queue.
                tracing::debug!("vsock: rx buffer too small or invalid");
                let _ = self.rxq.add_used(&mem, head, 0);
                self.signal = true;
                return RxOutcome::Consumed;
            }
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            self.rxq.go_to_previous_position();
            return RxOutcome::Nothing;
        };
        let room = (writer.available_bytes() - HEADER_SIZE)
            .min(conn.peer_credit() as usize)
            .min(self.bounce.len());
        let n = match conn.stream.read(&mut self.bounce[..room]) {
            Ok(0) => {
                conn.host_closed();
                self.rxq.go_to_previous_position();
                return RxOutcome::Sent;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.host_readable = false;
                self.rxq.go_to_previous_position();
                return RxOutcome::Nothing;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.rxq.go_to_previous_position();
                return RxOutcome::Nothing;
            }
            Err(e) => {
                tracing::debug!("vsock: host stream read failed: {e}");
                conn.schedule_rst();
                self.rxq.go_to_previous_position();
                return RxOutcome::Sent;
            }
        };
        let h = conn.header(self.guest_cid, op::RW, 0, n as u32);
        conn.sent_to_guest(n as u32);
        let ok =
            writer.write_all(&h.to_bytes()).is_ok() && writer.write_all(&self.bounce[..n]).is_ok();
        if !ok {
            // Cannot happen after the size check; never hand back a torn packet as data.
            conn.schedule_rst();
        }
        let used = if ok { (HEADER_SIZE + n) as u32 } else { 0 };
        if ok {
            conn.packet_delivered(&h);
        }
        let _ = self.rxq.add_used(&mem, head, used);
        self.signal = true;
        RxOutcome::Sent
    }

    /// Write a header-only packet into the next RX buffer.
    fn write_rx(&mut self, h: &PacketHeader) -> RxOutcome {
        let mem = self.mem.clone();
        let chain = match self.next_rx_chain(&mem) {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        let head = chain.head_index();
        let written = chain
            .writer(&mem)
            .ok()
            .filter(|w| w.available_bytes() >= HEADER_SIZE)
            .is_some_and(|mut w| w.write_all(&h.to_bytes()).is_ok());
        let used = if written { HEADER_SIZE as u32 } else { 0 };
        let _ = self.rxq.add_used(&mem, head, used);
        self.signal = true;
        if used == 0 {
            return RxOutcome::Consumed;
        }
        RxOutcome::Sent
    }
}
