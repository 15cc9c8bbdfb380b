//! The examples (ci-build, agent-tool, skills) in real microVMs (nested lane
//! on hosts without hardware KVM). Their images are built from Debian
//! packages by examples/images/build.sh (debootstrap + umoci) on first run
//! and kept in target/example-images and the store. examples/hello.yaml is
//! run by tests/lane_run.rs.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_voidbox");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn voidbox(home: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("VOIDBOX_HOME", home)
        .env("VOIDBOX_DEB_CACHE", support::deb_cache())
        .env("OPENAI_API_KEY", "sk-test-not-a-real-key")
        .env_remove("VOIDBOX_KERNEL")
        .env_remove("VOIDBOX_INITRAMFS")
        .output()
        .unwrap();
    eprintln!(
        "--- voidbox {}: {:?}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn examples_run_in_microvms() {
    support::require_qemu();
    support::require_setup();
    // Shared with tests/lane_run.rs (test binaries run one at a time): one
    // kernel download and one store.
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voidbox-lane-home");
    let o = voidbox(&home, &["guest", "build"]);
    assert!(o.status.success(), "guest build failed: see above");

    // The example images, from Debian packages, imported into this store.
    let images = repo().join("target/example-images");
    let status = Command::new(repo().join("examples/images/build.sh"))
        .arg(&images)
        .arg(BIN)
        .env("VOIDBOX_HOME", &home)
        .env("VOIDBOX_EXAMPLES_OFFLINE", "1")
        .status()
        .unwrap();
    assert!(status.success(), "examples/images/build.sh failed");

    // A real registry: the python image pushed with skopeo, pulled by reference and booted.
    let registry = support::LocalRegistry::start();
    let pushed = format!("{}/voidbox-test/python:bookworm", registry.addr);
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bookworm", images.join("python").display()))
        .arg(format!("docker://{pushed}"))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy to the local registry failed");
    let spec_dir = tempfile::tempdir().unwrap();
    let spec = spec_dir.path().join("from-registry.yaml");
    std::fs::write(
        &spec,
        format!(
            "api_version: v1\nkind: workflow\nname: from-registry\nsandbox:\n  image: {pushed}\nworkflow:\n  steps:\n    - {{name: py, shell: 'python3 -c \"print(6 * 7)\"'}}\n"
        ),
    )
    .unwrap();
    let o = voidbox(&home, &["run", "--file", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("42"));
    drop(registry);

    // skills: a tool from a read-only skill image.
    let o = voidbox(&home, &["run", "--file", "examples/skills.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("3 the"), "{out}");
    assert!(out.contains("read-only"), "{out}");

    // ci-build: compile from an input directory, artifacts out.
    let out_dir = repo().join("target/example-out/ci-build");
    let _ = std::fs::remove_dir_all(&out_dir);
    let o = voidbox(&home, &["run", "--file", "examples/ci-build.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(out_dir.join("hello").is_file(), "the binary came out");
    let log = std::fs::read_to_string(out_dir.join("test.log")).unwrap();
    assert!(
        log.contains("hello, voidbox: built and run inside a voidbox microVM"),
        "{log}"
    );

    // agent-tool: a Python tool call under an allowlist, with the LLM settings.
    let o = voidbox(
        &home,
        &["run", "--json", "--file", "examples/agent-tool.yaml"],
    );
    assert_eq!(o.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let data: String = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "output" && e["stream"] == "stdout")
        .map(|e| e["data"].as_str().unwrap_or_default().to_string())
        .collect();
    let result: serde_json::Value =
        serde_json::from_str(data.trim()).expect("the tool printed JSON");
    assert_eq!(result["result"], 385);
    assert_eq!(result["model"], "gpt-4o-mini");
    assert_eq!(result["uid"], 65534);
    assert!(result["prompt"]
        .as_str()
        .unwrap()
        .starts_with("Sum the squares"));
    assert!(
        !stdout.contains("sk-test-not-a-real-key"),
        "the key never appears in events"
    );
}
