"""`llmos audit`: the audit log of this LLMOS_HOME (refused and sensitive calls), newest last."""

from __future__ import annotations

import datetime
import json
from collections import deque

from rich.console import Console
from rich.table import Table

import llmos
from llmos.home import audit_log, llmos_home

ARGUMENTS_SHOWN = 80  # characters of an entry's arguments in the table (--json shows them whole)


def show(*, pid: int | None, denied: bool, limit: int, as_json: bool, console: Console) -> None:
    path = audit_log(llmos_home())
    entries = deque(llmos.read_audit(path, pid=pid, denied=denied), maxlen=max(1, limit))
    if as_json:
        for entry in entries:
            print(entry.model_dump_json())
        return
    if not entries:
        console.print(f"no entries in {path}" + (" for that filter" if pid is not None or denied else ""))
        return
    rows = [_row(entry) for entry in entries]
    if not console.is_terminal:  # a pipe or a file: one entry a line, whole, for grep
        for row in rows:
            print("  ".join(row))
        return
    table = Table("time", "pid", "process", "call", "outcome", "why", "arguments", box=None, header_style="bold")
    for when, pid_, process, call, outcome, why, arguments in rows:
        shown = arguments if len(arguments) <= ARGUMENTS_SHOWN else arguments[:ARGUMENTS_SHOWN] + "..."
        table.add_row(when, pid_, process, call, f"[red]{outcome}[/]" if outcome == "EPERM" else outcome, why, shown)
    console.print(table)


def _row(entry: llmos.AuditEntry) -> tuple[str, str, str, str, str, str, str]:
    when = datetime.datetime.fromtimestamp(entry.time).strftime("%Y-%m-%d %H:%M:%S")
    return (when, str(entry.pid), entry.process, entry.call, entry.outcome, entry.why,
            json.dumps(entry.arguments, ensure_ascii=False))
