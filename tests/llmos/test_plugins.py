"""Plugins: the example plugin package, installed for real, used through the `llmos` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmos import plugins
from llmos.drivers.tools import REGISTERED, registration, tool

ROOT = Path(__file__).resolve().parents[2]
LLMOS = str(Path(sys.executable).with_name("llmos"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """examples/plugin built and installed into a folder of its own (offline, no dependencies),
    next to a broken plugin whose module does not exist."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(ROOT / "examples" / "plugin", tmp / "src")  # builds leave files; not in the repo
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    broken = target / "llmos_broken-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: llmos-broken\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[llmos]\nbroken = llmos_no_such_module\n")
    return target


def llmos(site: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site), "LLMOS_HOME": str(home), "COLUMNS": "250", **env}
    return subprocess.run([LLMOS, *args], capture_output=True, text=True, env=environ, timeout=120)


def test_the_installed_plugin_is_listed_with_where_it_comes_from(site, llmos_home):
    out = llmos(site, llmos_home, "plugins").stdout
    assert "hello" in out and "llmos-hello 0.1.0" in out and "register_commands" in out
    assert "broken" in out and "failed" in out and "ModuleNotFoundError" in out  # reported, not fatal
    assert "llmos.tools" in out and "built in" in out


def test_its_app_calls_its_tool_in_the_sandbox(site, llmos_home):
    run = llmos(site, llmos_home, "run", "--no-model", "--cap", "tool.word_count", "shout", "hello", "plugin", "world")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "HELLO PLUGIN WORLD! (3 words)"
    tools = llmos(site, llmos_home, "tools").stdout
    assert "word_count" in tools and "sandbox" in tools.split("word_count")[1].split("\n")[0]


def test_apps_do_not_get_plugin_tools_by_default(site, llmos_home):
    run = llmos(site, llmos_home, "run", "--no-model", "shout", "hi")
    assert run.returncode == 1 and "tool.word_count" in run.stderr


def test_its_command_joins_the_cli(site, llmos_home):
    assert llmos(site, llmos_home, "hello", "--name", "you").stdout.strip() == "hello, you"


def test_llmos_plugins_env_restricts_which_load(site, llmos_home):
    none = llmos(site, llmos_home, "plugins", LLMOS_PLUGINS="").stdout
    only = llmos(site, llmos_home, "plugins", LLMOS_PLUGINS="hello").stdout
    assert "hello" not in none and "broken" not in none and "llmos.apps" in none
    assert "hello" in only and "broken" not in only


def test_plugin_tools_default_to_the_sandbox_unless_trusted():
    @tool
    def anything() -> int:
        """Anything."""
        return 1

    assert registration(anything, "p", default_trusted=False).sandboxed
    assert not registration(anything, "p", trusted=True, default_trusted=False).sandboxed
    assert registration(tool(trusted=False)(lambda: 1), "llmos.tools").sandboxed


def test_the_builtins_register_through_the_same_hooks():
    infos = {p.name: p for p in plugins.plugins()}
    assert infos["llmos.tools"].hooks == ["register_tools"] and infos["llmos.models"].hooks == ["register_models"]
    assert REGISTERED["calculator"].source == "llmos.tools" and REGISTERED["run_python"].sandboxed
