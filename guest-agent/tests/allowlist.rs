//! Under a command allowlist, whoever sends requests cannot get around it
//! (audit A2): no code-injecting environment, no put over an allowed
//! program, no allowed program the workload can write. In-process service,
//! as root; every case is refused before anything starts.

mod common;

use common::{argv, connect_in_process};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use voidbox_guest_agent::protocol::auth::Secret;
use voidbox_guest_agent::protocol::{ErrorCode, FileKind, Message, PutRequest};
use voidbox_guest_agent::BootData;

fn refused(m: Message) -> (ErrorCode, String) {
    match m {
        Message::Error(e) => (e.code, e.message),
        m => panic!("expected a refusal, got {m:?}"),
    }
}

/// A root-owned allowed tool in a root-owned directory, and a tool owned by
/// the workload; both allowed.
fn setup(tmp: &Path) -> (String, String, BootData, Secret) {
    let bin = std::fs::canonicalize(tmp).unwrap().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = bin.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = std::fs::canonicalize(tmp).unwrap().join("work");
    std::fs::create_dir(&work).unwrap();
    let script = work.join("x.sh");
    std::fs::write(&script, b"#!/bin/sh\necho x\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = Secret::generate();
    let mut data = BootData::new(&secret);
    std::os::unix::fs::chown(&script, Some(data.user.uid), Some(data.user.gid)).unwrap();
    let (tool, script) = (tool.display().to_string(), script.display().to_string());
    data.allow_commands = Some(vec![tool.clone(), script.clone()]);
    (tool, script, data, secret)
}

#[test]
fn env_that_injects_code_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (tool, _, data, secret) = setup(tmp.path());
    let mut c = connect_in_process(&data, &secret);
    for (i, var) in ["LD_PRELOAD", "BASH_ENV", "GIT_SSH_COMMAND", "PYTHONSTARTUP"]
        .into_iter()
        .enumerate()
    {
        let mut req = argv(&[&tool]);
        req.env.insert("LANG".into(), "C".into());
        req.env.insert(var.into(), "/tmp/evil".into());
        let (code, msg) = refused(c.request(i as u32 + 1, &Message::Exec(req)));
        assert_eq!(code, ErrorCode::CommandDenied, "{msg}");
        assert!(msg.contains(var), "{msg}");
    }
}

#[test]
fn put_cannot_replace_an_allowed_program() {
    let tmp = tempfile::tempdir().unwrap();
    let (tool, _, data, secret) = setup(tmp.path());
    let mut c = connect_in_process(&data, &secret);
    let bin = Path::new(&tool).parent().unwrap().display().to_string();
    for (i, (path, kind)) in [(tool.as_str(), FileKind::File), (&bin, FileKind::Dir)]
        .into_iter()
        .enumerate()
    {
        let put = PutRequest {
            path: path.to_string(),
            kind,
            mode: None,
            owner: None,
        };
        let (code, msg) = refused(c.request(i as u32 + 1, &Message::Put(put)));
        assert_eq!(code, ErrorCode::PathDenied, "{msg}");
        assert!(msg.contains("allowed command"), "{msg}");
    }
    assert_eq!(
        std::fs::read(&tool).unwrap(),
        b"#!/bin/sh\necho tool\n",
        "the allowed program is unchanged"
    );
}

#[test]
fn allowed_program_writable_by_the_workload_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, script, data, secret) = setup(tmp.path());
    let mut c = connect_in_process(&data, &secret);
    let (code, msg) = refused(c.request(1, &Message::Exec(argv(&[&script]))));
    assert_eq!(code, ErrorCode::CommandDenied, "{msg}");
    assert!(msg.contains("writable by the workload"), "{msg}");
}
