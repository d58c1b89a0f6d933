"""The errors syscalls raise: catch `SyscallError` for all of them, or one by one.

They are defined in llmos.kernel.errors (the kernel raises them) and exported here as
part of the ABI apps program against.
"""

from llmos.kernel.errors import (
    AmbiguousName,
    ContextOverflow,
    DurabilityUnavailable,
    Errno,
    InvalidRequest,
    InvalidToolArguments,
    InvalidState,
    MailboxFull,
    MemoryUnavailable,
    ModelError,
    ModelNotServed,
    NoConsole,
    NoSuchDurableProcess,
    NoSuchMemory,
    NoSuchModel,
    NoSuchProcess,
    NoSuchTool,
    PermissionDenied,
    QuotaExceeded,
    ReplayDiverged,
    StoreLocked,
    SyscallError,
    Timeout,
    ToolFailed,
    ToolLimitExceeded,
    ToolTimeout,
    ToolUnavailable,
    TooManyProcesses,
    QueueFull,
    UnknownSyscall,
)

__all__ = [
    "AmbiguousName", "ContextOverflow", "Errno", "InvalidRequest", "InvalidState", "MailboxFull", "MemoryUnavailable", "ModelError",
    "ModelNotServed", "NoConsole", "NoSuchModel", "NoSuchProcess", "PermissionDenied", "QuotaExceeded", "SyscallError", "Timeout", "TooManyProcesses", "QueueFull",
    "UnknownSyscall", "NoSuchMemory", "StoreLocked", "DurabilityUnavailable", "NoSuchDurableProcess", "ReplayDiverged",
    "InvalidToolArguments", "NoSuchTool", "ToolFailed", "ToolLimitExceeded", "ToolTimeout", "ToolUnavailable",
]
