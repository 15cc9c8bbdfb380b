//! Direct Linux boot: load the kernel (ELF vmlinux with or without a PVH
//! note, or bzImage), the concatenated initramfs, the command line, and the
//! PVH start info or zero page that tells the kernel where all of it is.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::cpu::paging::write_identity_tables;
use crate::cpu::regs::EntryMode;
use crate::layout::{
    e820_map, low_ram_end, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, PVH_INFO_ADDR, PVH_MEMMAP_ADDR,
    PVH_MODLIST_ADDR, RESET_VECTOR_ADDR, ZERO_PAGE_ADDR,
};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_MIN_ALIGN: u32 = 0x0100_0000;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE: u64 = 0x1000;

/// Errors of the boot loader, each naming the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file is missing or unreadable.
    #[error("cannot read kernel {path}: {source} (check the --kernel path and its permissions)")]
    KernelRead {
        /// Path given.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{0} is not a Linux kernel (expected an ELF vmlinux or a bzImage); pass the kernel image, not a module or initrd")]
    NotAKernel(PathBuf),
    /// linux-loader rejected the image.
    #[error(
        "cannot load kernel {path}: {detail} (is it an x86_64 kernel that fits in --mem-mib?)"
    )]
    KernelLoad {
        /// Path given.
        path: PathBuf,
        /// Loader error.
        detail: String,
    },
    /// The bzImage needs more guest RAM to decompress than there is.
    #[error("kernel {path} needs {needed_mib} MiB of guest memory to decompress itself: raise --mem-mib")]
    KernelTooLarge {
        /// Path given.
        path: PathBuf,
        /// Guest RAM (from address 0) the decompression area reaches, in MiB.
        needed_mib: u64,
    },
    /// An initrd is missing or unreadable.
    #[error("cannot read initrd {path}: {source} (check the --initrd path and its permissions)")]
    InitrdRead {
        /// Path given.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The initrds do not fit between the kernel and the end of low memory.
    #[error(
        "the initrds ({size} bytes) do not fit in guest memory next to the kernel: raise --mem-mib"
    )]
    InitrdTooLarge {
        /// Total padded size.
        size: u64,
    },
    /// Command line too long or with a NUL byte.
    #[error("the kernel command line is {len} bytes, the limit is {limit} (shorten --cmdline)")]
    CmdlineTooLong {
        /// Length including the terminating NUL and VMM additions.
        len: usize,
        /// Limit including the NUL.
        limit: usize,
    },
    /// A NUL byte inside the command line.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Writing boot structures into guest memory failed.
    #[error("cannot write boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What the kernel loader found.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// PVH entry point, when the ELF has one.
    pub pvh_entry: Option<u64>,
    /// 64-bit entry point.
    pub entry64: u64,
    /// First byte after the kernel image (for a bzImage: after the area it decompresses
    /// into, which the initrd must stay clear of).
    pub kernel_end: u64,
    /// The bzImage setup header, when booting a bzImage.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn is_bzimage(file: &mut File) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0x202)).is_ok()
        && file.read_exact(&mut magic).is_ok()
        && magic == *b"HdrS"
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.is_dir() {
        return Err(BootError::NotAKernel(path.to_path_buf()));
    }
    let mut magic = [0u8; 4];
    let has_magic = file.read_exact(&mut magic).is_ok();
    let load_err = |e: linux_loader::loader::Error| BootError::KernelLoad {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    if has_magic && magic == *b"\x7fELF" {
        let r =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let pvh_entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
            _ => None,
        };
        let entry = read_elf_entry(&mut file).map_err(read_err)?;
        return Ok(LoadedKernel {
            pvh_entry,
            entry64: entry,
            kernel_end: r.kernel_end,
            setup_header: None,
        });
    }
    if is_bzimage(&mut file) {
        let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(load_err)?;
        // The image only holds the compressed kernel; it decompresses into a larger area
        // that must be RAM and must not hold the initrd (the decompressor overwrites it).
        let decompress_end = r
            .setup_header
            .map_or(0, |h| bzimage_decompress_end(r.kernel_load.0, &h));
        if decompress_end > 0 && !mem.address_in_range(GuestAddress(decompress_end - 1)) {
            return Err(BootError::KernelTooLarge {
                path: path.to_path_buf(),
                needed_mib: decompress_end.div_ceil(1 << 20),
            });
        }
        return Ok(LoadedKernel {
            pvh_entry: None,
            entry64: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            kernel_end: r.kernel_end.max(decompress_end),
            setup_header: r.setup_header,
        });
    }
    Err(BootError::NotAKernel(path.to_path_buf()))
}

/// First byte after the area a bzImage loaded at `load` decompresses into. Its 64-bit
/// entry moves the kernel to `load` rounded up to `kernel_alignment`, at least
/// `pref_address` (the kernel's LOAD_PHYSICAL_ADDR), and needs `init_size` bytes there.
/// KASLR may then pick another spot, but only after this area was used.
fn bzimage_decompress_end(load: u64, hdr: &setup_header) -> u64 {
    let align = u64::from(hdr.kernel_alignment);
    let aligned = if align.is_power_of_two() {
        load.next_multiple_of(align)
    } else {
        load
    };
    let start = aligned.max(hdr.pref_address);
    start.saturating_add(u64::from(hdr.init_size))
}

