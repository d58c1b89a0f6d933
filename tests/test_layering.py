"""DESIGN.md's layering, enforced: apps -> syscalls -> kernel; drivers and memory never import apps."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "chromadb")

FORBIDDEN = {
    "kernel": (*HEAVY, "llmos.syscalls", "llmos.drivers", "llmos.memory", "llmos.apps", "llmos.testing"),
    "syscalls": (*HEAVY, "llmos.drivers", "llmos.memory", "llmos.apps"),
    "drivers": ("llmos.apps",),
    "memory": ("llmos.apps",),
    # Apps are user space: the syscall ABI, plus `llmos` itself to boot a kernel.
    "apps": (*HEAVY, "llmos.kernel", "llmos.drivers", "llmos.memory"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package):
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[package]):
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_importing_the_kernel_and_syscalls_loads_no_torch():
    code = ("import sys, llmos.kernel, llmos.syscalls; "
            "bad = [m for m in ('torch', 'transformers', 'chromadb') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_layering_test_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom llmos.apps import cli\n")
    assert [m for _, m in imported_modules(bad)] == ["torch", "llmos.apps"]
