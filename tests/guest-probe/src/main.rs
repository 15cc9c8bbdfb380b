//! voidbox-guest-probe: both ends of the end-to-end vsock checks. Built static (musl) so it
//! runs in a busybox guest; the same binary runs on the host side (inside the lane's L2).
//!
//! Data is a deterministic pseudo-random stream per seed, so each side verifies every byte
//! it receives. Every subcommand prints one `PROBE <name> ok|FAIL ...` line.
//!
//! Guest side (AF_VSOCK):
//!   vsock-serve PORT LEN SEED_IN SEED_OUT   accept one connection, expect LEN bytes of
//!                                           SEED_IN, then send LEN bytes of SEED_OUT
//!   vsock-send CID PORT LEN SEED            connect, send LEN bytes of SEED, expect "OK\n"
//! Host side through the VMM's Unix socket (DESIGN.md §5):
//!   uds-connect UDS PORT LEN SEED_OUT SEED_IN TIMEOUT  CONNECT PORT (retrying until the
//!                                           guest listens), send SEED_OUT, expect SEED_IN
//!   uds-listen PATH LEN SEED                listen on PATH (`<uds>_<port>`), accept one,
//!                                           expect LEN bytes of SEED, answer "OK\n"
//!   stream SOCKET LEN SEED_OUT SEED_IN       plain Unix stream (a lane relay socket); then
//!                                           half-closes and waits for the relay's EOF
//! Host side over AF_VSOCK (QEMU vhost-vsock, for checking the guest image):
//!   vsock-connect CID PORT LEN SEED_OUT SEED_IN TIMEOUT
//!   vsock-listen PORT LEN SEED

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// xorshift64* stream of bytes.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

type Res<T> = Result<T, String>;

fn send_pattern<W: Write>(w: &mut W, len: u64, seed: u64) -> Res<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        // Chunks are multiples of 8 so the stream does not depend on chunking.
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| format!("write after {} bytes: {e}", len - left))?;
        left -= n as u64;
    }
    w.flush().map_err(|e| format!("flush: {e}"))
}

fn expect_pattern<R: Read>(r: &mut R, len: u64, seed: u64) -> Res<()> {
    let mut p = Pattern::new(seed);
    let mut want = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(got.len() as u64) as usize;
        r.read_exact(&mut got[..n])
            .map_err(|e| format!("read after {done} of {len} bytes: {e}"))?;
        p.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            return Err(format!("byte {} differs", done + i as u64));
        }
        done += n as u64;
    }
    Ok(())
}

fn vsock_socket() -> Res<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_VSOCK): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh, owned descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock_connect(cid: u32, port: u32) -> Res<std::net::TcpStream> {
    use std::os::fd::IntoRawFd;
    let fd = vsock_socket()?;
    let a = vsock_addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if rc < 0 {
        return Err(format!(
            "connect vsock {cid}:{port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // TcpStream is only used as a Read/Write wrapper around a connected stream socket.
    // SAFETY: the descriptor is owned and connected.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

fn vsock_accept(port: u32) -> Res<std::net::TcpStream> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    let a = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm; fd is a valid socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if rc < 0 {
        return Err(format!(
            "bind vsock port {port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a bound stream socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 4) } < 0 {
        return Err(format!("listen: {}", std::io::Error::last_os_error()));
    }
    println!("PROBE listening vsock:{port}");
    // SAFETY: null address pointers are allowed by accept(2).
    let c = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(format!("accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: c is a fresh, owned, connected descriptor.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(c) })
}

fn uds_connect(uds: &str, port: u32, timeout: Duration) -> Res<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (|| -> Res<UnixStream> {
            let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while line.len() < 64 {
                match s.read(&mut b) {
                    Ok(1) if b[0] == b'\n' => break,
                    Ok(1) => line.push(b[0]),
                    Ok(_) => return Err("closed before OK".into()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            if line.starts_with(b"OK ") {
                Ok(s)
            } else {
                Err(format!("answer {:?}", String::from_utf8_lossy(&line)))
            }
        })();
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(format!("CONNECT {port}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sends and receives concurrently, so neither side's buffers have to hold the whole stream.
fn exchange<S: Read + Write + Send + 'static>(
    mut s: S,
    mut s2: S,
    len: u64,
    seed_out: u64,
    seed_in: u64,
) -> Res<()> {
    let t = std::thread::spawn(move || send_pattern(&mut s2, len, seed_out));
    let r = expect_pattern(&mut s, len, seed_in);
    t.join().map_err(|_| "sender panicked".to_string())??;
    r
}

fn arg<T: std::str::FromStr>(a: &[String], i: usize, what: &str) -> Res<T> {
    a.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}: {:?}", a[i]))
}

fn run(a: &[String]) -> Res<String> {
    let t0 = Instant::now();
    let what = a.first().map(String::as_str).unwrap_or("");
    match what {
        "vsock-serve" => {
            let (port, len, si, so) = (
                arg(a, 1, "PORT")?,
                arg(a, 2, "LEN")?,
                arg(a, 3, "SEED_IN")?,
                arg(a, 4, "SEED_OUT")?,
            );
            let s = vsock_accept(port)?;
            let s2 = s.try_clone().map_err(|e| e.to_string())?;
            exchange(s, s2, len, so, si)?;
        }
        "vsock-send" => {
            let (cid, port, len, seed) = (
                arg(a, 1, "CID")?,
                arg(a, 2, "PORT")?,
                arg(a, 3, "LEN")?,
                arg(a, 4, "SEED")?,
            );
            let mut s = vsock_connect(cid, port)?;
            send_pattern(&mut s, len, seed)?;
            let mut ok = [0u8; 3];
            s.read_exact(&mut ok)
                .map_err(|e| format!("reading OK: {e}"))?;
            if &ok != b"OK\n" {
                return Err(format!("peer answered {ok:?}"));
            }
        }
        "uds-connect" | "vsock-connect" => {
            let len = arg(a, 3, "LEN")?;
            let (so, si, tmo): (u64, u64, u64) = (
                arg(a, 4, "SEED_OUT")?,
                arg(a, 5, "SEED_IN")?,
                arg(a, 6, "TIMEOUT")?,
            );
            if what == "uds-connect" {
                let s = uds_connect(&a[1], arg(a, 2, "PORT")?, Duration::from_secs(tmo))?;
                let s2 = s.try_clone().map_err(|e| e.to_string())?;
                exchange(s, s2, len, so, si)?;
            } else {
                let (cid, port) = (arg(a, 1, "CID")?, arg(a, 2, "PORT")?);
                let deadline = Instant::now() + Duration::from_secs(tmo);
                let s = loop {
                    match vsock_connect(cid, port) {
                        Ok(s) => break s,
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                let s2 = s.try_clone().map_err(|e| e.to_string())?;
                exchange(s, s2, len, so, si)?;
            }
        }
        "stream" => {
            // A plain Unix-socket stream (e.g. a lane relay socket, already CONNECTed).
            let (len, so, si) = (
                arg(a, 2, "LEN")?,
                arg(a, 3, "SEED_OUT")?,
                arg(a, 4, "SEED_IN")?,
            );
            let s = UnixStream::connect(&a[1]).map_err(|e| format!("connect {}: {e}", a[1]))?;
            let s2 = s.try_clone().map_err(|e| e.to_string())?;
            let mut s3 = s.try_clone().map_err(|e| e.to_string())?;
            exchange(s, s2, len, so, si)?;
            // A lane relay's QEMU socket chardev drops data it has not yet passed to the
            // guest when its peer hangs up; after a half-close it reads everything, then
            // closes its end. So half-close and wait for that before exiting.
            s3.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            s3.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            let mut sink = [0u8; 4096];
            while matches!(s3.read(&mut sink), Ok(n) if n > 0) {}
        }
        "uds-listen" | "vsock-listen" => {
            let (len, seed) = (arg(a, 2, "LEN")?, arg(a, 3, "SEED")?);
            let mut s: Box<dyn ReadWrite> = if what == "uds-listen" {
                let _ = std::fs::remove_file(&a[1]);
                let l = UnixListener::bind(&a[1]).map_err(|e| format!("bind {}: {e}", a[1]))?;
                println!("PROBE listening {}", a[1]);
                Box::new(l.accept().map_err(|e| format!("accept: {e}"))?.0)
            } else {
                Box::new(vsock_accept(arg(a, 1, "PORT")?)?)
            };
            expect_pattern(&mut s, len, seed)?;
            s.write_all(b"OK\n").map_err(|e| e.to_string())?;
        }
        _ => {
            return Err(format!(
                "unknown subcommand {what:?} (see the source's header)"
            ))
        }
    }
    Ok(format!("{what} ok {:.3}s", t0.elapsed().as_secs_f64()))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(msg) => println!("PROBE {msg}"),
        Err(e) => {
            println!(
                "PROBE {} FAIL {e}",
                args.first().map(String::as_str).unwrap_or("?")
            );
            std::process::exit(1);
        }
    }
}