/// The ELF header's entry point, converted to a physical address the way
/// Linux links it (virtual 0xffffffff8xxxxxxx maps to physical 0x...).
fn read_elf_entry(file: &mut File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut hdr = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut hdr)?;
    let entry = u64::from_le_bytes(hdr[24..32].try_into().expect("8 bytes"));
    // The kernel's e_entry is already physical (startup_64's load address).
    Ok(entry & 0x7fff_ffff_ffff)
}

/// Copies the initrds, each padded to 4 bytes so the kernel sees the next
/// cpio header, to the top of low RAM (below `addr_max`), above `kernel_end`.
pub fn load_initrds(
    mem: &GuestMemoryMmap,
    paths: &[PathBuf],
    kernel_end: u64,
    addr_max: u64,
) -> Result<Option<InitrdRange>, BootError> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut total = 0u64;
    for p in paths {
        let err = |source| BootError::InitrdRead {
            path: p.clone(),
            source,
        };
        let f = File::open(p).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(err(std::io::Error::other("not a regular file")));
        }
        let len = meta.len();
        total += len.next_multiple_of(4);
        files.push((f, len, p));
    }
    let top = addr_max & !(PAGE - 1);
    let addr = top
        .checked_sub(total)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end.next_multiple_of(PAGE))
        .ok_or(BootError::InitrdTooLarge { size: total })?;
    let mut at = addr;
    for (mut f, len, p) in files {
        mem.read_exact_volatile_from(GuestAddress(at), &mut f, len as usize)
            .map_err(|e| BootError::InitrdRead {
                path: p.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let padded = len.next_multiple_of(4);
        mem.write_slice(&[0u8; 4][..(padded - len) as usize], GuestAddress(at + len))?;
        at += padded;
    }
    Ok(Some(InitrdRange { addr, size: total }))
}

/// `mov al, 0xfe; out 0x64, al; hlt` (valid in 16- and 32-bit mode): an
/// i8042 reset, for guests that reboot by jumping to the BIOS reset vector.
pub const RESET_STUB: [u8; 5] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4];

