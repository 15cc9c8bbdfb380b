//! Data flow and credit in both directions, handshakes, reset.

use super::*;

#[test]
fn host_initiated_round_trip_with_credit() {
    let mut g = Guest::new();
    let (host, local) = host_connect(&mut g, 1234);

    // host -> guest: 300 KiB through a 64 KiB guest window.
    let down = pattern(300 * 1024, 7);
    let mut w = host.try_clone().unwrap();
    let d2 = down.clone();
    let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
    let got = guest_receive(&mut g, local, 1234, down.len());
    writer.join().unwrap();
    assert_eq!(got, down);

    // guest -> host: 400 KiB, respecting the device's 128 KiB window.
    let up = pattern(400 * 1024, 3);
    let reader = spawn_reader(host.try_clone().unwrap(), up.len());
    guest_send(
        &mut g,
        local,
        1234,
        &up,
        (CONN_BUF_SIZE, 0),
        down.len() as u32,
    );
    assert_eq!(reader.join().unwrap(), up);

    // Host closes: the guest gets SHUTDOWN(SEND).
    drop(host);
    let (h, _) = g.recv_skip_credit();
    assert_eq!(h.op, op::SHUTDOWN);
    assert_ne!(h.flags & SHUTDOWN_SEND, 0);
}

#[test]
fn guest_initiated_connection_to_uds_port() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(unix::port_path(&g.uds, 5000)).unwrap();
    g.send(g.header(4000, 5000, op::REQUEST, 0, 0), &[]);
    let (h, _) = g.recv();
    assert_eq!(h.op, op::RESPONSE);
    assert_eq!(
        (h.src_cid, h.src_port, h.dst_cid, h.dst_port),
        (HOST_CID, 5000, CID, 4000)
    );
    let (mut host, _) = listener.accept().unwrap();

    let up = pattern(200 * 1024, 9);
    let reader = spawn_reader(host.try_clone().unwrap(), up.len());
    guest_send(&mut g, 5000, 4000, &up, (h.buf_alloc, h.fwd_cnt), 0);
    assert_eq!(reader.join().unwrap(), up);

    let down = pattern(100 * 1024, 1);
    let mut w = host.try_clone().unwrap();
    let d2 = down.clone();
    let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
    assert_eq!(guest_receive(&mut g, 5000, 4000, down.len()), down);
    writer.join().unwrap();

    // Guest closes both ways: the device flushes, resets, and the host sees EOF.
    g.send(
        PacketHeader {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..g.header(4000, 5000, op::SHUTDOWN, 0, 0)
        },
        &[],
    );
    let (h, _) = g.recv_skip_credit();
    assert_eq!(h.op, op::RST);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn pipelined_connect_and_half_close() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.uds).unwrap();
    // Data right behind the CONNECT line must not be swallowed by the handshake.
    host.write_all(b"CONNECT 88\nearly bytes").unwrap();
    let (req, _) = g.recv();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 88));
    let local = req.src_port;
    g.send(g.header(88, local, op::RESPONSE, 0, 0), &[]);
    let mut line = [0u8; 64];
    let ok = format!("OK {local}\n");
    host.read_exact(&mut line[..ok.len()]).unwrap();
    assert_eq!(&line[..ok.len()], ok.as_bytes());
    let (h, data) = g.recv_skip_credit();
    assert_eq!((h.op, &data[..]), (op::RW, &b"early bytes"[..]));

    // The guest half-closes (no more sending): the host reads EOF but can still send.
    g.send(
        PacketHeader {
            flags: SHUTDOWN_SEND,
            ..g.header(88, local, op::SHUTDOWN, 0, data.len() as u32)
        },
        &[],
    );
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    host.write_all(b"after half close").unwrap();
    let (h, data) = g.recv_skip_credit();
    assert_eq!((h.op, &data[..]), (op::RW, &b"after half close"[..]));
}

#[test]
fn device_reset_and_reactivation() {
    let mut g = Guest::new();
    let (host, _) = host_connect(&mut g, 300);
    // Driver reset: connections are dropped, the host sees EOF.
    g.drv.write_reg(0x70, 0);
    assert_eq!(g.drv.status(), 0);
    let mut rest = Vec::new();
    (&host).read_to_end(&mut rest).unwrap();
    // Set the device up again: the same host socket serves new connections.
    let f = g.drv.device_features();
    assert!(g.drv.negotiate(f));
    for q in 0..3 {
        g.drv.setup_queue(q, 128);
    }
    g.drv.driver_ok();
    g.rx_bufs.clear();
    for _ in 0..RX_CHAINS {
        let hdr = g.drv.alloc(HEADER_SIZE);
        let data = g.drv.alloc(RX_BUF as usize);
        g.post_rx(hdr, data);
    }
    let (_host2, _) = host_connect(&mut g, 301);
}

/// Audit S1: a credit update that finds no RX buffer must not be lost. A Linux
/// guest never sends CREDIT_REQUEST, so a sender that used its whole window
/// would otherwise sleep forever once the host has drained its data.
#[test]
fn credit_update_survives_an_empty_rx_ring() {
    let mut g = Guest::new_without_rx();
    let listener = UnixListener::bind(unix::port_path(&g.uds, 5000)).unwrap();
    // Exactly one RX buffer: the RESPONSE uses it, then the ring is empty.
    let (hdr, data) = (g.drv.alloc(HEADER_SIZE), g.drv.alloc(RX_BUF as usize));
    g.drv
        .add_chain(0, &[(hdr, HEADER_SIZE as u32, true), (data, RX_BUF, true)]);
    g.send(g.header(4000, 5000, op::REQUEST, 0, 0), &[]);
    g.drv.wait_used(0);
    let (host, _) = listener.accept().unwrap();
    let reader = spawn_reader(host, CONN_BUF_SIZE as usize);
    // The guest uses its whole window in 64 KiB packets, as Linux does.
    let chunk = pattern(64 * 1024, 5);
    for _ in 0..CONN_BUF_SIZE as usize / chunk.len() {
        g.send(g.header(4000, 5000, op::RW, chunk.len() as u32, 0), &chunk);
    }
    reader.join().unwrap();
    // Let the worker run fill_rx with no buffer at least once.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..RX_CHAINS {
        // Like Linux's rx worker: refill, then kick.
        let (h, d) = (g.drv.alloc(HEADER_SIZE), g.drv.alloc(RX_BUF as usize));
        g.post_rx(h, d);
    }
    let (h, _) = g
        .try_recv(Duration::from_secs(5))
        .expect("credit update lost: a Linux guest would block forever");
    assert_eq!((h.op, h.fwd_cnt), (op::CREDIT_UPDATE, CONN_BUF_SIZE));
}
