"""What the sync and async classes share besides the protocol: state and properties."""

from __future__ import annotations

import time
from typing import Callable, Iterable, List, Optional

from ._errors import Timeout
from ._models import ExecInfo, ExecResult, SandboxInfo, decode_text
from ._protocol import Chunk, OutputCollector

#: ``on_stdout``/``on_stderr``: called with each piece of output as text.
OutputCallback = Callable[[str], object]


def check_exec_args(
    background: bool,
    on_stdout: Optional[OutputCallback],
    on_stderr: Optional[OutputCallback],
) -> None:
    if background and (on_stdout is not None or on_stderr is not None):
        raise ValueError(
            "on_stdout/on_stderr stream a foreground exec; for background=True pass them to wait()"
        )


def pick_callback(
    chunk: Chunk, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]
) -> Optional[OutputCallback]:
    return on_stdout if chunk[0] == "stdout" else on_stderr


class Deadline:
    """The end of a client-side wait."""

    def __init__(self, timeout: Optional[float]) -> None:
        self.timeout = timeout
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        if self.end is None:
            return None
        return max(0.0, self.end - time.monotonic())

    @property
    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def error(self, what: str) -> Timeout:
        return Timeout(f"{what} still running after {self.timeout:g} s")


class SandboxBase:
    """``id`` and the last known description."""

    def __init__(self, sandbox_id: str, info: Optional[SandboxInfo] = None) -> None:
        self._id = sandbox_id
        self._info = info

    @property
    def id(self) -> str:
        """The sandbox id (``sb-...``)."""
        return self._id

    @property
    def last_info(self) -> Optional[SandboxInfo]:
        """The description from the last ``create``/``connect``/``info`` (no request)."""
        return self._info

    def __repr__(self) -> str:
        state = self._info.state if self._info is not None else "?"
        return f"{type(self).__name__}(id={self._id!r}, state={state!r})"


class ProcessBase:
    """A background exec's id and what the client knows of it so far.

    The properties answer from the last ``poll()``/``output()``/``wait()``;
    they send no request.
    """

    def __init__(self, sandbox_id: str, exec_id: str, argv: Optional[Iterable[str]] = None) -> None:
        self._sandbox_id = sandbox_id
        self._id = exec_id
        self._argv: Optional[List[str]] = list(argv) if argv is not None else None
        self._out = OutputCollector()

    def _apply_info(self, info: ExecInfo) -> None:
        if not info.running:
            self._out.state = info.state
            self._out.exit_code = info.exit_code
            self._out.signal = info.signal

    @property
    def id(self) -> str:
        """The exec id (``ex-...``)."""
        return self._id

    @property
    def sandbox_id(self) -> str:
        return self._sandbox_id

    @property
    def argv(self) -> Optional[List[str]]:
        return self._argv

    @property
    def running(self) -> bool:
        """False once the process is known to have exited."""
        return not self._out.exited

    @property
    def exit_code(self) -> Optional[int]:
        """The exit status once known (``None`` while running or after a signal)."""
        return self._out.exit_code

    @property
    def signal_number(self) -> Optional[int]:
        """The number of the signal that ended the process, once known."""
        return self._out.signal

    @property
    def timed_out(self) -> bool:
        return self._out.timed_out

    @property
    def truncated(self) -> bool:
        """True when the daemon dropped older output to stay within its bound."""
        return self._out.truncated

    @property
    def stdout_bytes(self) -> bytes:
        """Standard output received so far."""
        return bytes(self._out.stdout)

    @property
    def stderr_bytes(self) -> bytes:
        """Standard error received so far."""
        return bytes(self._out.stderr)

    @property
    def stdout(self) -> str:
        """Standard output received so far, as text."""
        return decode_text(bytes(self._out.stdout))

    @property
    def stderr(self) -> str:
        """Standard error received so far, as text."""
        return decode_text(bytes(self._out.stderr))

    def result(self) -> Optional[ExecResult]:
        """The result once the process is known to have exited (no request)."""
        return self._out.result() if self._out.exited else None

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited({self.exit_code}, signal={self.signal_number})"
        return f"{type(self).__name__}(id={self._id!r}, sandbox={self._sandbox_id!r}, {state})"
