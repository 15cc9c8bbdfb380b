//! The relay inside L2: bridges a virtio-serial port (a host Unix socket on the QEMU side) to
//! a guest vsock port through the VMM's Unix socket (`CONNECT <port>\n` → `OK <n>\n`,
//! DESIGN.md §5). One relay carries one connection; the runtime needs only one.
//!
//! The host side must not close its socket while its data may still be in flight: QEMU's
//! socket chardev drops what it has not yet passed to the port when its peer hangs up, and
//! the guest's end of the connection is not signalled back as EOF. Protocols on a relay end
//! with an acknowledgement from the guest (the agent protocol does: `Shutdown` → `Done`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::vport;

/// Prefix of relay port names; port `n` is `voidbox.relay.<n>`.
pub const RELAY_PORT_PREFIX: &str = "voidbox.relay.";

/// Connects to the VMM's vsock socket and asks for `vsock_port`, retrying until the guest
/// listens (the VMM resets the connection until then) or `timeout` passes.
pub fn connect_vsock(
    uds: &Path,
    vsock_port: u32,
    timeout: Duration,
) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut last_err;
    loop {
        match try_connect(uds, vsock_port) {
            Ok(s) => return Ok(s),
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                last_err.kind(),
                format!("vsock port {vsock_port} via {}: {last_err}", uds.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn try_connect(uds: &Path, vsock_port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {vsock_port}\n").as_bytes())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Read the reply one byte at a time so no stream data is consumed past the newline.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b)? {
            0 => return Err(std::io::ErrorKind::ConnectionReset.into()),
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    s.set_read_timeout(None)?;
    if line.starts_with(b"OK") {
        Ok(s)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("VMM answered {:?}", String::from_utf8_lossy(&line)),
        ))
    }
}

/// Runs one relay: waits for the host client on the port, connects to the guest, copies
/// bytes both ways until either side closes. Returns the process exit code.
pub fn relay(port_name: &str, uds: &Path, vsock_port: u32, timeout: Duration) -> i32 {
    match relay_inner(port_name, uds, vsock_port, timeout) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("lane relay: {e}");
            1
        }
    }
}

fn relay_inner(
    port_name: &str,
    uds: &Path,
    vsock_port: u32,
    timeout: Duration,
) -> std::io::Result<()> {
    let dev = vport::find_port(port_name, Duration::from_secs(10))?;
    let port = vport::open_port(&dev)?;
    vport::wait_host_connected(&port, timeout)?;
    let sock = connect_vsock(uds, vsock_port, timeout)?;
    // Tell the launcher (which reads our stdout) that the guest side is connected: this line
    // is part of the relay protocol, not a log message.
    println!(
        "RELAY-CONNECTED {port_name} -> {}:{vsock_port}",
        uds.display()
    );
    let mut port_in = port.try_clone()?;
    let mut port_out = port;
    let mut sock_in = sock.try_clone()?;
    let mut sock_out = sock;
    let up = std::thread::spawn(move || {
        // Host → guest; the host closing its socket reads as EOF here.
        let r = std::io::copy(&mut port_in, &mut sock_out);
        let _ = sock_out.shutdown(Shutdown::Write);
        r
    });
    let mut reader = BufReader::with_capacity(64 * 1024, &mut sock_in);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        port_out.write_all(buf)?;
        let n = buf.len();
        reader.consume(n);
    }
    drop(port_out);
    // The guest closed: nothing more can flow to the host; end without waiting for it.
    if up.is_finished() {
        up.join().ok().transpose()?;
    }
    Ok(())
}
