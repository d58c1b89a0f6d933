"""llmos: an operating system for language-model agents.

    import llmos
    model = llmos.load_model("smollm2")
    print(model.generate_text("The world is full of "))

    async with llmos.boot() as kernel:
        proc = await kernel.spawn(main, "What is the capital of France?")
        status = await kernel.wait(proc.pid)

`import llmos` only defines names: each is imported from its layer when it is first used
(`llmos.Sys` loads the syscall ABI, `llmos.load_model` the model library, and so on), and
plugins load when something needs what they register (`boot()`, `load_model()`, the `llmos`
command), not on import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name, and the module it comes from.
_NAMES = {
    "boot": "llmos.booting",
    "DEFAULT_MODEL": "llmos.drivers",
    "LLMOS": "llmos.runtime",
    "Model": "llmos.runtime",
    "ModelListing": "llmos.model",
    "available_models": "llmos.model",
    "load_model": "llmos.model",
    "model_names": "llmos.model",
    "ModelUnavailable": "llmos.drivers.errors",
    "UnknownModel": "llmos.drivers.errors",
    "ConfigError": "llmos.kernel.errors",
    "AuditEntry": "llmos.kernel.audit",
    "read_audit": "llmos.kernel.audit",
    "ExitStatus": "llmos.kernel",
    "Kernel": "llmos.kernel",
    "ProcState": "llmos.kernel",
    "ProcessInfo": "llmos.kernel",
    "Quotas": "llmos.kernel",
    "Reply": "llmos.syscalls",
    "Sys": "llmos.syscalls",
    "SyscallError": "llmos.syscalls",
    "TextStream": "llmos.syscalls",
    "Tool": "llmos.drivers.tools",
    "tool": "llmos.drivers.tools",
}
# Submodules reachable as attributes of `llmos` without an import of their own, as when
# `import llmos` imported them.
_SUBMODULES = ("hookspecs", "home", "model", "plugins", "runtime", "testing")

__all__ = [
    "AuditEntry", "DEFAULT_MODEL", "ConfigError", "ExitStatus", "Kernel", "LLMOS", "Model", "ModelListing", "available_models", "ModelUnavailable",
    "ProcState", "ProcessInfo", "Quotas", "Reply", "Sys", "SyscallError", "TextStream", "UnknownModel", "boot",
    "load_model", "model_names", "read_audit", "Tool", "tool",
]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value  # the next lookup is an ordinary one
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports these
    from llmos.booting import boot
    from llmos.drivers import DEFAULT_MODEL
    from llmos.drivers.errors import ModelUnavailable, UnknownModel
    from llmos.drivers.tools import Tool, tool
    from llmos.kernel.audit import AuditEntry, read_audit
    from llmos.kernel.errors import ConfigError
    from llmos.kernel import ExitStatus, Kernel, ProcessInfo, ProcState, Quotas
    from llmos.model import ModelListing, available_models, load_model, model_names
    from llmos.runtime import LLMOS, Model
    from llmos.syscalls import Reply, Sys, SyscallError, TextStream
