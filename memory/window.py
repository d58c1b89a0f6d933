"""A process's context window and its pager.

Invariant: every message the process's conversation ever held is in exactly one place:
in the window's entries, or in the archive (the store, under the process's namespace; or,
if the store cannot be reached, the window's `unarchived` list). A prompt holds the pinned
entries, the running summary, recalled archive items and the most recent entries, and its
exact token count never passes the budget unless the pinned entries and the newest
message alone do; past the model's context length the call fails with ContextOverflow.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread

from llmos.kernel import params
from llmos.kernel.errors import ContextOverflow, InvalidRequest, MemoryUnavailable, SyscallError
from llmos.kernel.memory import ChatPrompt, ContextEntry, ContextSnapshot, ContextStats, MemoryItem, ModelPort
from llmos.kernel.model import ChatMessage, SamplingParams
from llmos.kernel.security import UNTRUSTED_MEMORY, mark_untrusted

if TYPE_CHECKING:
    from llmos.kernel.process import Process
    from llmos.memory.manager import MemoryManager
    from llmos.memory.tokens import TokenCounter

log = logging.getLogger(__name__)
T = TypeVar("T")

SUMMARY_HEADER = "Summary of the earlier conversation: "
RECALL_HEADER = "Recalled from memory:"
SUMMARY_FRAME_TOKENS = 16  # SUMMARY_HEADER and the template's framing of a message, at most
SUMMARIZER = ("You keep a running summary of a conversation between a user and an assistant. Rewrite the "
              "summary so far to include the new messages. Keep every name, number, date and fact the user "
              "gave. Answer with the summary only, in at most {words} words.")


def as_message(entry: ContextEntry) -> ChatMessage:
    return ChatMessage(role=entry.role, content=entry.content)


def chunks(text: str, words: int = params.ARCHIVE_CHUNK_WORDS) -> list[str]:
    """`text` in pieces of at most `words` words, so the embedder reads every piece whole."""
    split = text.split(" ")
    return [" ".join(split[i:i + words]) for i in range(0, len(split), words)] or [""]


class Window:
    def __init__(self, port: ModelPort, proc: Process, manager: MemoryManager) -> None:
        self.port, self.proc, self.manager = port, proc, manager
        self.policy = manager.policy
        self.uid = uuid.uuid4().hex[:12]  # names this window's items in the archive
        self.entries: list[ContextEntry] = []
        self.summary = ""
        self.unarchived: list[ContextEntry] = []
        self.recall_active = False  # something of this process is in the archive: prompts may recall
        self._seq = 0  # archived messages so far, numbering their ids
        self._stats = dict(evicted=0, summaries=0, summary_failures=0, recalled=0, last_prompt_tokens=0)
        self._lock = anyio.Lock()  # one paging operation at a time
        self._counted_in: str | None = None  # the model the entries' token counts are in

    # -- sizes --------------------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        return self.proc.name

    @property
    def context_length(self) -> int:
        return self.port.context_length(self.proc)

    @property
    def budget(self) -> int:
        return self.manager.budget(self.context_length)

    def _tokens(self, entries: Sequence[ContextEntry]) -> int:
        return sum(e.tokens or 0 for e in entries)

    @staticmethod
    async def _blocking(fn: Callable[[], T], chars: int) -> T:
        """Run a token count inline when its text is short, else in a worker thread."""
        if chars <= params.INLINE_COUNT_CHARS:
            return fn()
        return await anyio.to_thread.run_sync(fn)

    def _counter(self) -> TokenCounter:
        counter = self.manager.counter(self._model())
        counter.base, counter.no_system_surcharge  # noqa: B018 - its fixed costs, measured once, on tiny prompts
        return counter

    def _model(self) -> str:
        """The base model the process generates with now. Its entries' counts are in that
        model's tokens: when the process moves to another base, they are counted again."""
        model = self.port.model_name(self.proc)
        if model != self._counted_in:
            if self._counted_in is not None:
                self.entries = [e.model_copy(update={"tokens": None}) for e in self.entries]
            self._counted_in = model
        return model

    async def _count(self, *messages: ChatMessage) -> list[int]:
        counter = self._counter()
        return await self._blocking(lambda: [counter.message(m) for m in messages],
                                    sum(len(m.content) for m in messages))

    async def _count_missing(self) -> None:
        self._model()  # counts in another model's tokens are missing too
        missing = [i for i, e in enumerate(self.entries) if e.tokens is None]
        if missing:
            counts = await self._count(*(as_message(self.entries[i]) for i in missing))
            for i, n in zip(missing, counts, strict=True):
                self.entries[i] = self.entries[i].model_copy(update={"tokens": n})

    # -- the prompt ----------------------------------------------------------------------------
    async def prompt(self, message: str, system: str | None = None) -> ChatPrompt:
        async with self._lock:
            await self._count_missing()
            head = (ChatMessage(role="system", content=system),) if system else ()
            new = ChatMessage(role="user", content=message)
            fixed = sum(await self._count(*head, new))
            await self._make_room(fixed, leading_system=bool(head))
            recalled = await self._recall(message)
            messages = self._assemble(head, recalled, new)
            ids = await self._exact(messages)
            while len(ids) > self.budget and (recalled or self._evictable()):
                # Shed the older history first, then recalled items (the least relevant
                # first), and the newest turn last: it is what the message answers.
                if self._evictable(keep_last_turn=True) or not recalled:
                    await self._evict(len(ids) - self.budget)
                else:
                    recalled = recalled[:-1]
                messages = self._assemble(head, recalled, new)
                ids = await self._exact(messages)
            if len(ids) >= self.context_length:
                raise self._overflow(len(ids), "the pinned messages and this message")
            self._stats.update(recalled=len(recalled), last_prompt_tokens=len(ids))
            return ChatPrompt(messages=messages, token_ids=tuple(ids))

    def commit(self, message: str, reply: str) -> None:
        self.entries += [ContextEntry(role="user", content=message), ContextEntry(role="assistant", content=reply)]

    def _assemble(self, head: tuple[ChatMessage, ...], recalled: Sequence[MemoryItem],
                  new: ChatMessage) -> tuple[ChatMessage, ...]:
        pinned = [as_message(e) for e in self.entries if e.pinned]
        recent = [as_message(e) for e in self.entries if not e.pinned]
        extra = []
        if self.summary:
            extra.append(ChatMessage(role="system", content=SUMMARY_HEADER + self.summary))
        if recalled:
            extra.append(ChatMessage(role="system", content="\n- ".join([RECALL_HEADER, *(i.text for i in recalled)])))
        return (*head, *pinned, *extra, *recent, new)

    async def _exact(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt's token ids, the chat template applied."""
        model = self._model()
        return await self._blocking(lambda: self.port.tokenize(model, messages),
                                    sum(len(m.content) for m in messages))

    def _overflow(self, tokens: int, what: str) -> ContextOverflow:
        return ContextOverflow(f"{what} need {tokens} tokens, but the context window is {self.context_length} tokens "
                               f"and nothing left in it can be evicted; shorten the message or unpin something")

    # -- paging out ----------------------------------------------------------------------------
    def _evictable(self, keep_last_turn: bool = False) -> bool:
        unpinned = [e for e in self.entries if not e.pinned]
        return len(unpinned) > (2 if keep_last_turn else 0)

    async def _make_room(self, incoming: int, leading_system: bool) -> None:
        """Evict, if the entries plus `incoming` tokens would pass the budget, down to
        EVICT_TO of the room left; fail if the unevictable part cannot fit the model at all."""
        counter = self._counter()
        pinned = [e for e in self.entries if e.pinned]
        leads = leading_system or (bool(pinned) and pinned[0].role == "system")
        surcharge = 0 if leads else counter.no_system_surcharge
        fixed = counter.base + surcharge + self._tokens(pinned) + incoming
        if fixed >= self.context_length:
            raise self._overflow(fixed, "the pinned messages and this message")
        reserve = 0
        if self.policy.summarize:  # the summary's size once regenerated, with its header
            reserve = self.policy.summary_budget(self.budget) + SUMMARY_FRAME_TOKENS
        if self.policy.recall_k and self.recall_active:
            reserve += self.policy.recall_budget(self.budget)
        room = max(0, self.budget - fixed - reserve)
        history = self._tokens(self.entries) - self._tokens(pinned)
        if history > room:
            await self._evict(history - int(room * params.EVICT_TO))

    async def _evict(self, excess: int) -> None:
        victims = self.policy.victims(self.entries, excess)
        if not victims:
            return
        evicted = [self.entries[i] for i in victims]
        await self._archive(evicted)
        if self.policy.summarize:
            await self._summarize(evicted)
        gone = set(victims)
        self.entries = [e for i, e in enumerate(self.entries) if i not in gone]
        self._stats["evicted"] += len(evicted)

    async def _archive(self, evicted: Sequence[ContextEntry], kind: str = "context") -> None:
        if not evicted:
            return
        texts, metas, ids = [], [], []
        for entry in evicted:
            self._seq += 1
            for n, piece in enumerate(chunks(f"{entry.role}: {entry.content}")):
                texts.append(piece)
                ids.append(f"ctx-{self.uid}-{self._seq}-{n}")
                metas.append({"kind": kind, "role": entry.role, "pid": self.proc.pid, "window": self.uid,
                              "seq": self._seq, "chunk": n, "at": time.time(),
                              # a later process of this name that recalls it reads untrusted text too
                              **({UNTRUSTED_MEMORY: True} if self.proc.untrusted else {})})
        try:
            store = await self.manager.store()
            await store.add(self.namespace, texts, metas, ids)
        except MemoryUnavailable as exc:
            log.warning("pid %d: %s; %d evicted messages stay in the kernel's memory", self.proc.pid, exc,
                        len(evicted))
            self.unarchived += evicted
            return
        self.recall_active = True

    async def _summarize(self, evicted: Sequence[ContextEntry]) -> None:
        """Fold the evicted entries into the running summary, by a generation on the process's
        behalf (accounted to it, traced as context.summarize). If it fails, the old summary
        stays: the evicted text is archived all the same."""
        if not self.port.can_generate(self.proc):
            return
        limit = self.policy.summary_budget(self.budget)
        instructions = ChatMessage(role="system", content=SUMMARIZER.format(words=max(8, limit * 2 // 3)))
        head = f"Summary so far: {self.summary or '(nothing yet)'}\n\nNew messages:\n"
        framing = len(await self._exact((instructions, ChatMessage(role="user", content=head))))
        transcript = self._transcript(evicted, self.context_length - 1 - limit - framing)
        if not transcript:
            self._stats["summary_failures"] += 1  # the model's context cannot hold even the instructions
            return
        request = (instructions, ChatMessage(role="user", content=head + transcript))
        try:
            text = await self.port.generate(self.proc, request, SamplingParams(max_tokens=limit),
                                            call="context.summarize")
        except SyscallError as exc:
            self._stats["summary_failures"] += 1
            log.warning("pid %d: the context summary failed (%s); the evicted text is archived", self.proc.pid, exc)
            return
        self.summary = text.strip()
        self._stats["summaries"] += 1

    @staticmethod
    def _transcript(entries: Sequence[ContextEntry], room: int) -> str:
        """The entries as 'role: text' lines within `room` tokens; a message that crosses the
        limit is cut (the archive keeps it whole)."""
        lines = []
        for entry in entries:
            tokens = max(1, entry.tokens or 1)
            if tokens > room:
                cut = len(entry.content) * max(0, room) // tokens
                if cut > 0:
                    lines.append(f"{entry.role}: {entry.content[:cut]} ...")
                break
            lines.append(f"{entry.role}: {entry.content}")
            room -= tokens
        return "\n".join(lines)

    # -- recall --------------------------------------------------------------------------------
    async def _recall(self, query: str) -> list[MemoryItem]:
        """The archived items most relevant to `query`, best first, within the recall budget."""
        if not (self.policy.recall_k and self.recall_active):
            return []
        try:
            store = await self.manager.store()
            found = await store.query(self.namespace, query, self.policy.recall_k)
        except MemoryUnavailable:
            return []
        present = {e.content for e in self.entries} | {f"{e.role}: {e.content}" for e in self.entries}
        items = []
        for item in found:
            if (item.score or 0) >= params.RECALL_MIN_SCORE and item.text not in present:
                items.append(item)
                present.add(item.text)
                if item.metadata.get(UNTRUSTED_MEMORY):  # it goes into the prompt: so does the mark
                    mark_untrusted(self.proc, "recalled context written after reading untrusted text")
        budget = self.policy.recall_budget(self.budget)
        while items:
            block = ChatMessage(role="system", content="\n- ".join([RECALL_HEADER, *(i.text for i in items)]))
            if (await self._count(block))[0] <= budget:
                break
            items.pop()
        return items

    # -- the context syscalls -------------------------------------------------------------------
    async def append(self, entry: ContextEntry) -> ContextStats:
        async with self._lock:
            await self._count_missing()
            [tokens] = await self._count(as_message(entry))
            if entry.pinned:
                self._check_pinned_fit(tokens)
            self.entries.append(entry.model_copy(update={"tokens": tokens}))
            await self._make_room(0, leading_system=False)
            return await self._stats_now()

    async def pin(self, index: int, pinned: bool = True) -> ContextEntry:
        async with self._lock:
            if not -len(self.entries) <= index < len(self.entries):
                raise InvalidRequest(f"no entry {index} in a window of {len(self.entries)} entries")
            await self._count_missing()
            entry = self.entries[index]
            if pinned and not entry.pinned:
                self._check_pinned_fit(entry.tokens or 0)
            self.entries[index] = entry.model_copy(update={"pinned": pinned})
            return self.entries[index]

    def _check_pinned_fit(self, extra: int) -> None:
        total = self._counter().base + self._tokens([e for e in self.entries if e.pinned]) + extra
        if total >= self.context_length:
            raise self._overflow(total, "the pinned messages")

    async def clear(self, keep_pinned: bool = True) -> ContextStats:
        async with self._lock:
            dropped = [e for e in self.entries if not (keep_pinned and e.pinned)]
            if self.summary:
                dropped.append(ContextEntry(role="system", content=SUMMARY_HEADER + self.summary))
            await self._archive(dropped)
            self.entries = [e for e in self.entries if keep_pinned and e.pinned]
            self.summary = ""
            self._stats["evicted"] += len(dropped)
            return await self._stats_now()

    def snapshot(self) -> ContextSnapshot:
        return ContextSnapshot(entries=tuple(self.entries), summary=self.summary)

    async def restore(self, snapshot: ContextSnapshot) -> ContextStats:
        """Replace the window's contents with a snapshot's (the current ones are let go, as
        the process asked). Counted anew: the snapshot may come from another model."""
        async with self._lock:
            entries = [e.model_copy(update={"tokens": None}) for e in snapshot.entries]
            previous = self.entries, self.summary
            self.entries, self.summary = entries, snapshot.summary
            try:
                await self._count_missing()
                self._check_pinned_fit(0)
                await self._make_room(0, leading_system=False)
            except BaseException:
                self.entries, self.summary = previous
                raise
            return await self._stats_now()

    async def stats(self) -> ContextStats:
        async with self._lock:
            return await self._stats_now()

    async def _stats_now(self) -> ContextStats:
        await self._count_missing()
        pinned = [e for e in self.entries if e.pinned]
        summary = ChatMessage(role="system", content=SUMMARY_HEADER + self.summary)
        summary_tokens = (await self._count(summary))[0] if self.summary else 0
        return ContextStats(policy=self.policy.name, context_length=self.context_length, budget=self.budget,
                            used=self._tokens(self.entries), pinned_tokens=self._tokens(pinned),
                            summary_tokens=summary_tokens, entries=len(self.entries), pinned=len(pinned),
                            unarchived=len(self.unarchived), **self._stats)
