"""The one table from request type to handler (xv6's syscalls[]), built from each family.

Adding a syscall: its request class and its handler in the family's module, and the pair
in that module's HANDLERS. `Sys` gets its method from here (llmos.syscalls.sys)."""

from llmos.kernel.dispatch import SyscallTable
from llmos.syscalls import choose, console, context, durable, generate, ipc, memory, models, proc, tools

TABLE = SyscallTable({**proc.HANDLERS, **ipc.HANDLERS, **generate.HANDLERS, **choose.HANDLERS, **memory.HANDLERS,
                      **context.HANDLERS, **console.HANDLERS, **tools.HANDLERS, **durable.HANDLERS,
                      **models.HANDLERS})
