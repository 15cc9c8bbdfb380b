"""Tests that need no daemon: host and token resolution, error mapping, NDJSON
parsing, request building, tar safety, and the client flows against an in-process
fake of the HTTP API (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

import httpx
import pytest

import voidbox
from voidbox import (
    AsyncSandbox,
    BadRequest,
    CapacityError,
    CommandDenied,
    ConfigError,
    DaemonUnavailable,
    NotFound,
    PathDenied,
    Sandbox,
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
from voidbox import _protocol as P
from voidbox._config import ConnectionConfig, default_socket_path, load_token, parse_host, resolve_config
from voidbox._errors import error_from_body
from voidbox._tar import pack_dir, safe_extract

# --------------------------------------------------------------------------- hosts, tokens


@pytest.mark.parametrize(
    "host, expected",
    [
        ("unix:///run/voidbox/api.sock", ("http://voidbox", "/run/voidbox/api.sock")),
        ("unix:/tmp/x.sock", ("http://voidbox", "/tmp/x.sock")),
        ("/tmp/y.sock", ("http://voidbox", "/tmp/y.sock")),
        ("http://127.0.0.1:8080", ("http://127.0.0.1:8080", None)),
        ("http://127.0.0.1:8080/", ("http://127.0.0.1:8080", None)),
        ("https://localhost:9/", ("https://localhost:9", None)),
        ("127.0.0.1:7000", ("http://127.0.0.1:7000", None)),
        ("  http://[::1]:5000  ", ("http://[::1]:5000", None)),
    ],
)
def test_parse_host(host: str, expected: Tuple[str, Optional[str]]) -> None:
    assert parse_host(host) == expected


@pytest.mark.parametrize("host", ["", "unix://relative/api.sock", "ftp://host:1", "http://"])
def test_parse_host_refuses(host: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_host(host)
    assert isinstance(e.value, VoidboxError)
    assert e.value.code == "config"


def test_default_socket_path() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_socket_path(env, uid=1000) == "/run/user/1000/voidbox/api.sock"
    assert default_socket_path(env, uid=0) == "/run/voidbox/api.sock"
    assert default_socket_path({}, uid=1000) == "/run/voidbox/api.sock"
    assert default_socket_path({"XDG_RUNTIME_DIR": ""}, uid=1000) == "/run/voidbox/api.sock"


def test_resolve_config_env_and_overrides(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("filetoken\n")
    env = {"VOIDBOX_HOST": "http://127.0.0.1:1234", "VOIDBOX_TOKEN_FILE": str(token_file)}
    c = resolve_config(env=env)
    assert (c.base_url, c.uds, c.token) == ("http://127.0.0.1:1234", None, "filetoken")
    assert c.headers()["Authorization"] == "Bearer filetoken"
    assert "filetoken" not in repr(c)

    env["VOIDBOX_TOKEN"] = "envtoken"
    assert resolve_config(env=env).token == "envtoken"
    c = resolve_config(host="unix:///x/api.sock", token="argtoken", env=env)
    assert (c.base_url, c.uds, c.token) == ("http://voidbox", "/x/api.sock", "argtoken")
    assert c.display == "unix:///x/api.sock"

    c = resolve_config(env={"XDG_RUNTIME_DIR": "/run/user/5"})
    assert c.uds == default_socket_path({"XDG_RUNTIME_DIR": "/run/user/5"})
    assert c.token is None
    assert "Authorization" not in c.headers()


def test_resolve_config_uses_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOIDBOX_HOST", "unix:///tmp/from-env.sock")
    monkeypatch.delenv("VOIDBOX_TOKEN", raising=False)
    monkeypatch.delenv("VOIDBOX_TOKEN_FILE", raising=False)
    assert resolve_config().uds == "/tmp/from-env.sock"


def test_token_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the token file"):
        load_token({"VOIDBOX_TOKEN_FILE": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        load_token({"VOIDBOX_TOKEN_FILE": str(empty)})
    assert load_token({}) is None


# --------------------------------------------------------------------------- errors


def _body(code: str, message: str = "the message") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    "status, code, cls",
    [
        (400, "bad_request", BadRequest),
        (401, "unauthorized", Unauthorized),
        (403, "command_denied", CommandDenied),
        (403, "path_denied", PathDenied),
        (404, "not_found", NotFound),
        (409, "sandbox_dead", SandboxDead),
        (413, "too_large", TooLarge),
        (429, "too_many_sandboxes", CapacityError),
        (429, "too_many_execs", CapacityError),
        (503, "out_of_capacity", CapacityError),
        (504, "timeout", Timeout),
        (500, "internal", ServerError),
    ],
)
def test_error_mapping(status: int, code: str, cls: type) -> None:
    err = error_from_body(status, _body(code, "what happened and the fix"))
    assert type(err) is cls
    assert isinstance(err, VoidboxError)
    assert (err.status, err.code, err.message) == (status, code, "what happened and the fix")
    assert "what happened and the fix" in str(err)


def test_error_mapping_fallbacks() -> None:
    err = error_from_body(502, b"<html>bad gateway</html>")
    assert type(err) is ServerError and err.status == 502 and "bad gateway" in err.message
    err = error_from_body(418, _body("teapot"))
    assert type(err) is VoidboxError and err.code == "teapot"
    err = error_from_body(429, b"{}")
    assert type(err) is CapacityError and err.code == "http_429"
    err = error_from_body(404, _body("not_found"), sandbox_missing=True)
    assert type(err) is SandboxNotFound and isinstance(err, NotFound)
    err = error_from_body(400, json.dumps({"error": "plain text"}).encode())
    assert type(err) is BadRequest and err.message == "plain text"


# --------------------------------------------------------------------------- NDJSON


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_ndjson_decoder_splits_lines_across_chunks() -> None:
    d = P.NdjsonDecoder()
    data = b'{"type":"stdout","data":"a"}\n\n{"type":"exit","exit_code":0}'
    events: List[Dict[str, Any]] = []
    for i in range(len(data)):
        events += d.feed(data[i : i + 1])
    assert events == [{"type": "stdout", "data": "a"}]
    assert d.finish() == [{"type": "exit", "exit_code": 0}]
    assert d.finish() == []
    with pytest.raises(TransportError):
        P.NdjsonDecoder().feed(b"not json\n")
    with pytest.raises(TransportError):
        P.parse_ndjson_line(b"[1, 2]")
    assert P.parse_ndjson_line(b"  \r") is None


def test_event_stream_decodes_base64_and_split_utf8() -> None:
    text = "é€ ok"
    raw = text.encode()
    lines: List[Dict[str, Any]] = [{"type": "stdout", "data": _b64(raw[i : i + 1])} for i in range(len(raw))]
    lines.append({"type": "stderr", "data": _b64(b"\xff")})
    lines.append({"type": "exit", "exit_code": 3, "signal": None, "duration_ms": 1500, "timed_out": False})
    lines.append({"type": "stdout", "data": _b64(b"after exit")})
    payload = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    c = P.OutputCollector()
    es = P.EventStream(c)
    seen: List[Tuple[str, str]] = []
    for i in range(0, len(payload), 7):
        seen += es.feed(payload[i : i + 7])
    seen += es.finish()
    assert "".join(t for s, t in seen if s == "stdout") == text
    assert "".join(t for s, t in seen if s == "stderr") == "\ufffd"
    r = c.result()
    assert (r.exit_code, r.stdout, r.stdout_bytes, r.stderr_bytes) == (3, text, raw, b"\xff")
    assert r.duration == 1.5 and not r.ok and not r.timed_out


def test_event_stream_utf8_encoding_and_error_events() -> None:
    c = P.OutputCollector(encoding="utf8")
    es = P.EventStream(c)
    assert es.feed(b'{"type":"stdout","data":"hi\\n"}\n') == [("stdout", "hi\n")]
    assert bytes(c.stdout) == b"hi\n"
    with pytest.raises(CommandDenied) as e:
        es.feed(b'{"type":"error","error":{"code":"command_denied","message":"no"}}\n')
    assert e.value.status == 403 and e.value.message == "no"
    with pytest.raises(Timeout):
        P.EventStream(P.OutputCollector()).feed(b'{"type":"error","code":"timeout","message":"late"}\n')
    with pytest.raises(ServerError):
        P.EventStream(P.OutputCollector()).feed(b'{"type":"error"}\n')
    with pytest.raises(TransportError):
        P.EventStream(P.OutputCollector()).feed(b'{"type":"stdout","data":"!!notbase64"}\n')


def test_output_collector_poll_offsets() -> None:
    c = P.OutputCollector()
    c.apply_poll({"state": "running", "stdout": _b64(b"abc"), "stderr": "", "stdout_next": 3,
                  "stderr_next": 0, "truncated": False, "encoding": "base64"})
    assert (c.stdout_next, c.exited) == (3, False)
    c.apply_poll({"state": "exited", "exit_code": None, "signal": 9, "stdout": "ZA==",
                  "stderr": "", "stdout_next": 10, "stderr_next": 0, "truncated": True,
                  "encoding": "base64"})
    r = c.result()
    assert (bytes(c.stdout), c.stdout_next, r.signal, r.exit_code, r.truncated) == (b"abcd", 10, 9, None, True)


# --------------------------------------------------------------------------- requests


def test_exec_call_bodies() -> None:
    call = P.exec_call("sb-1", "echo hi", stdin="x", timeout=2.5, env={"A": 1}, cwd="/tmp", user=0)  # type: ignore[dict-item]
    assert call.method == "POST" and call.path == "/v1/sandboxes/sb-1/exec"
    assert call.json == {"shell": "echo hi", "env": {"A": "1"}, "cwd": "/tmp", "user": "0",
                         "timeout_secs": 3, "stdin": _b64(b"x"), "encoding": "base64"}
    assert call.read_timeout == 2.5 + voidbox._config.EXEC_TIMEOUT_MARGIN
    assert "Accept" not in call.headers
    call = P.exec_call("sb-1", ["echo", "hi"], stream=True)
    assert call.json == {"argv": ["echo", "hi"], "encoding": "base64"}
    assert call.headers["Accept"] == "application/x-ndjson" and call.read_timeout is None
    call = P.exec_call("sb-1", ("sleep", "9"), background=True)
    assert call.json["background"] is True and call.read_timeout is not None
    bad: Any
    for bad in ([], "  ", b"echo"):
        with pytest.raises((ValueError, TypeError)):
            P.exec_call("sb-1", bad)
    with pytest.raises(ValueError):
        P.exec_call("sb-1", "x", timeout=-1)


def test_create_and_file_calls() -> None:
    call = P.create_call(image="alpine:3", memory_mb=256, vcpus=2, timeout=60, idle_timeout=30.2,
                         env={"K": "V"}, allow_commands=["/bin/echo"], user="root",
                         skills=[{"image": "s:1", "mount": "/skills/s"}, ("t:1", "/skills/t")])
    assert call.json == {"image": "alpine:3", "memory_mb": 256, "vcpus": 2, "timeout_secs": 60,
                         "idle_timeout_secs": 31, "env": {"K": "V"}, "allow_commands": ["/bin/echo"],
                         "user": "root", "skills": [{"image": "s:1", "mount": "/skills/s"},
                                                    {"image": "t:1", "mount": "/skills/t"}]}
    assert call.read_timeout == 600 and P.create_call().json == {}
    assert P.file_mode(0o644) == "0644" and P.file_mode(0o4755) == "4755" and P.file_mode("755") == "755"
    with pytest.raises(ValueError):
        P.file_mode("9z")
    call = P.file_write_call("sb-1", "/tmp/a b", b"x", mode=0o600)
    assert call.params == {"path": "/tmp/a b", "mode": "0600"} and call.method == "PUT"
    assert P.file_list_call("sb-1", "/tmp").params == {"path": "/tmp", "list": "true"}
    assert P.get_call("sb/../x").path == "/v1/sandboxes/sb%2F..%2Fx"
    call = P.signal_call("sb-1", "ex-1", "TERM")
    assert call.json == {"signal": "TERM"} and call.path.endswith("/execs/ex-1/signal")
    assert P.stdin_call("sb-1", "ex-1", b"", eof=True).json == {"data": "", "encoding": "base64", "eof": True}
    assert P.exec_get_call("s", "e", stdout_offset=5, follow=True).params == {
        "stdout_offset": "5", "stderr_offset": "0", "follow": "true"}


# --------------------------------------------------------------------------- tar


def _tar(members: List[Tuple[str, str, str]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, arg in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = arg.encode()
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, arg
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tf.addfile(info)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "members",
    [
        [("/etc/evil", "file", "x")],
        [("../evil", "file", "x")],
        [("a/../../evil", "file", "x")],
        [("link", "sym", "/etc")],
        [("link", "sym", "../..")],
        [("d/link", "sym", "../../x")],
        [("link", "sym", "."), ("link/x", "file", "x")],
        [("l", "sym", "."), ("m", "sym", "l/l/../..")],
        [("hard", "hard", "../x")],
        [("fifo", "fifo", "")],
    ],
)
def test_safe_extract_refuses_escapes(tmp_path: Path, members: List[Tuple[str, str, str]]) -> None:
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchive):
        safe_extract(_tar(members), dest)
    assert not (tmp_path / "evil").exists()


def test_pack_and_extract_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (src / "sub" / "deeper" / "c").write_text("C")
    os.symlink("a.txt", src / "alink")
    os.link(src / "a.txt", src / "sub" / "hard.txt")
    os.mkfifo(src / "fifo")
    (src / "sub" / "x.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "sub" / "x.sh", 0o755)
    spool, size = pack_dir(src)
    with spool:
        data = spool.read()
    assert len(data) == size
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        assert all(not n.startswith(("/", "./")) for n in names)
        assert {m.uname for m in tf.getmembers()} == {""}
        assert not any(m.islnk() for m in tf.getmembers())
    assert set(names) == {"a.txt", "alink", "empty", "sub", "sub/b.bin", "sub/deeper", "sub/deeper/c",
                          "sub/hard.txt", "sub/x.sh"}
    out = tmp_path / "out"
    safe_extract(io.BytesIO(data), out)
    assert (out / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert (out / "sub" / "hard.txt").read_text() == "A"
    assert os.readlink(out / "alink") == "a.txt" and (out / "empty").is_dir()
    assert os.stat(out / "sub" / "x.sh").st_mode & 0o100
    with pytest.raises(NotADirectoryError):
        pack_dir(src / "a.txt")


# --------------------------------------------------------------------------- fake daemon


class FakeDaemon:
    """Enough of the HTTP API to drive the clients."""

    def __init__(self) -> None:
        self.sandboxes: Dict[str, Dict[str, Any]] = {}
        self.files: Dict[str, Dict[str, bytes]] = {}
        self.execs: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self.requests: List[httpx.Request] = []
        self.n = 0

    @staticmethod
    def err(status: int, code: str, message: str) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": message}})

    def run(self, body: Dict[str, Any]) -> Tuple[List[Tuple[str, bytes]], Dict[str, Any]]:
        argv = body.get("argv") or ["/bin/sh", "-c", body["shell"]]
        argv = [os.path.basename(argv[0])] + argv[1:]
        stdin = base64.b64decode(body.get("stdin", ""))
        exit_: Dict[str, Any] = {"exit_code": 0, "signal": None, "duration_ms": 5, "timed_out": False}
        out: List[Tuple[str, bytes]] = []
        if argv[0] == "echo":
            out.append(("stdout", (" ".join(argv[1:]) + "\n").encode()))
        elif argv[0] == "cat":
            out.append(("stdout", stdin))
        elif argv[0] == "bin":
            out.append(("stdout", bytes(range(256))))
        elif argv[0] == "env":
            out.append(("stdout", json.dumps([body.get("env"), body.get("cwd"), body.get("user")]).encode()))
        elif argv[0] == "fail":
            out += [("stdout", b"partial"), ("stderr", b"bad\n")]
            exit_["exit_code"] = 3
        elif argv[-1] == "sleep 100":
            exit_.update(exit_code=None, signal=9, timed_out=True)
        return out, exit_

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        parts = [unquote(p) for p in request.url.raw_path.split(b"?")[0].decode().split("/") if p]
        q = request.url.params
        if parts[:2] != ["v1", "sandboxes"]:
            return self.err(404, "not_found", "no such endpoint")
        if len(parts) == 2:
            if request.method == "GET":
                return httpx.Response(200, json={"sandboxes": list(self.sandboxes.values())})
            body = json.loads(request.content)
            if set(body) - {"image", "memory_mb", "env", "allow_commands", "user", "timeout_secs"}:
                return self.err(400, "bad_request", "unknown field")
            self.n += 1
            sid = f"sb-{self.n:016x}"
            self.sandboxes[sid] = {"id": sid, "state": "running", "memory_mb": body.get("memory_mb", 512),
                                   "vcpus": 1, "image": body.get("image"), "boot_ms": 10, "error": None,
                                   "allow": body.get("allow_commands")}
            self.files[sid] = {}
            self.execs[sid] = {}
            return httpx.Response(201, json=self.sandboxes[sid])
        sid = parts[2]
        if sid not in self.sandboxes:
            return self.err(404, "not_found", f"no sandbox {sid}")
        rest = parts[3:]
        if not rest:
            if request.method == "DELETE":
                del self.sandboxes[sid]
                return httpx.Response(204)
            return httpx.Response(200, json=self.sandboxes[sid])
        if rest == ["exec"]:
            body = json.loads(request.content)
            assert body["encoding"] == "base64"
            allow = self.sandboxes[sid]["allow"]
            prog = (body.get("argv") or ["/bin/sh"])[0]
            if allow is not None and prog not in allow:
                return self.err(403, "command_denied", f"`{prog}` is not allowed")
            if body.get("background"):
                eid = f"ex-{len(self.execs[sid]) + 1}"
                self.execs[sid][eid] = {"argv": body.get("argv"), "state": "running", "exit_code": None,
                                        "signal": None, "stdout": b"", "stderr": b""}
                return httpx.Response(202, json={"exec_id": eid})
            out, exit_ = self.run(body)
            if request.headers.get("accept") == "application/x-ndjson":
                lines = [{"type": s, "data": _b64(d)} for s, d in out] + [dict(type="exit", **exit_)]
                return httpx.Response(200, headers={"content-type": "application/x-ndjson"},
                                      content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))
            answer = dict(exit_, stdout=_b64(b"".join(d for s, d in out if s == "stdout")),
                          stderr=_b64(b"".join(d for s, d in out if s == "stderr")),
                          truncated=False, encoding="base64")
            return httpx.Response(200, json=answer)
        if rest[0] == "execs":
            if len(rest) == 1:
                return httpx.Response(200, json={"execs": [
                    {"exec_id": k, "argv": v["argv"], "state": v["state"], "exit_code": v["exit_code"],
                     "signal": v["signal"]} for k, v in self.execs[sid].items()]})
            ex = self.execs[sid].get(rest[1])
            if ex is None:
                return self.err(404, "not_found", f"no exec {rest[1]}")
            if rest[2:] == ["stdin"]:
                body = json.loads(request.content)
                ex["stdout"] += base64.b64decode(body["data"])
                if body["eof"]:
                    ex.update(state="exited", exit_code=0)
                return httpx.Response(204)
            if rest[2:] == ["signal"]:
                ex.update(state="exited", exit_code=None, signal=9)
                return httpx.Response(204)
            so, se = int(q.get("stdout_offset", 0)), int(q.get("stderr_offset", 0))
            if q.get("follow") == "true":
                assert ex["state"] == "exited", "the fake cannot block"
                lines = []
                if ex["stdout"][so:]:
                    lines.append({"type": "stdout", "data": _b64(ex["stdout"][so:])})
                lines.append({"type": "exit", "exit_code": ex["exit_code"], "signal": ex["signal"],
                              "duration_ms": 7, "timed_out": False})
                return httpx.Response(200, headers={"content-type": "application/x-ndjson"},
                                      content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))
            return httpx.Response(200, json={
                "exec_id": rest[1], "state": ex["state"], "exit_code": ex["exit_code"], "signal": ex["signal"],
                "stdout": _b64(ex["stdout"][so:]), "stderr": _b64(ex["stderr"][se:]),
                "stdout_next": len(ex["stdout"]), "stderr_next": len(ex["stderr"]),
                "truncated": False, "encoding": "base64"})
        if rest == ["files"]:
            files = self.files[sid]
            path = q["path"]
            if not path.startswith("/") or ".." in path.split("/"):
                return self.err(403, "path_denied", "bad path")
            if request.method == "PUT":
                if request.headers.get("content-type") == "application/x-tar":
                    with tarfile.open(fileobj=io.BytesIO(request.content)) as tf:
                        for m in tf.getmembers():
                            if m.isfile():
                                f = tf.extractfile(m)
                                assert f is not None
                                files[path.rstrip("/") + "/" + m.name] = f.read()
                else:
                    files[path] = request.content
                return httpx.Response(204)
            if path in files:
                return httpx.Response(200, content=files[path], headers={"content-type": "application/octet-stream"})
            prefix = path.rstrip("/") + "/"
            under = {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}
            if not under:
                return self.err(404, "not_found", f"{path} does not exist")
            if q.get("list") == "true":
                names = sorted({k.split("/")[0] for k in under})
                return httpx.Response(200, json={"entries": [
                    {"name": n, "type": "file" if n in under else "dir", "size": len(under.get(n, b"")),
                     "mode": 420, "mtime": 1700000000} for n in names]})
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tf:
                for name, data in sorted(under.items()):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            return httpx.Response(200, content=buf.getvalue(), headers={"content-type": "application/x-tar"})
        return self.err(404, "not_found", "no such endpoint")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    daemon = FakeDaemon()
    transport = httpx.MockTransport(daemon.handle)

    def sync_client(self: ConnectionConfig) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, transport=transport, headers=self.headers())

    def async_client(self: ConnectionConfig) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, transport=transport, headers=self.headers())

    monkeypatch.setattr(ConnectionConfig, "sync_client", sync_client)
    monkeypatch.setattr(ConnectionConfig, "async_client", async_client)
    return daemon


def test_fake_sync_flow(fake: FakeDaemon, tmp_path: Path) -> None:
    with Sandbox.create(memory_mb=256, host="http://127.0.0.1:9", token="t0k") as sb:
        assert sb.id.startswith("sb-") and sb.info().memory_mb == 256
        assert fake.requests[0].headers["authorization"] == "Bearer t0k"
        assert [s.id for s in Sandbox.list(host="http://127.0.0.1:9")] == [sb.id]
        r = sb.exec(["echo", "hi"])
        assert (r.exit_code, r.stdout, r.stderr, r.ok) == (0, "hi\n", "", True)
        r = sb.exec("sleep 100", timeout=1)
        assert r.timed_out and r.exit_code is None and r.signal == 9
        assert sb.exec(["bin"]).stdout_bytes == bytes(range(256))
        assert sb.exec(["cat"], stdin=b"\x00\x01").stdout_bytes == b"\x00\x01"
        assert json.loads(sb.exec(["env"], env={"A": "1"}, cwd="/tmp", user="root").stdout) == [
            {"A": "1"}, "/tmp", "root"]
        seen: List[str] = []
        r = sb.exec(["fail"], on_stdout=seen.append, on_stderr=lambda t: seen.append("E:" + t))
        assert seen == ["partial", "E:bad\n"] and r.exit_code == 3 and r.stderr == "bad\n"

        p = sb.exec(["cat"], background=True)
        assert p.running and p.id == "ex-1" and p.argv == ["cat"]
        p.write_stdin("hello ")
        assert p.poll() is None and p.stdout == "hello "
        p.write_stdin(b"world")
        p.close_stdin()
        r = p.wait(timeout=10)
        assert (r.stdout, r.exit_code, p.running, p.stdout) == ("hello world", 0, False, "hello world")
        p2 = sb.exec("sleep 100", background=True)
        p2.kill()
        assert p2.wait().signal == 9 and p2.signal_number == 9
        assert [(x.id, x.running) for x in sb.processes()] == [("ex-1", False), ("ex-2", False)]
        p3 = sb.exec(["cat"], background=True, stdin="given")
        assert p3.output() == ("given", "") and not p3.running

        sb.files.write("/tmp/d/a.txt", "A", mode=0o644)
        assert fake.requests[-1].url.params["mode"] == "0644"
        sb.files.write("/tmp/d/b.bin", bytes(range(256)))
        assert sb.files.read("/tmp/d/b.bin") == bytes(range(256))
        entries = sb.files.list("/tmp/d")
        assert [(e.name, e.type, e.size, e.mode) for e in entries] == [("a.txt", "file", 1, 0o644), ("b.bin", "file", 256, 0o644)]
        src = tmp_path / "src"
        (src / "s").mkdir(parents=True)
        (src / "s" / "x").write_text("X")
        sb.files.write_dir("/tmp/up", src)
        assert fake.requests[-1].headers["content-type"] == "application/x-tar"
        assert sb.files.read("/tmp/up/s/x") == b"X"
        sb.files.read_dir("/tmp/up", tmp_path / "down")
        assert (tmp_path / "down" / "s" / "x").read_text() == "X"
        with pytest.raises(VoidboxError, match="not a directory"):
            sb.files.read_dir("/tmp/up/s/x", tmp_path / "down2")
        with pytest.raises(NotFound) as e:
            sb.files.read("/tmp/missing")
        assert type(e.value) is NotFound and e.value.status == 404
        with pytest.raises(PathDenied):
            sb.files.read("tmp/relative")
        sid = sb.id
    assert sid not in [s.id for s in Sandbox.list(host="http://127.0.0.1:9")]
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sid, host="http://127.0.0.1:9")
    with pytest.raises(SandboxNotFound):
        sb.exec(["echo"])  # a sub-resource 404 told apart by asking for the sandbox
    with pytest.raises(BadRequest):
        Sandbox.create(vcpus=2, host="http://127.0.0.1:9")


def test_fake_command_denied_and_missing_exec(fake: FakeDaemon) -> None:
    sb = Sandbox.create(allow_commands=["/bin/echo"], host="http://127.0.0.1:9")
    assert sb.exec(["/bin/echo", "ok"]).stdout == "ok\n"
    with pytest.raises(CommandDenied) as e:
        sb.exec(["cat"])
    assert e.value.code == "command_denied" and e.value.status == 403
    with pytest.raises(CommandDenied):
        sb.exec(["cat"], on_stdout=print)
    p = voidbox.Process(sb, "ex-404")
    with pytest.raises(NotFound) as e2:
        p.poll()
    assert type(e2.value) is NotFound
    with pytest.raises(ValueError):
        sb.exec(["cat"], background=True, on_stdout=print)
    sb.kill()
    sb.close()


def test_fake_async_flow(fake: FakeDaemon, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSandbox.create(host="http://127.0.0.1:9") as sb:
            assert (await sb.info()).state == "running"
            assert (await sb.exec("echo hi")).stdout == "" and (await sb.exec(["echo", "x"])).stdout == "x\n"
            seen: List[str] = []

            async def on_err(t: str) -> None:
                seen.append("E:" + t)

            r = await sb.exec(["fail"], on_stdout=seen.append, on_stderr=on_err)
            assert seen == ["partial", "E:bad\n"] and r.exit_code == 3
            p = await sb.exec(["cat"], background=True)
            await p.write_stdin("abc")
            await p.close_stdin()
            assert (await p.wait()).stdout == "abc"
            await sb.files.write("/tmp/f", b"\x00F")
            assert await sb.files.read("/tmp/f") == b"\x00F"
            assert [e.name for e in await sb.files.list("/tmp")] == ["f"]
            (tmp_path / "src").mkdir()
            (tmp_path / "src" / "y").write_text("Y")
            await sb.files.write_dir("/tmp/up", tmp_path / "src")
            await sb.files.read_dir("/tmp/up", tmp_path / "down")
            assert (tmp_path / "down" / "y").read_text() == "Y"
            sid = sb.id
            assert sid in [s.id for s in await AsyncSandbox.list()]
        assert sid not in [s.id for s in await AsyncSandbox.list()]
        with pytest.raises(SandboxNotFound):
            await AsyncSandbox.connect(sid)
        sb2 = await AsyncSandbox.create()
        await sb2.kill()
        with pytest.raises(SandboxNotFound):
            await sb2.exec(["echo"])
        await sb2.close()

    os.environ.pop("VOIDBOX_TOKEN", None)
    asyncio.run(main())


def test_daemon_unavailable(tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    with pytest.raises(DaemonUnavailable) as e:
        Sandbox.list(host=f"unix://{sock}")
    assert "voidbox serve" in e.value.message and e.value.status is None
    with pytest.raises(DaemonUnavailable):
        asyncio.run(AsyncSandbox.list(host=f"unix://{sock}"))
