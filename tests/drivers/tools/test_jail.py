"""The jail (bubblewrap) that untrusted tools run in, attacked with run_python as a model
would write it: reading and writing outside its workspace, the network, other processes,
a fork bomb and a memory bomb. Also: the refusal where no jail can be set up, the explicit
weaker opt-in, and warm workers."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmos
from llmos.drivers.tools import jail
from llmos.kernel.errors import JailUnavailable, ToolFailed, ToolLimitExceeded
from llmos.testing import caught, result, spawn_and_wait

pytestmark = pytest.mark.skipif(jail.problem() is not None, reason=f"no jail here: {jail.problem()}")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME holding a secret, as a user's does."""
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / ".ssh_key").write_text("PRIVATE KEY")
    monkeypatch.setenv("HOME", str(folder))
    return folder


@pytest.fixture
async def kernel(home: Path, llmos_home: Path):
    (llmos_home / "secret.txt").write_text("the user's secret")
    async with llmos.boot(None, memory=None, mcp_servers=None) as kernel:
        yield kernel


async def run_python(kernel, code: str, caps=frozenset({"tool.run_python"}), name: str = "agent"):
    """What run_python answered (its dict) or the typed error it raised."""
    async def main(sys):
        return await caught(sys.call_tool("run_python", code=code))

    answer = result(await spawn_and_wait(kernel, main, caps=caps, name=name, timeout=60))
    return answer[1] if isinstance(answer, tuple) else answer


def raised(answer, kind: str) -> bool:
    return isinstance(answer, ToolFailed) and f"raised {kind}" in str(answer)


async def test_nothing_outside_the_workspace_can_be_read(kernel, home, llmos_home):
    assert raised(await run_python(kernel, f"open({str(home / '.ssh_key')!r}).read()"), "FileNotFoundError")
    assert raised(await run_python(kernel, f"open({str(llmos_home / 'secret.txt')!r}).read()"), "FileNotFoundError")
    assert raised(await run_python(kernel, "open('/etc/passwd').read()"), "FileNotFoundError")
    listing = await run_python(kernel, f"import os; os.listdir({str(llmos_home)!r})")
    assert listing["result"] == "['workspaces']"  # the way to the workspace, nothing else of LLMOS_HOME
    others = await run_python(kernel, f"import os; os.listdir({str(llmos_home / 'workspaces')!r})")
    assert others["result"] == "['agent']"  # its own workspace only


async def test_only_the_workspace_is_writable_and_it_is_the_working_folder(kernel, llmos_home, tmp_path):
    (llmos_home / "workspaces" / "other").mkdir(parents=True)
    wrote = await run_python(kernel, "open('notes.txt', 'w').write('hi'); import os; os.getcwd()")
    assert wrote["result"] == repr(str(llmos_home / "workspaces" / "agent"))
    assert (llmos_home / "workspaces" / "agent" / "notes.txt").read_text() == "hi"
    for outside in ("/usr/evil", str(llmos_home / "evil"), str(llmos_home / "workspaces" / "other" / "evil"),
                    str(Path(llmos.__file__).parent / "evil.py")):
        answer = await run_python(kernel, f"open({outside!r}, 'w').write('x')")
        assert isinstance(answer, ToolFailed), outside
        assert not Path(outside).exists()
    (tmp_path / "host-file").write_text("the host's /tmp")
    scratch = await run_python(kernel, f"open('/tmp/x', 'w').write('x'); import os; os.path.exists({str(tmp_path)!r})")
    assert scratch["result"] == "False" and not Path("/tmp/x").exists()  # a fresh /tmp of its own


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback that answers b"ok" to whoever connects."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        try:
            while True:
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"ok")
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


async def test_the_network_needs_the_net_capability(kernel, listener):
    code = f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=5).recv(2)"
    assert isinstance(await run_python(kernel, code), ToolFailed)  # a network namespace of its own
    allowed = await run_python(kernel, code, caps=frozenset({"tool.run_python", "net"}))
    assert allowed["result"] == "b'ok'"


async def test_host_processes_are_out_of_sight_and_reach(kernel):
    answer = await run_python(kernel, "import os; sorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    assert max(eval(answer["result"])) < 10  # a PID namespace: its own few processes only
    assert raised(await run_python(kernel, f"import os; os.kill({os.getpid()}, 9)"), "ProcessLookupError")
    uid = await run_python(kernel, "import os; (os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    assert eval(uid["result"])[1] == "0000000000000000"  # no capability left
    if os.geteuid() == 0:
        assert eval(uid["result"])[0] == jail.JAIL_UID


async def test_a_fork_bomb_is_stopped_by_the_process_limit(kernel):
    bomb = ("import os, time\nborn = 0\ntry:\n    while born < 5000:\n        if os.fork() == 0:\n"
            "            time.sleep(5); os._exit(0)\n        born += 1\nexcept OSError as exc:\n    print(exc.errno)\nborn")
    answer = await run_python(kernel, bomb)
    assert int(answer["result"]) < 100 and answer["stdout"].strip() == "11"  # EAGAIN well before 5,000


async def test_a_memory_bomb_is_stopped_and_the_kernel_goes_on(kernel):
    answer = await run_python(kernel, "x = bytearray(4 * 1024 ** 3)")
    assert isinstance(answer, ToolLimitExceeded) and answer.limit == "memory"
    assert (await run_python(kernel, "6 * 7"))["result"] == "42"


async def test_calls_are_served_by_warm_workers_one_call_each(kernel):
    first = await run_python(kernel, "import os; os.getpid(), id(os)")
    second = await run_python(kernel, "import os; globals().setdefault('seen', 1); os.getpid()")
    third = await run_python(kernel, "'seen' in globals()")
    assert third["result"] == "False"  # a worker serves one call: nothing passes to the next
    assert first["result"] and second["result"]
    workers = kernel.tools.workers
    assert workers.served_warm >= 2 and workers.started >= 3


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PATH", "/nonexistent")
    jail.problem.cache_clear()
    yield
    monkeypatch.undo()
    jail.problem.cache_clear()


async def test_without_bubblewrap_an_untrusted_tool_is_refused_saying_how_to_fix_it(kernel, no_bwrap, monkeypatch):
    monkeypatch.delenv(jail.WEAK_SANDBOX_ENV, raising=False)
    answer = await run_python(kernel, "1 + 1")
    assert isinstance(answer, JailUnavailable) and "bubblewrap" in str(answer) and jail.WEAK_SANDBOX_ENV in str(answer)


async def test_the_weaker_sandbox_runs_only_when_asked_and_warns_every_time(kernel, no_bwrap, monkeypatch, caplog):
    monkeypatch.setenv(jail.WEAK_SANDBOX_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="llmos.jail"):
        assert (await run_python(kernel, "1 + 1"))["result"] == "2"
        assert (await run_python(kernel, "2 + 2"))["result"] == "4"
    warnings = [r for r in caplog.records if "WITHOUT a jail" in r.getMessage()]
    assert len(warnings) == 2


async def test_the_working_folder_on_sys_path_is_not_shown(kernel, tmp_path, monkeypatch):
    project = tmp_path / "project"  # `python -m` from a project puts it first on sys.path
    project.mkdir()
    (project / ".env").write_text("API_KEY=sk-secret")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    assert raised(await run_python(kernel, f"open({str(project / '.env')!r}).read()"), "FileNotFoundError")


async def test_an_unjailed_sandboxed_tool_counts_as_sending_data_out(kernel, no_bwrap):
    assert not kernel.tools.get("read_file").sends_data  # in-process, workspace only: as it says
    assert kernel.tools.get("run_python").sends_data  # unjailed it has the host's network
