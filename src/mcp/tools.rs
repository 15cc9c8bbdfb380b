//! The six MCP tools, with descriptions written for a model (their argument
//! and answer types are in [`super::schema`]). Each call runs on a blocking
//! thread against a [`Backend`]; every failure, from bad arguments to a dead
//! sandbox, is a tool error (`isError`) whose message says what to do next.

use std::io::Write;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, Json, ServerHandler};

use super::backend::Backend;
use super::schema::{
    CreateArgs, Created, DestroyArgs, Destroyed, ExecArgs, Executed, FileRead, Listed,
    ReadFileArgs, SandboxList, WriteFileArgs, Written,
};
use super::text::{explain, truncate_middle, MAX_STREAM_BYTES};
use crate::service::api::{ExecBody, ExecResult, SandboxInfo};
use crate::service::{Result, ServiceError};

/// An exec's time limit when the model gives none: long enough for builds,
/// short enough that a command waiting forever does not hang the agent.
pub const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 300;

/// Largest file `sandbox_read_file` answers with.
pub const MAX_READ_BYTES: usize = 1 << 20;

/// Mode of files written by `sandbox_write_file`.
const WRITE_MODE: u32 = 0o644;

const INSTRUCTIONS: &str = "voidbox runs commands in disposable Linux microVMs. Call \
sandbox_create to get a sandbox_id, then sandbox_exec to run shell commands in it, \
sandbox_write_file / sandbox_read_file to move text files, and sandbox_destroy when done. \
Commands run as an unprivileged user; /tmp is writable. A sandbox is isolated from the \
host: it sees no host files and has no network, so bring what it needs in an image or \
write it with sandbox_write_file. Sandboxes end with their lifetime, after 10 minutes unused, \
or when this MCP session ends.";

/// The MCP server: the tools over one backend.
#[derive(Clone)]
pub struct SandboxTools {
    backend: Arc<dyn Backend>,
    tool_router: ToolRouter<Self>,
}

impl SandboxTools {
    /// The tools over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        SandboxTools {
            backend,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs a backend call on a blocking thread; failures become the model's message.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, String> {
        let backend = self.backend.clone();
        let standalone = backend.standalone();
        let joined = tokio::task::spawn_blocking(move || f(&*backend)).await;
        let r = joined.unwrap_or_else(|e| {
            tracing::error!("a tool call failed inside the server: {e}");
            Err(ServiceError::Internal(format!(
                "the server failed while handling this call ({e}); try again"
            )))
        });
        r.map_err(|e| explain(&e, standalone))
    }
}

