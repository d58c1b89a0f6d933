"""The daemon's console: the kernel's `Console` when the terminal is an HTTP client.

`llmos serve` has no terminal, so what processes write is kept per process (the last
OUTPUT_CHARS characters of each) for HTTP clients to read and follow live
(`GET /v1/processes/{pid}/output`), and a process's question (`sys.ask_user`) is put to
whoever follows its output: it shows in the stream as a question event, and
`POST /v1/processes/{pid}/answer` answers it. A question nobody follows fails with
`NoConsole`, as on a terminal whose stdin is closed.

Events, as a follower sees them: {"text": str}, {"question": str, "id": int}. A follower
first gets what the process wrote before it came (the questions still open among it), then
what comes, until the process is known to have ended (`ended(pid)`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from llmos.syscalls import InvalidState, NoConsole

OUTPUT_CHARS = 1_000_000  # kept per process; the oldest text goes first
MAX_CHANNELS = 1024  # processes whose output is kept; past it the least recently active ended one goes
ENDED_KEPT = 256  # ended processes whose output is kept for a late reader
# A question asked while nobody follows the process's output waits this long for a
# follower (the client that spawned it may be about to attach) before failing with NoConsole.
UNATTENDED_ASK_S = 10.0
KEEPALIVE_S = 15.0  # an idle follower gets None this often (the SSE endpoint sends a comment)

Event = dict[str, Any]


@dataclass
class _Question:
    id: int
    text: str
    seq: int  # its place among the channel's events
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: str | None = None  # None once answered: the client cannot answer (its stdin is closed)


@dataclass
class _Channel:
    """One process's output. Invariant: `chars` is the length of the text events in `events`,
    and never above OUTPUT_CHARS once a write returns."""

    events: deque[tuple[int, Event]] = field(default_factory=deque)  # (seq, event), oldest first
    next_seq: int = 0
    chars: int = 0
    ended: bool = False
    followers: int = 0
    questions: dict[int, _Question] = field(default_factory=dict)  # the open ones, by id
    wake: anyio.Event = field(default_factory=anyio.Event)  # set (and replaced) on every change

    def changed(self) -> None:
        self.wake.set()
        self.wake = anyio.Event()

    def append(self, event: Event) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.events.append((seq, event))
        self.chars += len(event.get("text", ""))
        while self.chars > OUTPUT_CHARS:
            self._trim()
        self.changed()
        return seq

    def _trim(self) -> None:
        seq, oldest = self.events[0]
        text = oldest.get("text", "")
        excess = self.chars - OUTPUT_CHARS
        if len(text) > excess:  # keep the tail of a piece that is only partly too old
            self.events[0] = (seq, {"text": text[excess:]})
            self.chars -= excess
        else:
            self.events.popleft()
            self.chars -= len(text)

    def read(self, cursor: int) -> tuple[list[Event], int]:
        """The events from `cursor` on (adjacent texts joined, answered questions left out),
        and the cursor after them. Open questions whose event was trimmed come first."""
        first_kept = self.events[0][0] if self.events else self.next_seq
        out: list[Event] = [self._asked(q) for q in self.questions.values() if cursor <= q.seq < first_kept]
        # Sequence numbers in `events` are consecutive from `first_kept`: skip the ones read
        # (islice skips in C: a follower's read costs what is new, not all that is kept).
        for _, event in itertools.islice(self.events, max(0, cursor - first_kept), None):
            if "question" in event and event["id"] not in self.questions:
                continue
            if "text" in event and out and "text" in out[-1]:
                out[-1] = {"text": out[-1]["text"] + event["text"]}
            else:
                out.append(event)
        return out, self.next_seq

    @staticmethod
    def _asked(question: _Question) -> Event:
        return {"question": question.text, "id": question.id}


class DaemonConsole:
    """The console of `llmos serve` (see the module docstring). Lives on the event loop."""

    def __init__(self) -> None:
        self._channels: OrderedDict[int, _Channel] = OrderedDict()  # least recently active first
        self._question_ids = itertools.count(1)

    # -- the kernel's side (llmos.kernel.console.Console) ------------------------------------
    def write(self, pid: int, text: str) -> None:
        if text:
            self._channel(pid).append({"text": text})

    async def ask(self, pid: int, question: str) -> str:
        channel = self._channel(pid)
        asked = _Question(id=next(self._question_ids), text=question, seq=channel.next_seq)
        channel.questions[asked.id] = asked
        channel.append(_Channel._asked(asked))
        try:
            if not channel.followers:
                await self._await_follower(pid, channel, asked)
            await asked.answered.wait()
            if asked.answer is None:
                raise NoConsole(f"the client following process {pid} cannot answer {asked.text!r}")
            return asked.answer
        finally:
            channel.questions.pop(asked.id, None)
            channel.changed()

    async def _await_follower(self, pid: int, channel: _Channel, asked: _Question) -> None:
        with anyio.move_on_after(UNATTENDED_ASK_S):
            while not (channel.followers or asked.answered.is_set()):
                await channel.wake.wait()
            return
        raise NoConsole(f"process {pid} asked {asked.text!r}, but no client follows its output to answer "
                        f"(GET /v1/processes/{pid}/output) within {UNATTENDED_ASK_S:g} s")

    # -- the HTTP side -------------------------------------------------------------------------
    def answer(self, pid: int, text: str | None, question_id: int | None = None) -> int:
        """Answer process `pid`'s open question (`question_id`, or its only one); returns its
        id. `text` None: nobody can answer, and the question fails with NoConsole."""
        channel = self._channels.get(pid)
        open_questions = [q for q in (channel.questions.values() if channel else ())
                          if question_id is None or q.id == question_id]
        if channel is None or not open_questions:
            which = f"question {question_id}" if question_id is not None else "question"
            raise InvalidState(f"process {pid} has no open {which} to answer")
        if len(open_questions) > 1:
            raise InvalidState(f"process {pid} has {len(open_questions)} open questions "
                               f"(ids {[q.id for q in open_questions]}); say which one by its id")
        asked = open_questions[0]
        asked.answer = text
        asked.answered.set()
        channel.changed()
        return asked.id

    def ended(self, pid: int) -> None:
        """Process `pid` has ended: its followers stop once they have read everything."""
        channel = self._channel(pid)
        channel.ended = True
        channel.changed()
        ended = [p for p, c in self._channels.items() if c.ended and not c.followers]
        for stale in ended[: max(0, len(ended) - ENDED_KEPT)]:
            del self._channels[stale]

    def knows(self, pid: int) -> bool:
        """Whether output of `pid` is kept (it wrote, asked, or was followed)."""
        return pid in self._channels

    def written(self, pid: int) -> str:
        """What `pid` wrote that is still kept (the last OUTPUT_CHARS characters)."""
        channel = self._channels.get(pid)
        if channel is None:
            return ""
        return "".join(event.get("text", "") for _, event in channel.events)

    async def follow(self, pid: int) -> AsyncIterator[Event | None]:
        """What `pid` wrote so far, then what it writes, until it has ended; None now and
        then while nothing comes (a keep-alive for the transport)."""
        channel = self._channel(pid)
        channel.followers += 1
        channel.changed()  # a question waiting for a follower has one now
        cursor = 0
        try:
            while True:
                events, cursor = channel.read(cursor)
                for event in events:
                    yield event
                if channel.ended and cursor == channel.next_seq:
                    return
                if not events:
                    with anyio.move_on_after(KEEPALIVE_S) as idle:
                        await channel.wake.wait()
                    if idle.cancelled_caught:
                        yield None
        finally:
            channel.followers -= 1

    def _channel(self, pid: int) -> _Channel:
        channel = self._channels.get(pid)
        if channel is None:
            channel = self._channels[pid] = _Channel()
            self._evict()
        else:
            self._channels.move_to_end(pid)
        return channel

    def _evict(self) -> None:
        """Keep at most MAX_CHANNELS: the least recently active ended ones go first, then the
        least recently active ones nobody follows."""
        while len(self._channels) > MAX_CHANNELS:
            idle = [p for p, c in self._channels.items() if not c.followers]
            ended = [p for p in idle if self._channels[p].ended]
            if not idle:
                return  # every one is followed: none may go
            del self._channels[(ended or idle)[0]]
