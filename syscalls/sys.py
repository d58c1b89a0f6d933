"""`Sys`: the handle an app receives. Every method is one syscall through the kernel.

The methods are made from the syscall table, one per request class, so a syscall is
defined once (its request class): `sys.spawn(app, *args, name=...)` builds a `Spawn`
request (validated once, by pydantic) and hands the object to the dispatcher. How a method
takes its arguments comes from the request class (`positional`, `variadic`, `keywords`);
a dotted call name "context.append" becomes `sys.context.append`. Each method carries
the signature, annotations and docstring of its request, for `help()` and editors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from llmos.kernel.abi import Request
from llmos.kernel.dispatch import SyscallTable
from llmos.syscalls.table import TABLE

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.process import Process

R = TypeVar("R")
Method = Callable[..., Coroutine[Any, Any, Any]]


class Sys:
    """What a process can do. Errors are `llmos.syscalls.errors.SyscallError` subclasses.
    Every syscall of `llmos.syscalls.TABLE` is a method (see `dir(sys)`)."""

    __slots__ = ("_kernel", "_proc")

    def __init__(self, kernel: Kernel, proc: Process) -> None:
        self._kernel = kernel
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def name(self) -> str:
        return self._proc.name

    @overload
    async def syscall(self, request: Request[R]) -> R: ...
    @overload
    async def syscall(self, request: Mapping[str, Any]) -> Any: ...

    async def syscall(self, request: Any) -> Any:
        """Issue any syscall: a request object, or a dict {"call": name, **arguments}."""
        return await self._kernel.syscall(self._proc, request)

    async def _issue(self, cls: type[Request[Any]], fields: dict[str, Any]) -> Any:
        try:
            request = cls(**fields)
        except ValidationError:
            # The dict form validates again and fails as a traced EINVAL naming the field.
            return await self._kernel.syscall(self._proc, {**fields, "call": cls.call})
        return await self._kernel.syscall(self._proc, request)


class _Group:
    """The methods of a dotted family of calls ("context.*" as `sys.context`)."""

    __slots__ = ("_sys",)

    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def _issue(self, cls: type[Request[Any]], fields: dict[str, Any]) -> Any:
        return await self._sys._issue(cls, fields)


def _bind_arguments(cls: type[Request[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request's fields from a method call's arguments, as its class says to take them."""
    fields = dict(zip(cls.positional, args))
    if len(args) > len(cls.positional):
        if cls.variadic is None:
            raise TypeError(f"{cls.call}() takes at most {len(cls.positional)} positional arguments "
                            f"({len(args)} given)")
        fields[cls.variadic] = args[len(cls.positional):]
    if cls.keywords is not None:  # then the positional fields are positional-only, as in `f(name, /, **kw)`
        loose = [k for k in kwargs if k not in cls.model_fields or k in cls.positional]
        extra = {key: kwargs.pop(key) for key in loose}
        if extra:
            fields[cls.keywords] = extra
    for key in kwargs:
        if key in fields:
            raise TypeError(f"{cls.call}() got multiple values for argument {key!r}")
    fields.update(kwargs)
    return fields


def _method(cls: type[Request[Any]]) -> Method:
    positional = cls.positional
    if not positional and cls.variadic is None and cls.keywords is None:
        async def method(self: Sys | _Group, **kwargs: Any) -> Any:  # the common case, kept cheap
            return await self._issue(cls, kwargs)
    else:
        async def method(self: Sys | _Group, *args: Any, **kwargs: Any) -> Any:
            return await self._issue(cls, _bind_arguments(cls, args, kwargs))
    method.__name__ = method.__qualname__ = cls.call.rpartition(".")[2]
    method.__doc__ = cls.__doc__
    method.__signature__ = signature_of(cls)  # type: ignore[attr-defined]
    return method


class _Factory:
    """The default of a field made fresh for each request (`Field(default_factory=...)`)."""

    def __repr__(self) -> str:
        return "<made fresh>"


_FACTORY = _Factory()


def signature_of(cls: type[Request[Any]]) -> inspect.Signature:
    """The signature of the method `cls` gives `Sys`."""
    def parameter(name: str, kind: inspect._ParameterKind) -> inspect.Parameter:
        field = cls.model_fields[name]
        if field.default_factory is not None:
            default: Any = _FACTORY
        else:
            default = field.get_default(call_default_factory=False)
            default = inspect.Parameter.empty if default is PydanticUndefined else default
        return inspect.Parameter(name, kind, default=default, annotation=field.annotation)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
    by_position = inspect.Parameter.POSITIONAL_ONLY if cls.keywords else inspect.Parameter.POSITIONAL_OR_KEYWORD
    params += [parameter(name, by_position) for name in cls.positional]
    if cls.variadic is not None:
        params.append(inspect.Parameter(cls.variadic, inspect.Parameter.VAR_POSITIONAL))
    taken = {*cls.positional, cls.variadic, cls.keywords}
    params += [parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in cls.model_fields if name not in taken]
    if cls.keywords is not None:
        params.append(inspect.Parameter(cls.keywords, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params, return_annotation=cls.result_type())


def _group_property(group: type[_Group]) -> property:
    return property(lambda self: group(self), doc=group.__doc__)


_OWN = frozenset(name for name in dir(Sys) if not name.startswith("__"))  # pid, name, syscall, _issue


def install(table: SyscallTable, handle: type[Sys] = Sys) -> None:
    """Give `handle` one method per request type of `table`, and a sub-handle per dotted
    family. Done for `Sys` and the kernel's TABLE at import; a kernel built on a table of
    its own gives its processes a subclass of `Sys` installed from that table."""
    clashes = sorted({cls.call.partition(".")[0] for cls in table.handlers} & _OWN)
    if clashes:
        raise ValueError(f"syscalls named {clashes} would hide Sys's own attributes of those names")
    groups: dict[str, type[_Group]] = {}
    for cls in table.handlers:
        family, _, name = cls.call.rpartition(".")
        if not family:
            setattr(handle, name, _method(cls))
            continue
        if family not in groups:
            groups[family] = type(f"{family.title()}Calls", (_Group,), {
                "__slots__": (), "__doc__": f"The {family}.* syscalls: one method each."})
            setattr(handle, family, _group_property(groups[family]))
        setattr(groups[family], name, _method(cls))


install(TABLE)
