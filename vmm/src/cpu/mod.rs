//! Per-vCPU x86_64 state at boot: segments and GDT, page tables, registers,
//! CPUID and MSRs.

pub mod cpuid;
pub mod gdt;
pub mod msr;
pub mod paging;
pub mod regs;
