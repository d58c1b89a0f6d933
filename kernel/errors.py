"""Every error a syscall can raise, in one place.

All are `SyscallError` subclasses carrying an errno-like code, so a process can catch
them as a family or one by one. Each is recoverable for the *process* that gets it (it
may catch it and go on); none is fatal to the kernel.
"""

from __future__ import annotations

from enum import IntEnum


class Errno(IntEnum):
    """Errno-like codes; the numbers follow Linux where one fits."""

    EPERM = 1  # the caller lacks a capability
    ENOENT = 2  # no such item (a memory id)
    ESRCH = 3  # no such process
    EINTR = 4  # the call was interrupted (the process was killed while it waited)
    EIO = 5  # the model or another driver failed
    E2BIG = 7  # the prompt does not fit the model's context window
    EAGAIN = 11  # try again later (a mailbox is full)
    EBUSY = 16  # another process holds the resource (a memory store folder)
    ENOTTY = 25  # no user is attached to answer (no console)
    EEXIST = 17  # the thing already exists
    ENODEV = 19  # the kernel has no such device (no memory store configured)
    EINVAL = 22  # a malformed request or an argument out of range
    ENOSYS = 38  # unknown syscall
    ETIMEDOUT = 110  # a wait ran out of time
    EDQUOT = 122  # a quota is exhausted
    ENOTUNIQ = 76  # a name matches several processes
    EPROTO = 71  # a durable process's replay no longer matches its record


class SyscallError(Exception):
    """Base of every error a syscall raises: `code` is the errno, `str(e)` a sentence."""

    code: Errno = Errno.EINVAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code.name}] {self.message}"


class InvalidRequest(SyscallError):
    """The request is malformed or an argument is out of range. Fix the call."""

    code = Errno.EINVAL


class UnknownSyscall(SyscallError):
    """No handler exists for this request type. Check the call's name."""

    code = Errno.ENOSYS


class PermissionDenied(SyscallError):
    """The calling process lacks the capability the call needs."""

    code = Errno.EPERM


class UntrustedEgress(PermissionDenied):
    """The process has read untrusted text (a tool's result, another agent's message) and
    asked to send data out (the network, another agent); no user approved it. See
    kernel/security.py: untrusted text may be read, not obeyed into exfiltration."""

    code = Errno.EPERM


class NoSuchProcess(SyscallError):
    """No live (or unreaped) process has that pid or name."""

    code = Errno.ESRCH


class AmbiguousName(SyscallError):
    """A name matches several live processes; address one by pid."""

    code = Errno.ENOTUNIQ


class QuotaExceeded(SyscallError):
    """The process used up a quota (tokens, syscalls); further calls of that kind fail."""

    code = Errno.EDQUOT


class Timeout(SyscallError):
    """A blocking call (recv, wait) ran out of time; nothing was consumed."""

    code = Errno.ETIMEDOUT


class MailboxFull(SyscallError):
    """The receiver's mailbox is full; the message was not delivered. Retry later."""

    code = Errno.EAGAIN


class ContextOverflow(SyscallError):
    """The prompt plus the reply budget exceed the model's context window."""

    code = Errno.E2BIG


class KernelFault(SyscallError):
    """The call failed on a fault inside the kernel or a driver (an exception no part of
    the system turned into a typed error: a bug). The message names it; the kernel goes on
    and the call may be tried again."""

    code = Errno.EIO


class ModelError(SyscallError):
    """The model driver failed while serving the request; the kernel goes on."""

    code = Errno.EIO


class ModelNotServed(SyscallError):
    """The kernel cannot serve that model to a process: unknown, or not a variant (a derived
    model, a LoRA adapter) of the model it runs."""

    code = Errno.ENODEV


class NoSuchModel(SyscallError):
    """No model in the library (or built in, or remote) has this name; the message lists them."""

    code = Errno.ENOENT


class InvalidState(SyscallError):
    """The target is not in a state that allows this (e.g. resume of a running process)."""

    code = Errno.EINVAL


class ConfigError(ValueError):
    """A kernel setting is invalid (an unknown policy or model name). Raised at boot, not by syscalls."""


class TooManyProcesses(SyscallError):
    """The process table is full; spawn again once some processes have ended."""

    code = Errno.EAGAIN


class QueueFull(SyscallError):
    """The model's queue is full (the scheduler's `max_queue` generations wait); try again shortly."""

    code = Errno.EAGAIN


class NoConsole(SyscallError):
    """Nobody is at a terminal to answer `ask_user` (no console attached, or stdin closed)."""

    code = Errno.ENOTTY


class NoSuchMemory(SyscallError):
    """No item with that id exists in the namespace (it was never stored, or was forgotten)."""

    code = Errno.ENOENT


class MemoryUnavailable(SyscallError):
    """The kernel has no memory store, or it cannot be opened (see the message). Memory
    syscalls fail until the kernel is booted with a store; the process may go on without."""

    code = Errno.ENODEV


class NoSuchTool(SyscallError):
    """No tool has that name; the message lists the tools the caller may call."""

    code = Errno.ENOENT


class InvalidToolArguments(InvalidRequest):
    """The arguments do not match the tool's JSON schema; the tool did not run. Fix the call."""

    code = Errno.EINVAL


class ToolFailed(SyscallError):
    """The tool ran and raised (or its MCP server answered with an error); the message says
    what it raised. The kernel and the caller go on; retrying with other arguments may help."""

    code = Errno.EIO


class ToolTimeout(Timeout):
    """The tool did not finish within its timeout; it was stopped (a sandboxed tool is
    killed, an in-process sync tool's thread is abandoned)."""

    code = Errno.ETIMEDOUT


class ToolLimitExceeded(SyscallError):
    """A sandboxed tool hit a resource limit (`limit`: "cpu", "memory" or "output") and
    was stopped. The kernel goes on; the same call will hit the limit again."""

    code = Errno.EDQUOT

    def __init__(self, message: str, limit: str = "") -> None:
        super().__init__(message)
        self.limit = limit


class ToolUnavailable(SyscallError):
    """The kernel has no tools, or the tool's provider (an MCP server) is gone."""

    code = Errno.ENODEV


class JailUnavailable(ToolUnavailable):
    """An untrusted tool must run in a jail (bubblewrap) and none can be set up here; the
    message says why and how to fix it. The tool did not run."""

    code = Errno.ENODEV


class StoreLocked(MemoryUnavailable):
    """Another llmos process is the writer of this store folder. Stop it, use another
    LLMOS_HOME or store path, or share one `chroma run` server between kernels."""

    code = Errno.EBUSY


class ReplayDiverged(SyscallError):
    """A resumed durable process asked a different syscall than its record holds at that
    point (its code changed, or it depends on something other than its syscalls' answers).
    It stops rather than act on answers recorded for other questions."""

    code = Errno.EPROTO


class DurabilityUnavailable(SyscallError):
    """This kernel cannot run durable processes (booted with durable=None, or another kernel
    in this Python process holds the durable runtime)."""

    code = Errno.ENODEV


class NoSuchDurableProcess(SyscallError):
    """No durable process has this id in this LLMOS_HOME (or cluster)."""

    code = Errno.ESRCH


class DurableCancelled(SyscallError):
    """This durable process was cancelled (from this kernel or another): it stops now."""

    code = Errno.EINTR
