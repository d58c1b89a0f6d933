"""syscalls/sys.pyi, the type checkers' view of the generated `Sys` methods, is current."""

from __future__ import annotations

import ast
from pathlib import Path

from llmos.syscalls import TABLE
from llmos.syscalls.stub import render

STUB = Path(__file__).resolve().parents[2] / "syscalls" / "sys.pyi"


def test_the_committed_stub_is_what_the_table_gives() -> None:
    assert STUB.read_text() == render(), "run: python -m llmos.syscalls.stub > syscalls/sys.pyi"


def test_the_stub_declares_every_syscall_with_its_result() -> None:
    tree = ast.parse(STUB.read_text())
    methods = {f"{cls.name}.{node.name}": ast.unparse(node.returns)
               for cls in tree.body if isinstance(cls, ast.ClassDef)
               for node in cls.body if isinstance(node, ast.AsyncFunctionDef)}
    for request in TABLE.handlers:
        family, _, name = request.call.rpartition(".")
        owner = f"_{family.title()}Calls" if family else "Sys"
        assert f"{owner}.{name}" in methods, request.call
    assert methods["Sys.getpid"] == "int" and methods["Sys.wait"] == "llmos.kernel.process.ExitStatus"
