"""`ps`'s table: a model column appears once some process runs a variant of the kernel's model,
an "untrusted from" column once some process has read untrusted text."""

from __future__ import annotations

from rich.console import Console

from llmos.apps.shell.views import ps_table
from llmos.kernel.process import ProcessInfo, ProcState, Quotas, ProcessStats


def _info(pid: int, model: str | None, untrusted: tuple[str, ...] = ()) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=1, name=f"agent{pid}", state=ProcState.RUNNING, priority=0, reason=None,
                       capabilities=frozenset(), quotas=Quotas(), stats=ProcessStats(), started_at=0.0, ended_at=None,
                       model=model, untrusted=untrusted)


def _render(procs: list[ProcessInfo]) -> str:
    console = Console(width=200, record=True)
    console.print(ps_table(procs))
    return console.export_text()


def test_the_model_column_shows_only_when_a_process_runs_a_variant():
    assert "model" not in _render([_info(2, None), _info(3, None)])
    text = _render([_info(2, None), _info(3, "facts-demo")])
    header, *rows = [line for line in text.splitlines() if "agent" in line or "model" in line]
    assert "model" in header
    assert "facts-demo" in rows[1] and "-" in rows[0]


def test_the_untrusted_column_names_where_the_text_came_from():
    assert "untrusted" not in _render([_info(2, None), _info(3, None)])
    sources = ("the result of tool fetch_url", "a message from process 4 (reader)")
    text = _render([_info(2, None), _info(3, None, sources)])
    header, *rows = [line for line in text.splitlines() if "agent" in line or "untrusted" in line]
    assert "untrusted from" in header
    assert "the result of tool fetch_url (+1 more)" in rows[1]
    assert rows[0].rstrip(" │").endswith("-")
