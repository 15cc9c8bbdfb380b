//! Entry points of the fuzz targets in `guest-agent/fuzz/`, shared with the ordinary test
//! that replays their committed corpora (`tests/fuzz_corpus.rs`). Each takes untrusted
//! bytes, must never panic, and asserts the invariants the target checks.

use crate::protocol::{Frame, Message, MAX_FRAME_BODY, MAX_HANDSHAKE_BODY};
use crate::BootData;

/// Boot data (JSON from the host, read by the agent at boot): parsing and validation
/// never panic, and what parses also packs into its newc archive.
pub fn boot_data(data: &[u8]) {
    if let Ok(d) = BootData::from_json(data) {
        let _ = d.to_newc_archive();
        let _ = d.secret();
    }
}

/// Frames from an untrusted peer: the incremental decoder and the stream reader agree,
/// never panic, and never accept a body above the limit.
pub fn frame_decode(data: &[u8]) {
    for max in [MAX_HANDSHAKE_BODY, MAX_FRAME_BODY] {
        let mut rest = data;
        while let Ok(Some((frame, used))) = Frame::decode(rest, max) {
            assert!(used <= rest.len() && used >= 9);
            assert!(frame.payload.len() + 5 <= max);
            let mut r = rest;
            let again = Frame::read_from(&mut r, max).expect("reader agrees with decoder");
            assert_eq!(again, frame);
            assert_eq!(frame.encode(), rest[..used].to_vec());
            let _ = Message::from_bytes(&frame.payload);
            rest = &rest[used..];
        }
    }
}

/// Control messages from an untrusted peer: decoding never panics, and whatever decodes
/// re-encodes to something that decodes to the same value.
pub fn message_decode(data: &[u8]) {
    if let Ok(m) = Message::from_bytes(data) {
        let again = Message::from_bytes(&m.to_bytes()).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
}
