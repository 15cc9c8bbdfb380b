//! File transfers against an in-process service, as root: `get` must not
//! follow links the workload planted (audit A4).

mod common;

use common::connect_in_process;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use voidbox_guest_agent::protocol::auth::Secret;
use voidbox_guest_agent::protocol::ErrorCode;
use voidbox_guest_agent::BootData;

fn tar_names(data: &[u8]) -> Vec<String> {
    tar::Archive::new(data)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn get_follows_no_planted_link() {
    let secret = Secret::generate();
    let data = BootData::new(&secret);
    let workload = data.user.uid;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    chown(&work, workload);
    // A root-only file, as /etc/shadow or a secret put for a privileged step.
    let secret_file = tmp.path().join("root-only");
    std::fs::write(&secret_file, b"root secret\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // What the workload plants.
    std::os::unix::fs::symlink("/etc", work.join("out-link")).unwrap();
    chown(&work.join("out-link"), workload);
    let out = work.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("result.txt"), b"ok\n").unwrap();
    chown(&out.join("result.txt"), workload);
    std::fs::hard_link(&secret_file, out.join("stolen")).unwrap();
    chown(&out, workload);

    let mut c = connect_in_process(&data, &secret);
    let show = |p: &Path| p.display().to_string();

    // The output root is a symlink to /etc.
    let (code, msg) = c.get(1, &show(&work.join("out-link"))).unwrap_err();
    assert_eq!(code, ErrorCode::PathDenied, "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
    // ... or goes through one.
    let (code, msg) = c.get(2, &show(&work.join("out-link/passwd"))).unwrap_err();
    assert_eq!(code, ErrorCode::PathDenied, "{msg}");

    // A hard link to a root-owned 0600 file, asked for directly.
    let (code, msg) = c.get(3, &show(&out.join("stolen"))).unwrap_err();
    assert_eq!(code, ErrorCode::PathDenied, "{msg}");
    assert!(msg.contains("hard link"), "{msg}");

    // ... or inside an output directory: skipped, the rest still comes.
    let tar = c.get(4, &show(&out)).unwrap();
    assert_eq!(tar_names(&tar), vec!["result.txt".to_string()]);
    assert!(!tar.windows(11).any(|w| w == b"root secret"));

    // A plain file the workload wrote is still fine.
    assert_eq!(c.get(5, &show(&out.join("result.txt"))).unwrap(), b"ok\n");
}
