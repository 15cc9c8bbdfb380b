"""`voidbox mcp` driven over stdio by the official Python MCP client (PyPI `mcp`).

VOIDBOX_BIN must name the voidbox binary to test (the tests fail without it).

- test_tools_without_vms: the handshake, the tool list and tool errors; boots no VM.
- test_sandbox_lifecycle_boots_vms: create, exec, files, truncation, time limits,
  list, destroy, and no process left once the client disconnects; boots VMs.

Run them with tests/mcp/run-tests.sh (a venv with tests/mcp/requirements.txt).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

TOOLS = {
    "sandbox_create",
    "sandbox_exec",
    "sandbox_write_file",
    "sandbox_read_file",
    "sandbox_list",
    "sandbox_destroy",
}

# Output kept per stream by sandbox_exec (src/mcp/text.rs MAX_STREAM_BYTES).
MAX_STREAM_BYTES = 32 * 1024


def voidbox_bin() -> str:
    path = os.environ.get("VOIDBOX_BIN")
    if not path:
        pytest.fail(
            "VOIDBOX_BIN is not set: point it at the voidbox binary to test, "
            "e.g. VOIDBOX_BIN=target/debug/voidbox tests/mcp/run-tests.sh"
        )
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        pytest.fail(f"VOIDBOX_BIN={path} is not an executable file; build voidbox first")
    return path


def server_params() -> StdioServerParameters:
    # The client passes only a few variables on; voidbox's own settings
    # (VOIDBOX_HOME and the like) and RUST_LOG must reach the server too.
    env = {k: v for k, v in os.environ.items() if k.startswith("VOIDBOX_") or k == "RUST_LOG"}
    return StdioServerParameters(command=voidbox_bin(), args=["mcp"], env=env)


@asynccontextmanager
async def session():
    async with stdio_client(server_params()) as (read, write):
        async with ClientSession(read, write) as s:
            yield s


@dataclass
class Answer:
    is_error: bool
    text: str
    data: Any  # the JSON answer (None for tool errors)


async def call(s: ClientSession, name: str, args: dict[str, Any] | None = None) -> Answer:
    r = await s.call_tool(name, args or {})
    text = "\n".join(c.text for c in r.content if getattr(c, "type", None) == "text")
    if r.is_error:
        return Answer(True, text, None)
    data = json.loads(text)
    # The structured answer and the text one are the same JSON.
    assert r.structured_content == data, (r.structured_content, data)
    return Answer(False, text, data)


async def ok(s: ClientSession, name: str, args: dict[str, Any] | None = None) -> Any:
    a = await call(s, name, args)
    assert not a.is_error, f"{name}({args}) failed: {a.text}"
    return a.data


async def tool_error(s: ClientSession, name: str, args: dict[str, Any] | None = None) -> str:
    a = await call(s, name, args)
    assert a.is_error, f"{name}({args}) should have been a tool error, got {a.text}"
    assert a.text, "a tool error carries a message"
    return a.text


def test_tools_without_vms():
    async def main():
        with anyio.fail_after(60):
            async with session() as s:
                init = await s.initialize()
                assert init.server_info.name == "voidbox"
                assert init.capabilities.tools is not None

                tools = {t.name: t for t in (await s.list_tools()).tools}
                assert set(tools) == TOOLS
                for t in tools.values():
                    assert t.description and len(t.description) > 40, t.name
                    assert t.input_schema.get("type") == "object", t.name
                exec_schema = tools["sandbox_exec"].input_schema
                assert {"sandbox_id", "command"} <= set(exec_schema["required"])
                assert {"timeout_secs", "cwd"} <= set(exec_schema["properties"])
                assert set(tools["sandbox_create"].input_schema["properties"]) == {
                    "image",
                    "memory_mb",
                    "vcpus",
                    "timeout_secs",
                }
                write_schema = tools["sandbox_write_file"].input_schema
                assert set(write_schema["required"]) == {"sandbox_id", "path", "content"}

                # An unknown sandbox: a tool error that says where to look.
                msg = await tool_error(
                    s, "sandbox_exec", {"sandbox_id": "sb-doesnotexist", "command": "true"}
                )
                assert "sb-doesnotexist" in msg and "sandbox_list" in msg, msg
                msg = await tool_error(s, "sandbox_destroy", {"sandbox_id": "sb-doesnotexist"})
                assert "sandbox_list" in msg, msg

                # Bad arguments are tool errors too, naming what is wrong.
                msg = await tool_error(s, "sandbox_exec", {"sandbox_id": "sb-doesnotexist"})
                assert "command" in msg, msg
                msg = await tool_error(
                    s, "sandbox_read_file", {"sandbox_id": "sb-doesnotexist", "path": "a.txt"}
                )
                assert "absolute" in msg, msg

                # Nothing was started: no sandboxes.
                assert await ok(s, "sandbox_list") == {"sandboxes": []}
                closing = time.monotonic()
        # The server exits on its own when its stdin closes: the client's
        # SIGTERM only comes 2 s later.
        assert time.monotonic() - closing < 1.9, "the server did not exit when its stdin closed"

    anyio.run(main)


def proc_table() -> dict[int, list[tuple[int, int, str]]]:
    """Children of each pid: (pid, start time, name)."""
    kids: dict[int, list[tuple[int, int, str]]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append((int(d), int(fields[19]), name))
    return kids


def descendants(pid: int) -> list[tuple[int, int, str]]:
    kids = proc_table()
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def alive(pid: int, start: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) == start and fields[0] != "Z"


def server_pid(binary: str) -> int:
    """The `voidbox mcp` child of this test process."""
    found = []
    for pid, _, _ in proc_table().get(os.getpid(), []):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [binary.encode(), b"mcp"]:
            found.append(pid)
    assert len(found) == 1, f"expected one `voidbox mcp` child, found {found}"
    return found[0]


def test_sandbox_lifecycle_boots_vms():
    binary = voidbox_bin()

    async def main():
        with anyio.fail_after(900):
            async with session() as s:
                await s.initialize()
                server = server_pid(binary)

                created = await ok(s, "sandbox_create")
                sid = created["sandbox_id"]
                assert sid.startswith("sb-"), created

                r = await ok(
                    s,
                    "sandbox_exec",
                    {"sandbox_id": sid, "command": "echo hello; echo err >&2; exit 3"},
                )
                assert (r["exit_code"], r["stdout"], r["stderr"]) == (3, "hello\n", "err\n"), r
                assert not r.get("timed_out") and not r.get("truncated"), r

                text = "first line\nsecond: ünïcödé ✓\n"
                w = await ok(
                    s, "sandbox_write_file", {"sandbox_id": sid, "path": "/tmp/a.txt", "content": text}
                )
                assert w["bytes"] == len(text.encode()), w
                got = await ok(s, "sandbox_read_file", {"sandbox_id": sid, "path": "/tmp/a.txt"})
                assert got["content"] == text, got
                r = await ok(s, "sandbox_exec", {"sandbox_id": sid, "command": "cat a.txt", "cwd": "/tmp"})
                assert r["stdout"] == text, r

                msg = await tool_error(s, "sandbox_read_file", {"sandbox_id": sid, "path": "/tmp/nope"})
                assert "/tmp/nope" in msg, msg
                msg = await tool_error(s, "sandbox_read_file", {"sandbox_id": sid, "path": "/tmp"})
                assert "directory" in msg, msg

                r = await ok(
                    s,
                    "sandbox_exec",
                    {"sandbox_id": sid, "command": "head -c 100000 /dev/zero | tr '\\0' x"},
                )
                assert r["exit_code"] == 0 and r["truncated"] is True, r
                omitted = 100_000 - MAX_STREAM_BYTES
                assert f"\n[... {omitted} bytes omitted ...]\n" in r["stdout"], r["stdout"][:200]
                head, _, tail = r["stdout"].partition("\n[...")
                assert set(head) == {"x"} and tail.endswith("x" * 100), (head[:20], tail[-20:])

                started = time.monotonic()
                r = await ok(
                    s, "sandbox_exec", {"sandbox_id": sid, "command": "sleep 30", "timeout_secs": 2}
                )
                assert r.get("timed_out") is True, r
                assert time.monotonic() - started < 25, "the time limit was not applied"

                listed = await ok(s, "sandbox_list")
                mine = [x for x in listed["sandboxes"] if x["sandbox_id"] == sid]
                assert len(mine) == 1 and mine[0]["state"] == "running", listed

                assert (await ok(s, "sandbox_destroy", {"sandbox_id": sid}))["sandbox_id"] == sid
                msg = await tool_error(s, "sandbox_exec", {"sandbox_id": sid, "command": "true"})
                assert sid in msg and "sandbox_list" in msg, msg
                assert sid not in [x["sandbox_id"] for x in (await ok(s, "sandbox_list"))["sandboxes"]]

                # One sandbox left running: the disconnect must end it.
                kept = (await ok(s, "sandbox_create"))["sandbox_id"]
                r = await ok(s, "sandbox_exec", {"sandbox_id": kept, "command": "echo still here"})
                assert r["stdout"] == "still here\n", r
                procs = descendants(server)
                assert procs, "a running sandbox should show as processes under the server"
        # The client closed the server's stdin (and signals it after 2 s):
        # every process the server started must end.
        deadline = time.monotonic() + 20
        left = procs
        while left and time.monotonic() < deadline:
            await anyio.sleep(0.2)
            left = [p for p in left if alive(p[0], p[1])]
        assert not left, f"processes of the server outlived the session: {left}"
        vmms = [p for p in procs if "voidbox-vmm" in p[2]]
        assert all(not alive(pid, start) for pid, start, _ in vmms)

    anyio.run(main)