/// Writes [`RESET_STUB`] at the reset vector.
pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR_ADDR))?;
    Ok(())
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`]; returns its length with the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let len = cmdline.len() + 1;
    if len > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len,
            limit: CMDLINE_MAX,
        });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_ADDR))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))?;
    Ok(len)
}

/// Writes the PVH start info (cmdline, RSDP, e820, initrd module).
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    rsdp: u64,
    initrd: Option<InitrdRange>,
) -> Result<EntryMode, BootError> {
    let map = e820_map(mem_bytes);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP_ADDR + (i * 24) as u64))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let m = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))?;
    Ok(EntryMode::Pvh {
        start_info: PVH_INFO_ADDR,
    })
}

/// Writes the zero page and identity page tables for the 64-bit entry.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    rsdp: u64,
    cmdline_len: usize,
    initrd: Option<InitrdRange>,
    header: Option<setup_header>,
) -> Result<EntryMode, BootError> {
    let mut params = boot_params {
        hdr: header.unwrap_or_else(|| setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            kernel_alignment: KERNEL_MIN_ALIGN,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = e820_map(mem_bytes);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    let cr3 = write_identity_tables(mem)?;
    Ok(EntryMode::Linux64 { cr3 })
}

/// The highest address (exclusive) the initrd may reach.
pub fn initrd_addr_max(mem_bytes: u64, kernel: &LoadedKernel) -> u64 {
    let low = low_ram_end(mem_bytes);
    match kernel.setup_header {
        Some(h) if h.initrd_addr_max != 0 => low.min(u64::from(h.initrd_addr_max) + 1),
        _ => low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        crate::layout::create_guest_memory(64 << 20).unwrap()
    }

    #[test]
    fn initrds_are_concatenated_4_byte_aligned_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::File::create(&a)
            .unwrap()
            .write_all(b"07070")
            .unwrap();
        std::fs::File::create(&b)
            .unwrap()
            .write_all(b"XYZ!")
            .unwrap();
        let m = mem();
        let rd = load_initrds(&m, &[a, b], 0x200_0000, 64 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(rd.size, 12);
        assert_eq!(rd.addr % PAGE, 0);
        assert!(rd.addr + rd.size <= 64 << 20);
        let mut buf = [0u8; 12];
        m.read_slice(&mut buf, GuestAddress(rd.addr)).unwrap();
        assert_eq!(&buf, b"07070\0\0\0XYZ!");
    }

    #[test]
    fn initrd_errors() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(60 << 20)
            .unwrap();
        let m = mem();
        assert!(matches!(
            load_initrds(&m, &[big], 0x200_0000, 64 << 20),
            Err(BootError::InitrdTooLarge { .. })
        ));
        assert!(matches!(
            load_initrds(&m, &[dir.path().join("nope")], 0, 64 << 20),
            Err(BootError::InitrdRead { .. })
        ));
        assert!(load_initrds(&m, &[], 0, 64 << 20).unwrap().is_none());
    }

    #[test]
    fn kernel_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let m = mem();
        let missing = dir.path().join("vmlinux");
        let e = load_kernel(&m, &missing).unwrap_err();
        assert!(matches!(e, BootError::KernelRead { .. }));
        assert!(e.to_string().contains("--kernel"));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0x55u8; 4096]).unwrap();
        assert!(matches!(
            load_kernel(&m, &junk),
            Err(BootError::NotAKernel(_))
        ));
        assert!(matches!(
            load_kernel(&m, dir.path()),
            Err(BootError::NotAKernel(_))
        ));
        let bad_elf = dir.path().join("bad.elf");
        let mut b = b"\x7fELF".to_vec();
        b.resize(128, 0);
        std::fs::write(&bad_elf, b).unwrap();
        assert!(matches!(
            load_kernel(&m, &bad_elf),
            Err(BootError::KernelLoad { .. })
        ));
    }

    /// A minimal relocatable bzImage (protocol 2.15) asking for `init_size` bytes from
    /// `pref_address`, aligned to 2 MiB.
    fn bzimage(dir: &Path, init_size: u32, pref_address: u64) -> PathBuf {
        let mut f = vec![0u8; 2 * 512];
        f[0x1f1] = 1; // setup_sects
        f[0x1fe..0x200].copy_from_slice(&BOOT_FLAG_MAGIC.to_le_bytes());
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        f[0x211] = 0x01; // LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        f[0x234] = 1; // relocatable_kernel
        f[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // XLF_KERNEL_64
        f[0x258..0x260].copy_from_slice(&pref_address.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        f.extend([0xf4u8; 0x400]);
        let path = dir.join("bzImage");
        std::fs::write(&path, f).unwrap();
        path
    }

    #[test]
    fn bzimage_decompression_area_is_kept_free_of_the_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::layout::create_guest_memory(128 << 20).unwrap();
        // Debian 6.1's values: LOAD_PHYSICAL_ADDR 16 MiB, init_size ~64 MiB.
        let k = load_kernel(&m, &bzimage(dir.path(), 0x3f9_8000, 0x100_0000)).unwrap();
        assert_eq!(k.entry64, HIMEM_START + BZIMAGE_64BIT_ENTRY_OFFSET);
        assert_eq!(k.kernel_end, 0x100_0000 + 0x3f9_8000);
        // An initrd that would reach into that area is refused, not silently overwritten.
        let rd = dir.path().join("rd");
        std::fs::File::create(&rd)
            .unwrap()
            .set_len(49 << 20)
            .unwrap();
        assert!(matches!(
            load_initrds(&m, std::slice::from_ref(&rd), k.kernel_end, 128 << 20),
            Err(BootError::InitrdTooLarge { .. })
        ));
        std::fs::File::create(&rd)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        let r = load_initrds(&m, &[rd], k.kernel_end, 128 << 20)
            .unwrap()
            .unwrap();
        assert!(r.addr >= k.kernel_end && r.addr + r.size <= 128 << 20);
        // Without a preferred address the area starts at the load address rounded up.
        let k = load_kernel(&m, &bzimage(dir.path(), 0x10_0000, 0)).unwrap();
        assert_eq!(k.kernel_end, 0x30_0000);
    }

    #[test]
    fn bzimage_that_cannot_decompress_in_guest_memory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_kernel(&mem(), &bzimage(dir.path(), 0x3f9_8000, 0x100_0000)).unwrap_err();
        assert!(
            matches!(e, BootError::KernelTooLarge { needed_mib: 80, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("--mem-mib"));
    }

    #[test]
    fn cmdline_limits() {
        let m = mem();
        assert_eq!(write_cmdline(&m, "console=ttyS0").unwrap(), 14);
        let mut buf = [0xffu8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&m, &"x".repeat(CMDLINE_MAX)),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_cmdline(&m, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
    }

    #[test]
    fn zero_page_and_pvh_info_contents() {
        let m = mem();
        let rd = Some(InitrdRange {
            addr: 0x300_0000,
            size: 0x1234,
        });
        write_zero_page(&m, 64 << 20, 0xe0000, 14, rd, None).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 3);
        write_pvh_info(&m, 64 << 20, 0xe0000, rd).unwrap();
        let i: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(i.magic, XEN_HVM_START_MAGIC);
        assert_eq!((i.nr_modules, i.memmap_entries), (1, 3));
        let md: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((md.paddr, md.size), (0x300_0000, 0x1234));
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 48)).unwrap();
        assert_eq!((e.addr, e.size + e.addr), (HIMEM_START, 64 << 20));
    }
}
