"""Where the daemon is and how to authenticate: ``VOIDBOX_HOST``, ``VOIDBOX_TOKEN``,
``VOIDBOX_TOKEN_FILE`` and the default socket; the httpx clients built from that."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional
from urllib.parse import urlsplit

import httpx

from ._errors import ConfigError

__all__ = [
    "ConnectionConfig",
    "resolve_config",
    "parse_host",
    "load_token",
    "default_socket_path",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_CREATE_TIMEOUT",
    "EXEC_TIMEOUT_MARGIN",
]

#: Seconds to open a connection.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Seconds between two reads of an answer (the whole request can take longer).
DEFAULT_READ_TIMEOUT = 600.0
#: Seconds ``create`` waits for the sandbox to boot (nested lanes can be slow).
DEFAULT_CREATE_TIMEOUT = 600.0
#: Seconds added to an exec's own ``timeout`` before the client gives up on the answer.
EXEC_TIMEOUT_MARGIN = 60.0

#: The ``Host`` of requests sent over a Unix socket.
UDS_BASE_URL = "http://voidbox"


@dataclass(frozen=True)
class ConnectionConfig:
    """Where requests go: ``base_url``, plus the socket path for ``unix://`` hosts."""

    base_url: str
    uds: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The host as a person would write it."""
        return f"unix://{self.uds}" if self.uds is not None else self.base_url

    def headers(self) -> Dict[str, str]:
        """Headers sent with every request."""
        headers = {"User-Agent": "voidbox-python"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def timeout(self) -> httpx.Timeout:
        """The client's default timeouts (requests override the read timeout)."""
        return httpx.Timeout(
            connect=DEFAULT_CONNECT_TIMEOUT,
            read=DEFAULT_READ_TIMEOUT,
            write=DEFAULT_READ_TIMEOUT,
            pool=DEFAULT_READ_TIMEOUT,
        )

    def sync_client(self) -> httpx.Client:
        """A new :class:`httpx.Client` for this daemon."""
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds is not None else None
        return httpx.Client(
            base_url=self.base_url,
            transport=transport,
            headers=self.headers(),
            timeout=self.timeout(),
            trust_env=False,
        )

    def async_client(self) -> httpx.AsyncClient:
        """A new :class:`httpx.AsyncClient` for this daemon."""
        transport = (
            httpx.AsyncHTTPTransport(uds=self.uds) if self.uds is not None else None
        )
        return httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            headers=self.headers(),
            timeout=self.timeout(),
            trust_env=False,
        )


def default_socket_path(env: Optional[Mapping[str, str]] = None, uid: Optional[int] = None) -> str:
    """``$XDG_RUNTIME_DIR/voidbox/api.sock``, or ``/run/voidbox/api.sock`` for root
    or when ``XDG_RUNTIME_DIR`` is unset."""
    env = os.environ if env is None else env
    if uid is None:
        uid = os.getuid() if hasattr(os, "getuid") else -1
    runtime = env.get("XDG_RUNTIME_DIR")
    if uid == 0 or not runtime:
        return "/run/voidbox/api.sock"
    return os.path.join(runtime, "voidbox", "api.sock")


def parse_host(host: str) -> "tuple[str, Optional[str]]":
    """``(base_url, uds_path)`` for a host string.

    ``unix:///path/api.sock`` (or a bare absolute path) is a Unix socket;
    ``http://HOST:PORT`` / ``https://...`` is TCP (``HOST:PORT`` alone means http).
    """
    host = host.strip()
    if not host:
        raise ConfigError("the voidbox host is empty: set VOIDBOX_HOST to unix:///path/api.sock or http://127.0.0.1:PORT")
    if host.startswith("/"):
        return UDS_BASE_URL, host
    if host.startswith("unix:"):
        path = host[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ConfigError(
                f"bad voidbox host {host!r}: a socket path must be absolute, as in unix:///run/voidbox/api.sock"
            )
        return UDS_BASE_URL, path
    if "://" not in host:
        host = "http://" + host
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"bad voidbox host {host!r}: use unix:///path/api.sock or http://127.0.0.1:PORT"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}", None


def load_token(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The token from ``VOIDBOX_TOKEN``, else from the file ``VOIDBOX_TOKEN_FILE`` names."""
    env = os.environ if env is None else env
    token = env.get("VOIDBOX_TOKEN")
    if token:
        return token.strip()
    path = env.get("VOIDBOX_TOKEN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the token file {path!r} (VOIDBOX_TOKEN_FILE): {e}") from e
        if not text:
            raise ConfigError(f"the token file {path!r} (VOIDBOX_TOKEN_FILE) is empty")
        return text
    return None


def resolve_config(
    host: Optional[str] = None,
    token: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
) -> ConnectionConfig:
    """The connection: explicit ``host``/``token`` first, then the environment,
    then the default socket."""
    env = os.environ if env is None else env
    if host is None:
        host = env.get("VOIDBOX_HOST") or None
    uds: Optional[str]
    if host is None:
        base_url, uds = UDS_BASE_URL, default_socket_path(env)
    else:
        base_url, uds = parse_host(host)
    if token is None:
        token = load_token(env)
    return ConnectionConfig(base_url=base_url, uds=uds, token=token or None)
