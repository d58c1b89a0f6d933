"""A derived model's driver: the base's, with its own system prompt and sampling defaults."""

from __future__ import annotations

import llmos
from llmos.drivers.derived import DerivedDriver
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams
from llmos.testing import FakeDriver


def derived(**options: object) -> DerivedDriver:
    return DerivedDriver("pirate", FakeDriver(context_length=1000), system="You are a pirate.", **options)  # type: ignore[arg-type]


def chat_job(*messages: ChatMessage, sampling: SamplingParams | None = None) -> GenerationJob:
    return GenerationJob(id=1, pid=1, sampling=sampling or SamplingParams(), messages=messages)


def test_the_system_prompt_comes_first_unless_the_chat_brings_its_own():
    driver = derived()
    job = chat_job(ChatMessage(role="user", content="hi"))
    driver.prepare(job)
    assert [m.role for m in job.messages] == ["system", "user"] and job.messages[0].content == "You are a pirate."
    own = chat_job(ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="hi"))
    driver.prepare(own)
    assert [m.content for m in own.messages] == ["Be brief.", "hi"]


def test_tokenize_counts_the_system_prompt_the_job_will_get():
    driver = derived()
    ids = driver.tokenize([ChatMessage(role="user", content="hi")])
    assert "".join(map(chr, ids)).startswith("<system>You are a pirate.")


def test_defaults_fill_only_what_the_request_left_at_the_global_default():
    driver = derived(sampling={"temperature": 0.7, "max_tokens": 5, "stop": ("\n",)})
    job = chat_job(ChatMessage(role="user", content="hi"), sampling=SamplingParams(max_tokens=9))
    driver.prepare(job)
    assert (job.sampling.temperature, job.sampling.max_tokens, job.sampling.stop) == (0.7, 9, ("\n",))


def test_everything_else_is_the_base_drivers():
    driver = derived()
    assert (driver.name, driver.context_length, driver.max_batch) == ("pirate", 1000, 64)
    assert driver.jobs is driver.base.jobs


def test_a_derived_driver_serves_a_kernel():
    base = FakeDriver()
    model = llmos.Model(DerivedDriver("pirate", base, system="You are a pirate."))
    assert model.chat("hi") == "echo: hi"
    assert base.prompts[-1].startswith("<system>You are a pirate.\n<user>hi")
