//! The wire protocol shared by the host client and the guest service.

pub mod auth;
pub mod flow;
pub mod frame;
pub mod message;

pub use frame::{Frame, FrameError, FrameKind, MAX_DATA_CHUNK, MAX_FRAME_BODY, MAX_HANDSHAKE_BODY};
pub use message::*;

/// vsock port the agent listens on.
pub const VSOCK_PORT: u32 = 1024;
/// Protocol version; both sides must match exactly.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes a receiver grants per data channel when a stream opens; the sender
/// may have at most this many unacknowledged bytes in flight.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
