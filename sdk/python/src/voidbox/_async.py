"""The asyncio (httpx.AsyncClient) client: :class:`AsyncSandbox`, :class:`AsyncProcess`,
:class:`AsyncFiles`. Same surface as the blocking one, with ``await``."""

from __future__ import annotations

import asyncio
import inspect
from contextlib import asynccontextmanager
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
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
from ._base import Deadline, ProcessBase, SandboxBase, check_exec_args, pick_callback
from ._config import DEFAULT_CREATE_TIMEOUT, ConnectionConfig, resolve_config
from ._errors import SandboxNotFound, Timeout, VoidboxError
from ._models import ExecResult, FileEntry, SandboxInfo
from ._tar import PathLike, aiter_chunks, new_spool, pack_dir, safe_extract

__all__ = ["AsyncSandbox", "AsyncProcess", "AsyncFiles", "AsyncOutputCallback"]

#: ``on_stdout``/``on_stderr`` of the async client: a function or a coroutine function.
AsyncOutputCallback = Callable[[str], Union[Awaitable[object], object]]


class _AsyncTransport:
    """Sends :class:`voidbox._protocol.Call` requests with an :class:`httpx.AsyncClient`."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._client: Optional[httpx.AsyncClient] = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client, opened again after :meth:`close` when needed."""
        if self._client is None:
            self._client = self.config.async_client()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

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

    async def _error(self, call: P.Call, status: int, body: bytes) -> VoidboxError:
        missing = False
        if P.needs_probe(call, status, body) and call.sandbox_id is not None:
            missing = await self._sandbox_missing(call.sandbox_id)
        return P.answer_error(call, status, body, sandbox_missing=missing)

    async def _sandbox_missing(self, sandbox_id: str) -> bool:
        probe = P.probe_call(sandbox_id)
        try:
            return (await self.client.send(self._build(probe))).status_code == 404
        except httpx.HTTPError:
            return False

    async def request(self, call: P.Call) -> httpx.Response:
        try:
            response = await self.client.send(self._build(call))
        except httpx.HTTPError as e:
            raise P.transport_error(e, self.config, call) from e
        if response.status_code not in call.expect:
            raise await self._error(call, response.status_code, response.content)
        return response

    async def json(self, call: P.Call) -> object:
        return P.json_of(await self.request(call), call)

    @asynccontextmanager
    async def stream(self, call: P.Call) -> AsyncIterator[httpx.Response]:
        try:
            response = await self.client.send(self._build(call), stream=True)
        except httpx.HTTPError as e:
            raise P.transport_error(e, self.config, call) from e
        try:
            if response.status_code not in call.expect:
                try:
                    body = await response.aread()
                except httpx.HTTPError as e:
                    raise P.transport_error(e, self.config, call) from e
                raise await self._error(call, response.status_code, body)
            try:
                yield response
            except httpx.HTTPError as e:
                raise P.transport_error(e, self.config, call) from e
        finally:
            await response.aclose()


async def _dispatch(
    chunks: List[P.Chunk],
    on_stdout: Optional[AsyncOutputCallback],
    on_stderr: Optional[AsyncOutputCallback],
) -> None:
    for chunk in chunks:
        callback = pick_callback(chunk, on_stdout, on_stderr)
        if callback is not None:
            result = callback(chunk[1])
            if inspect.isawaitable(result):
                await result


async def _read_events(
    response: httpx.Response,
    collector: P.OutputCollector,
    on_stdout: Optional[AsyncOutputCallback],
    on_stderr: Optional[AsyncOutputCallback],
    deadline: Optional[Deadline] = None,
) -> int:
    """Reads an NDJSON answer into ``collector``; answers how many events came."""
    events = P.EventStream(collector)
    async for data in response.aiter_bytes():
        await _dispatch(events.feed(data), on_stdout, on_stderr)
        if collector.exited:
            break
        if deadline is not None and deadline.passed:
            break
    await _dispatch(events.finish(), on_stdout, on_stderr)
    return events.events