#[tool_router]
impl SandboxTools {
    #[tool(
        description = "Create a new isolated Linux sandbox (a microVM) and return its sandbox_id. \
It boots in seconds. Commands run as an unprivileged user; /tmp is writable; there is \
no network inside. Give `image` (an OCI registry reference such as \"python:3.12-slim\") \
when you need a language runtime or packages; without it the sandbox has only a busybox \
shell. Destroy sandboxes you no longer need: the number at once is limited."
    )]
    async fn sandbox_create(
        &self,
        Parameters(args): Parameters<CreateArgs>,
    ) -> Result<Json<Created>, String> {
        let body = create_body(&args);
        let info = self.call(move |b| b.create(&body)).await?;
        tracing::info!(id = %info.id, "sandbox created for the MCP client");
        Ok(Json(Created {
            sandbox_id: info.id,
            image: info.image,
            memory_mb: info.memory_mb,
            vcpus: info.vcpus,
            expires_at: info.expires_at,
            idle_timeout_secs: info.idle_timeout_secs,
        }))
    }

    #[tool(
        description = "Run a shell command in a sandbox and wait for it to finish. Answers \
exit_code, stdout and stderr (each cut to its first and last 16 KiB around a \
\"[... N bytes omitted ...]\" marker when longer: redirect big output to a file and inspect it \
with head, tail or grep). The command has no stdin and is killed after timeout_secs \
(default 300; then timed_out is true). Each call is a fresh shell: cd and variables do not \
carry over, so use cwd or `cd dir && ...`. A nonzero exit_code is a normal answer, not a \
tool error."
    )]
    async fn sandbox_exec(
        &self,
        Parameters(args): Parameters<ExecArgs>,
    ) -> Result<Json<Executed>, String> {
        check_id(&args.sandbox_id)?;
        let body = exec_body(args.command, args.timeout_secs, args.cwd);
        let id = args.sandbox_id;
        let r = self.call(move |b| b.exec(&id, body)).await?;
        Ok(Json(executed(r)))
    }

    #[tool(
        description = "Write a UTF-8 text file in a sandbox, replacing any file at that path. \
The path must be absolute and under a writable directory such as /tmp; missing parent \
directories are created. For binary data, write base64 text and decode it with sandbox_exec \
(`base64 -d`)."
    )]
    async fn sandbox_write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
    ) -> Result<Json<Written>, String> {
        check_id(&args.sandbox_id)?;
        check_path(&args.path)?;
        let bytes = args.content.len() as u64;
        let (id, path, content) = (args.sandbox_id, args.path.clone(), args.content);
        self.call(move |b| b.write_file(&id, &path, WRITE_MODE, content.as_bytes()))
            .await?;
        Ok(Json(Written {
            path: args.path,
            bytes,
        }))
    }

    #[tool(
        description = "Read a text file from a sandbox (up to 1 MiB; invalid UTF-8 bytes are \
replaced). For larger files, or to search, use sandbox_exec with head, tail, grep or wc."
    )]
    async fn sandbox_read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
    ) -> Result<Json<FileRead>, String> {
        check_id(&args.sandbox_id)?;
        check_path(&args.path)?;
        let (id, path) = (args.sandbox_id, args.path.clone());
        let bytes = self
            .call(move |b| {
                let mut out = Capped::new(MAX_READ_BYTES);
                let r = b.read_file(&id, &path, &mut out);
                read_outcome(r, out, &path)
            })
            .await?;
        Ok(Json(FileRead {
            path: args.path,
            content: String::from_utf8_lossy(&bytes).into_owned(),
            bytes: bytes.len() as u64,
        }))
    }

    #[tool(
        description = "List the sandboxes of this session with their state (running or dead) \
and when their lifetime ends.",
        annotations(read_only_hint = true)
    )]
    async fn sandbox_list(&self) -> Result<Json<SandboxList>, String> {
        let all = self.call(|b| b.list()).await?;
        Ok(Json(SandboxList {
            sandboxes: all.into_iter().map(listed).collect(),
        }))
    }

    #[tool(
        description = "Destroy a sandbox: its VM is killed and its files are gone. Do this when \
you are done with it, or when it is dead.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn sandbox_destroy(
        &self,
        Parameters(args): Parameters<DestroyArgs>,
    ) -> Result<Json<Destroyed>, String> {
        check_id(&args.sandbox_id)?;
        let id = args.sandbox_id.clone();
        self.call(move |b| b.destroy(&id)).await?;
        tracing::info!(id = %args.sandbox_id, "sandbox destroyed for the MCP client");
        Ok(Json(Destroyed {
            sandbox_id: args.sandbox_id,
        }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("voidbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// The create body of the arguments given (the service fills in the rest).
pub fn create_body(args: &CreateArgs) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if let Some(image) = &args.image {
        body.insert("image".into(), image.clone().into());
    }
    if let Some(m) = args.memory_mb {
        body.insert("memory_mb".into(), m.into());
    }
    if let Some(n) = args.vcpus {
        body.insert("vcpus".into(), n.into());
    }
    if let Some(t) = args.timeout_secs {
        body.insert("timeout_secs".into(), t.into());
    }
    serde_json::Value::Object(body)
}

/// The exec body of a shell command line.
pub fn exec_body(command: String, timeout_secs: Option<u64>, cwd: Option<String>) -> ExecBody {
    ExecBody {
        shell: Some(command),
        timeout_secs: Some(timeout_secs.unwrap_or(DEFAULT_EXEC_TIMEOUT_SECS)),
        cwd,
        ..ExecBody::default()
    }
}

/// An exec's result as the model sees it: output cut to head and tail.
pub fn executed(r: ExecResult) -> Executed {
    let (stdout, out_cut) = truncate_middle(&r.stdout, MAX_STREAM_BYTES);
    let (stderr, err_cut) = truncate_middle(&r.stderr, MAX_STREAM_BYTES);
    Executed {
        exit_code: r.exit_code,
        stdout,
        stderr,
        signal: r.signal,
        timed_out: r.timed_out,
        truncated: r.truncated || out_cut || err_cut,
        duration_ms: r.duration_ms,
    }
}

fn listed(i: SandboxInfo) -> Listed {
    Listed {
        sandbox_id: i.id,
        state: i.state,
        image: i.image,
        memory_mb: i.memory_mb,
        vcpus: i.vcpus,
        created_at: i.created_at,
        expires_at: i.expires_at,
        error: i.error,
    }
}

fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.trim().is_empty() {
        return Err(
            "sandbox_id is empty; give the id that sandbox_create answered (sandbox_list shows them)"
                .into(),
        );
    }
    Ok(())
}

fn check_path(path: &str) -> std::result::Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "path `{path}` is relative; give an absolute guest path such as /tmp/{path}"
        ));
    }
    Ok(())
}

