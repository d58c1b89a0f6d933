"""The process table: pid allocation, lookup by pid or name, and reaping."""

from __future__ import annotations

import itertools
from collections import OrderedDict

from llmos.kernel import params
from llmos.kernel.errors import AmbiguousName, NoSuchProcess, TooManyProcesses
from llmos.kernel.process import Process


class ProcessTable:
    def __init__(self) -> None:
        self.live: dict[int, Process] = {}
        # Ended but not yet waited for, oldest first; bounded so nobody has to wait.
        self.ended: OrderedDict[int, Process] = OrderedDict()
        self._pids = itertools.count(params.KERNEL_PID + 1)

    def allocate_pid(self) -> int:
        if len(self.live) >= params.MAX_PROCESSES:
            raise TooManyProcesses(f"the process table is full ({params.MAX_PROCESSES} live processes)")
        return next(self._pids)

    def add(self, proc: Process) -> None:
        self.live[proc.pid] = proc

    def get(self, pid: int) -> Process:
        proc = self.live.get(pid) or self.ended.get(pid)
        if proc is None:
            raise NoSuchProcess(f"no process with pid {pid}")
        return proc

    def exists(self, pid: int) -> bool:
        """Whether `pid` is live, or ended and not yet reaped."""
        return pid in self.live or pid in self.ended

    def get_live(self, pid: int) -> Process:
        proc = self.live.get(pid)
        if proc is None:
            ended = self.ended.get(pid)
            state = f" (it ended: {ended.state.name})" if ended else ""
            raise NoSuchProcess(f"no live process with pid {pid}{state}")
        return proc

    def find(self, target: int | str) -> Process:
        """A live process by pid, or by name when the name is unique among live processes."""
        if isinstance(target, int):
            return self.get_live(target)
        matches = [p for p in self.live.values() if p.name == target]
        if not matches:
            raise NoSuchProcess(f"no live process named {target!r}")
        if len(matches) > 1:
            raise AmbiguousName(f"{len(matches)} live processes are named {target!r} "
                                f"(pids {[p.pid for p in matches]}); address one by pid")
        return matches[0]

    def retire(self, proc: Process) -> None:
        """Move an ended process from the live set to the ended set."""
        self.live.pop(proc.pid, None)
        self.ended[proc.pid] = proc
        while len(self.ended) > params.ZOMBIE_HISTORY:
            self.ended.popitem(last=False)

    def reap(self, pid: int) -> None:
        self.ended.pop(pid, None)

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        seen: set[int] = set()
        while pid not in seen:
            if pid == ancestor:
                return True
            seen.add(pid)
            proc = self.live.get(pid) or self.ended.get(pid)
            if proc is None:
                return False
            pid = proc.ppid
        return False
