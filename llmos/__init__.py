"""llmos: an operating system for language-model agents.

    import llmos
    model = llmos.load_model("smollm2")
    print(model.generate_text("The world is full of "))

    async with llmos.boot() as kernel:
        proc = await kernel.spawn(main, "What is the capital of France?")
        status = await kernel.wait(proc.pid)
"""

from llmos.boot import boot
from llmos.drivers import ModelUnavailable, UnknownModel, model_names
from llmos.kernel import ExitStatus, Kernel, ProcessInfo, ProcState, Quotas
from llmos.kernel.errors import ConfigError
from llmos.model import Model, ModelListing, available_models, load_model
from llmos.runtime import LLMOS
from llmos.syscalls import Reply, Sys, SyscallError, TextStream

from llmos.drivers.tools import Tool, tool
from llmos import plugins

__version__ = "0.1.0"
plugins.load()  # built-in and installed plugins register their models, tools and apps

__all__ = [
    "ConfigError", "ExitStatus", "Kernel", "LLMOS", "Model", "ModelListing", "available_models", "ModelUnavailable", "ProcState", "ProcessInfo", "Quotas", "Reply", "Sys",
    "SyscallError", "TextStream", "UnknownModel", "boot", "load_model", "model_names",
    "Tool", "tool",
]
