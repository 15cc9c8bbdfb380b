//! `voidbox sandbox ...`: live sandboxes of a running daemon (`voidbox
//! serve`), like `docker` over `dockerd`. No daemon reachable: exit 125 with
//! how to start one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::daemon::client::DaemonClient;
use crate::runtime::exit_code;
use crate::service::api::{Encoding, ExecBody, ExecEvent};

/// Largest stdin `sandbox exec -i` sends (it travels in one JSON body).
const MAX_EXEC_STDIN: usize = 768 << 10;

/// `voidbox sandbox`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create(CreateArgs),
    /// List sandboxes.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a sandbox, output streamed, exit code passed through.
    Exec(ExecArgs),
    /// Copy files in or out: `voidbox sandbox cp ./dir ID:/work`, `cp ID:/work/out.txt .`.
    Cp {
        /// `HOST_PATH` or `ID:/GUEST_PATH`.
        src: String,
        /// `HOST_PATH` or `ID:/GUEST_PATH`.
        dst: String,
    },
    /// Destroy sandboxes.
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `voidbox sandbox create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A spec whose `sandbox` mapping to use (no inputs/outputs: copy with `sandbox cp`).
    #[arg(short, long, value_name = "SPEC")]
    pub file: Option<PathBuf>,
    /// Base image.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory_mb: Option<u32>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Lifetime in seconds (default 3600).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Idle limit in seconds (default 600).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
}

/// `voidbox sandbox exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Send this process's stdin to the command (read to its end first, at most 768 KiB).
    #[arg(short, long)]
    pub interactive: bool,
    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Time limit in seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The sandbox id.
    pub id: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs a `voidbox sandbox` command.
pub fn run(cmd: SandboxCommand) -> Result<u8> {
    let client = DaemonClient::from_env()?;
    match cmd {
        SandboxCommand::Create(a) => create(&client, a),
        SandboxCommand::Ls { json } => ls(&client, json),
        SandboxCommand::Exec(a) => exec(&client, a),
        SandboxCommand::Cp { src, dst } => cp(&client, &src, &dst),
        SandboxCommand::Rm { ids } => {
            for id in ids {
                client.destroy(&id)?;
                println!("{id}");
            }
            Ok(0)
        }
    }
}

/// The create body of the arguments.
fn create_body(a: &CreateArgs) -> Result<Value> {
    let mut body = match &a.file {
        Some(f) => {
            let spec = voidbox_spec::load_file(f)?;
            if !spec.sandbox.inputs.is_empty() || !spec.sandbox.outputs.is_empty() {
                bail!(
                    "{}: a daemon's sandbox takes no host paths, so sandbox.inputs and sandbox.outputs cannot be used; copy files with `voidbox sandbox cp`",
                    f.display()
                );
            }
            if spec.sandbox.kernel.is_some() || spec.sandbox.initramfs.is_some() {
                bail!("{}: sandbox.kernel and sandbox.initramfs are host paths, which a daemon does not take; use sandbox.guest_image", f.display());
            }
            let mut v = serde_json::to_value(&spec.sandbox)?;
            let m = v.as_object_mut().expect("a mapping");
            m.remove("inputs");
            m.remove("outputs");
            if !spec.skills.is_empty() {
                m.insert("skills".into(), serde_json::to_value(&spec.skills)?);
            }
            v
        }
        None => json!({}),
    };
    let m = body.as_object_mut().expect("a mapping");
    if let Some(i) = &a.image {
        m.insert("image".into(), json!(i));
    }
    if let Some(v) = a.memory_mb {
        m.insert("memory_mb".into(), json!(v));
    }
    if let Some(v) = a.vcpus {
        m.insert("vcpus".into(), json!(v));
    }
    if let Some(v) = a.timeout {
        m.insert("timeout_secs".into(), json!(v));
    }
    if let Some(v) = a.idle_timeout {
        m.insert("idle_timeout_secs".into(), json!(v));
    }
    Ok(body)
}

fn create(client: &DaemonClient, a: CreateArgs) -> Result<u8> {
    let info = client.create(&create_body(&a)?)?;
    println!("{}", info.id);
    Ok(0)
}

fn ls(client: &DaemonClient, as_json: bool) -> Result<u8> {
    let all = client.list()?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<8} {:>7} {:>5}  {:<20}  IMAGE",
        "ID", "STATE", "MEMORY", "VCPUS", "EXPIRES"
    );
    for s in all {
        println!(
            "{:<20} {:<8} {:>7} {:>5}  {:<20}  {}",
            s.id,
            s.state,
            format!("{}M", s.memory_mb),
            s.vcpus,
            s.expires_at,
            s.image.as_deref().unwrap_or("-")
        );
    }
    Ok(0)
}

