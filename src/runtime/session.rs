//! One whole run: plan → launch → inputs → steps → outputs → shutdown, with
//! every exit path stopping the VM and removing the run directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use voidbox_oci::{PullOptions, Store};
use voidbox_spec::{Kind, Spec};

use super::cancel::Cancel;
use super::error::{Error, Result};
use super::events::{Event, EventSink};
use super::launch::{choose_launch, lane_notice, LaneSizing, LaunchMode, LaunchOptions};
use super::plan::{Plan, PlanContext};
use super::rundir::voidbox_home;
use super::sandbox::Sandbox;
use super::workflow::{copy_inputs, copy_outputs, run_steps};

/// Everything a run needs besides the spec.
pub struct RunContext {
    /// `$VOIDBOX_HOME`.
    pub home: PathBuf,
    /// The image store.
    pub store: Store,
    /// How to pull missing images.
    pub pull: PullOptions,
    /// How to launch.
    pub launch: LaunchOptions,
    /// Ctrl-C state.
    pub cancel: Cancel,
}

impl RunContext {
    /// The default home and store.
    pub fn open(pull: PullOptions, launch: LaunchOptions, cancel: Cancel) -> Result<Self> {
        let home = voidbox_home();
        let store = Store::open(&home).map_err(|e| {
            Error::Image(format!(
                "cannot open the image store at {}: {e}",
                home.display()
            ))
        })?;
        Ok(RunContext {
            home,
            store,
            pull,
            launch,
            cancel,
        })
    }

    /// Plans a spec.
    pub fn plan(&self, spec: &Spec) -> Result<Plan> {
        Plan::build(
            spec,
            &PlanContext {
                store: &self.store,
                home: &self.home,
                pull: self.pull.clone(),
            },
        )
    }

    /// Chooses the launcher and prints the nested-lane notice once.
    pub fn launch_mode(&self) -> Result<LaunchMode> {
        let mode = choose_launch(&self.launch)?;
        if let LaunchMode::NestedLane(reason) = &mode {
            eprintln!("{}", lane_notice(reason));
        }
        Ok(mode)
    }

    /// Boots one sandbox of a plan, starting what `mode` needs for it alone
    /// (a lane sized for it, in the nested case).
    pub fn create_sandbox(&self, plan: Plan, mode: &LaunchMode) -> Result<Sandbox> {
        let launcher = mode.open(
            &self.home,
            LaneSizing::for_one(plan.memory_mb, plan.vcpus),
            &self.launch,
        )?;
        if self.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        Sandbox::create(plan, &self.home, &launcher, &self.launch, &self.cancel)
    }

    /// Home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }
}

/// Runs a workflow or agent spec; returns the exit code (the first failed
/// step's, or 0).
pub fn run_spec(ctx: &RunContext, spec: &Spec, sink: &mut dyn EventSink) -> Result<i32> {
    if spec.kind == Kind::Sandbox {
        return Err(Error::Host(format!(
            "`{}` is a `kind: sandbox` spec, which has nothing to run; use `voidbox shell --file SPEC` or `voidbox exec --file SPEC -- COMMAND`",
            spec.name
        )));
    }
    let started = Instant::now();
    let plan = ctx.plan(spec)?;
    let mode = ctx.launch_mode()?;
    sink.emit(Event::RunStarted {
        name: plan.name.clone(),
        launcher: mode.name().to_string(),
    });
    let run_deadline = started + Duration::from_secs(plan.timeout_secs) + ctx.launch.boot_timeout;
    let sandbox = ctx.create_sandbox(plan, &mode)?;
    sink.emit(Event::VmReady {
        boot_ms: sandbox.boot_time().as_millis() as u64,
    });
    // The run's limit counts from the agent being ready.
    let run_deadline = run_deadline.min(sandbox.deadline());
    let (vm, plan) = (sandbox.vm(), sandbox.plan());
    let outcome = copy_inputs(vm, plan, sink, &ctx.cancel, run_deadline)
        .and_then(|()| run_steps(vm, plan, sink, &ctx.cancel, run_deadline));
    let best_effort = !matches!(outcome, Ok(0));
    let copied = match &outcome {
        Err(Error::Interrupted) | Err(Error::Boot { .. }) => Ok(()),
        _ => copy_outputs(vm, plan, sink, &ctx.cancel, best_effort),
    };
    let shutdown = if ctx.cancel.is_cancelled() {
        // No polite shutdown after Ctrl-C: dropping the sandbox kills it at
        // once and removes the run directory.
        drop(sandbox);
        Ok(())
    } else {
        sandbox.stop()
    };
    let code = outcome?;
    copied?;
    shutdown?;
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    sink.emit(Event::RunFinished {
        exit_code: code,
        duration_ms: started.elapsed().as_millis() as u64,
    });
    Ok(code)
}
