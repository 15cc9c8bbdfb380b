//! voidbox-guest-agent: the wire protocol and boot data shared by host and guest; the binary is guest PID 1.
