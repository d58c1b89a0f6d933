"""`@tool`: a typed Python function (sync or async) becomes a tool.

Its JSON schema comes from the signature (pydantic) and its description from the
docstring: the text before the `Args:` section, and each argument's line in it. A
parameter annotated `ToolContext` receives the caller (pid, name, workspace folder) and is
left out of the schema. Arguments are validated before the function runs.

    @tool
    def add(a: int, b: int = 0) -> int:
        '''Add two integers.

        Args:
            a: the first
            b: the second
        '''
        return a + b
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_type_hints

import anyio.to_thread
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from llmos.drivers.tools.jail import JailPlan
from llmos.drivers.tools.sandbox import Limits, Target, WarmWorkers, run_sandboxed
from llmos.kernel import params
from llmos.kernel.errors import InvalidToolArguments, SyscallError, ToolFailed
from llmos.kernel.tools import JsonSchema, ToolContext, ToolSpec

_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")
_SECTIONS = ("args:", "arguments:", "parameters:", "returns:", "raises:", "yields:", "examples:", "example:")


class Tool:
    """A function with a name, a schema, a timeout and a trust level. Calling the object
    calls the function; `run` validates and runs it as the kernel does."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                 trusted: bool | None = None, timeout: float | None = None, limits: Limits | None = None,
                 examples: Sequence[str] = (), read_only: bool = False, sends_data: bool = True,
                 trusted_output: bool = False) -> None:
        self.fn = fn
        # What it may do (ToolSpec; kernel/security.py): a tool that says nothing is assumed
        # to change things, send data out, and return text anyone could have written.
        self.read_only, self.sends_data, self.trusted_output = read_only, sends_data, trusted_output
        self.examples = tuple(examples)  # requests it answers, for choosing it (ToolSpec.examples)
        self.name = name or fn.__name__
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        self.description = description if description is not None else summary
        self.context_param, self.model = _arguments_model(fn, self.name, arg_docs)
        self.trusted = trusted  # None: decided where it is registered (a plugin's tools default to untrusted)
        self.timeout_s = timeout or params.TOOL_TIMEOUT_S
        self.limits = limits or Limits()
        self.__doc__, self.__wrapped__ = fn.__doc__, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<tool {self.name}>"

    @property
    def parameters(self) -> JsonSchema:
        return _clean(self.model.model_json_schema())

    def spec(self, source: str = "", sandboxed: bool = False) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters,
                        examples=self.examples, timeout_s=self.timeout_s, sandboxed=sandboxed, source=source,
                        read_only=self.read_only, sends_data=self.sends_data, trusted_output=self.trusted_output)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments, checked and converted to the parameters' types; InvalidToolArguments if wrong."""
        try:
            model = self.model.model_validate(dict(arguments))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            raise InvalidToolArguments(f"bad arguments to tool {self.name!r}: {problems}") from None
        return {field: getattr(model, field) for field in type(model).model_fields}

    async def run(self, arguments: Mapping[str, Any], context: ToolContext, sandboxed: bool = False,
                  jail: JailPlan | None = None, workers: WarmWorkers | None = None) -> Any:
        """Validate, then run in-process (a sync function in a worker thread) or in the
        sandbox (jailed as `jail` says, if given; see sandbox.run_sandboxed)."""
        values = self.validate(arguments)
        if sandboxed:
            return await run_sandboxed(self.target(), self.model(**values).model_dump(mode="json"),
                                       context.model_dump(), self.limits, self.name, jail, workers)
        if self.context_param:
            values[self.context_param] = context
        try:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(**values)
            else:
                value = await anyio.to_thread.run_sync(lambda: self.fn(**values), abandon_on_cancel=True)
        except SyscallError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tool's failure is the caller's to handle, not the kernel's
            raise ToolFailed(f"tool {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        return jsonable(self.name, value)

    def target(self) -> Target:
        """Where a sandbox child finds this tool's function."""
        fn = inspect.unwrap(self.fn)
        return Target(module=fn.__module__, qualname=fn.__qualname__, file=inspect.getsourcefile(fn))

    def sandbox_entry(self, arguments: dict[str, Any], context: dict[str, Any]) -> Any:
        """Run inside a sandbox child (see sandbox_worker): the same validation, then the function."""
        values = self.validate(arguments)
        if self.context_param:
            values[self.context_param] = ToolContext(**context)
        value = self.fn(**values)
        return jsonable(self.name, asyncio.run(value) if inspect.isawaitable(value) else value)


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None,
         trusted: bool | None = None, timeout: float | None = None, cpu_s: float | None = None,
         memory_mb: int | None = None, examples: Sequence[str] = (), read_only: bool = False,
         sends_data: bool = True, trusted_output: bool = False) -> Any:
    """Make `fn` a Tool. `trusted=False` runs it in the jail with `cpu_s` CPU seconds and
    `memory_mb` of memory; `timeout` is its wall time in seconds (default 30). `examples`:
    a few requests it answers, in a user's words; they help a small model choose it.
    `read_only` (it changes nothing), `sends_data=False` (it cannot send what it is given
    anywhere) and `trusted_output` (its result is not text others wrote) let the kernel
    audit and contain it less (kernel/security.py); say them only when they are true."""
    defaults = Limits()
    limits = Limits(cpu_s=cpu_s or defaults.cpu_s, memory_mb=memory_mb or defaults.memory_mb)

    def wrap(fn: Callable[..., Any]) -> Tool:
        return Tool(fn, name=name, description=description, trusted=trusted, timeout=timeout, limits=limits,
                    examples=examples, read_only=read_only, sends_data=sends_data, trusted_output=trusted_output)

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    return obj if isinstance(obj, Tool) else Tool(obj)


def jsonable(name: str, value: Any) -> Any:
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise ToolFailed(f"tool {name!r} returned a value that is not JSON-able: {exc}") from None


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description, {argument: its description}) from a Google-style docstring."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section, current = None, None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in _SECTIONS:
            section, current = stripped.lower(), None
            continue
        if section is None:
            summary.append(line)
        elif section in ("args:", "arguments:", "parameters:") and stripped:
            match = _ARG_LINE.match(line)
            if match and len(line) - len(line.lstrip()) <= 8 and (current is None or match.group(1) not in args):
                current = match.group(1)
                args[current] = match.group(2).strip()
            elif current:
                args[current] = f"{args[current]} {stripped}".strip()
    return "\n".join(summary).strip(), args


def _arguments_model(fn: Callable[..., Any], name: str, docs: dict[str, str]) -> tuple[str | None, type[BaseModel]]:
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"tool {name!r}: parameter {param.name!r} must be an ordinary named parameter")
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        described = {"description": docs[param.name]} if param.name in docs else {}  # else keep an Annotated one
        fields[param.name] = (annotation, Field(default, **described))
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return context_param, create_model(f"{name}_arguments", __config__=config, **fields)


def _clean(schema: JsonSchema) -> JsonSchema:
    """Drop pydantic's generated titles: they repeat the names and cost a small model tokens."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema
