"""DESIGN.md's layering, enforced: apps -> syscalls -> kernel; drivers and memory never import apps.

Three kinds of check:

- per package, no import statement names a forbidden module (the source, read as an AST;
  imports inside functions count, imports under `if TYPE_CHECKING:` do not);
- no import cycle among llmos's modules, deferred (function-level) imports included;
- importing one layer, in a fresh interpreter, loads only that layer (`sys.modules`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "chromadb", "dbos")
# The folders installed as llmos.* (pyproject.toml, [tool.setuptools.package-dir]).
PACKAGE_DIRS = {"llmos": "llmos", "llmos.kernel": "kernel", "llmos.syscalls": "syscalls", "llmos.drivers": "drivers",
                "llmos.memory": "memory", "llmos.apps": "apps", "llmos.server": "server", "llmos.durable": "durable"}

FORBIDDEN = {
    # The kernel imports nothing of llmos outside itself; syscalls nothing outside kernel + syscalls.
    "kernel": (*HEAVY, "llmos.syscalls", "llmos.drivers", "llmos.memory", "llmos.apps", "llmos.server", "llmos.testing",
               "llmos.booting", "llmos.model", "llmos.runtime", "llmos.plugins", "llmos.home",
               "llmos.hookspecs"),
    "syscalls": (*HEAVY, "llmos.drivers", "llmos.memory", "llmos.apps", "llmos.server", "llmos.testing", "llmos.booting",
                 "llmos.model", "llmos.runtime", "llmos.plugins", "llmos.home", "llmos.hookspecs"),
    # Drivers and memory implement the kernel's interfaces, side by side: neither imports the
    # other (the composition root hands memory the drivers' embedder), nor user space.
    "drivers": ("dbos", "llmos.memory", "llmos.apps", "llmos.server", "llmos.durable"),
    "memory": ("dbos", "llmos.drivers", "llmos.apps", "llmos.server", "llmos.durable"),
    # Durable execution implements the kernel's Durability on DBOS, beside drivers and memory.
    "durable": ("torch", "transformers", "chromadb", "llmos.syscalls", "llmos.drivers", "llmos.memory",
                "llmos.apps", "llmos.server", "llmos.booting", "llmos.testing"),
    # Apps are user space: the syscall ABI, plus `llmos` itself to boot a kernel.
    "apps": (*HEAVY, "llmos.kernel", "llmos.drivers", "llmos.memory", "llmos.durable"),
    # The daemon and its clients are user space too: the ABI, `llmos` to boot, FastAPI; never
    # the user-space apps (the CLI is the server's client, not the other way round).
    "server": (*HEAVY, "llmos.kernel", "llmos.drivers", "llmos.memory", "llmos.apps", "llmos.durable"),
}
# The package `llmos` alone: only the exact name is forbidden (`import llmos`, `from llmos import x`).
FORBIDDEN_EXACT = {"kernel": ("llmos",), "syscalls": ("llmos",)}


# -- reading imports --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute, relative imports resolved
    names: tuple[str, ...] = ()  # for `from module import a, b`: a, b


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, skipping the bodies of `if TYPE_CHECKING:` (their `else:` still runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def read_imports(path: Path, module: str | None = None) -> list[Import]:
    """The imports that run in the file at `path` (module name `module`, to resolve relative
    imports), in any scope, except under `if TYPE_CHECKING:`."""
    is_package = path.name == "__init__.py"
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if module is None:
                    continue
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.append(Import(node.lineno, base, tuple(alias.name for alias in node.names)))
    return sorted(found, key=lambda imp: imp.line)


def llmos_modules() -> dict[str, Path]:
    """Every module of the llmos distribution: its dotted name -> its file."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


# -- the import graph -------------------------------------------------------------------------------
def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line}, among llmos's modules.

    `import a.b.c` and `from a.b import c` run a/__init__ and a/b/__init__ too, so they
    count as imports of those packages, except of the packages the importer lives in
    (those are already being imported when it runs)."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        own = set(_parents(name)) | ({name} if path.name == "__init__.py" else set())
        edges: dict[str, int] = {}
        for imp in read_imports(path, name):
            targets = [imp.module]
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            targets += [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in modules]
            for target in targets:
                for dep in [*_parents(target), target]:
                    if dep in modules and dep not in own and dep != name:
                        edges.setdefault(dep, imp.line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path that ends where it starts) for each strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has a few hundred nodes at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_a_cycle(graph, set(c), c[0]) for c in components]


