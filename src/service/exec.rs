//! Running commands for the service: a foreground exec collected into one
//! answer or streamed as events, and background execs whose newest output is
//! kept (bounded) and read by offset until the sandbox ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::api::{Encoding, ExecBody, ExecEvent, ExecResult, ExecStatus};
use super::error::{Result, ServiceError};
use super::output::{Capped, Ring, Utf8Splitter, MAX_KEPT_OUTPUT};
use crate::client::{ExecHandle, ExitStatus, UserSpec};
use crate::runtime::sandbox::{ExecOptions, Sandbox};

/// Background execs kept per sandbox (running or finished).
pub const MAX_BACKGROUND_EXECS: usize = 64;

/// How long past an exec's own limit the host waits for the guest to report it.
const HOST_GRACE: Duration = Duration::from_secs(30);

/// Longest exec limit: one week.
const MAX_EXEC_SECS: u64 = 604_800;

/// An exec body checked: what to run, and its stdin.
pub struct Prepared {
    /// The options.
    pub options: ExecOptions,
    /// Bytes for stdin (then EOF).
    pub stdin: Option<Vec<u8>>,
    /// How output is carried.
    pub encoding: Encoding,
}

fn bad(m: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(m.into())
}

/// `uid[:gid]` or `root`.
pub fn parse_user(s: &str) -> Result<UserSpec> {
    if s == "root" {
        return Ok(UserSpec { uid: 0, gid: 0 });
    }
    let err = || {
        bad(format!(
            "user: `{s}` is not `uid[:gid]` (numbers) or `root`"
        ))
    };
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok(UserSpec {
        uid: u.parse().map_err(|_| err())?,
        gid: g.parse().map_err(|_| err())?,
    })
}

/// Checks an exec body.
pub fn prepare(body: ExecBody, background: bool) -> Result<Prepared> {
    let argv = match (body.argv, body.shell) {
        (Some(_), Some(_)) => return Err(bad("give either argv or shell, not both")),
        (None, None) => {
            return Err(bad(
                "argv or shell is required: {\"argv\": [\"ls\", \"-l\"]} or {\"shell\": \"ls -l | wc -l\"}",
            ))
        }
        (Some(argv), None) => {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err(bad("argv must start with a program name"));
            }
            argv
        }
        (None, Some(line)) => vec!["/bin/sh".into(), "-c".into(), line],
    };
    if let Some(cwd) = &body.cwd {
        if !cwd.starts_with('/') {
            return Err(bad(format!("cwd: `{cwd}` must be an absolute guest path")));
        }
    }
    let timeout = match body.timeout_secs {
        None => None,
        Some(n) if (1..=MAX_EXEC_SECS).contains(&n) => Some(Duration::from_secs(n)),
        Some(n) => {
            return Err(bad(format!(
                "timeout_secs: {n} is not from 1 to {MAX_EXEC_SECS}"
            )))
        }
    };
    let user = body.user.as_deref().map(parse_user).transpose()?;
    let stdin = body
        .stdin
        .as_deref()
        .map(|s| body.encoding.decode(s, "stdin"))
        .transpose()
        .map_err(bad)?;
    Ok(Prepared {
        options: ExecOptions {
            argv,
            env: body.env,
            cwd: body.cwd,
            user,
            timeout,
            // A background process keeps stdin open for later writes.
            stdin: stdin.is_some() || background,
            pty: None,
        },
        stdin,
        encoding: body.encoding,
    })
}

/// Starts a prepared exec and feeds its stdin bytes (then EOF) from a thread.
fn start(sb: &Sandbox, p: &mut Prepared) -> Result<(ExecHandle, Duration)> {
    let req = sb.exec_request(std::mem::take(&mut p.options));
    let limit = Duration::from_millis(req.timeout_ms.unwrap_or_default());
    let what = format!("`{}`", req.argv.join(" "));
    let mut handle = sb
        .client()
        .exec(req)
        .map_err(|e| ServiceError::from_client(e, &what))?;
    if let Some(bytes) = p.stdin.take() {
        if let Some(w) = handle.take_stdin() {
            std::thread::spawn(move || {
                let _ = w.write(&bytes);
                let _ = w.close();
            });
        }
    }
    Ok((handle, limit))
}

fn exit_event(st: &ExitStatus, started: Instant) -> ExecEvent {
    ExecEvent::Exit {
        exit_code: st.code,
        signal: st.signal,
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out: st.timed_out,
    }
}

