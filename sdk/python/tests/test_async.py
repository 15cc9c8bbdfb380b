"""The asyncio client against a real daemon: one sandbox, the basic flow."""

from __future__ import annotations

from typing import List

import pytest

from conftest import Daemon
from voidbox import AsyncProcess, AsyncSandbox, CommandDenied, NotFound, SandboxNotFound


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_flow(daemon: Daemon) -> None:
    async with AsyncSandbox.create(memory_mb=256) as sb:
        sid = sb.id
        info = await sb.info()
        assert info.id == sid and info.state == "running" and info.memory_mb == 256
        assert sid in [s.id for s in await AsyncSandbox.list()]

        r = await sb.exec(["echo", "hi"])
        assert (r.exit_code, r.stdout) == (0, "hi\n")
        r = await sb.exec("echo err >&2; exit 4", env={"X": "1"})
        assert (r.exit_code, r.stderr) == (4, "err\n")
        assert (await sb.exec(["cat"], stdin=b"\x00\xffraw")).stdout_bytes == b"\x00\xffraw"

        seen: List[str] = []

        async def on_stdout(text: str) -> None:
            seen.append(text)

        r = await sb.exec("echo a; sleep 1; echo b", on_stdout=on_stdout)
        assert "".join(seen) == "a\nb\n" == r.stdout
        r = await sb.exec(["sleep", "30"], timeout=1)
        assert r.timed_out

        p = await sb.exec(["cat"], background=True)
        assert isinstance(p, AsyncProcess)
        await p.write_stdin("async stdin\n")
        await p.close_stdin()
        r = await p.wait(timeout=60)
        assert (r.exit_code, r.stdout, p.stdout) == (0, "async stdin\n", "async stdin\n")
        q = await sb.exec(["sleep", "100"], background=True)
        assert await q.poll() is None
        await q.kill()
        assert (await q.wait(timeout=60)).signal == 9

        await sb.files.write("/tmp/async/f.bin", bytes(range(256)), mode=0o600)
        assert await sb.files.read("/tmp/async/f.bin") == bytes(range(256))
        entries = await sb.files.list("/tmp/async")
        assert [(e.name, e.size) for e in entries] == [("f.bin", 256)]
        with pytest.raises(NotFound):
            await sb.files.read("/tmp/async/missing")

    assert sid not in [s.id for s in await AsyncSandbox.list()]
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect(sid)
    with pytest.raises(SandboxNotFound):
        await sb.exec(["echo"])
    await sb.close()
    assert CommandDenied.default_code == "command_denied"
