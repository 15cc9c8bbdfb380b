"""The API without I/O: what each call sends and how answers and NDJSON streams
are read. The sync and async clients only move these requests over httpx."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import math
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import quote

import httpx

from ._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CREATE_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    EXEC_TIMEOUT_MARGIN,
    ConnectionConfig,
)
from ._errors import (
    DaemonUnavailable,
    Timeout,
    TransportError,
    VoidboxError,
    error_from_body,
    error_from_fields,
    parse_error_payload,
)
from ._models import ExecInfo, ExecResult, FileEntry, SandboxInfo

NDJSON = "application/x-ndjson"
TAR = "application/x-tar"

#: What a command may be: a str runs with ``/bin/sh -c``, a sequence is an argv.
Command = Union[str, Sequence[str]]
#: Data given to a process or written to a file; str is encoded as UTF-8.
Data = Union[str, bytes, bytearray, memoryview]
#: A request body.
Content = Union[bytes, Iterable[bytes], AsyncIterable[bytes]]
#: A skill: ``{"image": ..., "mount": ...}`` or ``(image, mount)``.
SkillSpec = Union[Mapping[str, str], Tuple[str, str]]

# The status an error code comes with (for errors reported inside a stream).
_STATUS_BY_CODE = {
    "bad_request": 400,
    "unauthorized": 401,
    "command_denied": 403,
    "path_denied": 403,
    "not_found": 404,
    "sandbox_dead": 409,
    "too_large": 413,
    "too_many_sandboxes": 429,
    "too_many_execs": 429,
    "out_of_capacity": 503,
    "timeout": 504,
    "internal": 500,
}


@dataclass
class Call:
    """One HTTP request to the daemon.

    ``sandbox_id`` is the sandbox the path names (``None`` for the collection);
    ``names_sandbox`` is true when the path is the sandbox itself, so that a 404
    there means the sandbox is unknown. For other paths under a sandbox, a 404 is
    told apart by asking for the sandbox (see :func:`probe_call`).
    ``read_timeout`` bounds the wait between two reads (``None``: no bound).
    """

    method: str
    path: str
    params: Dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: Optional[Content] = None
    headers: Dict[str, str] = field(default_factory=dict)
    read_timeout: Optional[float] = DEFAULT_READ_TIMEOUT
    sandbox_id: Optional[str] = None
    names_sandbox: bool = False
    expect: Tuple[int, ...] = (200,)

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=DEFAULT_CONNECT_TIMEOUT,
            read=self.read_timeout,
            write=DEFAULT_READ_TIMEOUT,
            pool=DEFAULT_READ_TIMEOUT,
        )

    def describe(self) -> str:
        return f"{self.method} {self.path}"


# --------------------------------------------------------------------------- helpers


def to_bytes(data: Data) -> bytes:
    """``data`` as bytes (str as UTF-8)."""
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_data(value: Any, encoding: Optional[str]) -> bytes:
    """Output carried as ``encoding`` (``"base64"`` or ``"utf8"``) back to bytes."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise TransportError(f"the daemon sent output that is not a string: {value!r:.80}")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise TransportError(f"the daemon sent invalid base64 output: {e}") from e
    return value.encode("utf-8")


