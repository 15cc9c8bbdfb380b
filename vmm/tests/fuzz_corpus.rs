//! Replays the committed corpora of `vmm/fuzz/` through the entry functions the fuzz
//! targets call (`voidbox_vmm::fuzzing`), with the same fixtures (a disk, a disk image, the
//! host vsock sockets, a kernel scratch file), so a crash found once stays fixed without a
//! nightly toolchain. `generate_corpus` (ignored) rewrites the seeds:
//! `cargo test -p voidbox-vmm --test fuzz_corpus -- --ignored`.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use voidbox_vmm::fuzzing::{self, VsockHost};
use voidbox_vmm::virtio::block::Disk;
use voidbox_vmm::virtio::vsock::packet::{op, PacketHeader, HOST_CID, TYPE_STREAM};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Calls `f` on every file of the target's corpus; fails on a missing or empty corpus.
fn replay(target: &str, mut f: impl FnMut(&[u8])) {
    let dir = corpus(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        n += 1;
    }
    assert!(n > 0, "{} holds no seeds", dir.display());
}

#[test]
fn vsock_packet_corpus() {
    replay("vsock_packet", fuzzing::vsock_packet);
}

#[test]
fn platform_ports_corpus() {
    replay("platform_ports", fuzzing::platform_ports);
}

#[test]
fn block_queue_corpus() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[0xa5; 64 * 1024]).unwrap();
    let disk = Arc::new(Disk::open(f.path(), false, Some("fuzz".into())).unwrap());
    replay("block_queue", |d| fuzzing::block_queue(d, disk.clone()));
}

#[test]
fn mmio_registers_corpus() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[0; 4096]).unwrap();
    replay("mmio_registers", |d| fuzzing::mmio_registers(d, f.path()));
}

#[test]
fn vsock_queue_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = Arc::new(UnixListener::bind(&path).unwrap());
    listener.set_nonblocking(true).unwrap();
    let _port = UnixListener::bind(dir.path().join("v.sock_1024")).unwrap();
    let host = VsockHost { listener, path };
    replay("vsock_queue", |d| fuzzing::vsock_queue(d, &host));
}

#[test]
fn load_kernel_corpus() {
    let dir = tempfile::tempdir().unwrap();
    replay("load_kernel", |d| {
        fuzzing::load_kernel(d, &dir.path().join("kernel"))
    });
}

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A descriptor: addr (an offset into the buffer area), len, flags, next.
type Desc = (u64, u32, u16, u16);

/// Builds a `guest_with_queues` input: per queue its descriptors (addr as an offset into the
/// buffer area, len, flags, next) and avail ring entries, then the buffer area contents.
struct Guest {
    queues: Vec<(Vec<Desc>, Vec<u16>)>,
    data: Vec<u8>,
}

impl Guest {
    fn put(&mut self, offset: usize, bytes: &[u8]) {
        if self.data.len() < offset + bytes.len() {
            self.data.resize(offset + bytes.len(), 0);
        }
        self.data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (descs, ring) in &self.queues {
            for i in 0..usize::from(fuzzing::QUEUE_SIZE) {
                let (addr, len, flags, next) = descs.get(i).copied().unwrap_or_default();
                out.extend_from_slice(&addr.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&next.to_le_bytes());
            }
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&(ring.len() as u16).to_le_bytes());
            for i in 0..usize::from(fuzzing::QUEUE_SIZE) {
                out.extend_from_slice(&ring.get(i).copied().unwrap_or(0).to_le_bytes());
            }
        }
        out.extend_from_slice(&self.data);
        out
    }
}

fn blk_header(ty: u32, sector: u64) -> Vec<u8> {
    [
        &ty.to_le_bytes()[..],
        &0u32.to_le_bytes(),
        &sector.to_le_bytes(),
    ]
    .concat()
}

fn vsock_header(src_port: u32, dst_port: u32, op: u16, len: u32) -> [u8; 44] {
    PacketHeader {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
    .to_bytes()
}

/// mmio op: kind (bit 0 write, bits 1-2 width index), offset, value.
fn mmio(write: bool, width: u8, offset: u16, value: u32) -> Vec<u8> {
    let w = match width {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => 3,
    };
    [
        &[w << 1 | u8::from(write)][..],
        &offset.to_le_bytes(),
        &value.to_le_bytes(),
    ]
    .concat()
}

fn port(write: bool, port: u16, value: u8) -> Vec<u8> {
    [&[u8::from(write)][..], &port.to_le_bytes(), &[value]].concat()
}

/// A bzImage (boot protocol 2.15, loadable high) with a small fake payload.
fn bzimage(init_size: u32) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1;
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x0010_0000u32.to_le_bytes()); // code32_start
    img[0x230..0x234].copy_from_slice(&0x0020_0000u32.to_le_bytes()); // kernel_alignment
    img[0x258..0x260].copy_from_slice(&0x0100_0000u64.to_le_bytes()); // pref_address
    img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    img.extend_from_slice(&[0x90; 4096]);
    img
}

