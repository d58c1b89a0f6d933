"""The event-loop watchdog: measures the loop's lag and names the process that blocks it.

Every process is a task on the kernel's one event loop, so one synchronous call in an async
app (time.sleep, a busy loop, blocking I/O) freezes every other process. Two parts watch it:

- **The heartbeat**, a task on the loop (a kernel service): it sleeps LOOP_HEARTBEAT_S at a
  time, and how late it wakes is the loop's lag, kept as a distribution (`statistics()`). A
  sign of life from the loop (`alive`: a callback posted from another thread ran, with its
  own lateness) counts as a beat and starts the sleep over, so a loop that runs such
  callbacks often is not also woken by the heartbeat's timer.
- **The watcher**, a daemon thread: it sleeps until the heartbeat is LOOP_STALL_S / 2
  overdue, then looks at it every LOOP_STALL_S / 2 (`_until_next_look`). Once the
  heartbeat is LOOP_STALL_S late the loop is held, and the thread reads the loop thread's
  Python stack (`sys._current_frames()`): the frame of `Kernel._run` on it holds the process
  whose task runs, and the innermost frame says where. Two holds are nobody's code to blame
  (reported as pid 0, named for their cause): "gc", most of the stall was Python's cyclic
  garbage collector (timed through `gc.callbacks`); "os", the loop thread was not held but
  starved: on Linux its scheduler figures (/proc/self/task/ID/schedstat) tell a thread that
  runs code or waits in a call from one the OS leaves waiting for a CPU (an overloaded machine).

The thread only observes and writes the `Stall` record (under `_lock`); the heartbeat, back on
the loop, accounts it: the blocker's `loop_blocks` / `loop_blocked_s` / `loop_block_max_s`, a
"loop.blocked" trace event (told to the dispatcher's listeners) and `last_stall`.

**Enforcement.** A process that holds the loop in its own code for LOOP_BLOCK_KILL_S is
stopped: the thread raises `LoopBlocked` in the loop thread (PyThreadState_SetAsyncExc), which
unwinds the app into `Kernel._run` and ends the process KILLED with a reason that says for how
long it blocked. It does so only when every frame below the app's first one is the app's own or
a library's, never the kernel's or the event loop's (`_in_app`), checked again right before
raising and right after (a pending exception is withdrawn if the loop has left the app
meanwhile), so the exception cannot land in kernel code. Whatever the app does with it, the
heartbeat kills the process once the loop is back (an app that swallows it dies at its next
await). A stall inside a syscall (kernel code on the process's behalf) is the kernel's doing:
it is reported, never punished. An app blocked in a C call (time.sleep, a socket read) gets the
exception when the call returns to Python.

Limits: a process's own child tasks (task groups inside the app) do not run under
`Kernel._run`; their stalls are reported as pid 0 with where they were, and not enforced.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Literal

import anyio

from llmos.kernel import params
from llmos.kernel.process import Process
from llmos.kernel.stats import LoopStall, LoopStatistics, TraceEvent

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

log = logging.getLogger(__name__)

BLOCKED_CALL = "loop.blocked"  # the trace event's call name
# Modules in which the loop thread is the kernel's or the event loop's: an exception must never
# be raised there. llmos.apps is user space, like any app.
_KERNEL_PACKAGES = ("llmos",)
_USER_PACKAGES = ("llmos.apps",)
_RUNTIME_PACKAGES = frozenset({"asyncio", "anyio", "sniffio", "trio", "outcome", "selectors", "threading",
                               "concurrent", "importlib", "_weakrefset"})
Cause = Literal["code", "gc", "os"]  # what held the loop: code (a process's or the kernel's), the GC, the OS
# The loop waiting in its selector is idle, not held: a late heartbeat then means the OS did
# not wake it in time (an overloaded machine), which no process is to blame for.
_IDLE_MODULES = frozenset({"selectors", "trio._core._io_epoll", "trio._core._io_kqueue", "trio._core._io_windows"})


class LoopBlocked(BaseException):
    """Raised inside a process that held the event loop past LOOP_BLOCK_KILL_S. A BaseException,
    like KeyboardInterrupt, so that `except Exception` in the app does not swallow it."""

    def __init__(self, *args: object) -> None:  # raised by the interpreter, without arguments
        super().__init__(*(args or ("the process held the event loop past the watchdog's limit "
                                    "(params.LOOP_BLOCK_KILL_S); run synchronous work in a thread",)))


@dataclass(frozen=True)
class Sighting:
    """What the loop thread was running when the watcher looked."""

    proc: Process | None  # the process whose task it was; None: the kernel's own, or another kernel's
    where: str  # its innermost Python frame, "function (file:line)"
    in_app: bool  # the innermost frames are the process's own code (see `_in_app`)
    runner: FrameType | None  # the `Kernel._run` frame of that process
    cause: Cause = "code"  # "gc", "os": no code held the loop, whatever it was running

    @property
    def key(self) -> int | str:
        if self.cause != "code":
            return self.cause
        return self.proc.pid if self.proc is not None else params.KERNEL_PID

    @property
    def culprit(self) -> Process | None:
        return self.proc if self.cause == "code" else None


@dataclass
class Stall:
    """One stretch in which the heartbeat stayed silent past LOOP_STALL_S. The watcher writes
    it while the loop is held; the heartbeat accounts it when the loop is back."""

    beat: int  # the heartbeat that was late
    at: float  # wall clock: when the loop stopped answering
    late_s: float = 0.0  # how late the heartbeat was when last seen
    seen: Counter[int | str] = field(default_factory=Counter)  # sightings per `Sighting.key`
    first_seen: dict[int | str, Sighting] = field(default_factory=dict)
    kill_reason: str | None = None  # set once the blocker was stopped
    stopped: Sighting | None = None  # the blocker that was stopped, who is to blame whatever else was seen

    def saw(self, sighting: Sighting) -> None:
        self.seen[sighting.key] += 1
        self.first_seen.setdefault(sighting.key, sighting)

    def blamed(self) -> Sighting:
        """The process stopped, else whom the watcher saw most often: on a tie, code rather than
        the GC or the OS (it ran without yielding all the same), then the first seen."""
        if self.stopped is not None:
            return self.stopped
        key = max(self.seen, key=lambda k: (self.seen[k], isinstance(k, int)))  # max keeps the first of equals
        return self.first_seen[key]


class LoopWatchdog:
    """The heartbeat (`run`, a kernel service) and its watcher thread. Settings are read from
    params when it is made, and may be changed on a live kernel (tests shorten the limits)."""

    def __init__(self, kernel: Kernel, runner: CodeType) -> None:
        self.kernel = kernel
        self.heartbeat_s = params.LOOP_HEARTBEAT_S
        self.stall_s = params.LOOP_STALL_S
        self.kill_after_s = params.LOOP_BLOCK_KILL_S
        self.stalls = 0
        self.blocked_s = 0.0
        self.last_stall: LoopStall | None = None
        self._runner = runner  # the code of Kernel._run, whose local `proc` is the running process
        self._lags: deque[float] = deque(maxlen=params.LOOP_LAG_SAMPLES)
        # (beat, when it began to sleep (perf_counter), the loop thread's CPU time then, _gc_s then)
        self._last_beat: tuple[int, float, float, float] = (0, time.perf_counter(), 0.0, 0.0)
        self._stall: Stall | None = None  # the stall in progress; shared by both threads, under _lock
        self._lock = threading.Lock()
        self._loop_thread: int | None = None
        self._loop_native_id = 0
        self._sched: Schedstat | None = None  # the loop thread's, at the watcher's previous check
        self._gc_s = 0.0  # time spent in the cyclic GC's older generations since the watchdog started
        self._gc_began = 0.0
        self._running = False
        self._rest: anyio.CancelScope | None = None  # the heartbeat's sleep until its next beat

    @property
    def enabled(self) -> bool:
        return self.heartbeat_s > 0

    # -- the heartbeat, on the loop -----------------------------------------------------------------
    async def run(self) -> None:
        """Beat until cancelled (the kernel's shutdown), with the watcher thread alongside."""
        self._loop_thread, self._loop_native_id = threading.get_ident(), threading.get_native_id()
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop,), name="llmos-watchdog", daemon=True)
        watcher.start()
        gc.callbacks.append(self._time_gc)
        self._running = True
        try:
            await self._beat_forever()
        finally:
            self._running = False
            with contextlib.suppress(ValueError):  # someone cleared gc.callbacks
                gc.callbacks.remove(self._time_gc)
            stop.set()
            watcher.join(timeout=1.0)  # it wakes at once; a check in progress takes microseconds

    async def _beat_forever(self) -> None:
        self._begin(0)
        while True:
            wait = max(0.0, self._last_beat[1] + self.heartbeat_s - time.perf_counter())
            with anyio.CancelScope(deadline=anyio.current_time() + wait) as rest:  # `alive` may move it
                self._rest = rest
                await anyio.sleep_forever()
            self._rest = None
            beat, began = self._last_beat[:2]
            self._beat(beat, max(0.0, time.perf_counter() - began - self.heartbeat_s))

    def alive(self, lag: float) -> None:
        """A sign of life from the loop, called on it: a callback posted to it ran `lag` seconds
        after it was posted (the generation loop's text, handed over while a burst runs). It
        counts as a beat, and the heartbeat's own timer starts over: woken every beat during a
        burst, the loop thread took a core and the GIL from the engine's threads for nothing
        (one agent's kernel overhead read +7.4% against +3.8% with the watchdog off)."""
        rest = self._rest
        if rest is None:  # not sleeping between beats (not started, or ending)
            return
        self._beat(self._last_beat[0], lag)
        rest.deadline = anyio.current_time() + self.heartbeat_s

    def _beat(self, beat: int, lag: float) -> None:
        # First: the watcher must not take the moment before the settling for a stall.
        self._last_beat = (beat + 1, time.perf_counter(), 0.0, self._gc_s)
        self._settle(beat, lag)
        self._begin(beat + 1)

    def _begin(self, beat: int) -> None:
        self._last_beat = (beat, time.perf_counter(), time.thread_time(), self._gc_s)  # one tuple: read whole

    def _time_gc(self, phase: str, info: dict[str, Any]) -> None:
        # In whichever thread collects, holding the GIL: the loop waits meanwhile. Generation 0
        # is bounded by its size (well under a millisecond) and frequent: not timed.
        if info["generation"] == 0:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self._gc_s += time.perf_counter() - self._gc_began

    def _settle(self, beat: int, lag: float) -> None:
        self._lags.append(lag)
        with self._lock:
            stall = self._stall
            if stall is None or stall.beat > beat:
                return
            self._stall = None
        # Its own beat's lag is the stall's length; a stall recorded for an earlier beat (the
        # watcher lost a race with the loop) keeps the length the watcher saw.
        try:
            self._account(stall, lag if stall.beat == beat else stall.late_s)
        except Exception:  # the heartbeat is a kernel service: its failure would end the kernel
            log.exception("the event-loop watchdog failed to account a stall")

    def _account(self, stall: Stall, duration: float) -> None:
        blamed = stall.blamed()
        proc = blamed.culprit
        self.stalls += 1
        self.blocked_s += duration
        self.last_stall = LoopStall(pid=proc.pid if proc else params.KERNEL_PID, name=_culprit_name(blamed),
                                    where=blamed.where, at=stall.at, duration_s=duration,
                                    killed=stall.kill_reason is not None)
        outcome = "killed" if stall.kill_reason else {"code": "blocked", "gc": "gc", "os": "starved"}[blamed.cause]
        event = TraceEvent(stall.at, self.last_stall.pid, BLOCKED_CALL, duration, outcome)
        if proc is None:
            self.kernel.trace.append(event)  # no process to tell the listeners about
        else:
            proc.stats.loop_blocks += 1
            proc.stats.loop_blocked_s += duration
            proc.stats.loop_block_max_s = max(proc.stats.loop_block_max_s, duration)
            self.kernel.dispatcher._traced(event, proc, None, None)  # the trace ring and its listeners
            if stall.kill_reason is not None and not proc.state.terminal:  # whatever it did with LoopBlocked
                self.kernel.kill(proc.pid, stall.kill_reason)
        # A process's block is its author's to fix (as asyncio's debug mode warns of a slow
        # callback); the kernel's own, the GC's and the OS's are figures, not news for the user.
        log.log(logging.WARNING if proc is not None else logging.INFO, "the event loop was held for %.3f s by %s at %s",
                duration, _culprit(blamed), blamed.where)

    def statistics(self) -> LoopStatistics:
        lags = sorted(self._lags)
        return LoopStatistics(heartbeat_s=self.heartbeat_s, lag_p50_s=_quantile(lags, 0.50),
                              lag_p99_s=_quantile(lags, 0.99), lag_max_s=lags[-1] if lags else 0.0,
                              stalls=self.stalls, blocked_s=self.blocked_s, last_stall=self.last_stall)

    # -- the watcher, in its thread ---------------------------------------------------------------------
    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self._until_next_look()):
            try:
                self._check()
            except Exception:  # the watcher must outlive its own bugs
                log.exception("the event-loop watchdog failed a check")

    def _until_next_look(self) -> float:
        """Seconds the watcher sleeps: until the current beat is half a stall overdue (that
        look samples the loop thread's run queue for `_starved`), then every half stall.
        Looking every half stall throughout woke this thread 20 times a second, and each
        wake-up takes a core from the engine's threads in the middle of a step on a 2-core
        machine (~2% of a one-agent step, measured)."""
        half = self.stall_s / 2
        until_first_look = self._last_beat[1] + self.heartbeat_s + half - time.perf_counter()
        return until_first_look if until_first_look > 0 else half

    def _check(self) -> None:
        beat, began, cpu_at_beat, gc_at_beat = self._last_beat
        previous, self._sched = self._sched, _schedstat(self._loop_native_id)
        late = time.perf_counter() - began - self.heartbeat_s
        if late < self.stall_s or not self._running:
            return
        sighting = self._sight()
        if sighting is None or self._last_beat[0] != beat:
            return  # the heartbeat runs, or the loop beat meanwhile: what we saw is not the stall
        cause = self._cause(late, self._gc_s - gc_at_beat, cpu_at_beat, previous, self._sched)
        if cause != "code":
            sighting = replace(sighting, cause=cause)
        with self._lock:
            stall = self._stall
            fresh = stall is None or stall.beat != beat
            if fresh:
                stall = self._stall = Stall(beat=beat, at=time.time() - late)
            assert stall is not None
            stall.late_s = late
            stall.saw(sighting)
        if fresh:
            log.info("the event loop is held (%.2f s so far) by %s at %s", late, _culprit(sighting), sighting.where)
        if self._due_for_stopping(sighting, late):
            self._stop_blocker(stall, sighting, late)

    def _sight(self) -> Sighting | None:
        """What the loop thread runs now; None when it is the heartbeat itself (the loop is back)."""
        frame = sys._current_frames().get(self._loop_thread)  # type: ignore[arg-type]
        stack: list[FrameType] = []  # innermost first
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        if any(f.f_code is LoopWatchdog._beat_forever.__code__ for f in stack):
            return None  # not yet counted
        where = _where(stack[0]) if stack else "?"
        if not stack or _module(stack[0]) in _IDLE_MODULES:
            return Sighting(None, where, False, None, cause="os")  # idle, yet late: the OS did not wake it
        for depth, f in enumerate(stack):
            if f.f_code is self._runner:
                local = f.f_locals  # read from another thread: a snapshot, written back nowhere
                proc, owner = local.get("proc"), local.get("self")
                if owner is self.kernel and isinstance(proc, Process):
                    return Sighting(proc, where, _in_app(stack[:depth]), f)
                break  # another kernel's process on the same loop
        return Sighting(None, where, False, None)

    def _cause(self, late: float, gc_s: float, cpu_at_beat: float, previous: Schedstat | None,
               now: Schedstat | None) -> Cause:
        """What holds the loop, `late` s into a stall of which the GC took `gc_s`."""
        if late - gc_s < self.stall_s:
            return "gc"  # without the collections, no stall
        return "os" if self._starved(cpu_at_beat, previous, now) else "code"

    def _starved(self, cpu_at_beat: float, previous: Schedstat | None, now: Schedstat | None) -> bool:
        """Whether the loop thread is left without a CPU rather than held: since the heartbeat
        it has run less than a fifth of a stall's worth of code (20 ms), and over the last
        check it waited on the OS's run queue most of the time. A thread in a blocking call is
        not on the run queue; one running code without yielding soon passes that CPU time,
        even when it gets a small share of a loaded machine (a busy loop at 10% of a CPU does
        in 200 ms). Unknown without schedstat: not starved."""
        if previous is None or now is None or now.at <= previous.at:
            return False
        ran = now.cpu_s - cpu_at_beat
        queued = (now.queued_s - previous.queued_s) / (now.at - previous.at)
        return ran < self.stall_s / 5 and queued > 0.5

    # -- enforcement -----------------------------------------------------------------------------------
    def _due_for_stopping(self, sighting: Sighting, late: float) -> bool:
        return (self.kill_after_s > 0 and late >= self.kill_after_s and sighting.proc is not None
                and sighting.in_app and sighting.cause == "code" and not sighting.proc.state.terminal)

    def _stop_blocker(self, stall: Stall, sighting: Sighting, late: float) -> None:
        """Raise LoopBlocked in the app that holds the loop, if it still does: checked just
        before, and withdrawn if the loop has left the app's code by just after."""
        proc = sighting.proc
        assert proc is not None and self._loop_thread is not None
        if not self._still_in_app(sighting):
            return
        reason = (f"blocked the event loop for {late:.1f} s in its own code (limit "
                  f"{self.kill_after_s:g} s): a synchronous call in async code; run it in a thread")
        if stall.kill_reason is None:
            log.warning("pid %d (%s) %s: stopping it", proc.pid, proc.name, reason)
        stall.kill_reason, stall.stopped = stall.kill_reason or reason, sighting
        proc.kill_reason = proc.kill_reason or stall.kill_reason  # the loop is held: nothing else writes it
        if not _raise_in_thread(self._loop_thread, LoopBlocked):
            return  # no async exceptions here (not CPython): the heartbeat kills it once the loop is back
        if not self._still_in_app(sighting):
            _raise_in_thread(self._loop_thread, None)  # withdrawn, if not yet delivered

    def _still_in_app(self, sighting: Sighting) -> bool:
        now = self._sight()
        return now is not None and now.runner is sighting.runner and now.in_app


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> bool:
    """Make `exc` pending in the thread (None: withdraw a pending one). Whether it could."""
    try:
        set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except AttributeError:
        return False
    set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)
    return True


