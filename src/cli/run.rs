//! `voidbox run`, `voidbox exec` and `voidbox shell`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use voidbox_spec::{ApiVersion, Kind, Sandbox, Spec};

use super::image::ResolveArgs;
use super::printer::{HumanSink, JsonSink};
use crate::runtime::cancel::Cancel;
use crate::runtime::launch::LaunchOptions;
use crate::runtime::session::{run_spec, RunContext};
use crate::runtime::{interactive, Event, EventSink, PullPolicy};

/// Options about where the VM runs.
#[derive(Debug, Args, Clone, Default)]
pub struct LaunchArgs {
    /// Never use the nested lane: fail (exit 123) on hosts whose KVM cannot boot stock kernels.
    #[arg(long)]
    pub no_nested: bool,
    /// Seconds allowed from launch to a ready guest agent (default 180, or VOIDBOX_BOOT_TIMEOUT).
    #[arg(long, value_name = "SECS")]
    pub boot_timeout: Option<u64>,
}

/// `voidbox run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file (YAML or JSON).
    #[arg(short, long, value_name = "SPEC")]
    pub file: PathBuf,
    /// Write one JSON event per line on stdout instead of human output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub launch: LaunchArgs,
    #[command(flatten)]
    pub resolve: ResolveArgs,
}

/// Sandbox settings of `exec` and `shell` (over the spec's, if `--file`).
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// A spec whose sandbox (image, skills, inputs, limits) to use.
    #[arg(short, long, value_name = "SPEC")]
    pub file: Option<PathBuf>,
    /// Base image (default: the guest image's busybox root).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Guest memory in MiB (default 512).
    #[arg(long, value_name = "MIB")]
    pub memory_mb: Option<u32>,
    /// Number of vCPUs (default 1).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Time limit in seconds (default 600).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub launch: LaunchArgs,
    #[command(flatten)]
    pub resolve: ResolveArgs,
}

/// `voidbox exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Send this process's stdin to the command (default: when stdin is not a terminal).
    #[arg(short, long)]
    pub interactive: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `voidbox shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Opens the store and sets up pulling, launching and Ctrl-C handling.
pub fn open_context(
    resolve: &ResolveArgs,
    policy: PullPolicy,
    launch: &LaunchArgs,
) -> Result<RunContext> {
    let cancel = Cancel::install()?;
    let mut launch_opts = LaunchOptions {
        no_nested: launch.no_nested,
        ..LaunchOptions::default()
    };
    if let Some(secs) = launch.boot_timeout {
        launch_opts.boot_timeout = Duration::from_secs(secs);
    }
    let mut pull = resolve.pull_options(policy)?;
    pull.progress = std::io::stderr().is_terminal();
    Ok(RunContext::open(pull, launch_opts, cancel)?)
}

fn to_u8(code: i32) -> u8 {
    // Exit statuses are 8 bits; keep a failure a failure.
    u8::try_from(code).unwrap_or(1)
}

/// Runs a spec file.
pub fn run(args: RunArgs) -> Result<u8> {
    let spec = voidbox_spec::load_file(&args.file)?;
    let ctx = open_context(&args.resolve, PullPolicy::IfMissing, &args.launch)?;
    let mut sink: Box<dyn EventSink> = if args.json {
        Box::new(JsonSink::new())
    } else {
        Box::new(HumanSink { progress: true })
    };
    match run_spec(&ctx, &spec, sink.as_mut()) {
        Ok(code) => Ok(to_u8(code)),
        Err(e) => {
            if args.json {
                sink.emit(Event::Error {
                    code: i32::from(e.exit_code()),
                    message: e.to_string(),
                });
            }
            Err(e.into())
        }
    }
}

fn sandbox_spec(args: &SandboxArgs) -> Result<Spec> {
    let mut spec = match &args.file {
        Some(file) => voidbox_spec::load_file(file)?,
        None => Spec {
            api_version: ApiVersion::V1,
            kind: Kind::Sandbox,
            name: "exec".into(),
            sandbox: Sandbox::default(),
            skills: Vec::new(),
            workflow: None,
            agent: None,
            llm: None,
        },
    };
    if let Some(image) = &args.image {
        spec.sandbox.image = Some(image.clone());
    }
    if let Some(m) = args.memory_mb {
        spec.sandbox.memory_mb = m;
    }
    if let Some(v) = args.vcpus {
        spec.sandbox.vcpus = v;
    }
    if let Some(t) = args.timeout {
        spec.sandbox.timeout_secs = t;
    }
    Ok(spec)
}

/// One command in a throwaway sandbox.
pub fn exec(args: ExecArgs) -> Result<u8> {
    let spec = sandbox_spec(&args.sandbox)?;
    let ctx = open_context(
        &args.sandbox.resolve,
        PullPolicy::IfMissing,
        &args.sandbox.launch,
    )?;
    let stdin = args.interactive || !std::io::stdin().is_terminal();
    let code = interactive::exec(&ctx, &spec, args.command, stdin)?;
    Ok(to_u8(code))
}

/// An interactive shell in a throwaway sandbox.
pub fn shell(args: ShellArgs) -> Result<u8> {
    let spec = sandbox_spec(&args.sandbox)?;
    let ctx = open_context(
        &args.sandbox.resolve,
        PullPolicy::IfMissing,
        &args.sandbox.launch,
    )?;
    let code = interactive::shell(&ctx, &spec)?;
    Ok(to_u8(code))
}
