"""Plain data returned by the SDK."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["ExecResult", "SandboxInfo", "FileEntry", "ExecInfo", "decode_text"]


def decode_text(data: bytes) -> str:
    """UTF-8 with invalid bytes replaced."""
    return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class ExecResult:
    """What a finished command did.

    ``exit_code`` is ``None`` when a signal ended the process (``signal`` is then
    its number); ``duration`` is in seconds; ``truncated`` is true when an output
    stream passed the daemon's bound; ``timed_out`` when the exec's ``timeout``
    killed it. ``stdout``/``stderr`` are text (UTF-8, invalid bytes replaced);
    ``stdout_bytes``/``stderr_bytes`` are the exact bytes.
    """

    exit_code: Optional[int]
    stdout: str
    stderr: str
    duration: float
    signal: Optional[int] = None
    truncated: bool = False
    timed_out: bool = False
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)

    @classmethod
    def from_bytes(
        cls,
        *,
        exit_code: Optional[int],
        stdout: bytes,
        stderr: bytes,
        duration: float,
        signal: Optional[int] = None,
        truncated: bool = False,
        timed_out: bool = False,
    ) -> "ExecResult":
        return cls(
            exit_code=exit_code,
            stdout=decode_text(stdout),
            stderr=decode_text(stderr),
            duration=duration,
            signal=signal,
            truncated=truncated,
            timed_out=timed_out,
            stdout_bytes=stdout,
            stderr_bytes=stderr,
        )

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


def _opt_str(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


def _opt_int(v: Any) -> Optional[int]:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _parse_time(v: Any) -> Optional[_dt.datetime]:
    if not isinstance(v, str) or not v:
        return None
    text = v[:-1] + "+00:00" if v.endswith("Z") else v
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the daemon describes it (``GET /v1/sandboxes/{id}``)."""

    id: str
    state: str
    created_at: Optional[str] = None
    expires_at: Optional[str] = None
    timeout_secs: Optional[int] = None
    idle_timeout_secs: Optional[int] = None
    image: Optional[str] = None
    memory_mb: Optional[int] = None
    vcpus: Optional[int] = None
    boot_ms: Optional[int] = None
    launcher: Optional[str] = None
    error: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def created(self) -> Optional[_dt.datetime]:
        """``created_at`` parsed."""
        return _parse_time(self.created_at)

    @property
    def expires(self) -> Optional[_dt.datetime]:
        """``expires_at`` parsed."""
        return _parse_time(self.expires_at)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SandboxInfo":
        err = data.get("error")
        if isinstance(err, dict):
            err = err.get("message") or err.get("code")
        return cls(
            id=str(data.get("id", "")),
            state=str(data.get("state", "")),
            created_at=_opt_str(data.get("created_at")),
            expires_at=_opt_str(data.get("expires_at")),
            timeout_secs=_opt_int(data.get("timeout_secs")),
            idle_timeout_secs=_opt_int(data.get("idle_timeout_secs")),
            image=_opt_str(data.get("image")),
            memory_mb=_opt_int(data.get("memory_mb")),
            vcpus=_opt_int(data.get("vcpus")),
            boot_ms=_opt_int(data.get("boot_ms")),
            launcher=_opt_str(data.get("launcher")),
            error=_opt_str(err),
            raw=dict(data),
        )


def _parse_mode(v: Any) -> Optional[int]:
    if isinstance(v, str):
        try:
            return int(v, 8)
        except ValueError:
            return None
    return _opt_int(v)


def _parse_mtime(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    t = _parse_time(v)
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


@dataclass(frozen=True)
class FileEntry:
    """One entry of a guest directory listing.

    ``type`` is ``"file"``, ``"dir"``, ``"symlink"`` or ``"other"``; ``mode`` holds
    the permission bits; ``mtime`` is seconds since the epoch.
    """

    name: str
    type: str
    size: int = 0
    mode: Optional[int] = None
    mtime: Optional[float] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FileEntry":
        return cls(
            name=str(data.get("name", "")),
            type=str(data.get("type", "other")),
            size=_opt_int(data.get("size")) or 0,
            mode=_parse_mode(data.get("mode")),
            mtime=_parse_mtime(data.get("mtime")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class ExecInfo:
    """A background exec as listed by ``GET /v1/sandboxes/{id}/execs``."""

    exec_id: str
    argv: List[str]
    state: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ExecInfo":
        argv = data.get("argv")
        return cls(
            exec_id=str(data.get("exec_id", "")),
            argv=[str(a) for a in argv] if isinstance(argv, list) else [],
            state=str(data.get("state", "")),
            exit_code=_opt_int(data.get("exit_code")),
            signal=_opt_int(data.get("signal")),
            raw=dict(data),
        )
