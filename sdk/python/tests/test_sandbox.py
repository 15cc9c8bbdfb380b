"""The blocking client against a real daemon (see conftest.py). VM boots are slow,
so one sandbox serves most tests; the whole suite boots at most three."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from conftest import Daemon
from voidbox import (
    BadRequest,
    CommandDenied,
    ExecResult,
    NotFound,
    PathDenied,
    Process,
    Sandbox,
    SandboxNotFound,
    Timeout,
    VoidboxError,
)


@pytest.fixture(scope="module")
def sb(daemon: Daemon) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=1800, idle_timeout=900)
    try:
        yield sandbox
    finally:
        try:
            sandbox.kill()
        finally:
            sandbox.close()


def _until_exited(p: Process, seconds: float = 60.0) -> ExecResult:
    end = time.monotonic() + seconds
    while True:
        result = p.poll()
        if result is not None:
            return result
        assert time.monotonic() < end, f"{p} still running after {seconds} s"
        time.sleep(0.2)


# --------------------------------------------------------------------------- sandboxes


def test_info_list_connect(sb: Sandbox) -> None:
    info = sb.info()
    assert info.id == sb.id and sb.id.startswith("sb-")
    assert info.state == "running" and info.running
    assert info.timeout_secs == 1800 and info.idle_timeout_secs == 900
    assert sb.id in [s.id for s in Sandbox.list()]
    other = Sandbox.connect(sb.id)
    try:
        assert other.id == sb.id
        assert other.exec(["echo", "same"]).stdout == "same\n"
    finally:
        other.close()


def test_unknown_sandbox(daemon: Daemon) -> None:
    with pytest.raises(SandboxNotFound) as e:
        Sandbox.connect("sb-doesnotexist")
    assert isinstance(e.value, NotFound) and isinstance(e.value, VoidboxError)
    assert e.value.status == 404 and e.value.code == "not_found" and e.value.message


# --------------------------------------------------------------------------- exec


def test_exec_argv_and_shell(sb: Sandbox) -> None:
    r = sb.exec(["echo", "hi", "there"])
    assert (r.exit_code, r.stdout, r.stderr, r.signal) == (0, "hi there\n", "", None)
    assert r.ok and not r.timed_out and not r.truncated and r.duration >= 0
    r = sb.exec("echo hello | tr a-z A-Z && echo 'two words'")
    assert r.stdout == "HELLO\ntwo words\n"
    r = sb.exec(["sh", "-c", "echo $0 $1", "zero", "one"])
    assert r.stdout == "zero one\n"


def test_exit_codes_and_stderr(sb: Sandbox) -> None:
    assert sb.exec("exit 7").exit_code == 7
    r = sb.exec("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    r = sb.exec(["ls", "/does-not-exist"])
    assert r.exit_code != 0 and r.stderr
    r = sb.exec("kill -9 $$")
    assert r.exit_code is None and r.signal == 9


def test_env_cwd_user(sb: Sandbox) -> None:
    assert sb.exec("echo $FOO-$BAR", env={"FOO": "foo", "BAR": "b a r"}).stdout == "foo-b a r\n"
    assert sb.exec("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sb.exec(["id", "-u"]).stdout == "65534\n"
    assert sb.exec(["id", "-u"], user="root").stdout == "0\n"
    assert sb.exec("id -u", user="1234:1234").stdout == "1234\n"


def test_stdin(sb: Sandbox) -> None:
    assert sb.exec(["cat"], stdin="hello\nworld").stdout == "hello\nworld"
    data = bytes(range(256)) * 4
    r = sb.exec(["cat"], stdin=data)
    assert r.stdout_bytes == data
    assert sb.exec("tr a-z A-Z", stdin="shout").stdout == "SHOUT"


def test_binary_output_is_exact(sb: Sandbox) -> None:
    r = sb.exec("head -c 100000 /dev/urandom | tee /tmp/r | cat")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout_bytes) == 100000
    assert r.stdout_bytes == sb.files.read("/tmp/r")
    assert isinstance(r.stdout, str)
    r = sb.exec("head -c 3 /tmp/r >&2")
    assert r.stderr_bytes == sb.files.read("/tmp/r")[:3]


def test_streaming_callbacks_get_output_before_exit(sb: Sandbox) -> None:
    seen: List[Tuple[float, str, str]] = []
    r = sb.exec(
        "echo a; sleep 2; echo b; echo e >&2",
        on_stdout=lambda t: seen.append((time.monotonic(), "out", t)),
        on_stderr=lambda t: seen.append((time.monotonic(), "err", t)),
    )
    returned = time.monotonic()
    assert r.exit_code == 0
    assert r.stdout == "a\nb\n" and r.stderr == "e\n"
    assert "".join(t for _, s, t in seen if s == "out") == "a\nb\n"
    assert "".join(t for _, s, t in seen if s == "err") == "e\n"
    got_a = next(i for i, (_, s, t) in enumerate(seen) if s == "out" and "a" in t)
    got_b = next(i for i, (_, s, t) in enumerate(seen) if s == "out" and "b" in t)
    # `a` came by itself, before `b`, while the command was still sleeping.
    assert got_a < got_b and "b" not in seen[got_a][2]
    assert seen[got_a][0] < seen[got_b][0] <= returned


def test_exec_timeout(sb: Sandbox) -> None:
    r = sb.exec("echo started; sleep 60", timeout=2)
    assert r.timed_out is True
    assert not r.ok and r.stdout == "started\n"
    seen: List[str] = []
    r = sb.exec(["sleep", "60"], timeout=1, on_stdout=seen.append)
    assert r.timed_out is True and seen == []


# --------------------------------------------------------------------------- background


def test_background_cat_stdin(sb: Sandbox) -> None:
    p = sb.exec(["cat"], background=True)
    assert isinstance(p, Process) and p.id and p.running
    p.write_stdin("hello ")
    p.write_stdin(b"world\n")
    p.close_stdin()
    r = p.wait(timeout=60)
    assert (r.exit_code, r.stdout, r.signal) == (0, "hello world\n", None)
    assert not p.running and p.exit_code == 0 and p.stdout == "hello world\n"
    assert p.output() == ("hello world\n", "")
    assert p.id in [q.id for q in sb.processes()]


def test_background_poll_accumulates(sb: Sandbox) -> None:
    p = sb.exec("echo one; sleep 1; echo two >&2; sleep 1; echo three", background=True)
    r = _until_exited(p)
    assert (r.exit_code, r.stdout, r.stderr) == (0, "one\nthree\n", "two\n")
    assert p.stdout == "one\nthree\n" and p.stderr_bytes == b"two\n"
    assert p.poll() is not None and p.stdout == "one\nthree\n"  # nothing read twice


def test_background_stdin_argument(sb: Sandbox) -> None:
    p = sb.exec(["tr", "a-z", "A-Z"], background=True, stdin="given then closed")
    assert p.wait(timeout=60).stdout == "GIVEN THEN CLOSED"


def test_background_kill_and_signal(sb: Sandbox) -> None:
    p = sb.exec(["sleep", "100"], background=True)
    with pytest.raises(Timeout):
        p.wait(timeout=1)
    assert p.poll() is None and p.running
    p.kill()
    r = p.wait(timeout=60)
    assert r.signal == 9 and r.exit_code is None
    assert p.signal_number == 9 and not p.running

    q = sb.exec(["sleep", "100"], background=True)
    q.signal("TERM")
    r = q.wait(timeout=60)
    assert r.signal == 15 and r.exit_code is None


def test_background_follow_streams_to_callbacks(sb: Sandbox) -> None:
    p = sb.exec("echo x; sleep 1; echo y", background=True)
    seen: List[str] = []
    r = p.wait(timeout=60, on_stdout=seen.append)
    assert "".join(seen) == "x\ny\n" == r.stdout


# --------------------------------------------------------------------------- files


def test_files_roundtrip(sb: Sandbox) -> None:
    sb.files.write("/tmp/files/hello.txt", "hello\n")
    assert sb.files.read("/tmp/files/hello.txt") == b"hello\n"
    assert sb.exec(["cat", "/tmp/files/hello.txt"]).stdout == "hello\n"
    blob = os.urandom(5 * 1024 * 1024)
    sb.files.write("/tmp/files/big.bin", blob)
    assert sb.files.read("/tmp/files/big.bin") == blob
    sb.files.write("/tmp/files/run.sh", "#!/bin/sh\necho ran $1\n", mode=0o755)
    assert sb.exec(["/tmp/files/run.sh", "ok"]).stdout == "ran ok\n"

    entries = {e.name: e for e in sb.files.list("/tmp/files")}
    assert set(entries) == {"hello.txt", "big.bin", "run.sh"}
    assert entries["big.bin"].type == "file" and entries["big.bin"].size == len(blob)
    assert entries["run.sh"].mode is not None and entries["run.sh"].mode & 0o777 == 0o755
    assert any(e.name == "files" and e.is_dir for e in sb.files.list("/tmp"))


def test_files_errors(sb: Sandbox) -> None:
    with pytest.raises(NotFound) as e:
        sb.files.read("/tmp/no/such/file")
    assert type(e.value) is NotFound and e.value.status == 404
    sb.files.write("/tmp/errors/target.txt", "t")
    assert sb.exec(["ln", "-s", "/tmp/errors/target.txt", "/tmp/errlink"]).exit_code == 0
    with pytest.raises(PathDenied) as e2:
        sb.files.read("/tmp/errlink")  # links are not followed on the way out
    assert e2.value.code == "path_denied" and e2.value.status == 403 and e2.value.message
    with pytest.raises((PathDenied, BadRequest)):
        sb.files.read("/tmp/../etc/passwd")


def test_directory_via_tar(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("A\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    (src / "sub" / "deeper" / "c.txt").write_text("C\n")
    sb.files.write_dir("/tmp/tree", src)
    assert sb.exec(["cat", "/tmp/tree/sub/deeper/c.txt"]).stdout == "C\n"
    assert sb.files.read("/tmp/tree/sub/b.bin") == bytes(range(256)) * 100
    assert {e.name for e in sb.files.list("/tmp/tree")} == {"a.txt", "sub", "empty"}

    out = tmp_path / "out"
    sb.files.read_dir("/tmp/tree", out)
    assert (out / "a.txt").read_text() == "A\n"
    assert (out / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 100
    assert (out / "sub" / "deeper" / "c.txt").read_text() == "C\n"
    assert (out / "empty").is_dir()


# --------------------------------------------------------------------------- allowlist, with


def test_allow_commands_and_with_block(daemon: Daemon) -> None:
    with Sandbox.create(allow_commands=["/bin/echo"]) as box:
        sid = box.id
        assert box.exec(["/bin/echo", "allowed"]).stdout == "allowed\n"
        with pytest.raises(CommandDenied) as e:
            box.exec(["cat", "/etc/hostname"])
        assert e.value.code == "command_denied" and e.value.status == 403 and e.value.message
        with pytest.raises(CommandDenied):
            box.exec("echo through a shell")  # /bin/sh is not allowed either
        with pytest.raises(CommandDenied):
            box.exec(["cat"], background=True)
        assert sid in [s.id for s in Sandbox.list()]
    assert sid not in [s.id for s in Sandbox.list()]
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sid)
    with pytest.raises(SandboxNotFound):
        box.exec(["/bin/echo", "gone"])
    with pytest.raises(SandboxNotFound):
        box.files.read("/tmp/x")
    with pytest.raises(SandboxNotFound):
        box.kill()