def seconds(value: float, name: str) -> int:
    """A duration in whole seconds (rounded up), as the API takes them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return int(math.ceil(value))


def _sb_path(sandbox_id: str, *rest: str) -> str:
    if not sandbox_id or not isinstance(sandbox_id, str):
        raise ValueError(f"bad sandbox id {sandbox_id!r}")
    parts = [quote(sandbox_id, safe="")] + [quote(p, safe="") for p in rest]
    return "/v1/sandboxes/" + "/".join(parts)


def _str_map(value: Mapping[str, Any], name: str) -> Dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of str to str")
    return {str(k): str(v) for k, v in value.items()}


def _user(user: Union[str, int]) -> str:
    return str(user)


def command_fields(cmd: Command) -> Dict[str, Any]:
    """``{"shell": cmd}`` for a str, ``{"argv": [...]}`` for a sequence."""
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ValueError("the command is empty")
        return {"shell": cmd}
    if isinstance(cmd, (bytes, bytearray)):
        raise TypeError("the command must be a str (shell) or a list of str (argv)")
    argv = list(cmd)
    if not argv:
        raise ValueError("argv is empty")
    if not all(isinstance(a, str) for a in argv):
        raise TypeError("every argv element must be a str")
    return {"argv": argv}


def argv_of(cmd: Command) -> List[str]:
    """The argv a command runs as."""
    return ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


# --------------------------------------------------------------------------- sandboxes


def create_call(
    *,
    image: Optional[str] = None,
    memory_mb: Optional[int] = None,
    vcpus: Optional[int] = None,
    timeout: Optional[float] = None,
    idle_timeout: Optional[float] = None,
    env: Optional[Mapping[str, str]] = None,
    allow_commands: Optional[Sequence[str]] = None,
    user: Optional[Union[str, int]] = None,
    skills: Optional[Sequence[SkillSpec]] = None,
    guest_image: Optional[str] = None,
    max_output_mb: Optional[int] = None,
    create_timeout: Optional[float] = DEFAULT_CREATE_TIMEOUT,
) -> Call:
    body: Dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if guest_image is not None:
        body["guest_image"] = guest_image
    if memory_mb is not None:
        body["memory_mb"] = memory_mb
    if vcpus is not None:
        body["vcpus"] = vcpus
    if env is not None:
        body["env"] = _str_map(env, "env")
    if allow_commands is not None:
        if isinstance(allow_commands, str):
            raise TypeError("allow_commands must be a list of absolute guest paths")
        body["allow_commands"] = [str(c) for c in allow_commands]
    if user is not None:
        body["user"] = _user(user)
    if max_output_mb is not None:
        body["max_output_mb"] = max_output_mb
    if timeout is not None:
        body["timeout_secs"] = seconds(timeout, "timeout")
    if idle_timeout is not None:
        body["idle_timeout_secs"] = seconds(idle_timeout, "idle_timeout")
    if skills is not None:
        out: List[Dict[str, str]] = []
        for s in skills:
            if isinstance(s, Mapping):
                out.append({str(k): str(v) for k, v in s.items()})
            else:
                image_ref, mount = s
                out.append({"image": str(image_ref), "mount": str(mount)})
        body["skills"] = out
    return Call("POST", "/v1/sandboxes", json=body, read_timeout=create_timeout, expect=(200, 201))


def list_call() -> Call:
    return Call("GET", "/v1/sandboxes")


def get_call(sandbox_id: str) -> Call:
    return Call("GET", _sb_path(sandbox_id), sandbox_id=sandbox_id, names_sandbox=True)


def probe_call(sandbox_id: str) -> Call:
    """The request that tells an unknown sandbox from another unknown thing."""
    return get_call(sandbox_id)


def delete_call(sandbox_id: str) -> Call:
    return Call(
        "DELETE", _sb_path(sandbox_id), sandbox_id=sandbox_id, names_sandbox=True,
        expect=(200, 202, 204),
    )


def parse_sandbox(data: Any) -> SandboxInfo:
    if not isinstance(data, dict) or "id" not in data:
        raise TransportError(f"the daemon sent an unexpected sandbox description: {data!r:.200}")
    return SandboxInfo.from_json(data)


def parse_sandbox_list(data: Any) -> List[SandboxInfo]:
    items = data.get("sandboxes") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TransportError(f"the daemon sent an unexpected sandbox list: {data!r:.200}")
    return [parse_sandbox(item) for item in items]


# --------------------------------------------------------------------------- exec


def exec_read_timeout(timeout: Optional[float]) -> Optional[float]:
    """How long the client waits for an exec's answer: its timeout plus a margin."""
    return None if timeout is None else float(timeout) + EXEC_TIMEOUT_MARGIN


def exec_call(
    sandbox_id: str,
    cmd: Command,
    *,
    timeout: Optional[float] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    user: Optional[Union[str, int]] = None,
    stdin: Optional[Data] = None,
    background: bool = False,
    stream: bool = False,
) -> Call:
    """``POST /v1/sandboxes/{id}/exec``. Output always travels as base64 so bytes
    are exact. ``stream`` asks for the NDJSON answer."""
    body: Dict[str, Any] = command_fields(cmd)
    if env is not None:
        body["env"] = _str_map(env, "env")
    if cwd is not None:
        body["cwd"] = cwd
    if user is not None:
        body["user"] = _user(user)
    if timeout is not None:
        body["timeout_secs"] = seconds(timeout, "timeout")
    if stdin is not None:
        body["stdin"] = b64(to_bytes(stdin))
    body["encoding"] = "base64"
    headers: Dict[str, str] = {}
    if background:
        body["background"] = True
        read_timeout: Optional[float] = DEFAULT_READ_TIMEOUT
    else:
        read_timeout = exec_read_timeout(timeout)
        if stream:
            headers["Accept"] = NDJSON
    return Call(
        "POST", _sb_path(sandbox_id, "exec"), json=body, headers=headers,
        read_timeout=read_timeout, sandbox_id=sandbox_id,
        expect=(200, 201, 202),
    )


