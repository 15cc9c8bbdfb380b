//! Frames from an untrusted peer: the incremental decoder and the stream reader
//! must agree, never panic, and never accept a body above the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_guest_agent::protocol::{Frame, Message, MAX_FRAME_BODY, MAX_HANDSHAKE_BODY};

fuzz_target!(|data: &[u8]| {
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
});
