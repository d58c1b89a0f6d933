"""What `ps`, `jobs`, `top` and `trace` show: rich tables built from kernel snapshots."""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text

from llmos.apps.shell.jobs import Job
from llmos.syscalls import DurableInfo, KernelStatistics, ProcessInfo, TraceEvent

STATE_STYLES = {"RUNNING": "green", "BLOCKED": "yellow", "SUSPENDED": "magenta", "FAILED": "red", "KILLED": "red"}
DURABLE_STYLES = {"running": "green", "queued": "cyan", "unfinished": "yellow", "failed": "red", "killed": "red",
                  "cancelled": "dim"}


def ps_table(procs: Iterable[ProcessInfo], title: str | None = None) -> Table:
    """One row a process; a "model" column when some process runs a variant of the kernel's
    model (sys.set_model), an "untrusted from" column when some process has read untrusted
    text (kernel/security.py), a "status" column when some process said what it is doing
    (sys.set_status)."""
    procs = list(procs)
    said = any(p.status for p in procs)
    variants = any(p.model for p in procs)
    untrusted = any(p.untrusted for p in procs)
    table = Table("pid", "ppid", "name", "state", "nice", *(("model",) if variants else ()), "tokens", "kv",
                  "syscalls", "time", *(("untrusted from",) if untrusted else ()), *(("status",) if said else ()),
                  title=title, title_justify="left")
    for p in procs:
        state = p.state.name
        table.add_row(str(p.pid), str(p.ppid), p.name, Text(state, style=STATE_STYLES.get(state, "")),
                      str(p.priority), *((p.model or "-",) if variants else ()), str(p.stats.tokens),
                      kv_memory(p.stats.kv_bytes), str(p.stats.syscalls), f"{p.runtime_s:.1f}s",
                      *((untrusted_sources(p.untrusted),) if untrusted else ()), *((p.status or "",) if said else ()))
    return table


def untrusted_sources(sources: tuple[str, ...]) -> Text:
    """Where a process's untrusted text came from, for a table: the first source and how many
    more; "-" when it has read none."""
    if not sources:
        return Text("-")
    more = f" (+{len(sources) - 1} more)" if len(sources) > 1 else ""
    return Text(sources[0] + more, style="red")


def kv_memory(size: int) -> str:
    """A process's KV memory for a table: "-" when it holds none."""
    return f"{size / 2**20:.1f}M" if size else "-"


def durable_table(infos: Iterable[DurableInfo], title: str | None = None) -> Table:
    """`llmos ps --durable`: each durable process, where it runs and how far it got."""
    table = Table("id", "name", "state", "pid", "kernel", "steps", "restarts", "updated", "reason", title=title,
                  title_justify="left")
    for d in infos:
        state = d.state.value
        table.add_row(d.id, d.name, Text(state, style=DURABLE_STYLES.get(state, "")),
                      "-" if d.pid is None else str(d.pid), d.kernel or "-", str(d.steps), str(d.restarts),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.updated_at)), d.reason or "")
    return table


def jobs_table(jobs: Iterable[Job]) -> Table:
    table = Table("job", "pid", "state", "command")
    for job in jobs:
        table.add_row(f"[{job.number}]", str(job.pid), job.state, job.command + (" &" if job.background else ""))
    return table


def trace_table(events: Iterable[TraceEvent], pid: int) -> Table:
    table = Table("time", "call", "ms", "outcome", title=f"syscalls of pid {pid}", title_justify="left")
    for e in events:
        if e.pid == pid:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.at)) + f".{int(e.at % 1 * 1000):03d}"
            table.add_row(stamp, e.call, f"{e.duration_s * 1000:.1f}",
                          Text(e.outcome, style="" if e.outcome == "ok" else "red"))
    return table


class Meter:
    """Tokens per second between two looks at the process table."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def rate(self, procs: Iterable[ProcessInfo]) -> float:
        now, total = time.perf_counter(), sum(p.stats.completion_tokens for p in procs)
        last, self._last = self._last, (now, total)
        if last is None or now <= last[0]:
            return 0.0
        return max(0.0, (total - last[1]) / (now - last[0]))


def top_view(procs: list[ProcessInfo], stats: KernelStatistics, tokens_per_s: float, model: str) -> Group:
    live = [p for p in procs if not p.state.terminal]
    sched, engine = stats.scheduler, stats.generation
    header = Text.assemble(
        ("llmos top", "bold"), f"  model {model}  processes {len(live)}  ",
        f"batch {sched.running}  queue {sched.waiting}  ",
        (f"{tokens_per_s:.1f} tokens/s", "bold green"), f"  policy {sched.policy}",
        f"  loop lag p99 {stats.loop.lag_p99_s * 1000:.1f} ms, {stats.loop.stalls} stalls" if stats.loop else "",
        ("   (Ctrl-C to leave)", "dim"))
    driver = engine.driver if engine is not None else {}
    footer = Text(f"steps {engine.steps if engine else 0}  tokens {engine.tokens if engine else 0}  "
                  f"preemptions {sched.preemptions}  "
                  f"prefix-cache hit tokens {driver.get('prefix_hit_tokens', '-')}  "
                  f"KV blocks held {driver.get('kv_blocks_held', '-')}/{driver.get('kv_blocks', '-')} "
                  f"(cached {driver.get('kv_blocks_cached', '-')})", style="dim")
    busiest = sorted(live, key=lambda p: (-p.stats.tokens, p.pid))
    return Group(header, footer, *other_models(stats), *loop_blockers(procs), ps_table(busiest))


def other_models(stats: KernelStatistics) -> list[Text]:
    """A line for each base model loaded beside the kernel's own, with its own batch and rate."""
    return [Text(f"also loaded: {m.model}  batch {m.scheduler.running}  queue {m.scheduler.waiting}  "
                 f"{m.tokens_per_s:.1f} tokens/s  steps {m.steps}  tokens {m.tokens}") for m in stats.models]


def loop_blockers(procs: list[ProcessInfo], most: int = 3) -> list[Text]:
    """The processes that held the event loop (everyone else froze meanwhile), worst first."""
    worst = sorted((p for p in procs if p.stats.loop_blocks), key=lambda p: (-p.stats.loop_blocked_s, p.pid))[:most]
    if not worst:
        return []
    return [Text("loop blocked by " + ", ".join(
        f"pid {p.pid} {p.name} {p.stats.loop_blocked_s:.2f} s ({p.stats.loop_blocks}x, longest "
        f"{p.stats.loop_block_max_s:.2f} s)" for p in worst), style="yellow")]
