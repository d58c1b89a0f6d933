"""Every kernel limit and default in one place, each with its reason."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from llmos.kernel.errors import ConfigError

N = TypeVar("N", int, float)

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

# Models of other bases than the kernel's own (kernel/model_pool.py), as Ollama keeps them --
MODEL_KEEP_ALIVE_S = 300.0  # one with nothing to generate this long unloads (Ollama's 5 minutes)
# Bases loaded at once, the kernel's own counted: loading one more first unloads the least
# recently used idle one.
MAX_LOADED_MODELS = 3
MODEL_MEMORY_BUDGET: int | None = None  # bytes of weights all loaded bases may hold (None: only MAX_LOADED_MODELS)

# Event-loop watchdog (kernel/watchdog.py) ---------------------------------------------
# Every process is a task on the kernel's one event loop: one synchronous call (time.sleep,
# a busy loop, blocking I/O) in an async app stalls every other process.
# A task on the loop sleeps this long at a time; its lateness is the loop's lag (0: off). Each
# beat wakes the loop thread, which on a 2-core machine takes a core from the engine's OpenMP
# threads mid-step: at 20 ms a beat, one agent decoded 0-7% slower (paired probes), so ~0.1 s.
# Not 0.1 itself: anyio's wait_all_tasks_blocked polls every 0.1 s and waits while any task's
# timer has fired; a beat of the same period fired at each of its polls and it never returned.
LOOP_HEARTBEAT_S = 0.09
LOOP_STALL_S = 0.1  # a heartbeat this late means something holds the loop: the watchdog names it
LOOP_LAG_SAMPLES = 600  # the heartbeats (~a minute's) that the lag percentiles in `stats` are taken over
# A process that holds the loop in its own code this long is stopped (KILLED, its reason says
# for how long): the others have been frozen for as long. 0: never.
LOOP_BLOCK_KILL_S = 5.0

# Generation -------------------------------------------------------------------------
DEFAULT_POLICY = "fifo"
MAX_BATCH = 64  # sequences decoded together (the driver may hold fewer)
# Generations waiting for a place in the batch; one more is refused (QueueFull, EAGAIN;
# `llmos serve` answers HTTP 429) rather than queued without bound behind minutes of work.
MAX_QUEUE = 1024
RR_QUANTUM_TOKENS = 32  # tokens a sequence decodes before round-robin lets a waiting one in
DEFAULT_REPLY_TOKENS = 256  # max_tokens of a generation request that names none
MAX_CHOICES = 64  # options a `choose` call may score (their tokens after the first share one pass)
# `choose` ranks options by mean log-likelihood per token plus this many nats per unit of
# cosine similarity (MiniLM) between the question and the option with its description.
# Measured on bench/evals with SmolLM2-135M (bench/choose.py): the likelihood alone picks
# the right tool 24% of the time and the right specialist 25%, the blend below 74% and 89%;
# blends with less weight on the similarity were worse (20: 56%, 100: 74% of the tools, on
# an earlier framing). So meaning decides and the likelihood breaks near-ties (0.01 of
# cosine is worth 2 nats).
CHOICE_MEANING_WEIGHT = 200.0
MAX_CHOICE_EXAMPLES = 512  # example requests one `choose` call may compare the question with (all options)
CHOICE_VECTOR_CACHE = 4096  # option texts whose sentence vectors are kept between `choose` calls
# After the model goes idle and a request arrives, wait up to this long before starting a
# batch so that requests issued together (agents spawned together) are served together; the
# wait ends as soon as every process that may ask has asked (kernel/generation.py `_gather`).
BATCH_GATHER_S = 0.01
# While nothing waits for a slot, the generation loop lets the driver run several steps of
# the same batch back to back on its thread (as vLLM's multi-step scheduling does): each step
# saves the two thread hand-offs a step costs (0.15-0.3 ms each on the 2-core VMs, where a
# thread asleep for a burst's length wakes slowly), and the loop's thread, asleep meanwhile
# but for the text's hand-overs, no longer stalls the step's threads. A burst ends after
# DECODE_BURST_STEPS steps or DECODE_BURST_S seconds (how long the scheduler's accounting may
# lag), at a job's first token, and at the step after a new request, suspend or cancel, a
# finished job or a full KV memory: so it delays no one's turn. Its text does not wait for its
# end where a job of it is read as a stream: every STREAM_EVERY_S the driver's thread posts
# what the steps made to the loop (kernel/generation.py `Courier`), and less often the more
# readers a post wakes: STREAM_EVERY_S_PER_READER each (64 readers: every 0.16 s). A reader's
# turn costs the loop ~12 us of CPU (64-agent runs, outbox.py's), which the engine's threads
# lose mid-step; spaced so, 64 agents read +3.3% of kernel overhead, against +4.8% posted to
# every 50 ms (docs/BENCHMARKS.md). DECODE_BURST_STEPS = 1 turns bursts off. After a post the
# driver's thread waits up to HANDOVER_WAIT_S for the loop to hand the text out and let its
# readers take their turn (0.36 ms for one reader, 0.83 ms for 59, medians on the 2-core VM),
# so that the loop's work does not run beside the next step's threads: the steps under the
# kernel then ran as fast as the engine's alone (docs/BENCHMARKS.md).
DECODE_BURST_STEPS = 64
DECODE_BURST_S = 0.5
STREAM_EVERY_S = 0.05
STREAM_EVERY_S_PER_READER = 0.0025
HANDOVER_WAIT_S = 0.001
# A driver step that has not returned after this long fails its batch (ModelError), so a hung
# driver cannot leave every generation waiting forever. A real step takes well under a second
# on a CPU; this is a backstop, not a pace. (A step running on the compute thread cannot be
# interrupted: the bound holds for drivers that honour cancellation, as a remote one does.)
STEP_TIMEOUT_S = 120.0

# Tools ------------------------------------------------------------------------------
TOOL_TIMEOUT_S = 30.0  # wall time of a tool call when neither the tool nor the caller names one
MAX_TOOL_TIMEOUT_S = 3600.0  # the longest timeout a tool or a call may ask for
# A sandboxed tool runs in a child process with these rlimits unless it asks for others.
SANDBOX_CPU_S = 10  # CPU seconds (RLIMIT_CPU): a spinning tool is stopped past it
SANDBOX_MEMORY_MB = 512  # address space (RLIMIT_AS) the child may add once the tool is imported
SANDBOX_FILE_MB = 64  # the largest file a sandboxed tool may write (RLIMIT_FSIZE)
SANDBOX_OUTPUT_BYTES = 1_000_000  # of a sandboxed tool's result (JSON); more fails the call
# Processes and threads a jailed tool may have (RLIMIT_NPROC; as root the jail runs as
# nobody, and this counts all of nobody's): a fork bomb stops here.
SANDBOX_PROCESSES = 64
SANDBOX_WARM_WORKERS = 8  # jail plans (workspace, network, files) kept with a worker started ahead
MCP_CONNECT_TIMEOUT_S = 20.0  # to start an MCP server and list its tools; past it the server is skipped

# Memory: context windows and the store ---------------------------------------------
# A process's window is the model's context length less this room for the reply (at most
# a quarter of the context). The pinned messages and the newest message are never evicted:
# when they alone pass the window, the prompt may use the reply's room, down to one token.
CONTEXT_REPLY_TOKENS = 256
DEFAULT_CONTEXT_POLICY = "summary+recall"
# On overflow the pager evicts down to this fraction of the room left for history, so that
# one eviction (and its summary generation) buys several turns rather than one.
EVICT_TO = 0.75
SUMMARY_TOKENS = 128  # at most, and at most 1/8 of the window: the running summary's size
RECALL_TOKENS = 192  # at most, and at most 1/8 of the window: recalled items in a prompt
RECALL_K = 4  # archived items the pager asks the store for before each generation
RECALL_MIN_SCORE = 0.4  # cosine similarity (MiniLM) below which a recalled item is noise, not memory
ARCHIVE_CHUNK_WORDS = 120  # an evicted message is archived in pieces the embedder reads whole
MAX_RECALL_K = 100  # largest k a `recall` syscall may ask for
EMBED_BATCH = 64  # texts embedded in one forward pass
# Token counts of texts up to this many characters run on the event loop (well under a
# millisecond), and so does preparing a job whose texts are no longer (kernel/generation.py
# `quick_to_prepare`); longer ones in a worker thread. Inline counting and preparing also keep
# processes that chat at once submitting in the order they asked.
INLINE_COUNT_CHARS = 4096
# A memory store call (a write, a search) that has not answered after this long fails with
# MemoryUnavailable, so a stuck store cannot hold a `remember` (or a chat's archiving) forever.
STORE_TIMEOUT_S = 60.0

# Durable processes (llmos.durable) ---------------------------------------------------
DURABLE_HEARTBEAT_S = 1.0  # how often a kernel says it is alive (in the durable database)
DURABLE_DEAD_AFTER_S = 5.0  # a kernel on another host silent this long is dead: others resume its work
DURABLE_MONITOR_S = 2.0  # how often a kernel looks for dead kernels' unfinished durable processes
DURABLE_MAX_RECOVERIES = 10_000  # resumptions of one durable process before it is given up (a poison loop)
DURABLE_CAPACITY = 16  # in a cluster: durable processes one kernel runs at once (more wait in the queue)
DURABLE_MAX_RESTARTS = 3  # supervision's default intensity: this many restarts ...
DURABLE_RESTART_WINDOW_S = 60.0  # ... within this many seconds, or the process is FAILED for good


def env_number(name: str, default: N, kind: Callable[[str], N], minimum: N, unit: str = "") -> N:
    """A setting read from the environment variable `name`: `default` when it is unset or
    blank, else a `kind` of at least `minimum` (ConfigError naming the variable otherwise).
    `unit`, for the message, with its leading space: " seconds", " MiB"."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    whole = kind is int
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {'a whole' if whole else 'a'} number"
                          f"{' of' + unit if unit else ''}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: expected at least {minimum:g}{unit}")
    return value
