"""Python client of the voidbox daemon (``voidbox serve``): microVM sandboxes.

    from voidbox import Sandbox

    with Sandbox.create() as sb:
        print(sb.exec("echo hi").stdout)
"""

from ._async import AsyncFiles, AsyncProcess, AsyncSandbox, AsyncSandboxCreation
from ._config import ConnectionConfig, default_socket_path, resolve_config
from ._errors import (
    BadRequest,
    CapacityError,
    CommandDenied,
    ConfigError,
    DaemonUnavailable,
    NotFound,
    PathDenied,
    SandboxDead,
    SandboxNotFound,
    ServerError,
    Timeout,
    TooLarge,
    TransportError,
    Unauthorized,
    UnsafeArchive,
    VoidboxError,
)
from ._models import ExecInfo, ExecResult, FileEntry, SandboxInfo
from ._sync import Files, Process, Sandbox

__version__ = "0.1.0"

__all__ = [
    "Sandbox",
    "Process",
    "Files",
    "AsyncSandbox",
    "AsyncProcess",
    "AsyncFiles",
    "AsyncSandboxCreation",
    "ExecResult",
    "SandboxInfo",
    "FileEntry",
    "ExecInfo",
    "ConnectionConfig",
    "resolve_config",
    "default_socket_path",
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
    "__version__",
]
