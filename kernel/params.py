"""Every kernel limit and default in one place, each with its reason."""

from __future__ import annotations

# Process table ------------------------------------------------------------------
KERNEL_PID = 0  # pid of the kernel itself: the parent of processes spawned from outside
MAX_PROCESSES = 100_000  # live processes at once; spawn fails with EAGAIN past it
# Ended processes kept for `wait` until reaped; past this many the oldest unreaped are
# dropped, so a caller that never waits cannot grow the table without bound.
ZOMBIE_HISTORY = MAX_PROCESSES
NICE_MIN, NICE_MAX = -20, 19  # Unix nice range: lower is more important
DEFAULT_NICE = 0

# Quotas (None = unlimited) --------------------------------------------------------
DEFAULT_MAX_TOKENS: int | None = None  # prompt + completion tokens over the process's life
DEFAULT_MAX_SYSCALLS: int | None = None
DEFAULT_DEADLINE_S: float | None = None  # wall time from spawn to forced KILLED
# After a syscall quota is hit the process gets this many more (failing) calls to wind
# down; one more and the kernel kills it, so a loop that swallows the error still ends.
QUOTA_GRACE_SYSCALLS = 16

# IPC ---------------------------------------------------------------------------------
MAILBOX_SIZE = 256  # queued messages per process; `send` to a full mailbox is EAGAIN

# Tracing -------------------------------------------------------------------------------
TRACE_SIZE = 10_000  # syscall trace events kept in the kernel's ring buffer

# Fairness ------------------------------------------------------------------------------
# A syscall that completes without blocking yields to the event loop at least this often
# (seconds), so a process looping on cheap syscalls cannot starve its siblings.
YIELD_INTERVAL_S = 0.002

# Generation -------------------------------------------------------------------------
DEFAULT_POLICY = "fifo"
MAX_BATCH = 64  # sequences decoded together (the driver may hold fewer)
RR_QUANTUM_TOKENS = 32  # tokens a sequence decodes before round-robin lets a waiting one in
DEFAULT_REPLY_TOKENS = 256  # max_tokens of a generation request that names none
# After the model goes idle and a request arrives, wait this long before starting a batch
# so that requests issued together (agents spawned together) are served together.
BATCH_GATHER_S = 0.01
