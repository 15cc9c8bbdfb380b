//! The end of a log file, read without reading the whole file: the console
//! log and the VMM's log grow with what a guest does, so error reports read
//! at most [`TAIL_BYTES`] from the end.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most bytes read from the end of a log.
pub const TAIL_BYTES: u64 = 64 << 10;

/// The last `n` non-empty lines of `path` (none if it cannot be read).
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the window.
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_end_of_a_huge_sparse_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.log");
        let f = File::create(&p).unwrap();
        f.set_len(4 << 30).unwrap();
        drop(f);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"\nsecond last\nlast line\n").unwrap();
        assert_eq!(tail_lines(&p, 2), ["second last", "last line"]);
        assert!(tail_lines(&dir.path().join("missing"), 3).is_empty());
    }
}
