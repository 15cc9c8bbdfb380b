//! The nested lane's control channel: frames from L2 (or from the host, on the L2 side) are
//! parsed from an untrusted byte stream. Never a panic, never a frame over the bound, and
//! every accepted frame re-encodes to the same bytes; the payload decoders the two sides use
//! never panic either.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use voidbox::lane::protocol::{self, CommandSpec, ExitInfo, ReadyInfo};

/// Hands out the input in pieces of varying size, as a socket would.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = self.step % 7 + 1;
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut r = Chunked {
        data: stream,
        step: usize::from(seed),
    };
    let mut consumed = 0usize;
    while let Ok(Some(frame)) = protocol::read_frame(&mut r) {
        assert!(5 + frame.payload.len() <= protocol::MAX_FRAME);
        let mut again = Vec::new();
        protocol::write_frame(&mut again, frame.kind, frame.id, &frame.payload).unwrap();
        assert_eq!(&stream[consumed..consumed + again.len()], &again[..]);
        consumed += again.len();
        let back = protocol::read_frame(&mut &again[..]).unwrap().unwrap();
        assert_eq!(back, frame);
        match frame.kind {
            protocol::READY => drop(serde_json::from_slice::<ReadyInfo>(&frame.payload)),
            protocol::EXIT => drop(serde_json::from_slice::<ExitInfo>(&frame.payload)),
            protocol::SPAWN => drop(serde_json::from_slice::<CommandSpec>(&frame.payload)),
            _ => {}
        }
    }
});