def parse_exec_answer(data: Any) -> ExecResult:
    """The JSON answer of a foreground exec."""
    if not isinstance(data, dict):
        raise TransportError(f"the daemon sent an unexpected exec answer: {data!r:.200}")
    collector = OutputCollector()
    collector.apply_answer(data)
    return collector.result()


def parse_exec_started(data: Any) -> str:
    exec_id = data.get("exec_id") if isinstance(data, dict) else None
    if not isinstance(exec_id, str) or not exec_id:
        raise TransportError(f"the daemon did not answer an exec id: {data!r:.200}")
    return exec_id


def exec_get_call(
    sandbox_id: str,
    exec_id: str,
    *,
    stdout_offset: int = 0,
    stderr_offset: int = 0,
    follow: bool = False,
    read_timeout: Optional[float] = DEFAULT_READ_TIMEOUT,
) -> Call:
    """``GET .../execs/{exec_id}`` from the offsets, or its NDJSON ``follow`` stream."""
    params = {"stdout_offset": str(stdout_offset), "stderr_offset": str(stderr_offset)}
    headers: Dict[str, str] = {}
    if follow:
        params["follow"] = "true"
        headers["Accept"] = NDJSON
    return Call(
        "GET", _sb_path(sandbox_id, "execs", exec_id), params=params, headers=headers,
        read_timeout=read_timeout, sandbox_id=sandbox_id,
    )


def execs_list_call(sandbox_id: str) -> Call:
    return Call("GET", _sb_path(sandbox_id, "execs"), sandbox_id=sandbox_id)


def parse_execs_list(data: Any) -> List[ExecInfo]:
    items = data.get("execs") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TransportError(f"the daemon sent an unexpected exec list: {data!r:.200}")
    return [ExecInfo.from_json(i) for i in items if isinstance(i, dict)]


def stdin_call(sandbox_id: str, exec_id: str, data: Data, *, eof: bool = False) -> Call:
    body = {"data": b64(to_bytes(data)), "encoding": "base64", "eof": eof}
    return Call(
        "POST", _sb_path(sandbox_id, "execs", exec_id, "stdin"), json=body,
        sandbox_id=sandbox_id, expect=(200, 202, 204),
    )


def signal_call(sandbox_id: str, exec_id: str, sig: Union[str, int]) -> Call:
    if isinstance(sig, bool) or not isinstance(sig, (str, int)):
        raise TypeError("signal must be a name such as 'TERM' or a number")
    body = {"signal": sig}
    return Call(
        "POST", _sb_path(sandbox_id, "execs", exec_id, "signal"), json=body,
        sandbox_id=sandbox_id, expect=(200, 202, 204),
    )


