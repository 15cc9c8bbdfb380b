//! Host-side client of the guest agent: connects through the VMM vsock Unix socket, authenticates, exec/files/shutdown.
