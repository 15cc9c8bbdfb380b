//! A step that streams 48 MB of output through `voidbox run` in a real microVM (through the
//! nested lane on hosts without hardware KVM): the workload users hit the vsock stall with
//! (audit S1; it hung in 3 of 5 runs before the fix). Runs `VOIDBOX_STREAM_RUNS` times
//! (default 3; the soak in docs/benchmarks.md uses 20), one VM at a time, each under a
//! deadline so a stall fails the test with the byte count it reached instead of hanging.

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_voidbox");
const BYTES: u64 = 48_000_000;
/// Far above a healthy run (lane start, boot, 48 MB through the lane's relay) on a slow host.
const DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn a_48_mb_step_streams_to_the_end_every_time() {
    support::require_qemu();
    support::require_setup();
    // Shared with the other lane tests (test binaries run one at a time): one store.
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voidbox-lane-home");
    let o = Command::new(BIN)
        .args(["guest", "build"])
        .env("VOIDBOX_HOME", &home)
        .env("VOIDBOX_DEB_CACHE", support::deb_cache())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "guest build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("stream.yaml");
    std::fs::write(
        &spec,
        format!(
            "api_version: v1\nkind: workflow\nname: stream\nworkflow:\n  steps:\n    - name: big\n      shell: \"head -c {BYTES} /dev/zero | tr '\\\\0' x\"\n"
        ),
    )
    .unwrap();
    let runs: usize = std::env::var("VOIDBOX_STREAM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 1..=runs {
        let started = Instant::now();
        let (got, status) = run_once(&home, &spec);
        eprintln!(
            "run {run}/{runs}: {got} bytes in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(got, BYTES, "run {run}: output stopped short");
        assert_eq!(status, Some(0), "run {run}: voidbox run failed");
    }
    let left = std::fs::read_dir(home.join("run"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "run directories left behind");
}

/// One `voidbox run`: the count of output bytes (all `x`, panics otherwise) and the exit code.
fn run_once(home: &std::path::Path, spec: &std::path::Path) -> (u64, Option<i32>) {
    let mut child = Command::new(BIN)
        .args(["run", "--file"])
        .arg(spec)
        .env("VOIDBOX_HOME", home)
        .env("VOIDBOX_DEB_CACHE", support::deb_cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut other = 0u64;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return other,
                Ok(n) => {
                    // The runner's own lines (if any) are not 'x'; count only the step's bytes.
                    let xs = buf[..n].iter().filter(|&&b| b == b'x').count() as u64;
                    other += n as u64 - xs;
                    counter.fetch_add(xs, Ordering::Relaxed);
                }
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "voidbox run stalled: {} of {BYTES} bytes after {DEADLINE:?}",
                count.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let other = reader.join().unwrap();
    assert!(other < 4096, "{other} unexpected non-x bytes on stdout");
    (count.load(Ordering::Relaxed), status.code())
}
