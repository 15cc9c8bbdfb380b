//! Benchmark: cold pull + rootfs disk build of a ~100 MB multi-layer image, against the peer
//! pipeline `skopeo copy` + `umoci raw unpack` + `mkfs.ext4 -d`, and warm (cached) resolution.
//!
//! Run with `scripts/bench-oci.sh` (= `cargo run --release -p voidbox-oci --example bench_oci`).
//! Needs root (umoci keeps owners only as root), docker-registry, skopeo, umoci, e2fsprogs.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use voidbox_oci::writer::{write_image, ImageSettings, LayerWriter};
use voidbox_oci::{ImageSource, PullOptions, PullPolicy, RegistryClient, RegistryOptions, Store};

const RUNS: usize = 3;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Text-like content (compresses roughly like source code / docs).
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "voidbox", "int", "return", "struct", "fn", "let", "mut", "if", "else", "for",
        "while", "match", "self", "usize", "error", "config", "value", "buffer", "guest", "=", "{",
        "}", "(", ")", ";", "\n", "    ", "//", "0x1f", "42", "true", "false", "None", "Some",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Binary-like content: half random, half zero runs (compresses ~2x like executables).
fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = 64 + (rng.next() % 512) as usize;
        if rng.next() & 1 == 0 {
            out.extend((0..n).map(|_| rng.next() as u8));
        } else {
            out.extend(std::iter::repeat_n(0u8, n));
        }
    }
    out.truncate(len);
    out
}

/// ~100 MB in 4 layers: a base of many small files, libraries, a large binary, and an
/// update layer with whiteouts.
fn build_image(store: &Store) -> voidbox_oci::Digest {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut layers = Vec::new();
    let mut add = |files: Vec<(String, u32, Vec<u8>)>| {
        let mut w = LayerWriter::new(store).unwrap();
        for (path, mode, data) in files {
            w.add_file(&path, mode, &data).unwrap();
        }
        layers.push(w.finish().unwrap());
    };
    // Layer 1: 6000 small text files (~36 MB).
    add((0..6000)
        .map(|i| {
            (
                format!("usr/share/doc/pkg{}/file{i}.txt", i % 300),
                0o644,
                text(&mut rng, 2000 + (i * 37) % 8000),
            )
        })
        .collect());
    // Layer 2: 200 libraries (~30 MB).
    add((0..200)
        .map(|i| {
            (
                format!("usr/lib/x86_64-linux-gnu/lib{i}.so.1"),
                0o755,
                binary(&mut rng, 150_000),
            )
        })
        .collect());
    // Layer 3: one 30 MB binary and a few tools.
    let mut files = vec![(
        "opt/app/bin/app".to_string(),
        0o755,
        binary(&mut rng, 30 << 20),
    )];
    files.extend((0..50).map(|i| (format!("usr/bin/tool{i}"), 0o755, binary(&mut rng, 60_000))));
    add(files);
    // Layer 4: updates over the base.
    add((0..500)
        .map(|i| {
            (
                format!("usr/share/doc/pkg{}/file{i}.txt", i % 300),
                0o644,
                text(&mut rng, 3000),
            )
        })
        .collect());
    write_image(store, &ImageSettings::default(), &layers, &BTreeMap::new()).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let registry = common::Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let manifest = build_image(&src);
    let reference = format!("{}/bench/image:1", registry.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = oci_client::Reference::from_str(&reference).unwrap();
    rt.block_on(RegistryClient::new(&r, &RegistryOptions::default()).push(&src, &manifest, &r))
        .unwrap();
    let compressed: u64 = src
        .blobs_of(&voidbox_oci::RefRecord {
            reference: String::new(),
            manifest: manifest.clone(),
            index: None,
            platform: String::new(),
            updated_unix: 0,
        })
        .iter()
        .map(|d| std::fs::metadata(src.blob_path(d)).unwrap().len())
        .sum();

    let source = ImageSource::parse(&reference).unwrap();
    let mut ours = Vec::new();
    let mut uncompressed = 0;
    let mut disk_size = 0;
    for _ in 0..RUNS {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let t = Instant::now();
        let image = rt
            .block_on(voidbox_oci::pull(&store, &source, &PullOptions::default()))
            .unwrap();
        ours.push(t.elapsed());
        disk_size = std::fs::metadata(&image.disk).unwrap().len();
        uncompressed = common::ext4_listing(&image.disk)
            .values()
            .filter(|e| e.mode & 0o170000 == 0o100000)
            .map(|e| e.size)
            .sum();
    }

    // Disk build alone: blobs already in the store, disk removed.
    let mut build_only = Vec::new();
    {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let image = rt
            .block_on(voidbox_oci::pull(&store, &source, &PullOptions::default()))
            .unwrap();
        for _ in 0..RUNS {
            std::fs::remove_file(&image.disk).unwrap();
            let t = Instant::now();
            voidbox_oci::ensure_disk(&store, &image.manifest, Default::default()).unwrap();
            build_only.push(t.elapsed());
        }
    }

    let mut peer = Vec::new();
    for _ in 0..RUNS {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("layout");
        let bundle = work.path().join("rootfs");
        let disk = work.path().join("disk.ext4");
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:1", layout.display())));
        run(Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:1", layout.display()))
            .arg(&bundle));
        // Same sizing as ours would be unfair to guess; give mkfs the size voidbox chose.
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(disk_size).unwrap();
        drop(f);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-d"])
            .arg(&bundle)
            .arg(&disk));
        peer.push(t.elapsed());
    }

    // Warm: everything cached; what `voidbox run` pays to resolve the image.
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    rt.block_on(voidbox_oci::pull(&store, &source, &PullOptions::default()))
        .unwrap();
    let mut warm = Vec::new();
    let if_missing = PullOptions {
        policy: PullPolicy::IfMissing,
        ..Default::default()
    };
    for _ in 0..200 {
        let t = Instant::now();
        let s = Store::open(home.path()).unwrap();
        rt.block_on(voidbox_oci::pull(&s, &source, &if_missing))
            .unwrap();
        warm.push(t.elapsed());
    }
    let warm_p99 = {
        let mut w = warm.clone();
        w.sort();
        w[w.len() * 99 / 100]
    };

    let (o, p) = (median(ours), median(peer));
    println!(
        "image: 4 layers, {:.1} MB compressed, {:.1} MB of file content, disk {:.1} MB",
        compressed as f64 / 1e6,
        uncompressed as f64 / 1e6,
        disk_size as f64 / 1e6
    );
    println!("| pipeline | median of {RUNS} |");
    println!("| --- | --- |");
    println!(
        "| voidbox cold pull + disk build | {:.2} s |",
        o.as_secs_f64()
    );
    println!(
        "| of which unpack + ext4 build (blobs cached) | {:.2} s |",
        median(build_only).as_secs_f64()
    );
    println!(
        "| skopeo copy + umoci raw unpack + mkfs.ext4 -d | {:.2} s |",
        p.as_secs_f64()
    );
    println!(
        "| ratio voidbox / peer | {:.2}x |",
        o.as_secs_f64() / p.as_secs_f64()
    );
    println!("| voidbox warm resolution (store open + IfMissing pull), median / p99 of 200 | {:.2} ms / {:.2} ms |",
        median(warm).as_secs_f64() * 1e3, warm_p99.as_secs_f64() * 1e3);
}
