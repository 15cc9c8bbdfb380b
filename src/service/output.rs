//! Bounded keeping of a process's output: the newest bytes of a background
//! exec ([`Ring`], read by offset), the first bytes of a foreground one
//! ([`Capped`]), and UTF-8 text cut only between characters ([`Utf8Splitter`]).

use std::collections::VecDeque;

/// Output kept per exec and stream: 8 MiB.
pub const MAX_KEPT_OUTPUT: usize = 8 << 20;

/// The newest `cap` bytes of a stream, addressed by their offset in the
/// whole stream.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    /// Offset of `buf[0]` in the stream.
    start: u64,
    cap: usize,
}

impl Ring {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::new(),
            start: 0,
            cap,
        }
    }

    /// Appends, dropping the oldest bytes past the cap.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        let over = self.buf.len().saturating_sub(self.cap);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
    }

    /// Offset just past the last byte written.
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Bytes from `offset` to the end (from the oldest kept byte when
    /// `offset` was dropped: then `true`).
    pub fn read_from(&self, offset: u64) -> (Vec<u8>, bool) {
        let dropped = offset < self.start;
        let from = offset.clamp(self.start, self.end()) - self.start;
        let (a, b) = self.buf.as_slices();
        let from = from as usize;
        let mut out = Vec::with_capacity(self.buf.len() - from);
        if from < a.len() {
            out.extend_from_slice(&a[from..]);
            out.extend_from_slice(b);
        } else {
            out.extend_from_slice(&b[from - a.len()..]);
        }
        (out, dropped)
    }
}

/// The first `cap` bytes of a stream; the rest is counted, not kept.
#[derive(Debug, Default)]
pub struct Capped {
    /// What was kept.
    pub data: Vec<u8>,
    /// Whether bytes were dropped.
    pub truncated: bool,
    cap: usize,
}

impl Capped {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Capped {
            data: Vec::new(),
            truncated: false,
            cap,
        }
    }

    /// Appends what fits.
    pub fn push(&mut self, d: &[u8]) {
        let room = self.cap.saturating_sub(self.data.len());
        if d.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&d[..d.len().min(room)]);
    }
}

/// Splits a byte stream into chunks that end between UTF-8 characters, so
/// that text chunks decode without replacement characters at their seams.
#[derive(Debug, Default)]
pub struct Utf8Splitter {
    carry: Vec<u8>,
}

impl Utf8Splitter {
    /// The complete part of `carry + data`; an incomplete trailing character
    /// (at most 3 bytes) waits for the next call.
    pub fn split(&mut self, data: &[u8]) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.carry);
        all.extend_from_slice(data);
        let keep = incomplete_tail(&all);
        self.carry = all.split_off(all.len() - keep);
        all
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.carry)
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `b` (0 to 3).
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match c {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if back < need { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_bytes_by_offset() {
        let mut r = Ring::new(4);
        r.push(b"abc");
        assert_eq!(r.read_from(1), (b"bc".to_vec(), false));
        r.push(b"def");
        assert_eq!(r.end(), 6);
        assert_eq!(r.read_from(0), (b"cdef".to_vec(), true));
        assert_eq!(r.read_from(4), (b"ef".to_vec(), false));
        assert_eq!(r.read_from(9), (Vec::new(), false));
    }

    #[test]
    fn capped_keeps_the_first_bytes() {
        let mut c = Capped::new(3);
        c.push(b"ab");
        c.push(b"cd");
        assert_eq!(c.data, b"abc");
        assert!(c.truncated);
    }

    #[test]
    fn utf8_chunks_never_split_a_character() {
        let text = "aé€😀z".as_bytes();
        for cut in 0..text.len() {
            let mut s = Utf8Splitter::default();
            let mut out = s.split(&text[..cut]);
            assert!(std::str::from_utf8(&out).is_ok(), "cut {cut}");
            out.extend(s.split(&text[cut..]));
            out.extend(s.finish());
            assert_eq!(out, text);
        }
        // Invalid bytes pass through rather than wait forever.
        let mut s = Utf8Splitter::default();
        assert_eq!(s.split(b"\xff\xfe"), b"\xff\xfe");
    }
}
