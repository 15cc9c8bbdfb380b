//! Boot benchmark (issue 2): the same kernel + initramfs booted to a marker by voidbox-vmm
//! and by QEMU microvm, interleaved, inside the nested lane (or directly on hardware KVM).
//! Prints each run, the medians, the ratio, and each VMM's memory overhead while the guest
//! idles (RSS outside the guest-RAM mapping, from /proc/PID/smaps).
//!
//! Not a pass/fail test: run it with `scripts/bench-boot.sh` (which runs
//! `cargo test --release --test bench_boot -- --ignored --nocapture`). `BENCH_RUNS` sets the
//! number of runs per VMM (default 10).

mod support;

use std::time::{Duration, Instant};

use support::*;
use voidbox::lane::{CommandSpec, Launcher};

const MEM_MIB: u64 = 256;

/// RSS (kB) outside the guest-RAM mapping: every mapping at least as large as guest RAM is
/// guest memory; everything else is the VMM's own.
fn overhead_kb(smaps: &str) -> Option<(u64, u64)> {
    let mut total = 0;
    let mut guest = 0;
    let mut size_kb = 0;
    let mut seen = false;
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("Size:"), Some(v)) => size_kb = v.parse().ok()?,
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().ok()?;
                seen = true;
                total += rss;
                if size_kb >= MEM_MIB * 1024 {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    seen.then_some((total - guest, total))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Sample {
    boot_s: f64,
    overhead_kb: u64,
    rss_kb: u64,
}

fn one_run(
    launcher: &Launcher,
    spec: CommandSpec,
    serial: &std::path::Path,
) -> Result<Sample, String> {
    let _ = std::fs::remove_file(serial);
    // `exec` keeps the PID, so smaps is the VMM's own.
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        "echo PID $$; exec \"$@\"".into(),
        "sh".into(),
    ];
    argv.extend(spec.argv);
    let t0 = Instant::now();
    let mut p = launcher
        .spawn(&CommandSpec::new(argv))
        .map_err(|e| e.to_string())?;
    let boot_s = loop {
        if std::fs::read_to_string(serial)
            .unwrap_or_default()
            .contains("VBT-MARKER-UP")
        {
            break t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > Duration::from_secs(120) {
            p.kill();
            return Err("no marker within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    p.wait_for_stdout("PID ", Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    // Let the guest settle into its idle sleep, then read the VMM's mappings.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = String::from_utf8_lossy(&p.stdout_so_far()).into_owned();
    let pid: String = pid
        .lines()
        .find_map(|l| l.strip_prefix("PID "))
        .unwrap_or("")
        .trim()
        .to_string();
    let smaps = launcher
        .run(
            &CommandSpec::new(["cat", &format!("/proc/{pid}/smaps")]),
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())?;
    let (overhead_kb, rss_kb) = overhead_kb(&smaps.stdout_str()).ok_or("no smaps")?;
    let out = p.wait(Duration::from_secs(60)).map_err(|e| e.to_string())?;
    if out.status.code != Some(0) {
        return Err(format!(
            "VMM ended with {}: {}",
            out.status,
            out.stderr_str()
        ));
    }
    Ok(Sample {
        boot_s,
        overhead_kb,
        rss_kb,
    })
}

#[test]
#[ignore = "benchmark: run scripts/bench-boot.sh"]
fn bench_boot() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let work = tempfile::Builder::new()
        .prefix("voidbox-bench-")
        .tempdir()
        .unwrap();
    let w = work.path();
    let kernel = kernel();
    let vmm = vmm_bin();
    let initrd = w.join("initrd.cpio.gz");
    build_test_initramfs(&kernel, &probe_bin(), &initrd);
    let launcher = launcher(w);
    let boot = Boot {
        kernel: kernel.vmlinux(),
        initrd,
        cmdline: format!("{BASE_CMDLINE} vbt.mode=marker vbt.idle=3"),
        mem_mib: MEM_MIB as u32,
        vcpus: 1,
        disks: vec![],
        vsock_uds: None,
        serial: w.join("serial.log"),
    };
    let mut results: Vec<(&str, Vec<Sample>)> =
        vec![("voidbox-vmm", vec![]), ("qemu-microvm", vec![])];
    for i in 0..runs {
        for (name, samples) in results.iter_mut() {
            let spec = if *name == "voidbox-vmm" {
                voidbox_vmm_command(&vmm, &boot)
            } else {
                qemu_microvm_command(&boot)
            };
            match one_run(&launcher, spec, &boot.serial) {
                Ok(s) => {
                    println!(
                        "run {:2} {name:13} marker {:6.3} s  overhead {:6} kB  rss {:6} kB",
                        i + 1,
                        s.boot_s,
                        s.overhead_kb,
                        s.rss_kb
                    );
                    samples.push(s);
                }
                Err(e) => panic!("run {} {name}: {e}", i + 1),
            }
        }
    }
    println!(
        "\n{:13} {:>16} {:>22}",
        "VMM", "median marker s", "median overhead MiB"
    );
    let mut med = vec![];
    for (name, samples) in &results {
        let mut b: Vec<f64> = samples.iter().map(|s| s.boot_s).collect();
        let mut o: Vec<f64> = samples
            .iter()
            .map(|s| s.overhead_kb as f64 / 1024.0)
            .collect();
        let (mb, mo) = (median(&mut b), median(&mut o));
        println!("{name:13} {mb:16.3} {mo:22.2}");
        med.push(mb);
    }
    println!(
        "ratio voidbox-vmm / qemu-microvm (boot to marker): {:.3}",
        med[0] / med[1]
    );
}

#[test]
fn overhead_counts_only_non_guest_mappings() {
    let smaps = "7f00-8f00 rw-p 0 0 0\nSize: 262144 kB\nRss: 1000 kB\n\
                 5500-5600 r-xp 0 0 0 /bin/x\nSize: 3000 kB\nRss: 2500 kB\n";
    assert_eq!(overhead_kb(smaps), Some((2500, 3500)));
}