/// Runs to the end and answers with the first [`MAX_KEPT_OUTPUT`] bytes of each stream.
pub fn collect(sb: &Sandbox, mut p: Prepared) -> Result<ExecResult> {
    let started = Instant::now();
    let (handle, limit) = start(sb, &mut p)?;
    let (mut out, mut err) = (Capped::new(MAX_KEPT_OUTPUT), Capped::new(MAX_KEPT_OUTPUT));
    let st = handle
        .wait_with(|d| out.push(d), |d| err.push(d), Some(limit + HOST_GRACE))
        .map_err(|e| ServiceError::from_client(e, "the command"))?;
    Ok(ExecResult {
        exit_code: st.code,
        signal: st.signal,
        stdout: p.encoding.encode(&out.data),
        stderr: p.encoding.encode(&err.data),
        duration_ms: started.elapsed().as_millis() as u64,
        truncated: out.truncated || err.truncated,
        timed_out: st.timed_out,
        encoding: p.encoding,
    })
}

/// Encodes a stream's chunks, cutting text only between characters.
struct Encoder {
    encoding: Encoding,
    text: Utf8Splitter,
}

impl Encoder {
    fn new(encoding: Encoding) -> Self {
        Encoder {
            encoding,
            text: Utf8Splitter::default(),
        }
    }

    fn chunk(&mut self, d: &[u8]) -> Option<String> {
        let bytes = match self.encoding {
            Encoding::Utf8 => self.text.split(d),
            Encoding::Base64 => d.to_vec(),
        };
        (!bytes.is_empty()).then(|| self.encoding.encode(&bytes))
    }

    fn finish(&mut self) -> Option<String> {
        let rest = self.text.finish();
        (!rest.is_empty()).then(|| self.encoding.encode(&rest))
    }
}

