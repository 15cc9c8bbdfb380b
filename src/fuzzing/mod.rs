//! Entry points of the fuzz targets in `fuzz/`, shared with the ordinary test that replays
//! their committed corpora (`tests/fuzz_corpus.rs`). Each takes bytes a hostile guest (or
//! nested lane) controls, must never panic, and asserts what its target promises.

mod client;

pub use client::{agent_stream, AGENT_SECRET};

use std::io::Read;

use crate::lane::protocol::{self, CommandSpec, ExitInfo, ReadyInfo};

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

/// The nested lane's control channel (first byte: read chunking, rest: the stream): never a
/// panic, never a frame over the bound, every accepted frame re-encodes to the same bytes,
/// and the payload decoders of both sides never panic.
pub fn lane_frame(data: &[u8]) {
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
        protocol::write_frame(&mut again, frame.kind, frame.id, &frame.payload).expect("to a Vec");
        assert_eq!(&stream[consumed..consumed + again.len()], &again[..]);
        consumed += again.len();
        let back = protocol::read_frame(&mut &again[..])
            .expect("re-encoded frame reads")
            .expect("a frame");
        assert_eq!(back, frame);
        match frame.kind {
            protocol::READY => drop(serde_json::from_slice::<ReadyInfo>(&frame.payload)),
            protocol::EXIT => drop(serde_json::from_slice::<ExitInfo>(&frame.payload)),
            protocol::SPAWN => drop(serde_json::from_slice::<CommandSpec>(&frame.payload)),
            _ => {}
        }
    }
}

/// A guest's output archive (untrusted tar bytes) unpacked on the host: never a panic, and
/// never a file outside the destination directory.
pub fn output_unpack(data: &[u8]) {
    let outer = tempfile::tempdir().expect("tempdir");
    let dest = outer.path().join("out");
    let _ = crate::runtime::files::unpack_into(data, &dest, "fuzz");
    for entry in std::fs::read_dir(outer.path()).expect("readdir").flatten() {
        assert_eq!(
            entry.file_name(),
            "out",
            "something was written outside the destination"
        );
    }
}