class AsyncProcess(ProcessBase):
    """A background exec (``await sb.exec(..., background=True)``)."""

    def __init__(self, sandbox: "AsyncSandbox", exec_id: str, argv: Optional[Sequence[str]] = None) -> None:
        super().__init__(sandbox.id, exec_id, argv)
        self._sandbox = sandbox

    @property
    def _t(self) -> _AsyncTransport:
        return self._sandbox._t

    async def poll(self) -> Optional[ExecResult]:
        """Fetches output past what was already received; the result once exited."""
        c = self._out
        call = P.exec_get_call(
            self._sandbox_id, self._id, stdout_offset=c.stdout_next, stderr_offset=c.stderr_next
        )
        c.apply_poll(await self._t.json(call))
        return self.result()

    async def output(self) -> Tuple[str, str]:
        """Fetches new output; answers ``(stdout, stderr)`` received so far."""
        await self.poll()
        return self.stdout, self.stderr

    async def wait(
        self,
        timeout: Optional[float] = None,
        *,
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
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
                async with self._t.stream(call) as response:
                    if P.is_ndjson(response):
                        got = await _read_events(response, c, on_stdout, on_stderr, deadline)
                    else:  # a plain state answer
                        before = (c.stdout_next, c.stderr_next)
                        await response.aread()
                        c.apply_poll(P.json_of(response, call))
                        got = int((c.stdout_next, c.stderr_next) != before)
            except Timeout as e:
                if timeout is not None and deadline.passed:
                    raise deadline.error(what) from e
                raise
            if not c.exited and got == 0:
                await self.poll()
                if not c.exited:
                    await asyncio.sleep(0.2)
        return c.result()

    async def write_stdin(self, data: P.Data) -> None:
        """Writes to the process's standard input."""
        await self._t.request(P.stdin_call(self._sandbox_id, self._id, data))

    async def close_stdin(self) -> None:
        """Closes the process's standard input (it reads end of file)."""
        await self._t.request(P.stdin_call(self._sandbox_id, self._id, b"", eof=True))

    async def signal(self, sig: Union[str, int]) -> None:
        """Sends a signal: a name (``"TERM"``, ``"SIGINT"``) or a number."""
        await self._t.request(P.signal_call(self._sandbox_id, self._id, sig))

    async def kill(self) -> None:
        """Sends SIGKILL."""
        await self.signal("KILL")


class AsyncFiles:
    """The sandbox's files (``sb.files``)."""

    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sandbox = sandbox

    @property
    def _t(self) -> _AsyncTransport:
        return self._sandbox._t

    async def write(self, path: str, data: P.Data, mode: Optional[Union[int, str]] = None) -> None:
        """Writes ``data`` (str as UTF-8) to the absolute guest ``path``; parents are
        created. ``mode`` is an int such as ``0o755`` or an octal str."""
        body = P.to_bytes(data)
        await self._t.request(P.file_write_call(self._sandbox.id, path, body, mode=mode))

    async def read(self, path: str) -> bytes:
        """The bytes of the guest file ``path``."""
        return (await self._t.request(P.file_read_call(self._sandbox.id, path))).content

    async def list(self, path: str) -> List[FileEntry]:
        """The entries of the guest directory ``path`` (one level)."""
        call = P.file_list_call(self._sandbox.id, path)
        return P.parse_file_list(await self._t.json(call))

    async def write_dir(self, path: str, local_dir: PathLike) -> None:
        """Copies what the local directory holds into the guest directory ``path``."""
        spool, size = pack_dir(local_dir)
        with spool:
            call = P.file_write_call(
                self._sandbox.id, path, aiter_chunks(spool), tar=True, size=size
            )
            await self._t.request(call)

    async def read_dir(self, path: str, local_dir: PathLike) -> List[str]:
        """Copies the guest directory ``path`` into the local directory (created if
        missing); answers the names unpacked. Refuses entries that would land
        outside ``local_dir``."""
        call = P.file_read_call(self._sandbox.id, path)
        with new_spool() as spool:
            async with self._t.stream(call) as response:
                P.check_tar_answer(response, path)
                async for data in response.aiter_bytes():
                    spool.write(data)
            spool.seek(0)
            return safe_extract(spool, local_dir)


class AsyncSandboxCreation:
    """What :meth:`AsyncSandbox.create` answers: ``await`` it for the sandbox, or
    use it in ``async with`` (the sandbox is killed at the end of the block)."""

    def __init__(self, factory: Callable[[], Awaitable["AsyncSandbox"]]) -> None:
        self._factory = factory
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, "AsyncSandbox"]:
        return self._factory().__await__()

    async def __aenter__(self) -> "AsyncSandbox":
        self._sandbox = await self._factory()
        return self._sandbox

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


