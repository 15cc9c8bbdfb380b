//! voidbox-vmm: the virtual machine monitor (KVM, direct Linux boot, ACPI,
//! serial console, virtio-mmio block and vsock devices). One VM per process.

pub mod virtio;