class NdjsonDecoder:
    """Splits a byte stream into JSON objects, one a line."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> List[Dict[str, Any]]:
        self._buf += chunk
        if b"\n" not in self._buf:
            return []
        *lines, self._buf = self._buf.split(b"\n")
        return [ev for ev in (parse_ndjson_line(line) for line in lines) if ev is not None]

    def finish(self) -> List[Dict[str, Any]]:
        rest, self._buf = self._buf, b""
        ev = parse_ndjson_line(rest)
        return [] if ev is None else [ev]


def parse_ndjson_line(line: bytes) -> Optional[Dict[str, Any]]:
    """One NDJSON line as an object (``None`` for a blank line)."""
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TransportError(f"the daemon sent a bad NDJSON line: {line[:200]!r}") from e
    if not isinstance(ev, dict):
        raise TransportError(f"the daemon sent an NDJSON line that is not an object: {line[:200]!r}")
    return ev


def stream_error(ev: Mapping[str, Any]) -> VoidboxError:
    """The exception for an ``{"type": "error", ...}`` event."""
    code, message = parse_error_payload(dict(ev))
    if code is None and message is None:
        code, message = "internal", f"the command failed: {json.dumps(dict(ev))[:300]}"
    return error_from_fields(_STATUS_BY_CODE.get(code or ""), code, message)


#: (stream name, text) to hand to an ``on_stdout``/``on_stderr`` callback.
Chunk = Tuple[str, str]


class OutputCollector:
    """Accumulates one process's output and exit, from JSON answers, polls or
    NDJSON events; tracks the byte offsets of a background exec."""

    def __init__(self, encoding: str = "base64") -> None:
        self.encoding = encoding
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_next = 0
        self.stderr_next = 0
        self.state = "running"
        self.exit_code: Optional[int] = None
        self.signal: Optional[int] = None
        self.duration_ms: Optional[float] = None
        self.truncated = False
        self.timed_out = False
        self.started = time.monotonic()
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }

    @property
    def exited(self) -> bool:
        return self.state != "running"

    def _add(self, stream: str, data: bytes) -> Optional[Chunk]:
        if stream == "stdout":
            self.stdout += data
            self.stdout_next += len(data)
        else:
            self.stderr += data
            self.stderr_next += len(data)
        text = self._decoders[stream].decode(data)
        return (stream, text) if text else None

    def _set_exit(self, data: Mapping[str, Any]) -> None:
        self.state = "exited"
        code = data.get("exit_code")
        self.exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        sig = data.get("signal")
        self.signal = sig if isinstance(sig, int) and not isinstance(sig, bool) else None
        dur = data.get("duration_ms")
        if isinstance(dur, (int, float)) and not isinstance(dur, bool):
            self.duration_ms = float(dur)
        if data.get("timed_out"):
            self.timed_out = True
        if data.get("truncated"):
            self.truncated = True

    def _encoding_of(self, data: Mapping[str, Any]) -> str:
        enc = data.get("encoding")
        return enc if isinstance(enc, str) else self.encoding

    def apply_answer(self, data: Any) -> List[Chunk]:
        """A foreground exec's JSON answer; the text for callbacks."""
        if not isinstance(data, dict):
            raise TransportError(f"the daemon sent an unexpected exec answer: {data!r:.200}")
        enc = self._encoding_of(data)
        chunks = [
            self._add("stdout", decode_data(data.get("stdout"), enc)),
            self._add("stderr", decode_data(data.get("stderr"), enc)),
        ]
        self._set_exit(data)
        return [c for c in chunks if c is not None] + self.flush()

    def apply_poll(self, data: Any) -> None:
        """A ``GET .../execs/{exec_id}`` answer for the offsets last asked."""
        if not isinstance(data, dict):
            raise TransportError(f"the daemon sent an unexpected exec state: {data!r:.200}")
        enc = self._encoding_of(data)
        out = decode_data(data.get("stdout"), enc)
        err = decode_data(data.get("stderr"), enc)
        self._add("stdout", out)
        self._add("stderr", err)
        # The daemon's offsets win: older output may have been dropped.
        for key in ("stdout_next", "stderr_next"):
            v = data.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(self, key, v)
        if data.get("truncated"):
            self.truncated = True
        if data.get("state", "running") != "running":
            self._set_exit(data)

    def apply_event(self, ev: Mapping[str, Any]) -> Optional[Chunk]:
        """One NDJSON event; the text to pass to a callback, if any."""
        kind = ev.get("type")
        if kind in ("stdout", "stderr"):
            return self._add(str(kind), decode_data(ev.get("data"), self._encoding_of(ev)))
        if kind == "exit":
            self._set_exit(ev)
            return None
        if kind == "error":
            raise stream_error(ev)
        return None  # unknown event types are for newer clients

    def flush(self) -> List[Chunk]:
        """Text still held by the UTF-8 decoders (an incomplete sequence at the end)."""
        out: List[Chunk] = []
        for stream, dec in self._decoders.items():
            text = dec.decode(b"", final=True)
            if text:
                out.append((stream, text))
        return out

    def result(self) -> ExecResult:
        if self.duration_ms is not None:
            duration = self.duration_ms / 1000.0
        else:
            duration = time.monotonic() - self.started
        return ExecResult.from_bytes(
            exit_code=self.exit_code,
            stdout=bytes(self.stdout),
            stderr=bytes(self.stderr),
            duration=duration,
            signal=self.signal,
            truncated=self.truncated,
            timed_out=self.timed_out,
        )


class EventStream:
    """Feeds an NDJSON answer (``exec`` with ``Accept: application/x-ndjson`` or a
    ``follow`` stream) into an :class:`OutputCollector`."""

    def __init__(self, collector: OutputCollector) -> None:
        self.collector = collector
        self.decoder = NdjsonDecoder()
        self.events = 0

    def _apply(self, events: List[Dict[str, Any]]) -> List[Chunk]:
        out: List[Chunk] = []
        for ev in events:
            if self.collector.exited:
                break  # nothing comes after the exit
            self.events += 1
            chunk = self.collector.apply_event(ev)
            if chunk is not None:
                out.append(chunk)
        return out

    def feed(self, data: bytes) -> List[Chunk]:
        return self._apply(self.decoder.feed(data))

    def finish(self) -> List[Chunk]:
        out = self._apply(self.decoder.finish())
        if self.collector.exited:
            out += self.collector.flush()
        return out


