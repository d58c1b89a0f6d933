"""Fixtures shared across the suite. The real model is loaded once per session.

Every test runs in its own temporary LLMOS_HOME (the autouse `llmos_home` fixture), and
fixtures wider than a test see a session-wide temporary one: the suite never reads or
writes the user's ~/.llmos (memory store, mcp.json, shell history, workspaces), and a
guard fails the run if ~/.llmos was created or changed all the same. Subprocesses
inherit the temporary home through the environment.

Each temporary home's `models` folder is a symlink to one persistent cache in the
repository (.cache/models, or LLMOS_TEST_MODEL_CACHE), so the real model's weights are
de-quantized from the GGUF once (about 25 s) and reused by every test and every run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmos
from llmos.testing import AVX2_EMULATION_ENV, emulate_avx2, llmos_server

if os.environ.get(AVX2_EMULATION_ENV) == "1":  # run as on an AVX2-only CPU (tests/drivers/test_avx2_path.py)
    emulate_avx2()

# Quantization is measured at load by default (drivers/quant.py), so two loads on a busy
# machine may choose differently; the suite's real-model tests compare exact outputs, so
# they run unquantized unless a test asks (tests/drivers/test_quant.py), subprocesses too.
os.environ.setdefault("LLMOS_QUANT", "none")
MODEL_CACHE = Path(os.environ.get("LLMOS_TEST_MODEL_CACHE") or Path(__file__).resolve().parents[1] / ".cache" / "models")
NO_DAEMON = "http://127.0.0.1:9"  # the discard port: nothing listens there
USER_HOME = Path.home() / ".llmos"  # read once, before any test can change HOME
_USER_HOME_BEFORE = pytest.StashKey["dict[str, tuple[int, int]] | None"]()
_USER_HOME_TOUCHED = pytest.StashKey[str]()


def make_home(folder: Path) -> Path:
    """An empty llmos home whose model cache is the suite's shared one."""
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(MODEL_CACHE, target_is_directory=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def session_llmos_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """LLMOS_HOME for what outlives a test (session- and module-scoped fixtures, such as a
    kernel booted once per module): a temporary home, never ~/.llmos."""
    home = make_home(tmp_path_factory.mktemp("llmos-session-home"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def llmos_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own LLMOS_HOME (a folder apart from `tmp_path`, which stays the test's own),
    and no daemon: LLMOS_URL points at a closed port, so a `llmos serve` the user runs on
    this machine is never used by a test that does not ask for one. No key either."""
    home = make_home(tmp_path_factory.mktemp("llmos-home"))
    monkeypatch.setenv("LLMOS_HOME", str(home))
    monkeypatch.setenv("LLMOS_URL", NO_DAEMON)
    monkeypatch.delenv("LLMOS_API_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def smollm2_server(session_llmos_home: Path) -> Iterator[str]:
    """A real `llmos serve --model smollm2` in its own OS process on a free loopback port,
    shared by the session (its home is the session's); yields its URL."""
    with llmos_server("--model", "smollm2", env={"LLMOS_HOME": str(session_llmos_home)}) as url:
        yield url


def _load_shared(session_home: Path, **options: object) -> llmos.Model:
    # A session fixture may be set up while some other home is in force: load from the
    # session home, whose models folder is the shared cache, whatever LLMOS_HOME says now.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_HOME", str(session_home))
        return llmos.load_model("smollm2", **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def smollm2(session_llmos_home: Path) -> llmos.Model:
    """The real default model (SmolLM2-135M-Instruct), from the shared model cache."""
    return _load_shared(session_llmos_home)


@pytest.fixture(scope="session")
def smollm2_f32(session_llmos_home: Path) -> llmos.Model:
    """The same model in float32, whatever the machine's default dtype: the precision in
    which the engine's greedy outputs equal `model.generate`'s exactly."""
    return _load_shared(session_llmos_home, dtype="float32")


# -- the guard: the suite leaves ~/.llmos as it found it ----------------------------------------------
def _listing(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Every entry under `folder` (itself included) with its mtime and size; None if absent."""
    if not folder.exists() and not folder.is_symlink():
        return None
    entries = {}
    for path in [folder, *folder.rglob("*")]:
        stat = path.lstat()
        entries[str(path.relative_to(folder))] = (stat.st_mtime_ns, stat.st_size)
    return entries


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_USER_HOME_BEFORE] = _listing(USER_HOME)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_USER_HOME_BEFORE, None)
    after = _listing(USER_HOME)
    if after == before:
        return
    if before is None:
        change = "it was created"
    elif after is None:
        change = "it was removed"
    else:
        kinds = {"added": sorted(after.keys() - before.keys()), "removed": sorted(before.keys() - after.keys()),
                 "modified": sorted(k for k in before.keys() & after.keys() if before[k] != after[k])}
        change = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items() if names)
    session.config.stash[_USER_HOME_TOUCHED] = (f"the test suite touched the user's {USER_HOME} ({change}); "
                                                "every test must use its own LLMOS_HOME")
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    message = config.stash.get(_USER_HOME_TOUCHED, None)
    if message is not None:
        terminalreporter.section("~/.llmos guard", red=True, bold=True)
        terminalreporter.write_line(f"FAILED: {message}", red=True, bold=True)

