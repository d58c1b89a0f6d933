"""`Sys`, made from the syscall table: one method per request class, taking its arguments as
the class says, building the request once; and the three places a new syscall touches."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from pydantic import Field

import llmos
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import Need
from llmos.kernel.dispatch import SyscallTable
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process
from llmos.syscalls import TABLE, CallTool, Chat, Errno, InvalidRequest, PermissionDenied, Spawn, Sys
from llmos.syscalls.sys import install
from llmos.testing import FakeDriver, caught, result, spawn_and_wait


def method_of(handle: type, call: str) -> Any:
    family, _, name = call.rpartition(".")
    owner = getattr(handle, family).fget(None) if family else handle  # a group's class, from its property
    return getattr(type(owner) if family else owner, name)


@pytest.mark.parametrize("cls", sorted(TABLE.handlers, key=lambda c: c.call), ids=lambda c: c.call)
def test_every_syscall_is_a_method_with_its_request_s_signature_and_doc(cls: type[Request]) -> None:
    method = method_of(Sys, cls.call)
    signature = inspect.signature(method)
    named = {p.name for p in signature.parameters.values()} - {"self"}
    assert named == set(cls.model_fields)  # every field, nothing else
    assert method.__doc__ == cls.__doc__
    assert signature.return_annotation == cls.result_type()


def test_how_arguments_are_taken_comes_from_the_request_class() -> None:
    spawn = inspect.signature(Sys.spawn).parameters
    assert spawn["app"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert spawn["args"].kind is inspect.Parameter.VAR_POSITIONAL
    assert spawn["caps"].kind is inspect.Parameter.KEYWORD_ONLY and spawn["caps"].default is None
    call_tool = inspect.signature(Sys.call_tool).parameters
    assert call_tool["name"].kind is inspect.Parameter.POSITIONAL_ONLY
    assert call_tool["arguments"].kind is inspect.Parameter.VAR_KEYWORD
    assert Chat.result_type() is not Any and CallTool.result_type() is Any


async def test_a_method_builds_its_request_as_the_class_says() -> None:
    seen: list[Request] = []

    async def main(sys: Sys) -> None:
        original = sys._kernel.syscall

        async def spy(proc: Process, request: Any) -> Any:
            seen.append(request)
            return await original(proc, request)

        sys._kernel.syscall = spy  # type: ignore[method-assign]
        child = await sys.spawn(idle, 1, "two", name="kid")
        await sys.wait(child.pid)
        await sys.call_tool("calculator", expression="1 + 1")
        await caught(sys.call_tool("calculator", name="shadowed", expression="2"))  # `name` goes to the tool

    async with llmos.boot(FakeDriver(), memory=None) as kernel:
        result(await spawn_and_wait(kernel, main))
    spawn, _, calc, shadowed = seen
    assert type(spawn) is Spawn and spawn.args == (1, "two") and spawn.name == "kid" and spawn.app is idle
    assert type(calc) is CallTool and calc.arguments == {"expression": "1 + 1"}
    assert shadowed.name == "calculator" and shadowed.arguments == {"name": "shadowed", "expression": "2"}


async def idle(sys: Sys, *args: Any) -> tuple[Any, ...]:
    return args


async def test_python_call_errors_are_type_errors_and_bad_values_are_einval() -> None:
    async def main(sys: Sys) -> list[Any]:
        errors: list[Any] = []
        for call in (lambda: sys.kill(1, "why", "extra"), lambda: sys.kill(1, pid=2)):
            try:
                await call()
            except TypeError as exc:
                errors.append(exc)
        errors.append(await caught(sys.sleep(-1)))
        errors.append(await caught(sys.wait("not a pid")))
        return errors

    async with llmos.boot(FakeDriver(), memory=None) as kernel:
        info = await kernel.spawn(main)
        errors = result(await kernel.wait(info.pid, timeout=5))
        trace = [e for e in kernel.trace if e.pid == info.pid]
    assert "at most 2 positional" in str(errors[0]) and "multiple values for argument 'pid'" in str(errors[1])
    assert all(type(e) is InvalidRequest and e.code is Errno.EINVAL for e in errors[2:])
    assert "seconds" in errors[2].message and "pid" in errors[3].message
    assert [(e.call, e.outcome) for e in trace] == [("sleep", "EINVAL"), ("wait", "EINVAL")]


# -- adding a syscall: the request, the handler, the table -------------------------------------------
class Echo(Request[str]):
    """Say `text` back, `times` times; needs capability "echo"."""

    call: ClassVar[str] = "echo"
    positional: ClassVar[tuple[str, ...]] = ("text",)

    text: str = Field(min_length=1)
    times: int = Field(default=1, ge=1, le=3)

    def needs(self, caller: Process) -> Iterator[Need]:
        yield "echo"


async def sys_echo(kernel: Kernel, caller: Process, req: Echo) -> str:
    return " ".join([req.text] * req.times)


class EchoSys(Sys):
    __slots__ = ()


async def test_a_new_syscall_is_three_places_and_gets_everything_else() -> None:
    table = SyscallTable({**TABLE.handlers, Echo: sys_echo})
    install(table, EchoSys)

    async def main(sys: EchoSys) -> list[Any]:
        return [await sys.echo("hi", times=2),  # type: ignore[attr-defined]
                await sys.syscall({"call": "echo", "text": "dict"}),
                await caught(sys.echo("hi", times=9)),  # type: ignore[attr-defined]
                await sys.getpid()]

    async def denied(sys: EchoSys) -> Any:
        return await caught(sys.echo("hi"))  # type: ignore[attr-defined]

    async with Kernel(table, EchoSys) as kernel:
        said = result(await spawn_and_wait(kernel, main, caps={"echo"}))
        refused = result(await spawn_and_wait(kernel, denied, caps=set()))
        calls = [e.call for e in kernel.trace]
    assert said[:2] == ["hi hi", "dict"] and said[2].code is Errno.EINVAL and said[3] == 1
    assert type(refused) is PermissionDenied and "'echo'" in refused.message
    assert calls.count("echo") == 4
    assert not hasattr(Sys, "echo")  # the kernel's own Sys is untouched


@pytest.mark.parametrize("call", ["", "Spawn", "two.dots.here", "pid", "syscall"])
def test_a_call_name_that_cannot_be_a_method_is_refused(call: str) -> None:
    bad = type("Bad", (Request[None],), {"__annotations__": {"call": ClassVar[str]}, "call": call})

    async def handler(kernel: Kernel, caller: Process, req: Any) -> None: ...

    with pytest.raises(ValueError, match="call name|hide Sys"):
        install(SyscallTable({**TABLE.handlers, bad: handler}), EchoSys)


def test_a_call_cannot_share_its_name_with_a_family() -> None:
    clash = type("Clash", (Request[None],), {"__annotations__": {"call": ClassVar[str]}, "call": "context"})
    with pytest.raises(ValueError, match="family"):
        SyscallTable({**TABLE.handlers, clash: sys_echo})
