//! The command line: clap definitions and handlers for each subcommand.
mod guest;
pub mod image;
mod printer;
mod run;
mod sandbox;
mod spec;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::runtime::{exit_code, Error as RuntimeError};

/// Run untrusted workloads in fresh KVM microVMs built from OCI images.
///
/// Exit codes: a failing step's own code, or one of voidbox's: 2 usage,
/// 121 invalid spec, 122 image/guest image not resolved, 123 VM did not boot,
/// 124 time limit, 125 other host error, 126 command refused, 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "voidbox", version, propagate_version = true)]
pub struct Cli {
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a spec file (workflow or agent) in a fresh microVM.
    Run(run::RunArgs),
    /// Check a spec file and report every problem in it.
    Validate(spec::FileArg),
    /// Show the resolved plan of a spec: image digests, kernel, disks, limits.
    Inspect(spec::InspectArgs),
    /// Run one command in a throwaway sandbox, stdio attached, exit code passed through.
    Exec(run::ExecArgs),
    /// Open an interactive shell in a throwaway sandbox.
    Shell(run::ShellArgs),
    /// Keep sandboxes alive and serve them over an HTTP API (docs/api.md).
    Serve(crate::daemon::ServeArgs),
    /// Live sandboxes of a running daemon: create, ls, exec, cp, rm.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Manage the local image store.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Build or publish the guest image (kernel + initramfs).
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// Serve sandboxes to an MCP client over stdio.
    Mcp(crate::mcp::McpArgs),
    /// Print the JSON Schema of spec files (for editors).
    Schema,
    /// Print version information.
    Version,
    /// The nested lane's L2 side (internal: run by the lane inside L2).
    #[command(hide = true, name = "lane-l2")]
    LaneL2 {
        /// Arguments for the L2 side.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run voidbox-vmm in its jail (internal: started by the runtime).
    #[command(hide = true, name = "vmm-jail")]
    VmmJail(crate::jail::JailArgs),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to a file stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The exit code for an error that reached `main`.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<RuntimeError>() {
            return e.exit_code();
        }
        if cause.downcast_ref::<voidbox_spec::SpecError>().is_some() {
            return exit_code::SPEC;
        }
        if cause.downcast_ref::<voidbox_oci::OciError>().is_some() {
            return exit_code::IMAGE;
        }
    }
    exit_code::HOST
}

/// Parses the command line, runs it, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("voidbox: error: {}", printer::format_error(&err));
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// Prints to stdout; a closed pipe (`voidbox schema | head`) is not an error.
fn print_ignoring_broken_pipe(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Run(args) => run::run(args),
        Command::Validate(args) => spec::validate(args),
        Command::Inspect(args) => spec::inspect(args),
        Command::Exec(args) => run::exec(args),
        Command::Shell(args) => run::shell(args),
        Command::Serve(args) => crate::daemon::main(args),
        Command::Sandbox(cmd) => sandbox::run(cmd),
        Command::Image(cmd) => image::run(cmd).map(|()| 0),
        Command::Guest(cmd) => guest::run(cmd),
        Command::Mcp(args) => crate::mcp::main(args),
        Command::Schema => {
            print_ignoring_broken_pipe(&voidbox_spec::json_schema())?;
            Ok(0)
        }
        Command::Version => {
            println!("voidbox {}", env!("CARGO_PKG_VERSION"));
            println!(
                "spec api_version v1, guest protocol {}",
                voidbox_guest_agent::PROTOCOL_VERSION
            );
            Ok(0)
        }
        Command::LaneL2 { args } => {
            let code = crate::lane::l2_main(&args);
            Ok(u8::try_from(code).unwrap_or(exit_code::HOST))
        }
        Command::VmmJail(args) => Ok(crate::jail::main(args)),
    }
}
