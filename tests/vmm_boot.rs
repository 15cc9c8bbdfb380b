//! Issue 2 end to end: voidbox-vmm boots the stock Debian kernel (boot 1: the ELF vmlinux, PVH
//! entry; boot 2: the bzImage, 64-bit entry) with a test initramfs and the guest itself checks
//! and reports (cmdline, CPUs, memory, disks, vsock both ways, reset, panic); boot 3 runs two
//! VMs at once. Runs through the nested lane on hosts without hardware KVM (one lane start for
//! all boots), directly otherwise.
//! `VOIDBOX_E2E_VMM=qemu-microvm` runs the same guest under QEMU microvm instead (to check the
//! guest side; exit-status checks are then skipped). `VOIDBOX_E2E_VERBOSE=1` drops `quiet` and
//! adds `earlyprintk=ttyS0` in boot 2.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;
use voidbox::lane::{CommandSpec, Launcher, Output};

const LEN: u64 = 10 << 20;
const RELAY_LEN: u64 = 1 << 20;
const TOKEN: &str = "vbt.token=e2e-7f3a9c";

fn sha256(path: &Path) -> String {
    host(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn probes(lines: &[(String, String)]) -> Vec<&str> {
    lines
        .iter()
        .filter(|(k, _)| k == "PROBE")
        .map(|(_, v)| v.as_str())
        .collect()
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout_str(),
        out.stderr_str()
    )
}

#[test]
fn vmm_boots_stock_kernel_and_guest_checks_pass() {
    let microvm = std::env::var("VOIDBOX_E2E_VMM").is_ok_and(|v| v == "qemu-microvm");
    let work = tempfile::Builder::new()
        .prefix("voidbox-e2e-")
        .tempdir()
        .unwrap();
    let w = work.path();
    let kernel = kernel();
    let probe = probe_bin();
    let vmm = if microvm { None } else { Some(vmm_bin()) };
    let initrd = w.join("test-initrd.cpio.gz");
    build_test_initramfs(&kernel, &probe, &initrd);
    // A copy of the probe inside the shared dir, runnable in L2 (the host side of vsock).
    let l2_probe = w.join("probe");
    std::fs::copy(&probe, &l2_probe).unwrap();

    // Read-only disk: a known head, then pseudo-random data; read-write disk: zeros.
    let ro = w.join("ro.img");
    let mut data = b"VOIDBOX-RO-PATTERN".to_vec();
    let mut x: u32 = 12345;
    while data.len() < (4 << 20) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.push((x >> 16) as u8);
    }
    std::fs::write(&ro, &data).unwrap();
    let ro_sha = sha256(&ro);
    let rw = w.join("rw.img");
    std::fs::write(&rw, vec![0u8; 2 << 20]).unwrap();

    let launcher = launcher(w);
    let sock_dir = launcher
        .socket_dir()
        .join(format!("voidbox-e2e-{}", std::process::id()));
    let t = Duration::from_secs(60);
    let out = launcher
        .run(
            &CommandSpec::new(["mkdir", "-p", &sock_dir.display().to_string()]),
            t,
        )
        .unwrap();
    assert!(out.status.success(), "{}", show("mkdir", &out));
    let uds = sock_dir.join("vsock.sock");
    let uds_s = uds.display().to_string();
    let probe_s = l2_probe.display().to_string();
    let vmm_cmd = |b: &Boot| match &vmm {
        Some(v) => voidbox_vmm_command(v, b),
        None => qemu_microvm_command(b),
    };

    // ---- Boot 1: 2 vCPUs, disks, 10 MiB over vsock each way, reset -> 0 ----
    let boot1 = Boot {
        kernel: kernel.vmlinux(),
        initrd: initrd.clone(),
        cmdline: format!("{BASE_CMDLINE} {TOKEN} vbt.mode=checks vbt.len={LEN}"),
        mem_mib: 256,
        vcpus: 2,
        disks: vec![
            (ro.clone(), true, "vbt-ro".into()),
            (rw.clone(), false, "vbt-rw".into()),
        ],
        vsock_uds: Some(uds.clone()),
        serial: w.join("boot1.log"),
    };
    // VOIDBOX_SOAK_BOOTS=N repeats boot 1 (two busy vsock connections at once, the setup
    // that exposed the lost credit update) N times in the same lane: the soak run recorded
    // in docs/benchmarks.md.
    let rounds: usize = std::env::var("VOIDBOX_SOAK_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for round in 1..=rounds {
        // Guest -> host: the VMM forwards guest connections to port 5000 to `<uds>_5000`.
        let listen_argv = if microvm {
            vec![
                probe_s.clone(),
                "vsock-listen".into(),
                "5000".into(),
                LEN.to_string(),
                "33".into(),
            ]
        } else {
            vec![
                probe_s.clone(),
                "uds-listen".into(),
                format!("{uds_s}_5000"),
                LEN.to_string(),
                "33".into(),
            ]
        };
        let mut listener = launcher.spawn(&CommandSpec::new(listen_argv)).unwrap();
        assert!(
            listener.wait_for_stdout("PROBE listening", t).unwrap(),
            "listener did not start"
        );
        // Each round checks its own console, not an earlier round's lines.
        let _ = std::fs::remove_file(&boot1.serial);
        let vm = launcher.spawn(&vmm_cmd(&boot1)).unwrap();
        // Host -> guest: CONNECT 1024 (retried until the guest listens), then both directions.
        let connect_argv = if microvm {
            vec![
                probe_s.clone(),
                "vsock-connect".into(),
                "3".into(),
                "1024".into(),
                LEN.to_string(),
                "11".into(),
                "22".into(),
                "300".into(),
            ]
        } else {
            vec![
                probe_s.clone(),
                "uds-connect".into(),
                uds_s.clone(),
                "1024".into(),
                LEN.to_string(),
                "11".into(),
                "22".into(),
                "300".into(),
            ]
        };
        let connector = launcher.spawn(&CommandSpec::new(connect_argv)).unwrap();
        let vm_out = vm.wait(Duration::from_secs(600)).unwrap();
        let console1 = std::fs::read_to_string(&boot1.serial).unwrap_or_default();
        let ctx1 = format!("{}\nconsole:\n{console1}", show("boot 1 VMM", &vm_out));
        let conn_out = connector.wait(Duration::from_secs(30)).unwrap();
        let list_out = listener.wait(Duration::from_secs(30)).unwrap();
        let lines = vbt_lines(&console1);

        if !microvm {
            assert_eq!(
                vm_out.status.code,
                Some(0),
                "guest reset must end the VMM with 0\n{ctx1}"
            );
        }
        assert_eq!(
            vbt(&lines, "done"),
            Some(""),
            "guest did not finish its checks\n{ctx1}"
        );
        assert!(vbt(&lines, "insmod-failed").is_none(), "{ctx1}");
        assert!(vbt(&lines, "cmdline").unwrap().contains(TOKEN), "{ctx1}");
        assert_eq!(vbt(&lines, "nproc"), Some("2"), "{ctx1}");
        let mem: u64 = vbt(&lines, "memtotal_kb").unwrap().parse().unwrap();
        assert!(
            (180 * 1024..=256 * 1024).contains(&mem),
            "MemTotal {mem} kB for 256 MiB\n{ctx1}"
        );
        let disks: Vec<&str> = lines
            .iter()
            .filter(|(k, _)| k == "disk")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            disks
                .iter()
                .any(|d| d.contains("serial=vbt-ro ro=1 sectors=8192")),
            "{disks:?}\n{ctx1}"
        );
        assert!(
            disks
                .iter()
                .any(|d| d.contains("serial=vbt-rw ro=0 sectors=4096")),
            "{disks:?}\n{ctx1}"
        );
        assert_eq!(vbt(&lines, "ro-head"), Some("VOIDBOX-RO-PATTERN"), "{ctx1}");
        assert_eq!(vbt(&lines, "ro-sha256"), Some(ro_sha.as_str()), "{ctx1}");
        assert!(
            vbt(&lines, "ro-write-refused-by-kernel").is_some(),
            "{ctx1}"
        );
        assert!(
            vbt(&lines, "ro-direct-write-refused").is_some(),
            "the VMM accepted a write to a read-only disk\n{ctx1}"
        );
        assert_eq!(sha256(&ro), ro_sha, "read-only image changed");
        assert_eq!(vbt(&lines, "rw-write-done"), Some(""), "{ctx1}");
        let rw_data = std::fs::read(&rw).unwrap();
        assert_eq!(
            &rw_data[512..540],
            b"VOIDBOX-RW-WRITTEN-BY-GUEST\n",
            "host reads back the guest's write"
        );
        let guest_probes = probes(&lines);
        assert!(
            guest_probes.iter().any(|p| p.starts_with("vsock-serve ok")),
            "{guest_probes:?}\n{ctx1}"
        );
        assert!(
            guest_probes.iter().any(|p| p.starts_with("vsock-send ok")),
            "{guest_probes:?}\n{ctx1}"
        );
        assert!(
            conn_out.status.success(),
            "{}\n{ctx1}",
            show("host CONNECT side", &conn_out)
        );
        assert!(
            list_out.status.success(),
            "{}\n{ctx1}",
            show("host listener", &list_out)
        );
        eprintln!(
            "boot 1 ok: {:?} | {} | {}",
            guest_probes,
            conn_out.stdout_str().trim(),
            list_out.stdout_str().trim()
        );
        eprintln!("boot 1 round {round}/{rounds} ok");
    }

    // ---- Boot 2: bzImage, 1 vCPU, host -> guest through the lane relay (lane only), then a panic ----
    let use_relay = matches!(launcher, Launcher::Lane(_)) && !microvm;
    let boot2 = Boot {
        vcpus: 1,
        cmdline: format!(
            "{BASE_CMDLINE} vbt.mode=panic{}",
            if use_relay {
                format!(" vbt.len={RELAY_LEN} vbt.send=0")
            } else {
                String::new()
            }
        ),
        disks: vec![],
        serial: w.join("boot2.log"),
        // The bzImage this time: linux-loader, zero page, 64-bit entry, decompressor, KASLR.
        kernel: kernel.bzimage(),
        ..boot1.clone()
    };
    // VOIDBOX_E2E_VERBOSE=1: the whole boot on the console (decompressor errors included).
    let boot2 = if std::env::var_os("VOIDBOX_E2E_VERBOSE").is_some() {
        Boot {
            cmdline: boot2.cmdline.replace(" quiet ", " earlyprintk=ttyS0 "),
            ..boot2
        }
    } else {
        boot2
    };
    let vm = launcher.spawn(&vmm_cmd(&boot2)).unwrap();
    let mut relay_out = None;
    if let (true, Some(lane)) = (use_relay, launcher.lane()) {
        let relay = lane
            .start_relay(0, &uds, 1024, Duration::from_secs(300))
            .unwrap();
        // Bounded: a guest that never comes up must fail the test, not hang it.
        let out = Command::new("timeout")
            .arg("300")
            .arg(&probe)
            .args([
                "stream",
                &lane.relay_socket(0).display().to_string(),
                &RELAY_LEN.to_string(),
                "11",
                "22",
            ])
            .output()
            .unwrap();
        relay_out = Some((out, relay.wait(Duration::from_secs(60))));
    }
    let vm_out = vm.wait(Duration::from_secs(600)).unwrap();
    let console2 = std::fs::read_to_string(&boot2.serial).unwrap_or_default();
    let ctx2 = format!("{}\nconsole:\n{console2}", show("boot 2 VMM", &vm_out));
    let lines = vbt_lines(&console2);
    assert_eq!(vbt(&lines, "nproc"), Some("1"), "{ctx2}");
    assert_eq!(vbt(&lines, "panicking"), Some(""), "{ctx2}");
    assert!(vbt(&lines, "still-alive-after-panic").is_none(), "{ctx2}");
    if !microvm {
        assert_eq!(
            vm_out.status.code,
            Some(3),
            "a guest panic must end the VMM with 3\n{ctx2}"
        );
        let said = format!("{}{}", vm_out.stdout_str(), vm_out.stderr_str());
        assert!(
            said.contains("Kernel panic"),
            "the VMM must show the last console lines\n{ctx2}"
        );
    }
    if let Some((out, relay)) = relay_out {
        let relay = relay.unwrap();
        assert!(
            out.status.success(),
            "host -> relay -> guest failed: {}{}\nrelay: {}\n{ctx2}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            show("relay", &relay)
        );
        assert!(
            probes(&lines)
                .iter()
                .any(|p| p.starts_with("vsock-serve ok")),
            "{ctx2}"
        );
    }

    // ---- Boot 3: two VMs at once in one lane (or on one host), each to its marker ----
    if !microvm {
        two_vms_at_once(&launcher, w, &boot1);
    }
    let _ = launcher.run(
        &CommandSpec::new(["rm", "-rf", &sock_dir.display().to_string()]),
        t,
    );
}

