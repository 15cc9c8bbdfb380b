"""The blocking client: :class:`Sandbox`, :class:`Process`, :class:`Files`."""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import TracebackType
from typing import (
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
    overload,
)

import httpx


from . import _protocol as P
from ._base import (
    Deadline,
    OutputCallback,
    ProcessBase,
    SandboxBase,
    check_exec_args,
    pick_callback,
)
from ._config import DEFAULT_CREATE_TIMEOUT, ConnectionConfig, resolve_config
from ._errors import SandboxNotFound, Timeout, VoidboxError
from ._models import ExecResult, FileEntry, SandboxInfo
from ._tar import PathLike, iter_chunks, new_spool, pack_dir, safe_extract

__all__ = ["Sandbox", "Process", "Files"]


class _Transport:
    """Sends :class:`voidbox._protocol.Call` requests with an :class:`httpx.Client`."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._client: Optional[httpx.Client] = None

    @property
    def client(self) -> httpx.Client:
        """The HTTP client, opened again after :meth:`close` when needed."""
        if self._client is None:
            self._client = self.config.sync_client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def _build(self, call: P.Call) -> httpx.Request:
        return self.client.build_request(
            call.method,
            call.path,
            params=call.params or None,
            json=call.json,
            content=call.content,
            headers=call.headers or None,
            timeout=call.timeout(),
        )

    def _error(self, call: P.Call, status: int, body: bytes) -> VoidboxError:
        missing = False
        if P.needs_probe(call, status, body) and call.sandbox_id is not None:
            missing = self._sandbox_missing(call.sandbox_id)
        return P.answer_error(call, status, body, sandbox_missing=missing)

    def _sandbox_missing(self, sandbox_id: str) -> bool:
        probe = P.probe_call(sandbox_id)
        try:
            return self.client.send(self._build(probe)).status_code == 404
        except httpx.HTTPError:
            return False

    def request(self, call: P.Call) -> httpx.Response:
        try:
            response = self.client.send(self._build(call))
        except httpx.HTTPError as e:
            raise P.transport_error(e, self.config, call) from e
        if response.status_code not in call.expect:
            raise self._error(call, response.status_code, response.content)
        return response

    def json(self, call: P.Call) -> object:
        return P.json_of(self.request(call), call)

    @contextmanager
    def stream(self, call: P.Call) -> Iterator[httpx.Response]:
        try:
            response = self.client.send(self._build(call), stream=True)
        except httpx.HTTPError as e:
            raise P.transport_error(e, self.config, call) from e
        try:
            if response.status_code not in call.expect:
                try:
                    body = response.read()
                except httpx.HTTPError as e:
                    raise P.transport_error(e, self.config, call) from e
                raise self._error(call, response.status_code, body)
            try:
                yield response
            except httpx.HTTPError as e:
                raise P.transport_error(e, self.config, call) from e
        finally:
            response.close()


def _dispatch(
    chunks: List[P.Chunk],
    on_stdout: Optional[OutputCallback],
    on_stderr: Optional[OutputCallback],
) -> None:
    for chunk in chunks:
        callback = pick_callback(chunk, on_stdout, on_stderr)
        if callback is not None:
            callback(chunk[1])


def _read_events(
    response: httpx.Response,
    collector: P.OutputCollector,
    on_stdout: Optional[OutputCallback],
    on_stderr: Optional[OutputCallback],
    deadline: Optional[Deadline] = None,
) -> int:
    """Reads an NDJSON answer into ``collector``; answers how many events came."""
    events = P.EventStream(collector)
    for data in response.iter_bytes():
        _dispatch(events.feed(data), on_stdout, on_stderr)
        if collector.exited:
            break
        if deadline is not None and deadline.passed:
            break
    _dispatch(events.finish(), on_stdout, on_stderr)
    return events.events


class Process(ProcessBase):
    """A background exec (``sb.exec(..., background=True)``)."""

    def __init__(self, sandbox: "Sandbox", exec_id: str, argv: Optional[Sequence[str]] = None) -> None:
        super().__init__(sandbox.id, exec_id, argv)
        self._sandbox = sandbox

    @property
    def _t(self) -> _Transport:
        return self._sandbox._t

    def poll(self) -> Optional[ExecResult]:
        """Fetches output past what was already received; the result once exited."""
        c = self._out
        call = P.exec_get_call(
            self._sandbox_id, self._id, stdout_offset=c.stdout_next, stderr_offset=c.stderr_next
        )
        c.apply_poll(self._t.json(call))
        return self.result()

    def output(self) -> Tuple[str, str]:
        """Fetches new output; answers ``(stdout, stderr)`` received so far."""
        self.poll()
        return self.stdout, self.stderr

    def wait(
        self,
        timeout: Optional[float] = None,
        *,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> ExecResult:
        """Follows the output until the process exits; raises :class:`Timeout`
        (the process keeps running) when ``timeout`` seconds pass first."""
        deadline = Deadline(timeout)
        c = self._out
        what = f"process {self._id}"
        while not c.exited:
            if deadline.passed:
                raise deadline.error(what)
            call = P.exec_get_call(
                self._sandbox_id, self._id, stdout_offset=c.stdout_next,
                stderr_offset=c.stderr_next, follow=True, read_timeout=deadline.remaining(),
            )
            got = 0
            try:
                with self._t.stream(call) as response:
                    if P.is_ndjson(response):
                        got = _read_events(response, c, on_stdout, on_stderr, deadline)
                    else:  # a plain state answer
                        before = (c.stdout_next, c.stderr_next)
                        response.read()
                        c.apply_poll(P.json_of(response, call))
                        got = int((c.stdout_next, c.stderr_next) != before)
            except Timeout as e:
                if timeout is not None and deadline.passed:
                    raise deadline.error(what) from e
                raise
            if not c.exited and got == 0:
                self.poll()
                if not c.exited:
                    time.sleep(0.2)
        return c.result()

    def write_stdin(self, data: P.Data) -> None:
        """Writes to the process's standard input."""
        self._t.request(P.stdin_call(self._sandbox_id, self._id, data))

    def close_stdin(self) -> None:
        """Closes the process's standard input (it reads end of file)."""
        self._t.request(P.stdin_call(self._sandbox_id, self._id, b"", eof=True))

    def signal(self, sig: Union[str, int]) -> None:
        """Sends a signal: a name (``"TERM"``, ``"SIGINT"``) or a number."""
        self._t.request(P.signal_call(self._sandbox_id, self._id, sig))

    def kill(self) -> None:
        """Sends SIGKILL."""
        self.signal("KILL")


