"""The one table from request type to handler (xv6's syscalls[]), built from each family."""

from llmos.kernel.dispatch import SyscallTable
from llmos.syscalls import context, memory
from llmos.syscalls import console, generate, ipc, proc
from llmos.syscalls import tools

TABLE = SyscallTable({**proc.HANDLERS, **ipc.HANDLERS, **generate.HANDLERS, **memory.HANDLERS, **context.HANDLERS, **console.HANDLERS,
                      **tools.HANDLERS})
