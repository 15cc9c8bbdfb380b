//! The nested lane itself: one start serves many commands (output, status, signals, the
//! host filesystem read-only, shared directories read-write, long-running commands).
//! Skips only when QEMU is missing and cannot be installed (and says so).

mod support;

use std::time::Duration;

use voidbox::lane::{CommandSpec, Lane, LaneConfig, LaneError};

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new(["/bin/sh", "-c", script])
}

#[test]
fn lane_serves_many_commands() {
    let shared = tempfile::tempdir().unwrap();
    let mut cfg = LaneConfig::new(vec![
        env!("CARGO_BIN_EXE_voidbox").to_string(),
        "lane-l2".to_string(),
    ]);
    cfg.shared_dirs.push(shared.path().to_path_buf());
    let lane = match Lane::start(cfg.clone()) {
        Err(LaneError::Missing { what, .. }) if what.starts_with("QEMU") => {
            support::require_qemu();
            Lane::start(cfg).unwrap()
        }
        r => r.unwrap(),
    };
    assert!(lane.info().kvm, "L2 has /dev/kvm");
    let t = Duration::from_secs(60);

    // stdout, stderr and exit status come back separately.
    let out = lane.run(&sh("echo out; echo err >&2; exit 7"), t).unwrap();
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");
    assert_eq!(out.status.code, Some(7));

    // L2 runs the host's own binaries (chroot of the host /), under L2's KVM.
    let out = lane
        .run(
            &sh("uname -r; test -c /dev/kvm && echo kvm; cat /proc/cpuinfo | grep -c -w svm"),
            t,
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout_str().contains("kvm\n"), "{}", out.stdout_str());

    // The host / is read-only; the shared directory is writable and the host sees writes.
    let out = lane
        .run(&sh("touch /etc/voidbox-lane-test 2>&1; echo rc=$?"), t)
        .unwrap();
    assert!(
        !out.stdout_str().contains("rc=0"),
        "host / must be read-only: {}",
        out.stdout_str()
    );
    let f = shared.path().join("from-l2");
    let out = lane
        .run(&sh(&format!("echo hello > {}", f.display())), t)
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_str());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello\n");
    // ...and L2 sees files the host writes after L2 started.
    std::fs::write(shared.path().join("from-host"), "abc").unwrap();
    let out = lane
        .run(
            &sh(&format!("cat {}/from-host", shared.path().display())),
            t,
        )
        .unwrap();
    assert_eq!(out.stdout_str(), "abc");

    // Large output arrives complete and in order.
    let out = lane.run(&sh("seq 1 200000"), t).unwrap();
    let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout_str() == want,
        "seq output differs ({} bytes)",
        out.stdout.len()
    );

    // A long-running command runs alongside others and can be killed (its whole group).
    let mut long = lane
        .spawn(&sh("echo started; sleep 1000 & sleep 1000; echo never"))
        .unwrap();
    assert!(long.wait_for_stdout("started", t).unwrap());
    let out = lane.run(&sh("echo concurrent"), t).unwrap();
    assert_eq!(out.stdout_str(), "concurrent\n");
    long.kill();
    let out = long.wait(t).unwrap();
    assert_eq!(out.status.signal, Some(9), "{:?}", out.status);
    let out = lane.run(&sh("pgrep -f 'slee[p] 1000' | wc -l"), t).unwrap();
    assert_eq!(
        out.stdout_str().trim(),
        "0",
        "the killed group left processes behind"
    );

    // Timeouts kill the command and say so.
    let err = lane
        .run(&sh("sleep 100"), Duration::from_secs(2))
        .unwrap_err();
    assert!(matches!(err, LaneError::Timeout { .. }), "{err}");

    // Relays: an unknown port is refused up front; a relay whose host side never connects
    // gives up after its timeout with a message.
    let err = lane
        .start_relay(9, std::path::Path::new("/run/x.sock"), 1024, t)
        .unwrap_err();
    assert!(err.to_string().contains("relay port 9"), "{err}");
    let relay = lane
        .start_relay(
            0,
            std::path::Path::new("/run/none.sock"),
            1024,
            Duration::from_secs(1),
        )
        .unwrap();
    let out = relay.wait(t).unwrap();
    assert_eq!(out.status.code, Some(1), "{out:?}");
    assert!(
        out.stderr_str().contains("no host client"),
        "{}",
        out.stderr_str()
    );

    // L2's /tmp and /run are private and writable.
    let out = lane
        .run(
            &sh("echo x > /tmp/a && echo y > /run/b && cat /tmp/a /run/b"),
            t,
        )
        .unwrap();
    assert_eq!(out.stdout_str(), "x\ny\n", "{}", out.stderr_str());

    // A missing program is a clear error, and the lane keeps working afterwards.
    let err = lane
        .run(&CommandSpec::new(["/nonexistent/prog"]), t)
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/prog"), "{err}");
    assert!(lane.run(&sh("true"), t).unwrap().status.success());
}

#[test]
fn missing_l2_program_is_a_config_error() {
    let cfg = LaneConfig::new(vec!["relative/prog".into()]);
    let err = Lane::start(cfg).expect_err("must fail");
    assert!(err.to_string().contains("absolute path"), "{err}");
}