def _a_cycle(graph: dict[str, dict[str, int]], component: set[str], start: str) -> list[str]:
    """The shortest path from `start` back to itself inside `component` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is in a component without a cycle")


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    steps = [f"{a} -> {b}  ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "\n    ".join(steps)


def _in_kernel_or_syscalls(name: str) -> bool:
    return name.startswith(("llmos.kernel.", "llmos.syscalls.")) or name in ("llmos.kernel", "llmos.syscalls")


# -- the tests: import statements --------------------------------------------------------------------
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package):
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for imp in read_imports(path, None):
            module = imp.module
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[package]) \
                    or module in FORBIDDEN_EXACT.get(package, ()):
                violations.append(f"{path.relative_to(ROOT)}:{imp.line} imports {module}")
    assert not violations, "\n".join(violations)


def test_no_import_cycles():
    """No cycle among llmos's modules, counting imports made inside functions. (Cycles wholly
    inside kernel/ + syscalls/ are checked by the next test.)"""
    modules = llmos_modules()
    graph = import_graph(modules)
    found = [c for c in cycles(graph) if not all(map(_in_kernel_or_syscalls, c))]
    assert not found, "import cycles:\n  " + "\n  ".join(describe(c, graph, modules) for c in found)


def test_no_import_cycles_inside_the_kernel_and_syscalls():
    modules = llmos_modules()
    graph = import_graph(modules)
    found = [c for c in cycles(graph) if all(map(_in_kernel_or_syscalls, c))]
    assert not found, "import cycles:\n  " + "\n  ".join(describe(c, graph, modules) for c in found)


# -- the tests: what importing a layer loads ---------------------------------------------------------
def loaded_by(statement: str) -> set[str]:
    """The modules in sys.modules after `statement`, in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"{statement!r} failed:\n{out.stderr}"
    return set(json.loads(out.stdout.splitlines()[-1]))


def heavy(modules: set[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names)


def llmos_outside(modules: set[str], *layers: str) -> list[str]:
    """The llmos modules loaded that are neither the package `llmos` nor inside `layers`."""
    return sorted(m for m in modules if m.startswith("llmos.")
                  and not any(m == layer or m.startswith(layer + ".") for layer in layers))


def test_import_llmos_defines_names_and_loads_nothing():
    """`import llmos` loads only llmos/__init__: no layer, no plugin (plugins load at boot,
    load_model, the CLI, ...), no torch, transformers, chromadb, pluggy or pydantic."""
    modules = loaded_by("import llmos")
    assert llmos_outside(modules) == []
    assert heavy(modules, (*HEAVY, "numpy", "pluggy", "pydantic", "anyio")) == []


def test_import_llmos_kernel_loads_only_the_kernel():
    modules = loaded_by("import llmos.kernel")
    assert llmos_outside(modules, "llmos.kernel") == []
    assert heavy(modules, (*HEAVY, "numpy", "chromadb", "pluggy")) == []


def test_import_llmos_syscalls_loads_only_kernel_and_syscalls():
    modules = loaded_by("import llmos.syscalls")
    assert llmos_outside(modules, "llmos.kernel", "llmos.syscalls") == []
    assert heavy(modules, (*HEAVY, "numpy", "pluggy")) == []


def test_import_llmos_durable_loads_no_dbos_until_it_starts():
    """The front (`llmos.durable.Durable`, plugged in at every boot) is light; DBOS, most of a
    second to import, loads only when durable processes are used."""
    modules = loaded_by("import llmos.durable")
    assert llmos_outside(modules, "llmos.kernel", "llmos.durable", "llmos.home") == []
    assert heavy(modules) == []


def test_import_llmos_memory_loads_no_drivers():
    modules = loaded_by("import llmos.memory, llmos.memory.store, llmos.memory.embeddings")
    assert llmos_outside(modules, "llmos.kernel", "llmos.memory") == []
    assert heavy(modules, ("torch", "transformers")) == []


def test_import_llmos_drivers_loads_no_torch_no_memory():
    modules = loaded_by("import llmos.drivers, llmos.drivers.tools, llmos.drivers.embeddings")
    assert llmos_outside(modules, "llmos.kernel", "llmos.drivers", "llmos.hookspecs") == []
    assert heavy(modules) == []


def test_names_resolve_lazily_and_public_names_are_all_there():
    code = ("import sys, llmos\n"
            "names = sorted(llmos.__all__)\n"
            "missing = [n for n in names if getattr(llmos, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert set(names) <= set(dir(llmos))\n"
            "import llmos.booting, llmos.model, llmos.runtime\n"
            "from llmos.booting import boot\n"
            "assert llmos.boot is boot and llmos.load_model is llmos.model.load_model\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


# -- the checks check ----------------------------------------------------------------------------------
def test_layering_test_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nimport torch\nfrom llmos.apps import cli\n"
                   "if TYPE_CHECKING:\n    import chromadb\n\ndef f():\n    from llmos.memory import store\n")
    assert [i.module for i in read_imports(bad)] == ["typing", "torch", "llmos.apps", "llmos.memory"]


def test_relative_imports_resolve(tmp_path):
    pkg = tmp_path / "__init__.py"
    pkg.write_text("from . import a\nfrom .b import c\n")
    mod = tmp_path / "m.py"
    mod.write_text("from . import a\nfrom ..x import y\n")
    assert [i.module for i in read_imports(pkg, "llmos.drivers")] == ["llmos.drivers", "llmos.drivers.b"]
    assert [i.module for i in read_imports(mod, "llmos.drivers.m")] == ["llmos.drivers", "llmos.x"]


def test_the_cycle_finder_finds_a_deferred_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []
