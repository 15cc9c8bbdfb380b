//! One sandbox's lifecycle: create from a plan (boot, agent ready), run
//! commands and move files through its agent, stop. `voidbox run`, `exec`,
//! `shell`, the daemon and the MCP server all use this type, so every one of
//! them gets the same environment (the image's, then the sandbox's), the same
//! limits and the same deadline rules.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cancel::Cancel;
use super::error::{Error, Result};
use super::launch::LaunchOptions;
use super::plan::Plan;
use super::vm::Vm;
use crate::client::{Client, ClientError, ErrorCode, ExecHandle, ExecRequest, PtySize, UserSpec};
use crate::lane::Launcher;

/// What to run in a sandbox. Unset fields take the sandbox's defaults.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The program (looked up on the guest's `PATH`) and its arguments.
    pub argv: Vec<String>,
    /// Variables on top of the sandbox's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute guest path).
    pub cwd: Option<String>,
    /// User to run as (default: the sandbox's).
    pub user: Option<UserSpec>,
    /// Limit for this process; never past the sandbox's own end.
    pub timeout: Option<Duration>,
    /// Whether stdin will be sent (else it is /dev/null).
    pub stdin: bool,
    /// Run on a PTY of this size.
    pub pty: Option<PtySize>,
}

/// A running sandbox. Dropping it kills the VM at once; [`Sandbox::stop`]
/// powers it off politely first.
pub struct Sandbox {
    vm: Vm,
    plan: Plan,
    /// When the sandbox's life ends (`plan.timeout_secs` after the agent was ready).
    deadline: Instant,
}

impl Sandbox {
    /// Boots `plan` through `launcher` and waits for its agent. The sandbox's
    /// lifetime (`plan.timeout_secs`) counts from the agent being ready.
    pub fn create(
        plan: Plan,
        home: &Path,
        launcher: &Arc<Launcher>,
        opts: &LaunchOptions,
        cancel: &Cancel,
    ) -> Result<Sandbox> {
        let vm = Vm::start(&plan, home, launcher, opts, cancel)?;
        Ok(Sandbox {
            deadline: Instant::now() + Duration::from_secs(plan.timeout_secs),
            vm,
            plan,
        })
    }

    /// The plan it was made from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Its VM (for the workflow's input, step and output helpers).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The authenticated agent connection.
    pub fn client(&self) -> &Client {
        self.vm.client()
    }

    /// Time from launch to a ready agent.
    pub fn boot_time(&self) -> Duration {
        self.vm.boot_time
    }

    /// When the sandbox's life ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left in the sandbox's life.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The agent request for `o`: environment merged (sandbox, then `o.env`),
    /// time limit no later than the sandbox's end.
    pub fn exec_request(&self, o: ExecOptions) -> ExecRequest {
        let mut env = self.plan.env.clone();
        env.extend(o.env);
        let left = self.time_left();
        let limit = o.timeout.map_or(left, |t| t.min(left));
        ExecRequest {
            argv: o.argv,
            env,
            cwd: o.cwd,
            user: o.user,
            timeout_ms: Some(limit.as_millis().min(u128::from(u64::MAX)) as u64),
            pty: o.pty,
            stdin: o.stdin,
            ..Default::default()
        }
    }

    /// Starts a process (see [`Sandbox::exec_request`]); a refusal by the
    /// agent (allowlist, missing program) is [`Error::Refused`].
    pub fn exec(&self, o: ExecOptions) -> Result<ExecHandle> {
        let what = format!("`{}`", o.argv.join(" "));
        self.client()
            .exec(self.exec_request(o))
            .map_err(|e| exec_error(e, &what))
    }

    /// Whether the VM still runs.
    pub fn is_running(&self) -> bool {
        self.vm.is_running()
    }

    /// Why the sandbox stopped when it is no longer running (see [`Vm::why_stopped`]).
    pub fn why_stopped(&self) -> String {
        self.vm.why_stopped()
    }

    /// Kills the VM now; whatever still uses the sandbox fails from here on,
    /// and dropping it removes the run directory.
    pub fn kill(&self) {
        self.client().close();
        self.vm.kill();
    }

    /// Powers the guest off (killing it after a grace period) and removes
    /// the run directory.
    pub fn stop(self) -> Result<()> {
        self.vm.shutdown()
    }
}

/// A client error of an exec as a runtime error: what the agent refused is
/// [`Error::Refused`], the rest a host error.
pub fn exec_error(e: ClientError, what: &str) -> Error {
    match e {
        ClientError::Remote {
            code: ErrorCode::CommandDenied,
            message,
        } => Error::Refused(format!(
            "{what}: {message}; the sandbox's allow_commands must list the program's absolute guest path"
        )),
        ClientError::Remote { message, .. } => Error::Refused(format!("{what}: {message}")),
        other => Error::Host(format!("{what}: {other}")),
    }
}
