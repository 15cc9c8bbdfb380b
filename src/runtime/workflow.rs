//! Running a plan in a booted VM: inputs in, steps in dependency order
//! (stdin_from, per-step and whole-run time limits), outputs out, even after
//! a failed step. Inputs are copied within the run's deadline; outputs get a
//! budget of `sandbox.timeout_secs` of their own, are staged on disk under
//! `sandbox.max_output_mb`, and only then unpacked.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cancel::Cancel;
use super::error::{exit_code, Error, Result};
use super::events::{Event, EventSink, Stream};
use super::files;
use super::plan::{Plan, StepPlan};
use super::schedule::{Next, Schedule};
use super::vm::Vm;
use crate::client::{
    Client, ClientError, ErrorCode, ExecRequest, FileKind, TransferLimits, UserSpec,
};
use voidbox_spec::Output;

/// Largest stdout kept for a later step's stdin.
pub const MAX_PIPED_STDOUT: usize = 64 << 20;
/// Extra time the host waits past a guest-side step limit before giving up.
const HOST_GRACE: Duration = Duration::from_secs(15);
/// A transfer in which the guest makes no progress for this long fails.
pub const TRANSFER_STALL: Duration = Duration::from_secs(60);

/// Transfer limits that end at `deadline`, with the plan's output cap.
fn transfer_limits(plan: &Plan, deadline: Instant) -> TransferLimits {
    let timeout = deadline.saturating_duration_since(Instant::now());
    TransferLimits {
        timeout,
        stall: TRANSFER_STALL.min(timeout),
        max_bytes: plan.max_output_mb.saturating_mul(1 << 20),
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepResult {
    /// Exit code as voidbox reports it (124 for a timeout, 126/127 for refused/not found).
    pub code: i32,
    /// Whether its limit killed it.
    pub timed_out: bool,
}

fn guest_error(cancel: &Cancel, vm: &Vm, what: &str, e: ClientError) -> Error {
    if cancel.is_cancelled() {
        return Error::Interrupted;
    }
    match e {
        ClientError::Closed(_) => vm.boot_error(format!("the VM went away during {what} ({e})")),
        ClientError::Timeout { .. } => Error::Timeout(format!(
            "{what}: {e}; the guest stopped answering (raise sandbox.timeout_secs if the copy is just slow)"
        )),
        other => Error::Host(format!("{what}: {other}")),
    }
}

/// Copies the plan's inputs into the guest; every copy ends by `deadline`.
pub fn copy_inputs(
    vm: &Vm,
    plan: &Plan,
    sink: &mut dyn EventSink,
    cancel: &Cancel,
    deadline: Instant,
) -> Result<()> {
    let client = vm.client();
    let (uid, gid) = plan.user_ids();
    let owner = Some(UserSpec { uid, gid });
    for (i, input) in plan.inputs.iter().enumerate() {
        let what = format!(
            "sandbox.inputs[{i}] ({} -> {})",
            input.host.display(),
            input.guest
        );
        let meta = std::fs::metadata(&input.host).map_err(|e| {
            Error::Host(format!("{what}: cannot read {}: {e}", input.host.display()))
        })?;
        let limits = transfer_limits(plan, deadline);
        let result = if meta.is_dir() {
            client.put_dir_with(&input.host, &input.guest, owner, limits)
        } else {
            let mut f = std::fs::File::open(&input.host)
                .map_err(|e| Error::Host(format!("{what}: {e}")))?;
            use std::os::unix::fs::PermissionsExt;
            client.put_file_with(
                &input.guest,
                &mut f,
                meta.permissions().mode() & 0o777,
                owner,
                limits,
            )
        };
        result.map_err(|e| guest_error(cancel, vm, &format!("copying {what}"), e))?;
        sink.emit(Event::InputCopied {
            guest: input.guest.clone(),
            bytes: if meta.is_dir() {
                dir_size(&input.host)
            } else {
                meta.len()
            },
        });
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Copies the plan's outputs to the host. With `best_effort` (the run
/// already failed) a missing guest path is only reported on stderr. All
/// outputs together get `sandbox.timeout_secs`; each is capped at
/// `sandbox.max_output_mb`.
pub fn copy_outputs(
    vm: &Vm,
    plan: &Plan,
    sink: &mut dyn EventSink,
    cancel: &Cancel,
    best_effort: bool,
) -> Result<()> {
    let client = vm.client();
    let deadline = Instant::now() + Duration::from_secs(plan.timeout_secs);
    for (i, output) in plan.outputs.iter().enumerate() {
        let what = format!("sandbox.outputs[{i}] ({})", output.guest);
        let limits = transfer_limits(plan, deadline);
        let bytes = match fetch_output(client, output, &what, limits) {
            Ok(bytes) => bytes,
            Err(Fetch::Guest(ClientError::Remote {
                code: ErrorCode::NotFound,
                message,
            })) if best_effort => {
                tracing::warn!("{what}: not copied: {message}");
                continue;
            }
            Err(Fetch::Guest(ClientError::Remote { message, .. })) => {
                return Err(Error::Host(format!(
                    "{what}: {message}; check that a step creates it"
                )))
            }
            Err(Fetch::Guest(e)) => {
                return Err(guest_error(cancel, vm, &format!("copying {what}"), e))
            }
            Err(Fetch::Host(e)) => return Err(e),
        };
        sink.emit(Event::OutputCopied {
            guest: output.guest.clone(),
            host: output.host.display().to_string(),
            bytes,
        });
    }
    Ok(())
}

/// Why an output was not copied.
#[derive(Debug)]
pub(crate) enum Fetch {
    /// The guest refused, failed, broke the protocol or went silent.
    Guest(ClientError),
    /// The output cannot be written on the host (or was refused there).
    Host(Error),
}

/// Copies one output: the guest's bytes go to a staging file next to the
/// output's host directory (never into memory), capped by `limits`; only a
/// complete copy is unpacked. The staging file is removed in every case.
pub(crate) fn fetch_output(
    client: &Client,
    output: &Output,
    what: &str,
    limits: TransferLimits,
) -> std::result::Result<u64, Fetch> {
    let parent = output.host.parent().unwrap_or(Path::new("."));
    let host_err = |e: std::io::Error| {
        Fetch::Host(Error::host(
            format!("{what}: cannot stage the output in {}", parent.display()),
            e,
        ))
    };
    std::fs::create_dir_all(parent).map_err(host_err)?;
    let mut staging = tempfile::Builder::new()
        .prefix(".voidbox-output-")
        .tempfile_in(parent)
        .map_err(host_err)?;
    let kind = match client.get_with(&output.guest, staging.as_file_mut(), limits) {
        Ok(kind) => kind,
        Err(ClientError::TooLarge {
            limit, announced, ..
        }) => {
            let size = announced.map_or_else(
                || format!("more than {} MiB", limit >> 20),
                |n| format!("{n} bytes"),
            );
            return Err(Fetch::Host(Error::Host(format!(
                "{what}: the guest's output is {size}, over sandbox.max_output_mb ({} MiB); nothing was copied. Raise sandbox.max_output_mb or make the output smaller",
                limit >> 20
            ))));
        }
        Err(e) => return Err(Fetch::Guest(e)),
    };
    let staged = staging.reopen().map_err(host_err)?;
    let reader = std::io::BufReader::new(staged);
    let written = match kind {
        FileKind::Dir => {
            files::unpack_into(reader, &output.host, &format!("output {}", output.guest))
        }
        FileKind::File => {
            let name = Path::new(&output.guest)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "output".into());
            files::write_file_into(reader, &output.host, &name, 0o644)
        }
        other => Err(Error::Host(format!(
            "{what}: is a {other:?}, not a file or directory"
        ))),
    };
    written.map_err(Fetch::Host)
}

/// Runs one step; `stdin` is the stdout of its `stdin_from` step.
fn run_step(
    client: &Client,
    step: &StepPlan,
    stdin: Option<&[u8]>,
    limit: Duration,
    keep_stdout: bool,
    sink: &mut dyn EventSink,
) -> std::result::Result<(StepResult, Vec<u8>), ClientError> {
    let mut env = step.env.clone();
    for key in &step.host_env {
        match std::env::var(key) {
            Ok(v) => {
                env.insert(key.clone(), v);
            }
            Err(_) => {
                env.remove(key);
                tracing::warn!(
                    "llm.api_key_env: ${key} is not set on the host; the agent gets no key"
                );
            }
        }
    }
    let req = ExecRequest {
        argv: step.argv.clone(),
        env,
        cwd: step.cwd.clone(),
        timeout_ms: Some(limit.as_millis().min(u128::from(u64::MAX)) as u64),
        stdin: stdin.is_some(),
        ..Default::default()
    };
    let host_limit = Some(limit + HOST_GRACE);
    let name = step.name.clone();
    let mut kept = Vec::new();
    let mut handle = client.exec(req)?;
    let writer = handle.take_stdin();
    let sink_cell = std::cell::RefCell::new(&mut *sink);
    let kept_cell = std::cell::RefCell::new(&mut kept);
    // Stdin is fed from its own thread while the output streams to the sink.
    let status = std::thread::scope(|scope| {
        if let (Some(w), Some(data)) = (writer, stdin) {
            scope.spawn(move || w.write(data).and_then(|_| w.close()));
        }
        handle.wait_with(
            |d| {
                if keep_stdout {
                    let mut k = kept_cell.borrow_mut();
                    if k.len() + d.len() <= MAX_PIPED_STDOUT {
                        k.extend_from_slice(d);
                    }
                }
                sink_cell.borrow_mut().emit(Event::Output {
                    step: name.clone(),
                    stream: Stream::Stdout,
                    data: String::from_utf8_lossy(d).into_owned(),
                })
            },
            |d| {
                sink_cell.borrow_mut().emit(Event::Output {
                    step: name.clone(),
                    stream: Stream::Stderr,
                    data: String::from_utf8_lossy(d).into_owned(),
                })
            },
            host_limit,
        )
    })?;
    let code = if status.timed_out {
        i32::from(exit_code::TIMEOUT)
    } else {
        status.shell_code()
    };
    Ok((
        StepResult {
            code,
            timed_out: status.timed_out,
        },
        kept,
    ))
}

/// Runs the steps in dependency order. Returns the exit code of the first
/// failed step, or 0.
pub fn run_steps(
    vm: &Vm,
    plan: &Plan,
    sink: &mut dyn EventSink,
    cancel: &Cancel,
    run_deadline: Instant,
) -> Result<i32> {
    let mut schedule = Schedule::new(&plan.steps);
    let mut stdout_of: HashMap<String, Vec<u8>> = HashMap::new();
    let mut first_failure = 0;
    loop {
        let index = match schedule.next_step() {
            Next::Done => break,
            Next::Skip(i, dep) => {
                sink.emit(Event::StepSkipped {
                    step: plan.steps[i].name.clone(),
                    reason: format!("`{dep}` did not succeed"),
                });
                continue;
            }
            Next::Run(i) => i,
        };
        let step = &plan.steps[index];
        let left = run_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(format!(
                "the run passed its limit of {} s (sandbox.timeout_secs) before step `{}`",
                plan.timeout_secs, step.name
            )));
        }
        let limit = step
            .timeout_secs
            .map(Duration::from_secs)
            .map_or(left, |t| t.min(left));
        sink.emit(Event::StepStarted {
            step: step.name.clone(),
            argv: step.argv.clone(),
        });
        let started = Instant::now();
        let stdin = step
            .stdin_from
            .as_ref()
            .map(|from| stdout_of.get(from).map(Vec::as_slice).unwrap_or_default());
        let keep = schedule.stdout_is_needed(index);
        let (result, kept) = match run_step(vm.client(), step, stdin, limit, keep, sink) {
            Ok(r) => r,
            Err(ClientError::Remote { code, message }) => {
                let code = match code {
                    ErrorCode::CommandDenied => i32::from(exit_code::REFUSED),
                    ErrorCode::NotFound => 127,
                    _ => i32::from(exit_code::REFUSED),
                };
                sink.emit(Event::Output {
                    step: step.name.clone(),
                    stream: Stream::Stderr,
                    data: format!("voidbox: {message}\n"),
                });
                (
                    StepResult {
                        code,
                        timed_out: false,
                    },
                    Vec::new(),
                )
            }
            Err(e) => return Err(guest_error(cancel, vm, &format!("step `{}`", step.name), e)),
        };
        if keep {
            stdout_of.insert(step.name.clone(), kept);
        }
        sink.emit(Event::StepFinished {
            step: step.name.clone(),
            exit_code: result.code,
            signal: None,
            timed_out: result.timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        schedule.finish(index, result.code == 0);
        if result.code != 0 && first_failure == 0 {
            first_failure = result.code;
        }
    }
    Ok(first_failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::agent_with;
    use std::os::unix::fs::PermissionsExt;

    /// Records output and creates `marker` once the step's first line arrives.
    struct MarkerSink {
        marker: std::path::PathBuf,
        out: Vec<(Stream, String)>,
    }

    impl EventSink for MarkerSink {
        fn emit(&mut self, event: Event) {
            if let Event::Output { stream, data, .. } = event {
                if data.contains("started") {
                    std::fs::write(&self.marker, b"").unwrap();
                }
                self.out.push((stream, data));
            }
        }
    }

    /// A step with stdin_from streams its output while it runs: the step only
    /// finishes after the host has seen its first line (it waits for a marker
    /// the sink creates), so output held back until the end would time it out.
    #[test]
    fn step_with_stdin_streams_output_while_it_runs() {
        let a = agent_with(|_| {});
        // The workload runs as nobody: let it see the marker.
        let dir = crate::client::tests::workload_dir();
        let marker = dir.path().join("seen");
        let script = format!(
            "echo started; while [ ! -e {} ]; do sleep 0.05; done; cat",
            marker.display()
        );
        let step = StepPlan {
            name: "s".into(),
            argv: vec!["sh".into(), "-c".into(), script],
            env: Default::default(),
            cwd: None,
            timeout_secs: None,
            depends_on: Vec::new(),
            stdin_from: Some("prev".into()),
            host_env: Vec::new(),
        };
        let mut sink = MarkerSink {
            marker,
            out: Vec::new(),
        };
        let (result, kept) = run_step(
            &a.client,
            &step,
            Some(b"piped\n"),
            Duration::from_secs(10),
            true,
            &mut sink,
        )
        .unwrap();
        assert_eq!(
            result,
            StepResult {
                code: 0,
                timed_out: false
            },
            "output only arrived at the end: {:?}",
            sink.out
        );
        assert_eq!(kept, b"started\npiped\n");
        let stdout: String = sink
            .out
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, d)| d.as_str())
            .collect();
        assert_eq!(stdout, "started\npiped\n");
    }

    fn vm_hwm_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// A root with one entry for the agent, readable by the workload.
    fn output_root() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = crate::client::tests::workload_dir();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, root)
    }

    fn no_staging_left(dir: &Path) {
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".voidbox-output-")
            })
            .collect();
        assert!(left.is_empty(), "staging files left: {left:?}");
    }

    /// Audit H1: a 20 GiB sparse output is refused from its announced size,
    /// with an error naming the spec field; nothing is buffered in memory or
    /// left on disk.
    #[test]
    fn huge_sparse_output_is_refused_early_with_bounded_memory() {
        if !crate::client::tests::in_child(
            "runtime::workflow::tests::huge_sparse_output_is_refused_early_with_bounded_memory",
        ) {
            return;
        }
        let base = vm_hwm_kib();
        let (dir, root) = output_root();
        let big = root.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(20 << 30)
            .unwrap();
        let r = root.display().to_string();
        let a = agent_with(|d| d.file_roots = vec![r.clone()]);
        let output = Output {
            guest: big.display().to_string(),
            host: dir.path().join("host-out"),
        };
        let limits = TransferLimits {
            max_bytes: 4096 << 20,
            ..TransferLimits::default()
        };
        let err = match fetch_output(&a.client, &output, "sandbox.outputs[0] (big)", limits) {
            Err(Fetch::Host(e)) => e.to_string(),
            other => panic!("expected a host error, got {other:?}"),
        };
        assert!(
            err.contains("sandbox.max_output_mb (4096 MiB)")
                && err.contains(&(20u64 << 30).to_string())
                && err.contains("sandbox.outputs[0]"),
            "{err}"
        );
        assert!(!output.host.exists(), "a partial output was left");
        no_staging_left(dir.path());
        // The connection still works: the guest stopped sending.
        a.client.ping(Duration::from_secs(10)).unwrap();
        let grown = vm_hwm_kib().saturating_sub(base);
        assert!(grown < 64 * 1024, "peak memory grew by {grown} KiB");
    }

    /// A directory announces no size: its tar stream is cut off at the cap
    /// while it streams, and the partial copy is removed.
    #[test]
    fn directory_output_over_the_cap_stops_mid_stream() {
        let (dir, root) = output_root();
        std::fs::create_dir(root.join("tree")).unwrap();
        std::fs::write(root.join("tree/a"), vec![1u8; 3 << 20]).unwrap();
        let r = root.display().to_string();
        let a = agent_with(|d| d.file_roots = vec![r.clone()]);
        let output = Output {
            guest: format!("{r}/tree"),
            host: dir.path().join("host-out"),
        };
        let limits = TransferLimits {
            max_bytes: 1 << 20,
            ..TransferLimits::default()
        };
        let err = match fetch_output(&a.client, &output, "sandbox.outputs[0] (tree)", limits) {
            Err(Fetch::Host(e)) => e.to_string(),
            other => panic!("expected a host error, got {other:?}"),
        };
        assert!(
            err.contains("more than 1 MiB") && err.contains("sandbox.max_output_mb (1 MiB)"),
            "{err}"
        );
        assert!(!output.host.exists(), "a partial output was left");
        no_staging_left(dir.path());
        a.client.ping(Duration::from_secs(10)).unwrap();
        // Under the cap the same output is copied whole.
        let limits = TransferLimits {
            max_bytes: 4 << 20,
            ..TransferLimits::default()
        };
        let n = fetch_output(&a.client, &output, "sandbox.outputs[0] (tree)", limits).unwrap();
        assert_eq!(n, 3 << 20);
        assert_eq!(std::fs::read(output.host.join("a")).unwrap().len(), 3 << 20);
        no_staging_left(dir.path());
    }
}