/// Two VMMs side by side: both reach their marker, every thread of both runs under its
/// seccomp filter (Seccomp: 2, NoNewPrivs: 1), both exit 0 when their guests reset.
fn two_vms_at_once(launcher: &Launcher, w: &Path, base: &Boot) {
    let boots: Vec<Boot> = (0..2)
        .map(|i| Boot {
            vcpus: 1,
            cmdline: format!("{BASE_CMDLINE} vbt.mode=marker vbt.idle=8"),
            disks: vec![],
            // A vsock device each, so each VMM has a device thread too.
            vsock_uds: base
                .vsock_uds
                .as_ref()
                .map(|u| u.with_file_name(format!("boot3-{i}.sock"))),
            serial: w.join(format!("boot3-{i}.log")),
            ..base.clone()
        })
        .collect();
    // `exec` keeps the shell's PID, so the VMM's PID is the one printed.
    let mut vms: Vec<_> = boots
        .iter()
        .map(|b| {
            let mut argv: Vec<String> = vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo PID $$; exec \"$@\"".into(),
                "sh".into(),
            ];
            argv.extend(voidbox_vmm_command(&vmm_bin(), b).argv);
            launcher.spawn(&CommandSpec::new(argv)).unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    for b in &boots {
        while !std::fs::read_to_string(&b.serial)
            .unwrap_or_default()
            .contains("VBT-MARKER-UP")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never reached its marker while another VM ran",
                b.serial.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // While both guests idle: every thread of each VMM runs under its seccomp filter.
    for vm in vms.iter_mut() {
        vm.wait_for_stdout("PID ", Duration::from_secs(30)).unwrap();
        let said = String::from_utf8_lossy(&vm.stdout_so_far()).into_owned();
        let pid = said
            .lines()
            .find_map(|l| l.strip_prefix("PID "))
            .expect("the VMM's PID")
            .trim()
            .to_string();
        let script = format!(
            "for t in /proc/{pid}/task/*; do printf 'task %s\\n' \"$(cat $t/comm)\"; grep -E '^(Seccomp|NoNewPrivs):' $t/status; done"
        );
        let out = launcher
            .run(
                &CommandSpec::new(["sh", "-c", &script]),
                Duration::from_secs(30),
            )
            .unwrap();
        let text = out.stdout_str();
        let tasks: Vec<&str> = text
            .split("task ")
            .filter(|t| !t.trim().is_empty())
            .collect();
        // main, vcpu0 and the vsock device's thread at least.
        assert!(tasks.len() >= 3, "VMM threads: {text}");
        for name in ["voidbox-vmm", "vcpu0", "virtio-vsock"] {
            assert!(text.contains(name), "no {name} thread: {text}");
        }
        for t in &tasks {
            assert!(
                t.contains("Seccomp:\t2") && t.contains("NoNewPrivs:\t1"),
                "a VMM thread runs without its seccomp filter: {t}"
            );
        }
    }
    for vm in vms {
        let out = vm.wait(Duration::from_secs(300)).unwrap();
        assert_eq!(out.status.code, Some(0), "{}", show("boot 3 VMM", &out));
    }
    eprintln!("boot 3 ok: two VMs at once");
}