def is_ndjson(response: httpx.Response) -> bool:
    ctype: str = response.headers.get("content-type", "")
    return ctype.startswith(NDJSON)


def stream_ended_early(what: str) -> TransportError:
    return TransportError(f"the daemon closed the stream of {what} before the process exited")


# --------------------------------------------------------------------------- files


def file_mode(mode: Union[int, str]) -> str:
    """A permission mode as the API's octal text (``0o644`` -> ``"0644"``)."""
    if isinstance(mode, bool):
        raise TypeError("mode must be an int such as 0o644 or an octal str such as '0644'")
    if isinstance(mode, int):
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"mode {mode:o} is out of range")
        return format(mode, "04o")
    int(mode, 8)  # raises ValueError when not octal
    return mode


def file_write_call(
    sandbox_id: str,
    path: str,
    content: Content,
    *,
    mode: Optional[Union[int, str]] = None,
    tar: bool = False,
    size: Optional[int] = None,
) -> Call:
    params = {"path": path}
    if mode is not None:
        params["mode"] = file_mode(mode)
    headers = {"Content-Type": TAR if tar else "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    return Call(
        "PUT", _sb_path(sandbox_id, "files"), params=params, content=content,
        headers=headers, sandbox_id=sandbox_id, expect=(200, 201, 204),
    )


def file_read_call(sandbox_id: str, path: str) -> Call:
    return Call("GET", _sb_path(sandbox_id, "files"), params={"path": path}, sandbox_id=sandbox_id)


def file_list_call(sandbox_id: str, path: str) -> Call:
    return Call(
        "GET", _sb_path(sandbox_id, "files"), params={"path": path, "list": "true"},
        sandbox_id=sandbox_id,
    )


def parse_file_list(data: Any) -> List[FileEntry]:
    items = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TransportError(f"the daemon sent an unexpected listing: {data!r:.200}")
    return [FileEntry.from_json(i) for i in items if isinstance(i, dict)]


def check_tar_answer(response: httpx.Response, path: str) -> None:
    ctype = response.headers.get("content-type", "")
    if ctype and not ctype.startswith(TAR):
        raise VoidboxError(
            f"{path} is not a directory in the sandbox (the daemon answered {ctype}); "
            "use files.read() for a file",
            code="not_a_directory",
        )


# --------------------------------------------------------------------------- answers


def json_of(response: httpx.Response, call: Call) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise TransportError(
            f"the daemon answered {call.describe()} with invalid JSON: {response.content[:200]!r}"
        ) from e


def needs_probe(call: Call, status: int, body: bytes) -> bool:
    """Whether a 404 must be told apart by asking for the sandbox."""
    if status != 404 or call.sandbox_id is None or call.names_sandbox:
        return False
    try:
        code, _ = parse_error_payload(json.loads(body.decode("utf-8")))
    except (ValueError, UnicodeDecodeError):
        code = None
    return code in (None, "not_found")


def answer_error(call: Call, status: int, body: bytes, *, sandbox_missing: bool = False) -> VoidboxError:
    """The exception for an unexpected answer to ``call``."""
    if status == 404 and call.names_sandbox:
        sandbox_missing = True
    return error_from_body(status, body, sandbox_missing=sandbox_missing)


def transport_error(exc: httpx.HTTPError, config: ConnectionConfig, call: Call) -> VoidboxError:
    """The exception for a failure below HTTP."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return DaemonUnavailable(
            f"cannot connect to the voidbox daemon at {config.display}: {exc or type(exc).__name__}. "
            "Start it with `voidbox serve` (or set VOIDBOX_HOST to where it listens)."
        )
    if isinstance(exc, httpx.TimeoutException):
        limit = call.read_timeout
        after = f" after {limit:g} s" if limit is not None else ""
        return Timeout(
            f"no answer from the voidbox daemon to {call.describe()}{after} "
            f"({type(exc).__name__})"
        )
    return TransportError(
        f"the connection to the voidbox daemon at {config.display} failed during "
        f"{call.describe()}: {exc or type(exc).__name__}"
    )
