//! voidbox-guest-agent: the wire protocol and boot data shared by host and
//! guest, the command policy, and the guest service. The binary of this crate
//! is guest PID 1.
//!
//! Stable contracts:
//! - [`protocol::VSOCK_PORT`] (1024) and [`protocol::PROTOCOL_VERSION`];
//! - [`protocol::Frame`] / [`protocol::Message`]: the wire format;
//! - [`boot_data::BootData`] and [`boot_data::BootData::to_newc_archive`]: the
//!   boot-data initrd the runtime writes.

pub mod boot_data;
#[doc(hidden)]
pub mod fuzzing;
pub mod newc;
pub mod policy;
pub mod protocol;
pub mod service;

pub use boot_data::BootData;
pub use protocol::{PROTOCOL_VERSION, VSOCK_PORT};
