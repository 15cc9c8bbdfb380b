"""Exceptions raised by the SDK, all deriving from :class:`VoidboxError`."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple, Type

__all__ = [
    "VoidboxError",
    "BadRequest",
    "Unauthorized",
    "CommandDenied",
    "PathDenied",
    "NotFound",
    "SandboxNotFound",
    "SandboxDead",
    "TooLarge",
    "CapacityError",
    "Timeout",
    "ServerError",
    "DaemonUnavailable",
    "TransportError",
    "ConfigError",
    "UnsafeArchive",
    "error_from_body",
]


class VoidboxError(Exception):
    """Base of every SDK error.

    ``code`` is the daemon's error code (``"command_denied"``, ...) or a client-side
    one (``"daemon_unavailable"``, ``"timeout"``, ...); ``status`` is the HTTP status
    (``None`` when the error happened on the client side); ``message`` is the text.
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: str = code if code is not None else self.default_code
        self.status: Optional[int] = status

    def __str__(self) -> str:
        if self.status is not None:
            return f"{self.message} ({self.status} {self.code})"
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"status={self.status!r})"
        )


class BadRequest(VoidboxError):
    """400 ``bad_request``: bad JSON, unknown field, wrong type, value out of range."""

    default_code = "bad_request"


class Unauthorized(VoidboxError):
    """401 ``unauthorized``: missing or wrong bearer token."""

    default_code = "unauthorized"


class CommandDenied(VoidboxError):
    """403 ``command_denied``: the program is not in the sandbox's ``allow_commands``."""

    default_code = "command_denied"


class PathDenied(VoidboxError):
    """403 ``path_denied``: a guest path outside what the agent allows."""

    default_code = "path_denied"


class NotFound(VoidboxError):
    """404 ``not_found``: unknown exec id or guest path (see :class:`SandboxNotFound`)."""

    default_code = "not_found"


class SandboxNotFound(NotFound):
    """404 ``not_found`` for the sandbox itself (unknown or already destroyed)."""


class SandboxDead(VoidboxError):
    """409 ``sandbox_dead``: the sandbox's VM stopped; only ``info()`` and ``kill()`` work."""

    default_code = "sandbox_dead"


class TooLarge(VoidboxError):
    """413 ``too_large``: a body or file past its limit."""

    default_code = "too_large"


class CapacityError(VoidboxError):
    """429 ``too_many_sandboxes`` / ``too_many_execs`` or 503 ``out_of_capacity``."""

    default_code = "out_of_capacity"


class Timeout(VoidboxError):
    """504 ``timeout`` from the daemon, or a client-side deadline that passed."""

    default_code = "timeout"


class ServerError(VoidboxError):
    """500 ``internal`` (the daemon's log has the details) or another 5xx."""

    default_code = "internal"


class DaemonUnavailable(VoidboxError):
    """The daemon cannot be reached (no socket, connection refused)."""

    default_code = "daemon_unavailable"


class TransportError(VoidboxError):
    """The connection to the daemon broke mid-request, or it answered nonsense."""

    default_code = "transport"


class ConfigError(VoidboxError):
    """The connection settings (``VOIDBOX_HOST``, token) are unusable."""

    default_code = "config"


class UnsafeArchive(VoidboxError):
    """A tar from the sandbox holds a member that would land outside the target."""

    default_code = "unsafe_archive"


_BY_CODE: Dict[str, Type[VoidboxError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "command_denied": CommandDenied,
    "path_denied": PathDenied,
    "not_found": NotFound,
    "sandbox_dead": SandboxDead,
    "too_large": TooLarge,
    "too_many_sandboxes": CapacityError,
    "too_many_execs": CapacityError,
    "out_of_capacity": CapacityError,
    "timeout": Timeout,
    "internal": ServerError,
}

_BY_STATUS: Dict[int, Type[VoidboxError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: SandboxDead,
    413: TooLarge,
    429: CapacityError,
    503: CapacityError,
    504: Timeout,
}


def _error_class(status: Optional[int], code: str) -> Type[VoidboxError]:
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status == 403:
            return CommandDenied if "command" in code else PathDenied
        if status >= 500:
            return ServerError
    return VoidboxError


def error_from_fields(
    status: Optional[int],
    code: Optional[str],
    message: Optional[str],
    *,
    sandbox_missing: bool = False,
) -> VoidboxError:
    """The exception for an error ``code``/``message`` answered with ``status``.

    ``sandbox_missing`` turns a ``not_found`` into :class:`SandboxNotFound`.
    """
    code = code or (f"http_{status}" if status is not None else "error")
    message = message or (f"the daemon answered HTTP {status}" if status else "error")
    cls = _error_class(status, code)
    if sandbox_missing and issubclass(cls, NotFound):
        cls = SandboxNotFound
    return cls(message, code=code, status=status)


def parse_error_payload(payload: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(code, message)`` out of ``{"error": {"code", "message"}}``; also takes
    ``{"error": "message", "code": ...}`` and the flat ``{"code", "message"}``."""
    if not isinstance(payload, dict):
        return None, None
    err: Any = payload.get("error")
    if isinstance(err, dict):
        code, message = err.get("code"), err.get("message")
    elif isinstance(err, str):
        code, message = payload.get("code"), err
    else:
        code, message = payload.get("code"), payload.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )


def error_from_body(
    status: int, body: bytes, *, sandbox_missing: bool = False
) -> VoidboxError:
    """The exception for an error answer: ``status`` and its raw ``body``."""
    code: Optional[str] = None
    message: Optional[str] = None
    try:
        code, message = parse_error_payload(json.loads(body.decode("utf-8")))
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        message = text[:2000] or None
    return error_from_fields(status, code, message, sandbox_missing=sandbox_missing)