fn exec(client: &DaemonClient, a: ExecArgs) -> Result<u8> {
    let mut env = std::collections::BTreeMap::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env `{kv}` is not KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let stdin = if a.interactive {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_EXEC_STDIN as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        if buf.len() > MAX_EXEC_STDIN {
            bail!("stdin is larger than {MAX_EXEC_STDIN} bytes; copy the data in with `voidbox sandbox cp` and redirect from the file");
        }
        Some(Encoding::Base64.encode(&buf))
    } else {
        None
    };
    let body = ExecBody {
        argv: Some(a.command),
        env,
        cwd: a.cwd,
        timeout_secs: a.timeout,
        stdin,
        encoding: Encoding::Base64,
        ..Default::default()
    };
    let mut code = None;
    client.exec_stream(&a.id, &body, |ev| match ev {
        ExecEvent::Stdout { data } => {
            let bytes = Encoding::Base64.decode(&data, "stdout").unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }
        ExecEvent::Stderr { data } => {
            let bytes = Encoding::Base64.decode(&data, "stderr").unwrap_or_default();
            let _ = std::io::stderr().write_all(&bytes);
        }
        ExecEvent::Exit {
            exit_code,
            signal,
            timed_out,
            ..
        } => {
            code = Some(if timed_out {
                exit_code::TIMEOUT
            } else {
                match (exit_code, signal) {
                    (Some(c), _) => u8::try_from(c).unwrap_or(1),
                    (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
                    _ => 1,
                }
            });
        }
        ExecEvent::Started { .. } | ExecEvent::Error { .. } => {}
    })?;
    code.context("the exec stream ended without the command's exit")
}

/// `ID:/path` → (id, path).
fn guest_side(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.starts_with("sb-") && path.starts_with('/')).then_some((id, path))
}

fn cp(client: &DaemonClient, src: &str, dst: &str) -> Result<u8> {
    match (guest_side(src), guest_side(dst)) {
        (None, Some((id, path))) => copy_in(client, Path::new(src), id, path),
        (Some((id, path)), None) => copy_out(client, id, path, Path::new(dst)),
        _ => bail!("give one host path and one `ID:/guest/path`, e.g. `voidbox sandbox cp ./src sb-0123456789abcdef:/work/src`"),
    }
}

fn copy_in(client: &DaemonClient, src: &Path, id: &str, path: &str) -> Result<u8> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if meta.is_dir() {
        // The directory streams as a tar built on a thread, never whole in memory.
        let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
        let dir = src.to_path_buf();
        let builder = std::thread::spawn(move || -> std::io::Result<()> {
            let mut b = tar::Builder::new(writer);
            b.follow_symlinks(false);
            b.append_dir_all(".", &dir)?;
            b.finish()
        });
        let r = client.write_file(id, path, 0o755, true, Box::new(reader));
        let built = builder
            .join()
            .map_err(|_| anyhow::anyhow!("the tar thread panicked"))?;
        r?;
        built.with_context(|| format!("reading {}", src.display()))?;
    } else {
        use std::os::unix::fs::PermissionsExt;
        let f =
            std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        client.write_file(
            id,
            path,
            meta.permissions().mode() & 0o777,
            false,
            Box::new(f),
        )?;
    }
    Ok(0)
}

fn copy_out(client: &DaemonClient, id: &str, path: &str, dst: &Path) -> Result<u8> {
    // Into an existing directory: keep the guest name, like `cp`.
    let dst = if dst.is_dir() {
        let name = Path::new(path)
            .file_name()
            .context("the guest path has no file name")?;
        dst.join(name)
    } else {
        dst.to_path_buf()
    };
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Downloaded next to the destination first: nothing half-written is left.
    let mut tmp = tempfile::NamedTempFile::new_in(&parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    let dir = client.read_file(id, path, tmp.as_file_mut())?;
    if dir {
        std::fs::create_dir_all(&dst)?;
        let f = tmp.reopen()?;
        let mut a = tar::Archive::new(std::io::BufReader::new(f));
        a.set_preserve_permissions(false);
        // tar's unpack refuses `..` and paths escaping `dst` through links.
        a.unpack(&dst)
            .with_context(|| format!("unpacking into {}", dst.display()))?;
    } else {
        tmp.persist(&dst)
            .with_context(|| format!("cannot write {}", dst.display()))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_sides_are_told_from_host_paths() {
        assert_eq!(guest_side("sb-1:/tmp/x"), Some(("sb-1", "/tmp/x")));
        assert_eq!(guest_side("./a:b"), None);
        assert_eq!(guest_side("sb-1:rel"), None);
        assert_eq!(guest_side("/abs/path"), None);
    }

    #[test]
    fn create_bodies_come_from_flags_over_a_spec() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.yaml");
        std::fs::write(
            &f,
            "api_version: v1\nkind: sandbox\nname: s\nsandbox: {memory_mb: 300, env: {A: b}}\n",
        )
        .unwrap();
        let a = CreateArgs {
            file: Some(f.clone()),
            image: Some("alpine".into()),
            memory_mb: None,
            vcpus: Some(2),
            timeout: Some(60),
            idle_timeout: None,
        };
        let b = create_body(&a).unwrap();
        assert_eq!(b["memory_mb"], 300);
        assert_eq!(b["vcpus"], 2);
        assert_eq!(b["image"], "alpine");
        assert_eq!(b["timeout_secs"], 60);
        assert_eq!(b["env"]["A"], "b");
        assert!(b.get("inputs").is_none());
        std::fs::write(&f, "api_version: v1\nkind: sandbox\nname: s\nsandbox: {inputs: [{host: /etc, guest: /x}]}\n").unwrap();
        assert!(create_body(&a)
            .unwrap_err()
            .to_string()
            .contains("sandbox cp"));
    }
}