/// Runs to the end, handing each event to `emit` as output arrives. When
/// `emit` returns false or `wanted` (asked twice a second) says the reader
/// went away, the process is killed.
pub fn stream(
    sb: &Sandbox,
    mut p: Prepared,
    mut emit: impl FnMut(ExecEvent) -> bool,
    wanted: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    let started = Instant::now();
    let (handle, limit) = start(sb, &mut p)?;
    let handle = Arc::new(handle);
    let gone = AtomicBool::new(false);
    if !emit(ExecEvent::Started { pid: handle.pid }) {
        let _ = handle.kill();
        return Ok(());
    }
    let (mut out, mut err) = (Encoder::new(p.encoding), Encoder::new(p.encoding));
    let emit = std::cell::RefCell::new(&mut emit);
    let send = |e: ExecEvent| {
        if gone.load(Ordering::SeqCst) {
            return;
        }
        if !(emit.borrow_mut())(e) {
            gone.store(true, Ordering::SeqCst);
            let h = handle.clone();
            // Not from inside the output callback: the kill goes out on its own thread.
            std::thread::spawn(move || {
                let _ = h.kill();
            });
        }
    };
    let ended = AtomicBool::new(false);
    let r = std::thread::scope(|scope| {
        // A silent process never calls `emit`: watch for the reader going away.
        scope.spawn(|| {
            while !ended.load(Ordering::SeqCst) {
                if !wanted() {
                    let _ = handle.kill();
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let r = handle.wait_keep_stdin(
            |d| {
                if let Some(data) = out.chunk(d) {
                    send(ExecEvent::Stdout { data });
                }
            },
            |d| {
                if let Some(data) = err.chunk(d) {
                    send(ExecEvent::Stderr { data });
                }
            },
            Some(limit + HOST_GRACE),
        );
        ended.store(true, Ordering::SeqCst);
        r
    });
    if let Some(data) = out.finish() {
        send(ExecEvent::Stdout { data });
    }
    if let Some(data) = err.finish() {
        send(ExecEvent::Stderr { data });
    }
    let st = r.map_err(|e| ServiceError::from_client(e, "the command"))?;
    send(exit_event(&st, started));
    Ok(())
}

/// A background exec: the process, its newest output and, once ended, how.
pub struct Background {
    /// `ex-...`.
    pub id: String,
    /// The command.
    pub argv: Vec<String>,
    handle: Arc<ExecHandle>,
    state: Mutex<BgState>,
    changed: Condvar,
    encoding: Encoding,
}

struct BgState {
    stdout: Ring,
    stderr: Ring,
    status: Option<ExitStatus>,
    failure: Option<String>,
}

impl Background {
    /// Starts `p` and a thread that keeps its output.
    pub fn start(sb: &Sandbox, id: String, mut p: Prepared) -> Result<Arc<Background>> {
        let argv = p.options.argv.clone();
        let encoding = p.encoding;
        let (handle, limit) = start(sb, &mut p)?;
        let bg = Arc::new(Background {
            id,
            argv,
            handle: Arc::new(handle),
            state: Mutex::new(BgState {
                stdout: Ring::new(MAX_KEPT_OUTPUT),
                stderr: Ring::new(MAX_KEPT_OUTPUT),
                status: None,
                failure: None,
            }),
            changed: Condvar::new(),
            encoding,
        });
        let pump = bg.clone();
        std::thread::Builder::new()
            .name(format!("voidbox-{}", bg.id))
            .spawn(move || {
                let push = |which: fn(&mut BgState) -> &mut Ring, d: &[u8]| {
                    which(&mut pump.lock()).push(d);
                    pump.changed.notify_all();
                };
                let r = pump.handle.wait_keep_stdin(
                    |d| push(|s| &mut s.stdout, d),
                    |d| push(|s| &mut s.stderr, d),
                    Some(limit + HOST_GRACE),
                );
                let mut s = pump.lock();
                match r {
                    Ok(st) => s.status = Some(st),
                    Err(e) => s.failure = Some(e.to_string()),
                }
                drop(s);
                pump.changed.notify_all();
            })
            .map_err(|e| ServiceError::Internal(format!("cannot start an output thread: {e}")))?;
        Ok(bg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BgState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        let s = self.lock();
        s.status.is_none() && s.failure.is_none()
    }

    /// State and output from the offsets.
    pub fn status(&self, stdout_offset: u64, stderr_offset: u64, with_output: bool) -> ExecStatus {
        let s = self.lock();
        let (out, lost_out) = if with_output {
            s.stdout.read_from(stdout_offset)
        } else {
            (Vec::new(), false)
        };
        let (err, lost_err) = if with_output {
            s.stderr.read_from(stderr_offset)
        } else {
            (Vec::new(), false)
        };
        let ended = s.status.is_some() || s.failure.is_some();
        ExecStatus {
            exec_id: self.id.clone(),
            argv: self.argv.clone(),
            state: if ended { "exited" } else { "running" }.into(),
            exit_code: s.status.and_then(|st| st.code),
            signal: s.status.and_then(|st| st.signal),
            timed_out: s.status.is_some_and(|st| st.timed_out),
            stdout: self.encoding.encode(&out),
            stderr: self.encoding.encode(&err),
            stdout_next: s.stdout.end(),
            stderr_next: s.stderr.end(),
            truncated: lost_out || lost_err,
            encoding: self.encoding,
        }
    }

    /// Streams events from the offsets until it ends, `emit` returns false,
    /// or `wanted` (asked now and then while nothing happens) says the reader
    /// went away.
    pub fn follow(
        &self,
        mut out_at: u64,
        mut err_at: u64,
        mut emit: impl FnMut(ExecEvent) -> bool,
        wanted: impl Fn() -> bool,
    ) {
        let started = Instant::now();
        let (mut out_enc, mut err_enc) = (Encoder::new(self.encoding), Encoder::new(self.encoding));
        let mut s = self.lock();
        loop {
            let (out, _) = s.stdout.read_from(out_at);
            let (err, _) = s.stderr.read_from(err_at);
            out_at = s.stdout.end();
            err_at = s.stderr.end();
            let ended = (s.status, s.failure.clone());
            let last = ended.0.is_some() || ended.1.is_some();
            drop(s);
            let mut events = Vec::new();
            if let Some(data) = out_enc.chunk(&out) {
                events.push(ExecEvent::Stdout { data });
            }
            if let Some(data) = err_enc.chunk(&err) {
                events.push(ExecEvent::Stderr { data });
            }
            match ended {
                (Some(st), _) => {
                    events.extend(out_enc.finish().map(|data| ExecEvent::Stdout { data }));
                    events.extend(err_enc.finish().map(|data| ExecEvent::Stderr { data }));
                    events.push(exit_event(&st, started));
                }
                (None, Some(why)) => events.push(ExecEvent::Error {
                    error: super::api::ErrorBody {
                        code: "internal".into(),
                        message: format!("the process's output stream failed: {why}"),
                    },
                }),
                (None, None) => {}
            }
            for e in events {
                if !emit(e) {
                    return;
                }
            }
            if last {
                return;
            }
            s = self.lock();
            let idle = |s: &BgState| {
                s.stdout.end() == out_at
                    && s.stderr.end() == err_at
                    && s.status.is_none()
                    && s.failure.is_none()
            };
            while idle(&s) {
                // Wake now and then to notice a reader that went away.
                let (g, _) = self
                    .changed
                    .wait_timeout(s, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner());
                s = g;
                if idle(&s) && !wanted() {
                    return;
                }
            }
        }
    }

    /// Writes to stdin, then closes it with `eof`.
    pub fn write_stdin(&self, data: &[u8], eof: bool) -> Result<()> {
        let what = format!("stdin of {}", self.id);
        if !data.is_empty() {
            self.handle
                .write_stdin(data)
                .map_err(|e| ServiceError::from_client(e, &what))?;
        }
        if eof {
            self.handle
                .close_stdin()
                .map_err(|e| ServiceError::from_client(e, &what))?;
        }
        Ok(())
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.handle
            .signal(sig)
            .map_err(|e| ServiceError::from_client(e, &format!("signalling {}", self.id)))
    }
}

/// A sandbox's background execs, oldest first.
#[derive(Default)]
pub struct ExecTable {
    execs: BTreeMap<u64, Arc<Background>>,
    next: u64,
}

impl ExecTable {
    /// Room for one more: drops the oldest finished exec past the limit.
    pub fn make_room(&mut self) -> Result<()> {
        if self.execs.len() < MAX_BACKGROUND_EXECS {
            return Ok(());
        }
        let finished = self
            .execs
            .iter()
            .find(|(_, b)| !b.running())
            .map(|(k, _)| *k);
        match finished {
            Some(k) => {
                self.execs.remove(&k);
                Ok(())
            }
            None => Err(ServiceError::TooManyExecs(format!(
                "{MAX_BACKGROUND_EXECS} background processes are running in this sandbox; signal one (POST .../execs/ID/signal) before starting another"
            ))),
        }
    }

    /// Adds one.
    pub fn insert(&mut self, bg: Arc<Background>) {
        self.next += 1;
        self.execs.insert(self.next, bg);
    }

    /// Finds one by id.
    pub fn get(&self, id: &str) -> Option<Arc<Background>> {
        self.execs.values().find(|b| b.id == id).cloned()
    }

    /// All, oldest first.
    pub fn all(&self) -> Vec<Arc<Background>> {
        self.execs.values().cloned().collect()
    }

    /// How many still run.
    pub fn running(&self) -> usize {
        self.execs.values().filter(|b| b.running()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ExecBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn exec_bodies_are_checked_with_the_field_named() {
        let bad = |j: &str| match prepare(body(j), false) {
            Err(ServiceError::BadRequest(m)) => m,
            Ok(_) => panic!("{j} was accepted"),
            Err(e) => panic!("{j}: {e:?}"),
        };
        assert!(bad(r#"{}"#).contains("argv or shell"));
        assert!(bad(r#"{"argv": ["a"], "shell": "b"}"#).contains("not both"));
        assert!(bad(r#"{"argv": []}"#).contains("program"));
        assert!(bad(r#"{"argv": ["a"], "cwd": "rel"}"#).contains("cwd"));
        assert!(bad(r#"{"argv": ["a"], "timeout_secs": 0}"#).contains("timeout_secs"));
        assert!(bad(r#"{"argv": ["a"], "user": "bob"}"#).contains("user"));
        assert!(bad(r#"{"argv": ["a"], "stdin": "!", "encoding": "base64"}"#).contains("stdin"));
        let p = prepare(body(r#"{"shell": "echo hi", "user": "1000:100", "stdin": "aGk=", "encoding": "base64"}"#), false).unwrap();
        assert_eq!(p.options.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(
            p.options.user,
            Some(UserSpec {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(p.stdin.as_deref(), Some(&b"hi"[..]));
        assert!(p.options.stdin);
        // A background process keeps stdin open for later writes.
        assert!(
            prepare(body(r#"{"argv": ["cat"]}"#), true)
                .unwrap()
                .options
                .stdin
        );
        assert!(
            !prepare(body(r#"{"argv": ["cat"]}"#), false)
                .unwrap()
                .options
                .stdin
        );
    }
}