@dataclass(frozen=True)
class Schedstat:
    """A thread's scheduler figures (Linux): CPU time run, time waited on a run queue."""

    at: float  # perf_counter when read
    cpu_s: float
    queued_s: float


def _schedstat(native_id: int) -> Schedstat | None:
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            ran_ns, queued_ns = f.read().split()[:2]
    except (OSError, ValueError):
        return None  # not Linux, or no schedstat: stalls are blamed on what runs
    return Schedstat(time.perf_counter(), int(ran_ns) / 1e9, int(queued_ns) / 1e9)


def _culprit(sighting: Sighting) -> str:
    if sighting.cause == "os":
        return "no code: the OS left the loop's thread without a CPU (an overloaded machine)"
    if sighting.cause == "gc":
        return "no code: Python's cyclic garbage collector"
    return f"pid {sighting.proc.pid} ({sighting.proc.name})" if sighting.proc else "the kernel"


def _culprit_name(sighting: Sighting) -> str:
    if sighting.cause != "code":
        return sighting.cause
    return sighting.proc.name if sighting.proc else "kernel"


def _module(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", ""))


def _is_kernel_side(frame: FrameType) -> bool:
    """Whether the frame is the kernel's or the event loop's, where no exception may be raised."""
    name = _module(frame)
    if name.split(".", 1)[0] in _RUNTIME_PACKAGES:
        return True
    return any(name == p or name.startswith(p + ".") for p in _KERNEL_PACKAGES) and not any(
        name == p or name.startswith(p + ".") for p in _USER_PACKAGES)


def _in_app(callees: list[FrameType]) -> bool:
    """Whether the frames `Kernel._run` called (innermost first) are the app's own code: past
    the kernel's plumbing that starts it (loader.bind's wrapper), no frame is kernel-side. An
    exception raised there unwinds through the app into `Kernel._run` and nowhere else."""
    outermost_first = list(reversed(callees))
    while outermost_first and _is_kernel_side(outermost_first[0]):
        outermost_first.pop(0)
    return bool(outermost_first) and not any(_is_kernel_side(f) for f in outermost_first)


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{getattr(code, 'co_qualname', code.co_name)} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