/// Keeps up to `limit` bytes, then refuses more (which stops the transfer).
struct Capped {
    data: Vec<u8>,
    limit: usize,
    over: bool,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Capped {
            data: Vec::new(),
            limit,
            over: false,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.data.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("the file passed the read limit"));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes read, or the error: a file past the limit is refused with the
/// way to read it in parts.
fn read_outcome(r: Result<()>, out: Capped, path: &str) -> Result<Vec<u8>> {
    if out.over {
        return Err(ServiceError::TooLarge(format!(
            "{path} is larger than {} KiB, more than sandbox_read_file answers; read parts of it with sandbox_exec (`head -c 65536 {path}`, `tail -n 200 {path}`, `grep -n PATTERN {path}`, `wc -c {path}`)",
            out.limit / 1024
        )));
    }
    r.map(|()| out.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_has_only_the_arguments_given() {
        assert_eq!(create_body(&CreateArgs::default()), serde_json::json!({}));
        let args = CreateArgs {
            image: Some("alpine:3.20".into()),
            memory_mb: Some(256),
            vcpus: None,
            timeout_secs: Some(60),
        };
        assert_eq!(
            create_body(&args),
            serde_json::json!({"image": "alpine:3.20", "memory_mb": 256, "timeout_secs": 60})
        );
    }

    #[test]
    fn create_body_passes_the_service_checks() {
        use crate::service::create::parse;
        use crate::service::Lifetimes;
        let args = CreateArgs {
            memory_mb: Some(256),
            vcpus: Some(2),
            timeout_secs: Some(60),
            ..CreateArgs::default()
        };
        let body = create_body(&args).to_string();
        let r = parse(body.as_bytes(), "sb-1", Lifetimes::default()).unwrap();
        assert_eq!(r.spec.sandbox.memory_mb, 256);
        assert_eq!(r.spec.sandbox.vcpus, 2);
        assert_eq!(r.spec.sandbox.timeout_secs, 60);
        // Out of range: the service names the field.
        let body = create_body(&CreateArgs {
            memory_mb: Some(1),
            ..CreateArgs::default()
        })
        .to_string();
        let e = parse(body.as_bytes(), "sb-1", Lifetimes::default()).unwrap_err();
        assert!(explain(&e, true).contains("memory_mb"), "{e}");
    }

    #[test]
    fn exec_runs_a_shell_line_with_a_default_limit() {
        let b = exec_body("echo hi | wc -c".into(), None, None);
        assert_eq!(b.shell.as_deref(), Some("echo hi | wc -c"));
        assert_eq!(b.argv, None);
        assert_eq!(b.timeout_secs, Some(DEFAULT_EXEC_TIMEOUT_SECS));
        let b = exec_body("ls".into(), Some(2), Some("/tmp".into()));
        assert_eq!((b.timeout_secs, b.cwd.as_deref()), (Some(2), Some("/tmp")));
        // The service's own checks take it.
        assert!(crate::service::exec::prepare(b, false).is_ok());
        let bad = exec_body("ls".into(), Some(0), Some("tmp".into()));
        assert!(crate::service::exec::prepare(bad, false).is_err());
    }

    fn result(stdout: &str) -> ExecResult {
        ExecResult {
            exit_code: Some(3),
            signal: None,
            stdout: stdout.into(),
            stderr: "err\n".into(),
            duration_ms: 7,
            truncated: false,
            timed_out: false,
            encoding: Default::default(),
        }
    }

    #[test]
    fn exec_answers_keep_short_output_and_cut_long_output() {
        let e = executed(result("hello\n"));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"exit_code": 3, "stdout": "hello\n", "stderr": "err\n", "duration_ms": 7})
        );
        let e = executed(result(&"x".repeat(100_000)));
        assert!(e.truncated);
        assert!(e.stdout.len() < MAX_STREAM_BYTES + 64);
        let omitted = 100_000 - MAX_STREAM_BYTES;
        assert!(e
            .stdout
            .contains(&format!("\n[... {omitted} bytes omitted ...]\n")));
        assert_eq!(e.stderr, "err\n");
    }

    #[test]
    fn exec_answers_say_timeouts_and_signals() {
        let mut r = result("");
        r.exit_code = None;
        r.signal = Some(9);
        r.timed_out = true;
        let v = serde_json::to_value(executed(r)).unwrap();
        assert_eq!(v["exit_code"], serde_json::Value::Null);
        assert_eq!(v["signal"], 9);
        assert_eq!(v["timed_out"], true);
    }

    #[test]
    fn arguments_are_checked_before_any_backend_call() {
        assert!(check_id("").unwrap_err().contains("sandbox_create"));
        assert!(check_id("  ").is_err());
        assert!(check_id("sb-1").is_ok());
        let m = check_path("notes.txt").unwrap_err();
        assert!(m.contains("/tmp/notes.txt"), "{m}");
        assert!(check_path("/tmp/notes.txt").is_ok());
    }

    #[test]
    fn unknown_and_missing_arguments_are_refused_by_name() {
        let e = serde_json::from_value::<ExecArgs>(
            serde_json::json!({"sandbox_id": "sb-1", "command": "ls", "timeout": 5}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        let e = serde_json::from_value::<ExecArgs>(serde_json::json!({"sandbox_id": "sb-1"}))
            .unwrap_err();
        assert!(e.to_string().contains("command"), "{e}");
    }

    #[test]
    fn big_files_are_refused_with_the_way_to_read_them() {
        let mut out = Capped::new(10);
        out.write_all(b"12345").unwrap();
        assert!(out.write_all(b"678901").is_err());
        let transfer_error = Err(ServiceError::Internal("writing: refused".into()));
        let e = read_outcome(transfer_error, out, "/tmp/big").unwrap_err();
        assert_eq!(e.code(), "too_large");
        let m = e.to_string();
        assert!(m.contains("sandbox_exec") && m.contains("head -c"), "{m}");

        let mut out = Capped::new(10);
        out.write_all(b"0123456789").unwrap();
        assert_eq!(read_outcome(Ok(()), out, "/tmp/ok").unwrap(), b"0123456789");
        // Other failures pass through.
        let e = read_outcome(
            Err(ServiceError::NotFound("/tmp/x: no such file".into())),
            Capped::new(10),
            "/tmp/x",
        )
        .unwrap_err();
        assert_eq!(e.code(), "not_found");
    }

    #[test]
    fn every_tool_has_a_description_and_an_object_schema() {
        let tools = SandboxTools::tool_router().list_all();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "sandbox_create",
                "sandbox_destroy",
                "sandbox_exec",
                "sandbox_list",
                "sandbox_read_file",
                "sandbox_write_file"
            ]
        );
        for t in &tools {
            assert!(
                t.description.as_deref().is_some_and(|d| d.len() > 40),
                "{}",
                t.name
            );
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert!(t.output_schema.is_some(), "{}", t.name);
        }
        let exec = tools.iter().find(|t| t.name == "sandbox_exec").unwrap();
        let required = exec.input_schema["required"].as_array().unwrap();
        assert!(required.contains(&"sandbox_id".into()) && required.contains(&"command".into()));
        assert!(exec.input_schema["properties"]["command"]["description"]
            .as_str()
            .unwrap()
            .contains("/bin/sh -c"));
    }
}
