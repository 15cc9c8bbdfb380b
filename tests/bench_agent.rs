//! Benchmark (run by scripts/bench-agent.sh, ignored in normal test runs):
//! host<->agent over a Unix socket through `voidbox::client`, against the
//! agent binary in `serve` mode: exec round trip of `true`, ping round trip,
//! and a 100 MiB stdout stream.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use voidbox::client::{Client, ExecRequest, Secret};
use voidbox_guest_agent::service::find_cgroup2_mount;
use voidbox_guest_agent::BootData;

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.3} ms, p10 {:.3} ms, p90 {:.3} ms (n={})",
        p(0.5).as_secs_f64() * 1e3,
        p(0.1).as_secs_f64() * 1e3,
        p(0.9).as_secs_f64() * 1e3,
        v.len()
    )
}

#[test]
#[ignore = "benchmark: run scripts/bench-agent.sh"]
fn bench_agent() {
    let bin = std::env::var("VOIDBOX_AGENT_BIN").expect(
        "set VOIDBOX_AGENT_BIN to a built voidbox-guest-agent (scripts/bench-agent.sh does)",
    );
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate();
    let boot = dir.path().join("boot.json");
    std::fs::write(&boot, BootData::new(&secret).to_json()).unwrap();
    let cg: PathBuf = find_cgroup2_mount()
        .expect("needs a cgroup2 mount")
        .join(format!("voidbox-bench-{}", std::process::id()));
    std::fs::create_dir(&cg).expect("create a cgroup (run as root)");
    let sock = dir.path().join("agent.sock");
    let mut agent = Command::new(&bin)
        .args(["serve", "--unix"])
        .arg(&sock)
        .arg("--boot-data")
        .arg(&boot)
        .arg("--cgroup-root")
        .arg(&cg)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    let c = Client::connect_unix(&sock, &secret, Duration::from_secs(5)).unwrap();
    let connect = t.elapsed();

    let mut ping = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        c.ping(Duration::from_secs(5)).unwrap();
        ping.push(t.elapsed());
    }
    let req = |argv: &[&str]| ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut tru = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = c.exec_collect(req(&["true"]), b"", None).unwrap();
        tru.push(t.elapsed());
        assert_eq!(out.status.code, Some(0));
    }
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0u64;
        let st = c
            .exec(req(&["head", "-c", "104857600", "/dev/zero"]))
            .unwrap()
            .wait_with(|d| n += d.len() as u64, |_| {}, None)
            .unwrap();
        let el = t.elapsed();
        assert_eq!((st.code, n), (Some(0), 100 << 20));
        rates.push(100.0 / el.as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!("agent bench (host<->agent over a Unix socket, serve mode, {bin})");
    println!(
        "  connect + handshake: {:.3} ms",
        connect.as_secs_f64() * 1e3
    );
    println!("  ping round trip:     {}", stats(ping));
    println!("  exec `true`:         {}", stats(tru));
    println!(
        "  100 MiB stdout:      median {:.0} MiB/s (min {:.0}, max {:.0}, 5 runs)",
        rates[2], rates[0], rates[4]
    );
    c.shutdown().unwrap();
    let _ = agent.wait();
    let _ = std::fs::remove_dir(&cg);
}
