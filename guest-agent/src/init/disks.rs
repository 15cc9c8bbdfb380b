//! Finding virtio-blk disks by serial (`/sys/block/*/serial`).

use std::time::{Duration, Instant};

fn scan(serial: &str) -> (Option<String>, Vec<String>) {
    let mut seen = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(s) = std::fs::read_to_string(e.path().join("serial")) {
                let s = s.trim().to_string();
                if s == serial {
                    return (Some(format!("/dev/{name}")), seen);
                }
                seen.push(format!("{name}={s}"));
            }
        }
    }
    (None, seen)
}

/// The device node of the disk with `serial`, waiting up to `timeout` for it
/// to appear (modules probe asynchronously). `overrides` are explicit
/// serial=device pairs passed by the PID 1 test harness.
pub fn find(
    serial: &str,
    overrides: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    if let Some((_, dev)) = overrides.iter().find(|(s, _)| s == serial) {
        return Ok(dev.clone());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let (found, seen) = scan(serial);
        // sysfs shows the disk a moment before devtmpfs has its node: mounting
        // then would fail with ENOENT, so wait for the node as well.
        let missing_node = match found {
            Some(dev) if std::path::Path::new(&dev).exists() => return Ok(dev),
            Some(dev) => Some(dev),
            None => None,
        };
        if Instant::now() >= deadline {
            if let Some(dev) = missing_node {
                return Err(format!(
                    "the disk with serial `{serial}` is in /sys/block but {dev} never appeared after {timeout:?}"
                ));
            }
            return Err(format!(
                "no virtio-blk disk with serial `{serial}` after {timeout:?} (disks seen: [{}])",
                seen.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