class AsyncSandbox(SandboxBase):
    """A sandbox held by the voidbox daemon, for asyncio code.

    ``sb = await AsyncSandbox.create()`` or ``async with AsyncSandbox.create() as sb:``
    (killed at the end of the block); :meth:`connect` attaches to an existing one.
    """

    def __init__(
        self, sandbox_id: str, *, transport: _AsyncTransport, info: Optional[SandboxInfo] = None
    ) -> None:
        super().__init__(sandbox_id, info)
        self._t = transport
        self.files = AsyncFiles(self)

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
    ) -> AsyncSandboxCreation:
        """Boots a sandbox; see :meth:`voidbox.Sandbox.create` for the arguments."""
        call = P.create_call(
            image=image, memory_mb=memory_mb, vcpus=vcpus, timeout=timeout,
            idle_timeout=idle_timeout, env=env, allow_commands=allow_commands, user=user,
            skills=skills, guest_image=guest_image, max_output_mb=max_output_mb,
            create_timeout=create_timeout,
        )

        async def boot() -> "AsyncSandbox":
            transport = _AsyncTransport(resolve_config(host, token))
            try:
                info = P.parse_sandbox(await transport.json(call))
            except BaseException:
                await transport.close()
                raise
            return cls(info.id, transport=transport, info=info)

        return AsyncSandboxCreation(boot)

    @classmethod
    async def connect(
        cls, sandbox_id: str, host: Optional[str] = None, token: Optional[str] = None
    ) -> "AsyncSandbox":
        """Attaches to an existing sandbox; raises :class:`SandboxNotFound` if the
        daemon does not know it."""
        transport = _AsyncTransport(resolve_config(host, token))
        try:
            info = P.parse_sandbox(await transport.json(P.get_call(sandbox_id)))
        except BaseException:
            await transport.close()
            raise
        return cls(sandbox_id, transport=transport, info=info)

    @classmethod
    async def list(cls, host: Optional[str] = None, token: Optional[str] = None) -> List[SandboxInfo]:
        """The sandboxes the daemon holds."""
        transport = _AsyncTransport(resolve_config(host, token))
        try:
            return P.parse_sandbox_list(await transport.json(P.list_call()))
        finally:
            await transport.close()

    async def info(self) -> SandboxInfo:
        """The sandbox's current description."""
        self._info = P.parse_sandbox(await self._t.json(P.get_call(self._id)))
        return self._info

    async def kill(self) -> None:
        """Destroys the sandbox (its VM and everything in it)."""
        await self._t.request(P.delete_call(self._id))

    async def close(self) -> None:
        """Closes the HTTP connections; the sandbox keeps running (a later call reconnects)."""
        await self._t.close()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            await self.kill()
        except SandboxNotFound:
            pass
        finally:
            await self.close()

    # ------------------------------------------------------------------ exec

    @overload
    async def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = ...,
        env: Optional[Mapping[str, str]] = ...,
        cwd: Optional[str] = ...,
        user: Optional[Union[str, int]] = ...,
        stdin: Optional[P.Data] = ...,
        on_stdout: Optional[AsyncOutputCallback] = ...,
        on_stderr: Optional[AsyncOutputCallback] = ...,
        background: Literal[False] = ...,
    ) -> ExecResult: ...

    @overload
    async def exec(
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
    ) -> AsyncProcess: ...

    @overload
    async def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = ...,
        env: Optional[Mapping[str, str]] = ...,
        cwd: Optional[str] = ...,
        user: Optional[Union[str, int]] = ...,
        stdin: Optional[P.Data] = ...,
        on_stdout: Optional[AsyncOutputCallback] = ...,
        on_stderr: Optional[AsyncOutputCallback] = ...,
        background: bool,
    ) -> Union[ExecResult, AsyncProcess]: ...

    async def exec(
        self,
        cmd: P.Command,
        *,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[Union[str, int]] = None,
        stdin: Optional[P.Data] = None,
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
        background: bool = False,
    ) -> Union[ExecResult, AsyncProcess]:
        """Runs a command; see :meth:`voidbox.Sandbox.exec`. Callbacks may be
        coroutine functions."""
        check_exec_args(background, on_stdout, on_stderr)
        streaming = on_stdout is not None or on_stderr is not None
        call = P.exec_call(
            self._id, cmd, timeout=timeout, env=env, cwd=cwd, user=user,
            stdin=None if background else stdin, background=background, stream=streaming,
        )
        if background:
            exec_id = P.parse_exec_started(await self._t.json(call))
            process = AsyncProcess(self, exec_id, P.argv_of(cmd))
            if stdin is not None:
                await process.write_stdin(stdin)
                await process.close_stdin()
            return process
        if not streaming:
            return P.parse_exec_answer(await self._t.json(call))
        collector = P.OutputCollector()
        async with self._t.stream(call) as response:
            if P.is_ndjson(response):
                await _read_events(response, collector, on_stdout, on_stderr)
            else:  # the daemon answered the JSON form
                await response.aread()
                chunks = collector.apply_answer(P.json_of(response, call))
                await _dispatch(chunks, on_stdout, on_stderr)
        if not collector.exited:
            raise P.stream_ended_early(f"exec {cmd!r}")
        return collector.result()

    async def processes(self) -> List[AsyncProcess]:
        """The sandbox's background execs (running or finished)."""
        infos = P.parse_execs_list(await self._t.json(P.execs_list_call(self._id)))
        out: List[AsyncProcess] = []
        for info in infos:
            p = AsyncProcess(self, info.exec_id, info.argv)
            p._apply_info(info)
            out.append(p)
        return out
