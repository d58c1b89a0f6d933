"""Properties of the capability rule (kernel/capabilities.py), by hypothesis: `grants` agrees
with a reference written apart from it; `narrow` never gives a child anything its parent
lacks, wildcards and odd names included; and through the real kernel, a process with a
random capability set that spawns a child (which spawns a grandchild) asking for a random
set never gets it more than it holds.

"Anything" is checked over a universe of names: every dotted name of up to three segments
over {"a", "b", "*", ""} (wildcards and empty segments included), plus the names drawn
and the names one level below them. Bounded for CI: fixed seeds (derandomize), no
example database, a few hundred examples of the pure functions (microseconds each) and
fewer of the kernel property (a kernel boot each, about 10 ms).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmos
from llmos.kernel.capabilities import ALL, narrow, grants
from llmos.syscalls import PermissionDenied
from llmos.testing import FakeDriver

PURE = settings(max_examples=200, deadline=None, derandomize=True, database=None)
KERNEL = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow])


def ref_grants(granted: Iterable[str], wanted: str) -> bool:
    """The rule as the docs state it, written apart from `grants`: "*" grants everything, a
    name grants itself, and "P.*" grants every name that begins with "P."."""
    return any(g == ALL or g == wanted or (g.endswith(".*") and wanted.startswith(g[:-1])) for g in granted)


def names_up_to(depth: int, segments: tuple[str, ...] = ("a", "b", "*", "")) -> list[str]:
    names, layer = [], list(segments)
    for _ in range(depth):
        names += layer
        layer = [f"{prefix}.{s}" for prefix in layer for s in segments]
    return names


BASE_UNIVERSE = names_up_to(3)  # 4 + 16 + 64 names

segment = st.sampled_from(["a", "b", "c", "*", "", "ab", "proc", "spawn", "x*", "A"])
name = st.lists(segment, min_size=1, max_size=4).map(".".join)
cap_set = st.frozensets(name, max_size=6)


def universe(*sets: Iterable[str]) -> set[str]:
    """The base universe, the names in `sets`, and the names one level below each."""
    drawn = {n for s in sets for n in s}
    return set(BASE_UNIVERSE) | drawn | {f"{n}.{s}" for n in drawn for s in ("a", "*", "")}


def exceeding(child: Iterable[str], parent: Iterable[str], *more: Iterable[str]) -> list[str]:
    """The names `child` grants and `parent` does not (empty: the child holds no more)."""
    child, parent = frozenset(child), frozenset(parent)
    return sorted(w for w in universe(child, parent, *more) if grants(child, w) and not grants(parent, w))


# -- grants ------------------------------------------------------------------------------------------------
def test_the_reference_rule_agrees_with_the_documented_examples() -> None:
    assert ref_grants({"tool.*"}, "tool.calculator") and ref_grants({"tool.*"}, "tool.srv.echo")
    assert not ref_grants({"tool.*"}, "tool") and not ref_grants({"tool.*"}, "toolbox.x")
    assert ref_grants({"*"}, "anything.at.all") and not ref_grants(set(), "x")
    assert ref_grants({"memory.read.*"}, "memory.read.notes") and not ref_grants({"memory.read.*"}, "memory.write.x")


@PURE
@given(cap_set, name)
def test_grants_is_the_documented_rule(granted: frozenset[str], wanted: str) -> None:
    assert grants(granted, wanted) == ref_grants(granted, wanted)


@PURE
@given(cap_set)
def test_grants_agrees_with_the_reference_over_the_universe(granted: frozenset[str]) -> None:
    assert [w for w in universe(granted) if grants(granted, w) != ref_grants(granted, w)] == []


@PURE
@given(cap_set, cap_set, name)
def test_grants_is_monotone(smaller: frozenset[str], more: frozenset[str], wanted: str) -> None:
    if grants(smaller, wanted):
        assert grants(smaller | more, wanted)


@PURE
@given(name)
def test_star_grants_everything_and_nothing_grants_nothing(wanted: str) -> None:
    assert grants({ALL}, wanted)
    assert not grants(set(), wanted)
    assert grants({wanted}, wanted)


# -- narrow ------------------------------------------------------------------------------------------------
@PURE
@given(cap_set, cap_set)
def test_a_child_never_holds_more_than_its_parent(parent: frozenset[str], asked: frozenset[str]) -> None:
    child = narrow(parent, asked)
    assert child <= asked  # what was asked, no more
    assert all(grants(parent, c) for c in child)  # each name it holds, its parent grants
    assert exceeding(child, parent, asked) == []  # nothing it grants, its parent does not


@PURE
@given(cap_set, cap_set, cap_set)
def test_a_grandchild_never_holds_more_than_its_grandparent(parent: frozenset[str], a: frozenset[str],
                                                           b: frozenset[str]) -> None:
    child = narrow(parent, a)
    grandchild = narrow(child, b)
    assert exceeding(grandchild, child, a, b) == []
    assert exceeding(grandchild, parent, a, b) == []


@PURE
@given(cap_set, cap_set)
def test_narrow_is_idempotent(parent: frozenset[str], asked: frozenset[str]) -> None:
    once = narrow(parent, asked)
    assert narrow(once, asked) == once  # asking again for the same gives the same
    assert narrow(parent, once) == once


@PURE
@given(cap_set, cap_set, cap_set)
def test_narrow_is_monotone_in_what_is_asked(parent: frozenset[str], a: frozenset[str], b: frozenset[str]) -> None:
    assert narrow(parent, a) <= narrow(parent, a | b)


@PURE
@given(cap_set)
def test_asking_for_nothing_or_not_asking(parent: frozenset[str]) -> None:
    assert narrow(parent, None) == parent  # not asking: the parent's own set
    assert narrow(parent, ()) == frozenset()
    assert narrow(parent, parent) == parent  # asking for all it has


@PURE
@given(cap_set, cap_set)
def test_what_a_child_keeps_is_exactly_what_its_parent_grants(parent: frozenset[str], asked: frozenset[str]) -> None:
    assert narrow(parent, asked) == frozenset(c for c in asked if ref_grants(parent, c))


@pytest.mark.parametrize(("parent", "asked", "kept"), [
    ({"tool.*"}, {"*"}, set()),  # a wildcard below cannot become one above
    ({"tool.*"}, {"tool.*", "tool.srv.*", "tool.x"}, {"tool.*", "tool.srv.*", "tool.x"}),
    ({"tool.srv.*"}, {"tool.*", "tool.srv", "tool.srv.x"}, {"tool.srv.x"}),
    ({"proc.spawn"}, {"proc.*", "proc.spawn.*", "proc.spawn"}, {"proc.spawn"}),
    ({"a.b"}, {"a.*", "*.b", "a.b.*"}, set()),
    ({"*"}, {"*", "x"}, {"*", "x"}),
    (set(), {"*", ""}, set()),
])
def test_wildcards_narrow_as_documented(parent: set[str], asked: set[str], kept: set[str]) -> None:
    assert narrow(frozenset(parent), asked) == kept


# -- through the kernel ------------------------------------------------------------------------------------
REAL = ["proc.spawn", "proc.admin", "proc.exec", "ipc", "model.generate", "memory", "console", "tool.calculator",
        "tool.srv.echo", "memory.read.notes", "proc.*", "tool.*", "memory.*", "*", "proc", "tool", ""]
kernel_cap_set = st.frozensets(st.sampled_from(REAL) | name, max_size=6)


async def _family(parent_caps: frozenset[str], asked: frozenset[str] | None,
                  asked_below: frozenset[str] | None) -> dict[str, Any]:
    """A parent holding `parent_caps` spawns a child asking for `asked` (by the spawn
    syscall); the child spawns a grandchild asking for `asked_below`. What each holds, by
    `ps`, or the error a spawn got."""

    async def leaf(sys: Any) -> None:
        await anyio.sleep_forever()

    async def middle(sys: Any, below: list[str] | None) -> Any:
        try:
            info = await sys.spawn(leaf, caps=below)
        except PermissionDenied as exc:
            return exc
        return info.capabilities

    async def top(sys: Any) -> Any:
        try:
            info = await sys.spawn(middle, None if asked_below is None else sorted(asked_below),
                                   caps=None if asked is None else sorted(asked))
        except PermissionDenied as exc:
            return exc, None
        return info.capabilities, (await sys.wait(info.pid)).result

    async with llmos.boot(FakeDriver(), memory=None, embedder=None, durable=None, mcp_servers=None) as kernel:
        parent = await kernel.spawn(top, caps=parent_caps)
        status = await kernel.wait(parent.pid, timeout=10)
        assert status.ok, status.traceback
        child, grandchild = status.result
        return {"parent": parent.capabilities, "child": child, "grandchild": grandchild}


@KERNEL
@given(kernel_cap_set, st.none() | kernel_cap_set, st.none() | kernel_cap_set)
def test_through_the_kernel_a_child_never_holds_more_than_its_parent(
        parent_caps: frozenset[str], asked: frozenset[str] | None, asked_below: frozenset[str] | None) -> None:
    family = anyio.run(_family, parent_caps, asked, asked_below)
    parent, child, grandchild = family["parent"], family["child"], family["grandchild"]
    assert parent == parent_caps  # the kernel (pid 0) grants a process it spawns what it is given
    if not grants(parent, "proc.spawn"):
        assert isinstance(child, PermissionDenied)
        return
    assert not isinstance(child, PermissionDenied), child
    more = [parent_caps, asked or (), asked_below or ()]
    assert exceeding(child, parent, *more) == []
    assert child == (parent if asked is None else narrow(parent, asked))
    if not grants(child, "proc.spawn"):
        assert isinstance(grandchild, PermissionDenied)
        return
    assert exceeding(grandchild, child, *more) == []
    assert exceeding(grandchild, parent, *more) == []
    assert grandchild == (child if asked_below is None else narrow(child, asked_below))