/// An ELF64 x86_64 executable with one PT_LOAD segment at 16 MiB and, optionally, a PT_NOTE
/// with the Xen PVH entry note.
fn elf(pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let code_off = 64 + 56 * u64::from(phnum);
    let code = [0xf4u8; 64]; // hlt
    let note_off = code_off + code.len() as u64;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&0x0100_0000u32.to_le_bytes());
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[6] = 1;
    e[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    e[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    e[0x18..0x20].copy_from_slice(&0x0100_0000u64.to_le_bytes()); // e_entry
    e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
    let phdr = |ty: u32, off: u64, addr: u64, size: u64| {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&ty.to_le_bytes());
        p[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        p[48..56].copy_from_slice(&4u64.to_le_bytes());
        p
    };
    e.extend(phdr(1, code_off, 0x0100_0000, code.len() as u64));
    if pvh {
        e.extend(phdr(4, note_off, 0, note.len() as u64));
    }
    e.extend_from_slice(&code);
    if pvh {
        e.extend_from_slice(&note);
    }
    e
}

#[test]
#[ignore = "rewrites fuzz/corpus; run explicitly with --ignored"]
fn generate_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };

    // virtio-blk: read, write, flush and get-id chains (header, data, status).
    let mut blk = Guest {
        queues: vec![(
            vec![
                (0x000, 16, NEXT, 1),
                (0x1000, 1024, NEXT | WRITE, 2),
                (0x3000, 1, WRITE, 0),
                (0x010, 16, NEXT, 4),
                (0x1000, 512, NEXT, 5),
                (0x3001, 1, WRITE, 0),
                (0x020, 16, NEXT, 7),
                (0x3002, 1, WRITE, 0),
                (0x030, 16, NEXT, 9),
                (0x2000, 20, NEXT | WRITE, 10),
                (0x3003, 1, WRITE, 0),
                (0x040, 16, NEXT, 12),
                (0x1000, 512, NEXT | WRITE, 13),
                (0x3004, 1, WRITE, 0),
            ],
            vec![0, 3, 6, 8, 11],
        )],
        data: Vec::new(),
    };
    blk.put(0x000, &blk_header(0, 1)); // IN
    blk.put(0x010, &blk_header(1, 2)); // OUT
    blk.put(0x020, &blk_header(4, 0)); // FLUSH
    blk.put(0x030, &blk_header(8, 0)); // GET_ID
    blk.put(0x040, &blk_header(0, 127)); // IN past the end of the 64 KiB disk
    write("block_queue", "read_write_flush_id", &blk.encode());
    let mut looped = Guest {
        queues: vec![(vec![(0, 16, NEXT, 1), (0x1000, 16, NEXT, 0)], vec![0])],
        data: Vec::new(),
    };
    looped.put(0, &blk_header(0, 0));
    write("block_queue", "descriptor_loop", &looped.encode());

    // vsock: RX buffers, then TX REQUEST to port 1024, data, credit request, shutdown, and
    // a request to a port nobody listens on.
    let rx: Vec<_> = (0..4)
        .map(|i| (0x8000 + i * 0x1000, 4096, WRITE, 0))
        .collect();
    let mut vs = Guest {
        queues: vec![
            (rx, vec![0, 1, 2, 3]),
            (
                vec![
                    (0x100, 44, 0, 0),
                    (0x200, 44, NEXT, 2),
                    (0x300, 5, 0, 0),
                    (0x400, 44, 0, 0),
                    (0x500, 44, 0, 0),
                    (0x600, 44, 0, 0),
                ],
                vec![0, 1, 3, 4, 5],
            ),
            (vec![(0x7000, 64, WRITE, 0)], vec![0]),
        ],
        data: Vec::new(),
    };
    vs.put(0x100, &vsock_header(5000, 1024, op::REQUEST, 0));
    vs.put(0x200, &vsock_header(5000, 1024, op::RW, 5));
    vs.put(0x300, b"hello");
    vs.put(0x400, &vsock_header(5000, 1024, op::CREDIT_REQUEST, 0));
    vs.put(0x500, &vsock_header(5000, 1024, op::SHUTDOWN, 0));
    vs.put(0x600, &vsock_header(5001, 9999, op::REQUEST, 0));
    write("vsock_queue", "connect_send_shutdown", &vs.encode());

    for (name, h) in [
        ("request", vsock_header(5000, 1024, op::REQUEST, 0).to_vec()),
        (
            "rw",
            [&vsock_header(5000, 1024, op::RW, 5)[..], b"hello"].concat(),
        ),
        (
            "rw_short_payload",
            [&vsock_header(5000, 1024, op::RW, 500)[..], b"hi"].concat(),
        ),
        ("connect_line", b"CONNECT 1024\n".to_vec()),
        ("connect_line_bad", b"CONNECT 99999999999\n".to_vec()),
    ] {
        write("vsock_packet", name, &h);
    }

    // virtio-mmio: the driver's init sequence, a queue set up and notified, config reads.
    let mut ops = Vec::new();
    for off in [0x000, 0x004, 0x008, 0x00c] {
        ops.extend(mmio(false, 4, off, 0));
    }
    for (off, v) in [(0x070, 0), (0x070, 1), (0x070, 3), (0x014, 0)] {
        ops.extend(mmio(true, 4, off, v));
    }
    ops.extend(mmio(false, 4, 0x010, 0));
    for (off, v) in [(0x024, 1), (0x020, 1), (0x070, 0xb), (0x030, 0)] {
        ops.extend(mmio(true, 4, off, v));
    }
    ops.extend(mmio(false, 4, 0x034, 0));
    for (off, v) in [
        (0x038, 16),
        (0x080, 0x1000),
        (0x090, 0x10000),
        (0x0a0, 0x20000),
        (0x044, 1),
        (0x070, 0xf),
        (0x050, 0),
    ] {
        ops.extend(mmio(true, 4, off, v));
    }
    ops.extend(mmio(false, 4, 0x060, 0));
    ops.extend(mmio(true, 4, 0x064, 1));
    ops.extend(mmio(false, 8, 0x100, 0));
    ops.extend(mmio(false, 1, 0x114, 0));
    write("mmio_registers", "driver_init", &ops);
    let mut reset = ops.clone();
    reset.extend(mmio(true, 4, 0x070, 0));
    reset.extend(mmio(true, 2, 0x1ffe, 0xffff));
    write("mmio_registers", "init_then_reset", &reset);

    // Port I/O: console lines and a panic, DLAB, i8042 reset, pvpanic, ACPI S5 and reset.
    let mut con = Vec::new();
    for b in b"Linux version 6.1\nKernel panic - not syncing: boom\nend\n" {
        con.extend(port(true, 0x3f8, *b));
    }
    con.extend(port(false, 0x3fd, 0));
    write("platform_ports", "console_panic", &con);
    let mut long = Vec::new();
    for _ in 0..700 {
        long.extend(port(true, 0x3f8, b'x'));
    }
    long.extend(port(true, 0x3f8, b'\n'));
    write("platform_ports", "console_long_line", &long);
    let mut dlab = Vec::new();
    for (p, v) in [
        (0x3fb, 0x80),
        (0x3f8, 1),
        (0x3f9, 0),
        (0x3fb, 3),
        (0x3f9, 0x0f),
    ] {
        dlab.extend(port(true, p, v));
    }
    dlab.extend(port(false, 0x3fa, 0));
    write("platform_ports", "uart_dlab", &dlab);
    write("platform_ports", "i8042_reset", &port(true, 0x64, 0xfe));
    write("platform_ports", "pvpanic", &port(true, 0x505, 1));
    write(
        "platform_ports",
        "acpi_s5_and_reset",
        &[port(true, 0x601, 5 << 2 | 1 << 5), port(true, 0x600, 1)].concat(),
    );

    // Kernels: ELF with and without the PVH note, bzImages that fit and that do not.
    write("load_kernel", "elf_pvh", &elf(true));
    write("load_kernel", "elf", &elf(false));
    write("load_kernel", "bzimage", &bzimage(0x0080_0000));
    write("load_kernel", "bzimage_too_big", &bzimage(0x1000_0000));
    let mut truncated = elf(true);
    truncated.truncate(100);
    write("load_kernel", "elf_truncated", &truncated);
}