class Files:
    """The sandbox's files (``sb.files``)."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    @property
    def _t(self) -> _Transport:
        return self._sandbox._t

    def write(self, path: str, data: P.Data, mode: Optional[Union[int, str]] = None) -> None:
        """Writes ``data`` (str as UTF-8) to the absolute guest ``path``; parents are
        created. ``mode`` is an int such as ``0o755`` or an octal str."""
        body = P.to_bytes(data)
        self._t.request(P.file_write_call(self._sandbox.id, path, body, mode=mode))

    def read(self, path: str) -> bytes:
        """The bytes of the guest file ``path``."""
        return self._t.request(P.file_read_call(self._sandbox.id, path)).content

    def list(self, path: str) -> List[FileEntry]:
        """The entries of the guest directory ``path`` (one level)."""
        call = P.file_list_call(self._sandbox.id, path)
        return P.parse_file_list(self._t.json(call))

    def write_dir(self, path: str, local_dir: PathLike) -> None:
        """Copies what the local directory holds into the guest directory ``path``."""
        spool, size = pack_dir(local_dir)
        with spool:
            call = P.file_write_call(
                self._sandbox.id, path, iter_chunks(spool), tar=True, size=size
            )
            self._t.request(call)

    def read_dir(self, path: str, local_dir: PathLike) -> List[str]:
        """Copies the guest directory ``path`` into the local directory (created if
        missing); answers the names unpacked. Refuses entries that would land
        outside ``local_dir``."""
        call = P.file_read_call(self._sandbox.id, path)
        with new_spool() as spool:
            with self._t.stream(call) as response:
                P.check_tar_answer(response, path)
                for data in response.iter_bytes():
                    spool.write(data)
            spool.seek(0)
            return safe_extract(spool, local_dir)


class Sandbox(SandboxBase):
    """A sandbox held by the voidbox daemon.

    Make one with :meth:`create` (``with Sandbox.create() as sb:`` kills it at the
    end of the block) or attach to an existing one with :meth:`connect`.
    """

    def __init__(self, sandbox_id: str, *, transport: _Transport, info: Optional[SandboxInfo] = None) -> None:
        super().__init__(sandbox_id, info)
        self._t = transport
        self.files = Files(self)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        image: Optional[str] = None,
        memory_mb: Optional[int] = None,
        vcpus: Optional[int] = None,
        timeout: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        allow_commands: Optional[Sequence[str]] = None,
        user: Optional[Union[str, int]] = None,
        skills: Optional[Sequence[P.SkillSpec]] = None,
        host: Optional[str] = None,
        token: Optional[str] = None,
        *,
        guest_image: Optional[str] = None,
        max_output_mb: Optional[int] = None,
        create_timeout: Optional[float] = DEFAULT_CREATE_TIMEOUT,
    ) -> "Sandbox":
        """Boots a sandbox and answers once its guest is ready.

        ``timeout`` is its lifetime and ``idle_timeout`` how long it may sit unused
        (seconds); ``user`` is ``"uid[:gid]"`` or ``"root"``; ``skills`` are
        ``{"image", "mount"}`` mappings. ``host``/``token`` override
        ``VOIDBOX_HOST``/``VOIDBOX_TOKEN``. ``create_timeout`` bounds the wait
        for the boot (``None``: no bound).
        """
        call = P.create_call(
            image=image, memory_mb=memory_mb, vcpus=vcpus, timeout=timeout,
            idle_timeout=idle_timeout, env=env, allow_commands=allow_commands, user=user,
            skills=skills, guest_image=guest_image, max_output_mb=max_output_mb,
            create_timeout=create_timeout,
        )
        transport = _Transport(resolve_config(host, token))
        try:
            info = P.parse_sandbox(transport.json(call))
        except BaseException:
            transport.close()
            raise
        return cls(info.id, transport=transport, info=info)

    @classmethod
    def connect(cls, sandbox_id: str, host: Optional[str] = None, token: Optional[str] = None) -> "Sandbox":
        """Attaches to an existing sandbox; raises :class:`SandboxNotFound` if the
        daemon does not know it."""
        transport = _Transport(resolve_config(host, token))
        try:
            info = P.parse_sandbox(transport.json(P.get_call(sandbox_id)))
        except BaseException:
            transport.close()
            raise
        return cls(sandbox_id, transport=transport, info=info)

    @classmethod
    def list(cls, host: Optional[str] = None, token: Optional[str] = None) -> List[SandboxInfo]:
        """The sandboxes the daemon holds."""
        transport = _Transport(resolve_config(host, token))
        try:
            return P.parse_sandbox_list(transport.json(P.list_call()))
        finally:
            transport.close()

    def info(self) -> SandboxInfo:
        """The sandbox's current description."""
        self._info = P.parse_sandbox(self._t.json(P.get_call(self._id)))
        return self._info

    def kill(self) -> None:
        """Destroys the sandbox (its VM and everything in it)."""
        self._t.request(P.delete_call(self._id))

    def close(self) -> None:
        """Closes the HTTP connections; the sandbox keeps running (a later call reconnects)."""
        self._t.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.kill()
        except SandboxNotFound:
            pass
        finally:
            self.close()

    # ------------------------------------------------------------------ exec

    @overload
    def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = ...,
        env: Optional[Mapping[str, str]] = ...,
        cwd: Optional[str] = ...,
        user: Optional[Union[str, int]] = ...,
        stdin: Optional[P.Data] = ...,
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        background: Literal[False] = ...,
    ) -> ExecResult: ...

    @overload
    def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = ...,
        env: Optional[Mapping[str, str]] = ...,
        cwd: Optional[str] = ...,
        user: Optional[Union[str, int]] = ...,
        stdin: Optional[P.Data] = ...,
        on_stdout: None = ...,
        on_stderr: None = ...,
        background: Literal[True],
    ) -> Process: ...

    @overload
    def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = ...,
        env: Optional[Mapping[str, str]] = ...,
        cwd: Optional[str] = ...,
        user: Optional[Union[str, int]] = ...,
        stdin: Optional[P.Data] = ...,
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        background: bool,
    ) -> Union[ExecResult, Process]: ...

    def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[Union[str, int]] = None,
        stdin: Optional[P.Data] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        background: bool = False,
    ) -> Union[ExecResult, Process]:
        """Runs a command: a list is an argv, a str runs with ``/bin/sh -c``.

        Answers an :class:`ExecResult` once it exits; ``on_stdout``/``on_stderr``
        get its output as it arrives. ``timeout`` (seconds) kills it when passed
        (``timed_out`` is then true). ``stdin`` is given, then closed.
        ``background=True`` answers a :class:`Process` at once.
        """
        check_exec_args(background, on_stdout, on_stderr)
        streaming = on_stdout is not None or on_stderr is not None
        call = P.exec_call(
            self._id, cmd, timeout=timeout, env=env, cwd=cwd, user=user,
            stdin=None if background else stdin, background=background, stream=streaming,
        )
        if background:
            exec_id = P.parse_exec_started(self._t.json(call))
            process = Process(self, exec_id, P.argv_of(cmd))
            if stdin is not None:
                process.write_stdin(stdin)
                process.close_stdin()
            return process
        if not streaming:
            return P.parse_exec_answer(self._t.json(call))
        collector = P.OutputCollector()
        with self._t.stream(call) as response:
            if P.is_ndjson(response):
                _read_events(response, collector, on_stdout, on_stderr)
            else:  # the daemon answered the JSON form
                response.read()
                chunks = collector.apply_answer(P.json_of(response, call))
                _dispatch(chunks, on_stdout, on_stderr)
        if not collector.exited:
            raise P.stream_ended_early(f"exec {cmd!r}")
        return collector.result()

    def processes(self) -> List[Process]:
        """The sandbox's background execs (running or finished)."""
        infos = P.parse_execs_list(self._t.json(P.execs_list_call(self._id)))
        out: List[Process] = []
        for info in infos:
            p = Process(self, info.exec_id, info.argv)
            p._apply_info(info)
            out.append(p)
        return out

