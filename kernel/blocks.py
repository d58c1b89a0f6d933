"""KV memory by budget, in blocks: the block manager the scheduler admits requests by.
Pure: no torch. The model driver owns the memory the block ids index (llmos.drivers.kv_cache);
this module decides which block holds what.

Shaped like vLLM's: the KV memory is `total` fixed-size blocks of BLOCK tokens; each running
request holds a block table (its blocks in token order); full blocks whose K/V were computed
are kept in a prefix tree keyed by the tokens themselves (a block's key is its parent block and
the tuple of its BLOCK tokens, so two different prefixes can never share a block, whatever
their hashes), shared by every request whose tokens start the same way, with a reference
count. A block nobody references stays cached until its memory is needed (least recently
released first, a prompt's tail before its head), so a preempted or finished request's
prefix comes back without recomputation.

Invariants: block 0 is the null block (all zeros, never handed out: tables are padded with
it); a block is free, cached (in the tree, no references) or held (references > 0), never two
of these; a held block's ancestors in the tree are held too, so a cached block's descendants
are all cached and evicting a subtree never takes a held block.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from llmos.kernel.model import GenerationJob

BLOCK = 16  # tokens per KV block (drivers/paged_attention.cpp is compiled for it)
NULL_BLOCK = 0
_ROOT = -1  # the parent of a prompt's first block, for the base model

Parent = int | tuple[int, str]  # a block, or the root of an adapter's tree: (_ROOT, adapter)
Key = tuple[Parent, tuple[int, ...]]  # (parent block, the block's tokens)


def _root(job: GenerationJob) -> Parent:
    """Where a job's prefix starts in the tree: K/V depend on the weights, so each LoRA
    adapter's prefixes are a tree of their own, never shared with the base model's."""
    return _ROOT if job.adapter is None else (_ROOT, job.adapter)


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK)


def tokens_needed(job: GenerationJob) -> int:
    """Cache positions the job's K/V fill once its next step is done: its prompt and reply so
    far (the last sampled token is fed at the next step), and for a scored job the options'
    tokens after the prompt (all fed side by side once)."""
    extra = sum(len(ids) - 1 for ids in job.option_ids) if job.options is not None else 0
    return len(job.prompt_ids) + len(job.token_ids) + extra


@dataclass
class _Held:
    serial: int  # which allocation this is: a request preempted and admitted again gets a new one
    table: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # tokens of the prompt found computed when it was admitted


class BlockManager:
    def __init__(self, total: int, *, prefix_caching: bool = True, block_bytes: int = 0) -> None:
        if total < 2:
            raise ValueError("the KV memory needs at least two blocks (one is the null block)")
        self.total = total
        self.block_bytes = block_bytes  # what one block's K/V take, for memory figures (0: unknown)
        self.prefix_caching = prefix_caching  # off: nothing is shared, a released block is free at once
        self._free = list(range(total - 1, NULL_BLOCK, -1))  # popped from the end: low ids first
        self._refs = [0] * total
        self._tree: dict[Key, int] = {}  # cached and held blocks of computed prefixes
        self._key: dict[int, Key] = {}  # block -> its key in the tree
        self._children: dict[Parent, set[int]] = {}
        self._cached: OrderedDict[int, None] = OrderedDict()  # in the tree, no references: eviction order
        self._held: dict[int, _Held] = {}  # job id -> its blocks
        self._fresh: list[int] = []  # handed out since the driver last zeroed new blocks
        self._lock = threading.Lock()  # the scheduler (event loop) and the driver (its thread) both call in
        self.hit_tokens = self.miss_tokens = 0
        self._serial = 0

    # -- what the scheduler calls ----------------------------------------------------------------
    def allocate(self, job: GenerationJob) -> bool:
        """Give a request being admitted the blocks for its tokens so far: its longest computed
        prefix by reference, fresh blocks for the rest. False (nothing taken) if they do not fit."""
        with self._lock:
            if job.id in self._held:
                return self._grow(job)
            tokens = job.prompt_ids + job.token_ids
            shared = self._match(tokens, _root(job))
            need = blocks_for(tokens_needed(job)) - len(shared)
            if need > len(self._free) + len(self._cached) - sum(1 for b in shared if self._refs[b] == 0):
                return False
            for block in shared:
                self._ref(block)
            self._serial += 1
            held = self._held[job.id] = _Held(serial=self._serial, table=shared + self._take(need),
                                              cached_tokens=len(shared) * BLOCK)
            self.hit_tokens += held.cached_tokens
            self.miss_tokens += len(tokens) - held.cached_tokens
            return True

    def grow(self, job: GenerationJob) -> bool:
        """Blocks for a running request's next step (a block more every BLOCK tokens). False
        (nothing taken) if memory is short: the scheduler preempts someone and asks again."""
        with self._lock:
            return self._grow(job)

    def release(self, job: GenerationJob) -> None:
        """A request stops running (finished, preempted, killed): the full blocks of what it
        computed join the prefix tree, and its references go. Harmless if it holds nothing."""
        with self._lock:
            held = self._held.pop(job.id, None)
            if held is None:
                return
            self._publish(job, held.table)
            for block in reversed(held.table):  # the tail becomes the first to be evicted
                self._unref(block)

    # -- what the driver calls -------------------------------------------------------------------
    def table(self, job: GenerationJob) -> list[int]:
        held = self._held.get(job.id)
        if held is None:
            raise KeyError(f"generation {job.id} holds no KV blocks")
        return held.table

    def cached_tokens(self, job: GenerationJob) -> int:
        held = self._held.get(job.id)
        return held.cached_tokens if held is not None else 0

    def holds(self, job: GenerationJob) -> bool:
        return job.id in self._held

    def serial(self, job: GenerationJob) -> int:
        """Which allocation the request holds (-1: none). The driver compares it with the one
        it saw: a request preempted and admitted again between two steps has new blocks."""
        held = self._held.get(job.id)
        return held.serial if held is not None else -1

    def publish(self, job: GenerationJob) -> None:
        """Offer the full blocks of what a running request has computed (`job.computed` tokens)
        to the others: requests that arrived together share a system prompt, and the first one
        to compute a block lends it to the rest (`adopt`)."""
        with self._lock:
            held = self._held.get(job.id)
            if held is not None:
                self._publish(job, held.table)

    def adopt(self, job: GenerationJob) -> int:
        """Swap the request's own blocks past what it computed for blocks another request has
        computed since, where their tokens match. Returns how many tokens it now has computed."""
        with self._lock:
            held = self._held.get(job.id)
            tokens = job.prompt_ids + job.token_ids
            if held is None:
                return job.computed
            shared = self._match(tokens, _root(job))
            if len(shared) * BLOCK <= job.computed:
                return job.computed
            # From the first block: where this request computed a block of its own beside
            # another's copy (both prefilled at once), it takes the tree's, so that every block
            # it holds in the tree hangs below blocks it holds too (the eviction invariant).
            for i in range(len(shared)):
                if held.table[i] != shared[i]:
                    self._ref(shared[i])
                    self._unref(held.table[i])
                    held.table[i] = shared[i]
            gained = len(shared) * BLOCK - job.computed
            self.hit_tokens += gained
            self.miss_tokens -= gained
            return len(shared) * BLOCK

    def clear_cache(self) -> None:
        """Forget every cached prefix nobody holds (a test's clean start; held blocks stay)."""
        with self._lock:
            while self._cached:
                self._evict(next(iter(self._cached)))

    def take_fresh(self) -> list[int]:
        """Blocks handed out as new since the last call: the driver zeroes them before a pass
        reads them (a padded row reads past what it wrote, and 0 x NaN is NaN)."""
        with self._lock:
            fresh, self._fresh = self._fresh, []
            return fresh

    # -- figures ------------------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"kv_blocks": self.total - 1, "kv_blocks_free": len(self._free),
                    "kv_blocks_cached": len(self._cached),
                    "kv_blocks_held": self.total - 1 - len(self._free) - len(self._cached),
                    "prefix_hit_tokens": self.hit_tokens, "prefix_miss_tokens": self.miss_tokens}

    def blocks_held(self, job: GenerationJob) -> int:
        held = self._held.get(job.id)
        return len(held.table) if held is not None else 0

    def bytes_held(self, job: GenerationJob) -> int:
        """The KV memory a request's blocks take (shared prefix blocks counted in full for each)."""
        return self.blocks_held(job) * self.block_bytes

    # -- inside ---------------------------------------------------------------------------------------
    def _grow(self, job: GenerationJob) -> bool:
        held = self._held[job.id]
        need = blocks_for(tokens_needed(job)) - len(held.table)
        if need <= 0:
            return True
        if need > len(self._free) + len(self._cached):
            return False
        held.table += self._take(need)
        return True

    def _match(self, tokens: list[int], root: Parent = _ROOT) -> list[int]:
        """The blocks of the longest computed prefix of `tokens`, leaving at least its last
        token to compute (its logits are what the next step needs)."""
        found: list[int] = []
        parent = root
        if not self.prefix_caching:
            return found
        for start in range(0, len(tokens) - 1 - BLOCK + 1, BLOCK):
            block = self._tree.get((parent, tuple(tokens[start:start + BLOCK])))
            if block is None:
                break
            found.append(block)
            parent = block
        return found

    def _publish(self, job: GenerationJob, table: list[int]) -> None:
        if not self.prefix_caching:
            return
        tokens = job.prompt_ids + job.token_ids
        parent = _root(job)
        for i in range(min(job.computed, len(tokens)) // BLOCK):
            block = table[i]
            key = (parent, tuple(tokens[i * BLOCK:(i + 1) * BLOCK]))
            known = self._tree.get(key)
            if known is None and block not in self._key:
                self._tree[key], self._key[block] = block, key
                self._children.setdefault(parent, set()).add(block)
                known = block
            if known != block:  # computed twice (two requests at once): the tree keeps the first
                return  # this request's later blocks hang below its own copy, which is not kept
            parent = block

    def _ref(self, block: int) -> None:
        if self._refs[block] == 0:
            self._cached.pop(block, None)
        self._refs[block] += 1

    def _unref(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] > 0:
            return
        if block in self._key:
            self._cached[block] = None
        else:
            self._free.append(block)

    def _take(self, n: int) -> list[int]:
        taken = []
        while len(taken) < n:
            if not self._free:
                self._evict(next(iter(self._cached)))
            block = self._free.pop()
            self._refs[block] = 1
            taken.append(block)
        self._fresh += taken
        return taken

    def _evict(self, block: int) -> None:
        """Forget a cached block and its cached descendants (all unreferenced: the invariant)."""
        parent = self._key[block][0]
        self._children.get(parent, set()).discard(block)
        doomed = [block]
        while doomed:
            gone = doomed.pop()
            doomed += self._children.pop(gone, ())
            del self._tree[self._key.pop(gone)]
            self._cached.pop(gone)
            self._free.append(gone)
