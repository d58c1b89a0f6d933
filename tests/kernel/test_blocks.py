"""The block manager (kernel/blocks.py) on its own: no torch, no model. Jobs are driven as
the engine drives them: `computed` is set on admission (to the cached tokens), as passes go
and by `adopt`, and before a release, which publishes the full blocks of what was computed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.blocks import BLOCK, NULL_BLOCK, BlockManager, blocks_for, tokens_needed
from llmos.kernel.model import GenerationJob, SamplingParams

_ids = itertools.count(1)


def _job(prompt: list[int], job_id: int | None = None) -> GenerationJob:
    return GenerationJob(id=next(_ids) if job_id is None else job_id, pid=1, sampling=SamplingParams(),
                         prompt_ids=list(prompt))


def _prompt(n: int, seed: int) -> list[int]:
    return [(seed * 1000 + i) % 50021 for i in range(n)]  # distinct tokens: no accidental sharing


def _stats(m: BlockManager) -> dict[str, int]:
    s = m.statistics()
    assert s["kv_blocks"] == m.total - 1
    assert s["kv_blocks_free"] + s["kv_blocks_cached"] + s["kv_blocks_held"] == m.total - 1
    assert s["kv_blocks_held"] == sum(1 for r in m._refs if r > 0)
    return s


def _admit(m: BlockManager, job: GenerationJob) -> bool:
    """As the engine admits: what the tree held counts as computed."""
    ok = m.allocate(job)
    if ok:
        job.computed = m.cached_tokens(job)
    return ok


def _finish(m: BlockManager, job: GenerationJob, computed: int | None = None) -> None:
    """The job computed `computed` tokens (default: all it has) and lets go."""
    job.computed = len(job.prompt_ids) + len(job.token_ids) if computed is None else computed
    m.release(job)


# -- allocation ---------------------------------------------------------------------------------------
def test_blocks_for_rounds_up_to_whole_blocks():
    assert [blocks_for(n) for n in (0, 1, 15, 16, 17, 32, 33, 160)] == [0, 1, 1, 1, 2, 2, 3, 10]


def test_tokens_needed_counts_the_reply_and_a_scored_job_s_options():
    job = _job(_prompt(10, 1))
    job.token_ids = [1, 2, 3]
    assert tokens_needed(job) == 13
    job.options, job.option_ids = ("a", "b", "c"), [[1, 2, 3], [4], [5, 6]]
    assert tokens_needed(job) == 13 + 2 + 0 + 1  # each option's tokens after its first


@pytest.mark.parametrize("length", [1, 15, 16, 17, 40, 64])
def test_allocate_gives_a_block_per_started_16_tokens(length):
    m = BlockManager(10)
    job = _job(_prompt(length, 2))
    assert m.allocate(job) and m.holds(job)
    table = m.table(job)
    assert len(table) == m.blocks_held(job) == blocks_for(length)
    assert table == list(range(1, len(table) + 1))  # the lowest ids first, never the null block
    assert m.cached_tokens(job) == 0
    assert _stats(m)["kv_blocks_held"] == len(table)


def test_a_manager_needs_a_block_besides_the_null_block():
    with pytest.raises(ValueError):
        BlockManager(1)
    m = BlockManager(2)
    job = _job(_prompt(16, 3))
    assert m.allocate(job) and m.table(job) == [1]


def test_allocation_that_does_not_fit_is_refused_and_takes_nothing():
    m = BlockManager(5)  # four usable blocks
    a, b = _job(_prompt(40, 4)), _job(_prompt(32, 5))
    assert m.allocate(a)
    m.take_fresh()
    before = _stats(m)
    assert not m.allocate(b)  # two blocks wanted, one free
    assert _stats(m) == before and not m.holds(b) and m.blocks_held(b) == 0 and m.take_fresh() == []
    with pytest.raises(KeyError):
        m.table(b)
    assert m.allocate(_job(_prompt(16, 6)))  # one block still fits
    assert _stats(m)["kv_blocks_free"] == 0


def test_allocating_a_held_job_again_only_grows_it():
    m = BlockManager(10)
    job = _job(_prompt(20, 7))
    assert m.allocate(job)
    table = list(m.table(job))
    assert m.allocate(job) and m.table(job) == table
    job.token_ids = list(range(13))  # 33 tokens
    assert m.allocate(job) and m.table(job)[:2] == table and len(m.table(job)) == 3


def test_grow_adds_a_block_every_16_tokens():
    m = BlockManager(10)
    job = _job(_prompt(5, 8))
    assert m.allocate(job)
    for n in range(6, 8 * BLOCK + 1):
        job.token_ids.append(n)
        assert m.grow(job)
        assert m.blocks_held(job) == blocks_for(n), n
    assert m.blocks_held(job) == 8 and len(set(m.table(job))) == 8
    _stats(m)


def test_grow_refused_when_full_takes_nothing():
    m = BlockManager(3)  # two usable blocks
    job = _job(_prompt(32, 9))
    assert m.allocate(job)
    job.token_ids.append(1)  # a third block is needed
    before = _stats(m)
    assert not m.grow(job)
    assert _stats(m) == before and m.blocks_held(job) == 2


# -- release and the prefix tree ---------------------------------------------------------------------
@pytest.mark.parametrize("computed, cached", [(40, 2), (32, 2), (31, 1), (16, 1), (15, 0), (0, 0)])
def test_release_caches_the_computed_full_blocks_and_frees_the_rest(computed, cached):
    m = BlockManager(10)
    job = _job(_prompt(40, 10))
    assert m.allocate(job)
    table = list(m.table(job))
    _finish(m, job, computed)
    s = _stats(m)
    assert s["kv_blocks_cached"] == cached and s["kv_blocks_free"] == 9 - cached and s["kv_blocks_held"] == 0
    assert set(m._cached) == set(table[:cached])
    assert not m.holds(job) and m.cached_tokens(job) == 0
    m.release(job)  # harmless: it holds nothing
    assert _stats(m) == s


def test_a_second_job_with_the_same_prefix_shares_its_blocks():
    m = BlockManager(20)
    base = _prompt(40, 11)
    first = _job(base + [1, 2])
    assert _admit(m, first)
    table = list(m.table(first))
    _finish(m, first)  # 42 tokens computed: blocks 0 and 1 cached
    second = _job(base[:2 * BLOCK] + _prompt(10, 12))
    assert _admit(m, second)
    assert m.table(second)[:2] == table[:2] and m.cached_tokens(second) == second.computed == 2 * BLOCK
    assert m.table(second)[2] not in table[:2]
    s = _stats(m)
    assert s["prefix_hit_tokens"] == 2 * BLOCK and s["prefix_miss_tokens"] == 42 + 10
    assert s["kv_blocks_cached"] == 0 and s["kv_blocks_held"] == 3  # shared blocks are held again
    assert m.take_fresh()[-1:] == [m.table(second)[2]]  # shared blocks are not fresh


def test_running_jobs_share_a_published_prefix_by_reference():
    m = BlockManager(20)
    base = _prompt(48, 13)
    a = _job(base)
    assert _admit(m, a)
    a.computed = 48
    m.publish(a)  # still running
    b, c = _job(base[:40]), _job(base + [7])
    assert _admit(m, b) and _admit(m, c)
    assert m.table(b)[:2] == m.table(a)[:2] and m.table(c)[:3] == m.table(a)
    assert [m._refs[x] for x in m.table(a)] == [3, 3, 2]
    assert _stats(m)["kv_blocks_held"] == 3 + 1 + 1


@pytest.mark.parametrize("length, shared", [(2 * BLOCK, 1), (2 * BLOCK + 1, 2), (BLOCK, 0), (BLOCK + 1, 1)])
def test_at_least_the_last_token_is_left_to_compute(length, shared):
    m = BlockManager(20)
    prompt = _prompt(3 * BLOCK, 14)
    _admit(m, first := _job(prompt))
    _finish(m, first)
    again = _job(prompt[:length])
    assert _admit(m, again)
    assert m.cached_tokens(again) == shared * BLOCK < length
    assert m.statistics()["prefix_hit_tokens"] == shared * BLOCK


@pytest.mark.parametrize("where, shared", [(0, 0), (5, 0), (15, 0), (16, 1), (31, 1), (32, 2)])
def test_prefixes_differing_in_one_token_do_not_share_past_it(where, shared):
    m = BlockManager(20)
    prompt = _prompt(40, 15)
    _admit(m, first := _job(prompt))
    _finish(m, first)
    other = list(prompt)
    other[where] += 1
    job = _job(other)
    assert _admit(m, job)
    assert m.cached_tokens(job) == shared * BLOCK


def test_the_same_block_of_tokens_under_another_parent_is_not_shared():
    m = BlockManager(20)
    x, y = _prompt(16, 16), _prompt(16, 17)
    _admit(m, first := _job(x + y + [1]))
    _finish(m, first)
    job = _job(y + y + [1])  # its second block's tokens are cached, below another first block
    assert _admit(m, job) and m.cached_tokens(job) == 0


# -- eviction ---------------------------------------------------------------------------------------
def _cached_run(m: BlockManager, prompt: list[int]) -> list[int]:
    job = _job(prompt)
    assert _admit(m, job)
    table = list(m.table(job))
    _finish(m, job)
    return table


def test_eviction_takes_the_least_recently_released_tail_first():
    m = BlockManager(7)  # six usable blocks
    pa, pb = _prompt(32, 20), _prompt(32, 21)
    a, b = _cached_run(m, pa), _cached_run(m, pb)
    assert list(m._cached) == [a[1], a[0], b[1], b[0]] and _stats(m)["kv_blocks_free"] == 2
    assert _admit(m, x := _job(_prompt(3 * BLOCK, 22)))  # the two free blocks, then a's tail
    assert a[1] in m.table(x) and list(m._cached) == [a[0], b[1], b[0]]
    assert m._match(pa + [1]) == a[:1] and m._match(pb + [1]) == b  # a's head survived its tail
    _finish(m, x, 0)
    assert _admit(m, probe := _job(pa[:BLOCK] + [1])) and m.table(probe)[0] == a[0]
    _finish(m, probe, 0)
    assert list(m._cached) == [b[1], b[0], a[0]]  # a's head was released last: now the most recent
    assert _admit(m, y := _job(_prompt(5 * BLOCK, 23)))  # the three free blocks, b's tail, b's head
    assert list(m._cached) == [a[0]] and set(b) <= set(m.table(y))
    _stats(m)


def test_evicting_a_block_evicts_its_cached_descendants():
    m = BlockManager(10)
    prompt = _prompt(3 * BLOCK + 1, 24)
    table = _cached_run(m, prompt)
    other = _cached_run(m, prompt[:BLOCK] + _prompt(BLOCK + 1, 25))  # a sibling branch below the same head
    assert other[0] == table[0] and other[1] not in table[:3]
    assert _stats(m)["kv_blocks_cached"] == 4
    m._evict(table[0])
    assert _stats(m)["kv_blocks_cached"] == 0 and not m._tree and not m._key
    assert _admit(m, again := _job(prompt)) and m.cached_tokens(again) == 0


def test_held_blocks_are_never_evicted():
    m = BlockManager(6)  # five usable blocks
    running = _job(_prompt(33, 26))
    assert _admit(m, running)
    running.computed = 33
    m.publish(running)  # its two full blocks are in the tree, and held
    gone = _cached_run(m, _prompt(17, 27))  # one cached block, one freed
    assert _stats(m)["kv_blocks_cached"] == 1 and _stats(m)["kv_blocks_free"] == 1
    assert not m.allocate(_job(_prompt(3 * BLOCK, 28)))  # only two are not held
    assert m.allocate(taker := _job(_prompt(2 * BLOCK, 29)))
    assert gone[0] in m.table(taker)
    assert _stats(m)["kv_blocks_held"] == 5 and [m._refs[b] for b in m.table(running)] == [1, 1, 1]
    assert len(m._tree) == 2 and all(b in m._key for b in m.table(running)[:2])


def test_adopt_swaps_own_blocks_for_blocks_computed_since():
    m = BlockManager(20)
    prompt = _prompt(40, 30)
    a, b = _job(prompt), _job(prompt + [5])
    assert _admit(m, a) and _admit(m, b)  # arrived together: nothing to share yet
    own = list(m.table(b))
    assert m.adopt(b) == 0  # nothing computed anywhere
    a.computed = 40
    m.publish(a)
    before = _stats(m)
    assert m.adopt(b) == 2 * BLOCK
    assert m.table(b)[:2] == m.table(a)[:2] and m.table(b)[2] == own[2]
    assert set(own[:2]) <= set(m._free) and [m._refs[x] for x in m.table(a)] == [2, 2, 1]
    after = _stats(m)
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 2 * BLOCK
    assert after["prefix_miss_tokens"] - before["prefix_miss_tokens"] == -2 * BLOCK
    assert after["kv_blocks_free"] == before["kv_blocks_free"] + 2
    b.computed = 2 * BLOCK
    assert m.adopt(b) == 2 * BLOCK and _stats(m) == after  # nothing more to gain
    assert m.adopt(_job(prompt)) == 0  # a job holding nothing keeps its computed


def test_a_job_that_computed_its_own_copy_keeps_it_and_the_tree_keeps_the_first():
    m = BlockManager(20)
    prompt = _prompt(40, 31)
    a, b = _job(prompt), _job(prompt)
    assert _admit(m, a) and _admit(m, b)
    a.computed = b.computed = 40
    m.publish(a)
    m.publish(b)
    assert set(m._key) == set(m.table(a)[:2])
    _finish(m, b)  # its copies are not in the tree: freed
    assert _stats(m)["kv_blocks_cached"] == 0 and _stats(m)["kv_blocks_held"] == 3


def test_adopt_after_a_duplicate_block_keeps_the_tree_invariant():
    """Two requests with one prompt prefilled in the same pass (prefill_chunk 64: 40 tokens
    of one, 24 of the other): the second's block 0 duplicates the first's. Adopting must
    take the tree's block 0 too, else once the first is released its block 0 is cached with
    a held child, and evicting it would take that child (a KeyError, or a held block freed)."""
    m = BlockManager(8)
    prompt = _prompt(40, 32)
    a, b = _job(prompt), _job(prompt)
    assert _admit(m, a) and _admit(m, b)
    a.computed, b.computed = 40, 24
    m.publish(a)
    m.publish(b)
    assert m.adopt(b) == 2 * BLOCK
    assert m.table(b)[:2] == m.table(a)[:2]
    _finish(m, a)
    for block in m.table(b):  # a held block's ancestors in the tree are held too
        parent = m._key[block][0] if block in m._key else -1
        assert parent == -1 or m._refs[parent] > 0
    assert m.allocate(c := _job(_prompt(50, 33)))  # evicts only what nobody holds
    assert not set(m.table(c)) & set(m.table(b))
    _stats(m)


# -- switches and bookkeeping -------------------------------------------------------------------------
def test_without_prefix_caching_nothing_is_shared_or_kept():
    m = BlockManager(10, prefix_caching=False)
    prompt = _prompt(40, 34)
    a = _job(prompt)
    assert _admit(m, a)
    a.computed = 40
    m.publish(a)
    assert not m._tree
    assert _admit(m, b := _job(prompt)) and m.cached_tokens(b) == 0 and not set(m.table(a)) & set(m.table(b))
    assert m.adopt(b) == 0
    _finish(m, a)
    _finish(m, b)
    assert _stats(m) == {"kv_blocks": 9, "kv_blocks_free": 9, "kv_blocks_cached": 0, "kv_blocks_held": 0,
                         "prefix_hit_tokens": 0, "prefix_miss_tokens": 80}


def test_take_fresh_returns_each_new_block_once():
    m = BlockManager(10)
    assert m.take_fresh() == []
    prompt = _prompt(33, 35)
    assert _admit(m, a := _job(prompt))
    assert sorted(m.take_fresh()) == sorted(m.table(a)) and m.take_fresh() == []
    a.token_ids = list(range(16))  # 49 tokens
    assert m.grow(a) and m.take_fresh() == m.table(a)[3:]
    _finish(m, a)
    assert _admit(m, b := _job(prompt + [1]))
    assert m.cached_tokens(b) == 2 * BLOCK and m.take_fresh() == m.table(b)[2:]  # the shared ones hold K/V


def test_statistics_stay_consistent_through_a_lifecycle():
    m = BlockManager(12)
    prompt = _prompt(50, 36)
    assert _stats(m) == {"kv_blocks": 11, "kv_blocks_free": 11, "kv_blocks_cached": 0, "kv_blocks_held": 0,
                         "prefix_hit_tokens": 0, "prefix_miss_tokens": 0}
    assert _admit(m, a := _job(prompt))
    assert _stats(m)["kv_blocks_held"] == 4
    _finish(m, a)
    assert _stats(m) == {"kv_blocks": 11, "kv_blocks_free": 8, "kv_blocks_cached": 3, "kv_blocks_held": 0,
                         "prefix_hit_tokens": 0, "prefix_miss_tokens": 50}
    assert _admit(m, b := _job(prompt))
    assert _stats(m) == {"kv_blocks": 11, "kv_blocks_free": 7, "kv_blocks_cached": 0, "kv_blocks_held": 4,
                         "prefix_hit_tokens": 48, "prefix_miss_tokens": 52}
    _finish(m, b, 0)  # preempted before computing anything: its shared blocks go back to the cache
    assert _stats(m)["kv_blocks_cached"] == 3 and _stats(m)["kv_blocks_free"] == 8


# -- property: random admissions, steps, publications and releases -----------------------------------
@settings(max_examples=200, deadline=None)
@given(data=st.data(), total=st.integers(2, 12))
def test_random_use_keeps_the_invariants(data, total):
    m = BlockManager(total)
    jobs: list[GenerationJob] = []
    contents: dict[int, list[int | None]] = {}  # what each block should hold, by position

    def check() -> None:
        for block in m.take_fresh():
            assert block != NULL_BLOCK
            contents[block] = [None] * BLOCK
        free, cached = list(m._free), list(m._cached)
        held = [b for b in range(m.total) if m._refs[b] > 0]
        assert len(set(free)) == len(free) and NULL_BLOCK not in free + cached + held
        assert sorted(free + cached + held) == list(range(1, m.total))  # each in exactly one
        tables = [m.table(j) for j in jobs if m.holds(j)]
        assert len(tables) == len(m._held)
        for table in tables:
            assert len(set(table)) == len(table) and NULL_BLOCK not in table
        for b in range(m.total):
            assert m._refs[b] == sum(table.count(b) for table in tables)
        for b in cached:
            assert b in m._key and m._refs[b] == 0
        for b, (parent, tokens) in m._key.items():
            assert m._tree[(parent, tokens)] == b and b not in free
            assert parent == -1 or parent in m._key
            if m._refs[b] > 0:
                assert parent == -1 or m._refs[parent] > 0  # a held block's ancestors are held
            assert contents[b] == list(tokens)  # the tree's key is what the block holds
        for job in jobs:
            if m.holds(job):
                tokens, table = job.prompt_ids + job.token_ids, m.table(job)
                for p in range(job.computed):  # shared blocks agree with every table's tokens
                    assert contents[table[p // BLOCK]][p % BLOCK] == tokens[p]
        _stats(m)

    tokens = st.integers(0, 2)  # a small alphabet: prefixes collide...
    # ...and prompts start with whole blocks from a few, so they share blocks often
    pieces = data.draw(st.lists(st.lists(tokens, min_size=BLOCK, max_size=BLOCK), min_size=1, max_size=3), label="pieces")
    for _ in range(data.draw(st.integers(1, 40), label="operations")):
        op = data.draw(st.sampled_from(["admit", "admit", "step", "step", "step", "publish", "adopt", "release"]), label="op")
        idle = [j for j in jobs if not m.holds(j)]
        running = [j for j in jobs if m.holds(j)]
        if op == "admit":
            if idle and data.draw(st.booleans(), label="resume"):
                job = data.draw(st.sampled_from(idle), label="job")  # a preempted job comes back
            else:
                if jobs and data.draw(st.booleans(), label="same start"):  # as another's, a system prompt
                    other = data.draw(st.sampled_from(jobs), label="like").prompt_ids
                    head = other[:data.draw(st.integers(0, len(other)), label="shared")]
                else:
                    head = [t for piece in data.draw(st.lists(st.sampled_from(pieces), max_size=3), label="blocks")
                            for t in piece]
                prompt = head + data.draw(st.lists(tokens, min_size=0 if head else 1, max_size=BLOCK + 4), label="tail")
                job = _job(prompt)
                jobs.append(job)
            shared_held = sum(1 for b in m._match(job.prompt_ids + job.token_ids) if m._refs[b] > 0)
            fits = blocks_for(tokens_needed(job)) <= len(m._free) + len(m._cached) + shared_held
            ok = _admit(m, job)
            assert ok == fits  # refused only when the blocks not held elsewhere are too few
            if ok:
                assert m.cached_tokens(job) % BLOCK == 0 and m.cached_tokens(job) < len(job.prompt_ids + job.token_ids)
                assert len(m.table(job)) == blocks_for(tokens_needed(job))
        elif op == "step" and running:
            job = data.draw(st.sampled_from(running), label="job")
            if not m.grow(job):
                continue  # a scheduler would preempt someone
            check()  # fresh blocks are blank
            table, tokens_so_far = m.table(job), job.prompt_ids + job.token_ids
            end = min(len(tokens_so_far), job.computed + data.draw(st.integers(1, 2 * BLOCK), label="chunk"))
            for p in range(job.computed, end):  # the pass writes its tokens' K/V in its own blocks
                block = table[p // BLOCK]
                assert m._refs[block] == 1 and block not in m._key
                contents[block][p % BLOCK] = tokens_so_far[p]
            job.computed = end
            if end == len(tokens_so_far):
                job.token_ids.append(data.draw(tokens, label="sampled"))
        elif op == "publish" and running:
            m.publish(data.draw(st.sampled_from(running), label="job"))
        elif op == "adopt" and running:  # as the engine does before each prefill chunk
            job = data.draw(st.sampled_from(running), label="job")
            before = job.computed
            job.computed = m.adopt(job)
            assert job.computed >= before and job.computed % BLOCK == 0 or job.computed == before
        elif op == "release" and running:
            m.release(data.draw(st.sampled_from(running), label="job"))
        check()
