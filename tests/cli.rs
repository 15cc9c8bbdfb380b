//! The `voidbox` command on bad input, without booting a VM: every case
//! gets a short error naming the problem and the fix, and a documented
//! exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_voidbox");

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn voidbox(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("VOIDBOX_HOME", self.path().join("home"))
            .env_remove("VOIDBOX_KERNEL")
            .env_remove("VOIDBOX_INITRAMFS")
            .env_remove("VOIDBOX_FORCE_LANE")
            .output()
            .unwrap()
    }

    fn spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Placeholder kernel/initramfs files so planning gets past the guest
    /// image (only their existence is checked before launch).
    fn fake_boot_files(&self) -> String {
        let k = self.path().join("k");
        let i = self.path().join("i");
        std::fs::write(&k, b"not a kernel").unwrap();
        std::fs::write(&i, b"not an initramfs").unwrap();
        format!("  kernel: {}\n  initramfs: {}\n", k.display(), i.display())
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const HELLO: &str = "api_version: v1\nkind: workflow\nname: t\nworkflow:\n  steps:\n    - {name: a, run: {program: echo, args: [hi]}}\n";

#[test]
fn missing_file() {
    let h = Home::new();
    let o = h.voidbox(&["run", "--file", "/nonexistent/spec.yaml"]);
    assert_eq!(code(&o), 121);
    let e = stderr(&o);
    assert!(
        e.contains("cannot read spec file /nonexistent/spec.yaml"),
        "{e}"
    );
    assert!(e.contains("check the path passed to --file"), "{e}");
}

#[test]
fn bad_spec_lists_every_error_with_positions() {
    let h = Home::new();
    let f = h.spec(
        "bad.yaml",
        "api_version: v1\nkind: workflow\nname: t\nsandbox:\n  vcpu: 2\n  memory_mb: lots\nworkflow:\n  steps:\n    - {name: build, shell: make}\n    - {name: test, shell: make test, depends_on: [biuld]}\n",
    );
    for cmd in ["validate", "run", "inspect"] {
        let o = h.voidbox(&[cmd, "--file", f.to_str().unwrap()]);
        assert_eq!(code(&o), 121, "{cmd}");
        let e = stderr(&o);
        assert!(e.contains("3 errors in spec"), "{e}");
        assert!(
            e.contains("bad.yaml:5:3: sandbox.vcpu: unknown field `vcpu`"),
            "{e}"
        );
        assert!(e.contains("did you mean `vcpus`?"), "{e}");
        assert!(
            e.contains("bad.yaml:6:14: sandbox.memory_mb: expected an integer"),
            "{e}"
        );
        assert!(e.contains("no step is named `biuld`"), "{e}");
        assert!(e.contains("did you mean `build`?"), "{e}");
    }
}

#[test]
fn valid_spec_validates() {
    let h = Home::new();
    let f = h.spec("ok.yaml", HELLO);
    let o = h.voidbox(&["validate", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok (workflow `t`, 1 step)"));
}

#[test]
fn command_outside_the_allowlist() {
    let h = Home::new();
    let f = h.spec(
        "allow.yaml",
        "api_version: v1\nkind: workflow\nname: t\nsandbox:\n  allow_commands: [/bin/echo]\nworkflow:\n  steps:\n    - {name: a, run: {program: curl, args: [x]}}\n",
    );
    let o = h.voidbox(&["run", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 121);
    let e = stderr(&o);
    assert!(
        e.contains("`curl` is not in `sandbox.allow_commands`"),
        "{e}"
    );
    assert!(e.contains("add its absolute guest path"), "{e}");

    // exec checks its command against the spec's allowlist before booting.
    let s = h.spec(
        "sandbox.yaml",
        &format!(
            "api_version: v1\nkind: sandbox\nname: s\nsandbox:\n{}  allow_commands: [/bin/echo]\n",
            h.fake_boot_files()
        ),
    );
    let o = h.voidbox(&[
        "exec",
        "--file",
        s.to_str().unwrap(),
        "--",
        "cat",
        "/etc/passwd",
    ]);
    assert_eq!(code(&o), 126, "{}", stderr(&o));
    assert!(stderr(&o).contains("`cat` is not in sandbox.allow_commands"));
}

#[test]
fn no_guest_image_says_what_to_run() {
    let h = Home::new();
    let f = h.spec("hello.yaml", HELLO);
    let o = h.voidbox(&["run", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 122, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("no default guest image"), "{e}");
    assert!(e.contains("run `voidbox guest build`"), "{e}");
}

#[test]
fn missing_kernel_path_is_named() {
    let h = Home::new();
    let f = h.spec(
        "k.yaml",
        "api_version: v1\nkind: workflow\nname: t\nsandbox:\n  kernel: nope/vmlinux\n  initramfs: nope/initrd\nworkflow:\n  steps: [{name: a, shell: 'true'}]\n",
    );
    let o = h.voidbox(&["run", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 122);
    let e = stderr(&o);
    assert!(e.contains("sandbox.kernel"), "{e}");
    assert!(e.contains("nope/vmlinux"), "{e}");
}

#[test]
fn unknown_image() {
    let h = Home::new();
    let f = h.spec(
        "img.yaml",
        &format!(
            "api_version: v1\nkind: workflow\nname: t\nsandbox:\n{}  image: oci:missing-layout:v1\nworkflow:\n  steps: [{{name: a, shell: 'true'}}]\n",
            h.fake_boot_files()
        ),
    );
    let o = h.voidbox(&["run", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 122, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("sandbox.image: cannot get image `oci:"), "{e}");
    assert!(e.contains("missing-layout"), "{e}");
    assert!(e.contains("help:"), "{e}");
}

#[test]
fn registry_that_is_down() {
    let h = Home::new();
    // Nothing listens on the discard port of the loopback address.
    let f = h.spec(
        "reg.yaml",
        &format!(
            "api_version: v1\nkind: workflow\nname: t\nsandbox:\n{}  image: 127.0.0.1:9/voidbox/nothing:1\nworkflow:\n  steps: [{{name: a, shell: 'true'}}]\n",
            h.fake_boot_files()
        ),
    );
    let o = h.voidbox(&["run", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 122, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cannot get image `127.0.0.1:9/voidbox/nothing:1`"),
        "{e}"
    );
    assert!(e.contains("registry is reachable"), "{e}");
    // --offline never touches the network and says how to get the image.
    let o = h.voidbox(&["run", "--offline", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 122);
    assert!(stderr(&o).contains("voidbox image pull"), "{}", stderr(&o));
}

#[test]
fn no_nested_on_a_host_without_hardware_kvm() {
    if voidbox::lane::detect_host_kvm() == voidbox::lane::HostKvm::Hardware {
        eprintln!("this host has hardware KVM: --no-nested runs locally, nothing to check");
        return;
    }
    let h = Home::new();
    let f = h.spec(
        "n.yaml",
        &format!(
            "api_version: v1\nkind: workflow\nname: t\nsandbox:\n{}workflow:\n  steps: [{{name: a, shell: 'true'}}]\n",
            h.fake_boot_files()
        ),
    );
    let o = h.voidbox(&["run", "--no-nested", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 123, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--no-nested turned the nested lane off"), "{e}");
    assert!(e.contains("hardware KVM"), "{e}");
    assert!(e.contains("PVM-enabled"), "{e}");
    assert!(e.contains("untested"), "{e}");
}

#[test]
fn sandbox_kind_is_not_runnable() {
    let h = Home::new();
    let f = h.spec("s.yaml", "api_version: v1\nkind: sandbox\nname: s\n");
    let o = h.voidbox(&["run", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("voidbox shell --file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn json_errors_are_events_too() {
    let h = Home::new();
    let f = h.spec("hello.yaml", HELLO);
    let o = h.voidbox(&["run", "--json", "--file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 122);
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["event"], "error");
    assert_eq!(v["code"], 122);
}

#[test]
fn schema_and_version() {
    let h = Home::new();
    let o = h.voidbox(&["schema"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["title"], "Spec");
    let o = h.voidbox(&["version"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("voidbox "));
    let o = h.voidbox(&["run"]);
    assert_eq!(code(&o), 2, "usage errors exit 2");
}

#[test]
fn image_pull_from_a_registry_that_is_down() {
    let h = Home::new();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = format!("127.0.0.1:{port}/voidbox/nothing:1");
    let o = h.voidbox(&["image", "pull", &reference]);
    assert_eq!(code(&o), 122, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("cannot reach the registry at 127.0.0.1:{port}")),
        "{e}"
    );
    assert!(e.to_lowercase().contains("connection refused"), "{e}");
    assert!(e.contains("--offline"), "{e}");
    assert!(!e.contains("authentication"), "{e}");
}
