"""The KV budget's setting (EngineConfig.kv_cache_mb, LLMOS_KV_CACHE_MB, `llmos --kv-cache-mb`)
and what a driver does with a job that cannot fit it, on the tiny model."""

from __future__ import annotations

import functools

import anyio
import pytest

from llmos.drivers.engine import DEFAULT_KV_CACHE_MB, KV_CACHE_ENV, EngineConfig, kv_cache_mb
from llmos.drivers.transformers_driver import TransformersDriver
from llmos.kernel.blocks import BlockManager
from llmos.kernel.errors import ConfigError, ContextOverflow
from llmos.kernel.model import GenerationJob, SamplingParams
from llmos.testing import tiny_driver, tiny_engine


def test_the_budget_comes_from_the_config_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv(KV_CACHE_ENV, raising=False)
    assert kv_cache_mb(None) == DEFAULT_KV_CACHE_MB
    monkeypatch.setenv(KV_CACHE_ENV, "512")
    assert kv_cache_mb(None) == 512
    assert kv_cache_mb(64) == 64


@pytest.mark.parametrize("raw", ["lots", "0", "-3", "1.5"])
def test_a_bad_budget_in_the_environment_is_a_config_error(monkeypatch, raw):
    monkeypatch.setenv(KV_CACHE_ENV, raw)
    with pytest.raises(ConfigError, match=KV_CACHE_ENV):
        kv_cache_mb(None)


def test_the_environment_sizes_the_pool(monkeypatch):
    monkeypatch.setenv(KV_CACHE_ENV, "2")
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16))
    assert engine.blocks.total == 2 * 2**20 // (engine.cache.bytes_per_token() * 16)


def test_the_cli_option_sets_the_environment_for_what_it_boots(monkeypatch):
    from typer.testing import CliRunner

    from llmos.apps.cli import app

    monkeypatch.delenv(KV_CACHE_ENV, raising=False)
    result = CliRunner().invoke(app, ["--kv-cache-mb", "300", "apps"])
    assert result.exit_code == 0, result.output
    import os

    assert os.environ.pop(KV_CACHE_ENV) == "300"


def test_a_prompt_the_budget_cannot_hold_is_refused_and_a_long_reply_is_cut_to_it():
    driver = tiny_driver()  # a 1 MB KV budget
    driver.engine.blocks = BlockManager(10)  # 9 usable blocks, 144 tokens: less than the 512-token context
    capacity = driver.engine.capacity_tokens()
    assert capacity == 144
    too_long = GenerationJob(id=1, pid=1, sampling=SamplingParams(), prompt_ids=[5] * capacity)
    with pytest.raises(ContextOverflow, match="KV memory"):
        driver.prepare(too_long)
    long_reply = GenerationJob(id=2, pid=1, sampling=SamplingParams(max_tokens=300), prompt_ids=[5] * 100)
    driver.prepare(long_reply)
    assert long_reply.sampling.max_tokens == capacity - 100


@pytest.mark.model
async def test_agents_beyond_the_budget_wait_for_blocks_and_all_finish_on_the_real_model(smollm2):
    """SmolLM2 with a 6 MiB KV budget (16 blocks of 16 tokens in bfloat16, 7 in float32):
    four agents whose prompts need over half of it each run one at a time, the kernel's
    scheduler admitting them as blocks come free; each reply is the one it gives alone."""
    import llmos
    from llmos.drivers import compute

    hf, tokenizer = smollm2.driver.model, smollm2.driver.tokenizer
    driver = await compute.run(functools.partial(TransformersDriver, "smollm2", hf, tokenizer,
                                                 config=EngineConfig(kv_cache_mb=6, prefix_caching=False)))
    capacity = driver.engine.capacity_tokens()
    def question(i: int, words: int) -> str:
        return f"In one word: what colour is item number {i} of this list? " + "red green blue " * words

    def tokens(text: str) -> int:
        return len(driver.tokenize([llmos.kernel.model.ChatMessage(role="user", content=text)]))

    words = next(w for w in range(1, 200) if tokens(question(0, w)) + 8 > capacity * 0.55)
    questions = [question(i, words) for i in range(4)]
    peak = 0

    async def agent(sys: llmos.Sys, question: str) -> str:
        nonlocal peak
        stream = await sys.chat(question, max_tokens=8, stream=True)
        async for _ in stream:
            peak = max(peak, driver.engine.statistics()["sequences"])
        return stream.reply.text

    seen_kv: list[int] = []

    async def watch(kernel: llmos.Kernel) -> None:
        while True:  # what `ps` says each agent's running generation holds
            seen_kv.extend(p.stats.kv_bytes for p in kernel.ps() if p.stats.kv_bytes)
            await anyio.sleep(0.01)

    async with llmos.boot(llmos.Model(driver), memory=None, durable=None, embedder=None) as kernel:
        async with anyio.create_task_group() as watching:
            watching.start_soon(watch, kernel)
            pids = [(await kernel.spawn(agent, q)).pid for q in questions]
            together = [(await kernel.wait(pid)).result for pid in pids]
            watching.cancel_scope.cancel()
        assert all(p.stats.kv_bytes == 0 for p in kernel.ps())
        alone = [(await kernel.wait((await kernel.spawn(agent, q)).pid)).result for q in questions]
    assert 2 * (tokens(questions[0]) + 8) > capacity  # two of them never fit at once
    assert peak == 1 and together == alone
    assert driver.engine.statistics()["kv_blocks_held"] == 0
    block = driver.engine.blocks.block_bytes
    assert seen_kv and all(size % block == 0 and block <= size <= capacity // 16 * block for size in seen_kv)
