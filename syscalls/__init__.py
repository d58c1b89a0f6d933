"""llmos.syscalls: the ABI apps program against.

Typed requests (frozen pydantic models, one module per family), their results, the
errors they raise, and `Sys`, the handle every app receives.
"""

from llmos.kernel.capabilities import DEFAULT_APP as DEFAULT_APP_CAPS
from llmos.kernel.ipc import Message
from llmos.kernel.loader import resolve_app
from llmos.kernel.model import ChatMessage, SamplingParams
from llmos.kernel.process import ExitStatus, ProcessInfo, ProcState, Quotas
from llmos.syscalls.errors import *  # noqa: F403
from llmos.syscalls.errors import __all__ as _errors
from llmos.syscalls.generate import Chat, Generate, Reply, TextStream
from llmos.kernel.memory import ContextEntry, ContextSnapshot, ContextStats, MemoryItem
from llmos.syscalls.context import ContextAppend, ContextClear, ContextInfo, ContextPin, ContextRestore, ContextSave
from llmos.syscalls.memory import Forget, Recall, Remember
from llmos.syscalls.console import AskUser, Write
from llmos.syscalls.ipc import Publish, Recv, Send, Subscribe, Unsubscribe
from llmos.syscalls.proc import GetPid, Kill, Nice, Ps, Resume, SetStatus, Sleep, Spawn, Stats, Suspend, Trace, Wait
from llmos.syscalls.generate import ToolCall
from llmos.syscalls.choose import Choice, Choose
from llmos.kernel.durable import DurableInfo, DurableState, RestartPolicy
from llmos.syscalls.durable import DurableCancel, DurableInfoRequest, DurablePs, DurableResume, DurableWait
from llmos.kernel.abi import Request
from llmos.kernel.library import ModelCard, ModelRow
from llmos.syscalls.models import (ModelsAdd, ModelsCopy, ModelsCreate, ModelsDefault, ModelsImport, ModelsList,
                                   ModelsPull, ModelsRemove, ModelsSetDefault, ModelsShow)
from llmos.kernel.stats import GenerationStatistics, KernelStatistics, SchedulerStatistics, TraceEvent
from llmos.syscalls.tools import CallTool, ListTools, ToolContext, ToolSpec
from llmos.syscalls.sys import Sys
from llmos.syscalls.table import TABLE

__all__ = [
    "Chat", "ChatMessage", "DEFAULT_APP_CAPS", "ExitStatus", "Generate", "GetPid", "Kill", "Message", "Nice", "ProcState", "ProcessInfo",
    "Ps", "Quotas", "Recv", "Reply", "Resume", "SamplingParams", "Send", "SetStatus", "Sleep", "Spawn", "Suspend", "Sys", "TABLE",
    "TextStream", "Wait", *_errors,
    "ContextAppend", "ContextClear", "ContextEntry", "ContextInfo", "ContextPin", "ContextRestore", "ContextSave",
    "ContextSnapshot", "ContextStats", "Forget", "MemoryItem", "Recall", "Remember",
    "AskUser", "Publish", "Subscribe", "Unsubscribe", "Write", "resolve_app",
    "CallTool", "ListTools", "ToolCall", "ToolContext", "ToolSpec",
    "Choice", "Choose", "Request", "DurableCancel", "DurableInfo", "DurableInfoRequest", "DurablePs",
    "DurableResume", "DurableState", "DurableWait", "RestartPolicy", "Stats", "Trace", "GenerationStatistics", "KernelStatistics", "SchedulerStatistics", "TraceEvent",
    "ModelCard", "ModelRow", "ModelsAdd", "ModelsCopy", "ModelsCreate", "ModelsDefault", "ModelsImport", "ModelsList",
    "ModelsPull", "ModelsRemove", "ModelsSetDefault", "ModelsShow",
]
