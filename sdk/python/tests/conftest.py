"""Starts a real `voidbox serve` for the tests that need one (session-scoped).

The binary comes from $VOIDBOX_BIN (required: without it those tests fail). The
daemon listens on a socket in a fresh temporary directory, with its log beside it;
at the end it gets SIGTERM and must exit 0 leaving no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import httpx
import pytest

READY_DEADLINE = 600.0
STOP_DEADLINE = 60.0
LEFTOVER_GRACE = 10.0


@dataclass
class Daemon:
    proc: "subprocess.Popen[bytes]"
    dir: Path
    socket: Path
    log: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log}: {e})"
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int
    cmdline: str


def _processes() -> List[ProcInfo]:
    out: List[ProcInfo] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out.append(
            ProcInfo(
                pid=int(entry), ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                state=fields[0], start=int(fields[19]), cmdline=cmdline,
            )
        )
    return out


def _descendants(root: int) -> Set[Tuple[int, int]]:
    """(pid, start time) of every process below ``root``."""
    procs = _processes()
    children: Dict[int, List[ProcInfo]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found: Set[Tuple[int, int]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (child.pid, child.start) not in found:
                found.add((child.pid, child.start))
                todo.append(child.pid)
    return found


def _leftovers(daemon: Daemon, below: Set[Tuple[int, int]]) -> List[ProcInfo]:
    """Live processes the daemon left: its former children, anything in its session
    or process group, anything naming its directory, and VMMs among them."""
    me = os.getpid()
    pid = daemon.proc.pid
    left = []
    for p in _processes():
        if p.pid == me or p.state == "Z":
            continue
        if (
            (p.pid, p.start) in below
            or p.sid == pid
            or p.pgid == pid
            or str(daemon.dir) in p.cmdline
        ):
            left.append(p)
    return left


def _ready(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://voidbox",
            timeout=10.0, trust_env=False,
        ) as client:
            return client.get("/v1/sandboxes").status_code == 200
    except httpx.HTTPError:
        return False


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    binary = os.environ.get("VOIDBOX_BIN")
    if not binary:
        pytest.fail(
            "VOIDBOX_BIN is not set: the SDK tests start a real `voidbox serve`; set VOIDBOX_BIN "
            "to the voidbox binary (e.g. VOIDBOX_BIN=$PWD/target/release/voidbox)",
            pytrace=False,
        )
    binary = os.path.abspath(binary)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"VOIDBOX_BIN={binary} is not an executable file", pytrace=False)

    tmp = Path(tempfile.mkdtemp(prefix="vbsdk-"))
    socket, log_path = tmp / "api.sock", tmp / "serve.log"
    argv = [
        binary, "serve", "--socket", str(socket),
        "--max-sandboxes", "4", "--max-memory-mb", "2048",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    d = Daemon(proc=proc, dir=tmp, socket=socket, log=log_path)

    deadline = time.monotonic() + READY_DEADLINE
    while not _ready(d.socket):
        early = d.proc.poll()
        if early is not None:
            pytest.fail(
                f"`{' '.join(argv)}` exited with {early} before it answered GET /v1/sandboxes; "
                f"its log ({d.log}) ends with:\n{d.log_tail()}",
                pytrace=False,
            )
        if time.monotonic() > deadline:
            _stop_group(d.proc)
            pytest.fail(
                f"`voidbox serve` did not answer GET /v1/sandboxes within {READY_DEADLINE:.0f} s; "
                f"its log ({d.log}) ends with:\n{d.log_tail()}",
                pytrace=False,
            )
        time.sleep(0.5)

    saved = {k: os.environ.get(k) for k in ("VOIDBOX_HOST", "VOIDBOX_TOKEN", "VOIDBOX_TOKEN_FILE")}
    os.environ["VOIDBOX_HOST"] = d.host
    os.environ.pop("VOIDBOX_TOKEN", None)
    os.environ.pop("VOIDBOX_TOKEN_FILE", None)
    try:
        yield d
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        below = _descendants(d.proc.pid)
        rc: Optional[int] = d.proc.poll()
        if rc is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                rc = d.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                _stop_group(d.proc)
                pytest.fail(
                    f"`voidbox serve` did not exit within {STOP_DEADLINE:.0f} s of SIGTERM; "
                    f"its log ({d.log}) ends with:\n{d.log_tail()}",
                    pytrace=False,
                )
        left = _leftovers(d, below)
        grace = time.monotonic() + LEFTOVER_GRACE
        while left and time.monotonic() < grace:
            time.sleep(0.5)
            left = _leftovers(d, below)
        problems = []
        if rc != 0:
            problems.append(f"`voidbox serve` exited with {rc} after SIGTERM (expected 0)")
        if left:
            vmm = [p for p in left if "voidbox-vmm" in p.cmdline or "qemu-system" in p.cmdline]
            problems.append(
                f"processes left behind after the daemon exited ({len(vmm)} of them VMMs):\n"
                + "\n".join(f"  pid {p.pid} ppid {p.ppid} pgid {p.pgid}: {p.cmdline[:300]}" for p in left)
            )
            for p in left:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        if problems:
            pytest.fail(
                "\n".join(problems) + f"\nits log ({d.log}) ends with:\n{d.log_tail()}",
                pytrace=False,
            )
        shutil.rmtree(tmp, ignore_errors=True)
