"""The OpenAI-compatible API, through the official `openai` client against a real server on
loopback (uvicorn in the test's event loop, over the scripted FakeDriver)."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import anyio
import httpx
import openai
import pytest

from llmos.syscalls import ProcState
from llmos.testing import FakeDriver, served, until

USER = [{"role": "user", "content": "hello there"}]


def client(srv, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)


@asynccontextmanager
async def server(driver: FakeDriver | None = None, **options):
    """`served`, with an official OpenAI client on it as `.ai` (closed before the server)."""
    async with served(driver or FakeDriver(), **options) as srv, client(srv, options.get("api_key") or "x") as ai:
        srv.ai = ai
        yield srv


async def test_models_lists_the_served_model_with_its_context_length():
    async with server(FakeDriver(context_length=512)) as srv:
        models = (await srv.ai.models.list()).data
        assert [m.id for m in models] == ["fake"]
        assert models[0].model_extra["context_length"] == 512
        assert (await srv.ai.models.retrieve("fake")).id == "fake"
        with pytest.raises(openai.NotFoundError):
            await srv.ai.models.retrieve("gpt-4")


async def test_chat_completion_answers_with_usage():
    async with server() as srv:
        reply = await srv.ai.chat.completions.create(model="fake", messages=USER)
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 3


async def test_chat_stream_sends_deltas_then_usage_then_done():
    async with server() as srv:
        stream = await srv.ai.chat.completions.create(model="fake", messages=USER, stream=True,
                                                           stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


async def test_stream_ends_with_done_on_the_wire():
    async with server() as srv:
        async with httpx.AsyncClient() as http:
            answer = await http.post(srv.url + "/v1/chat/completions",
                                     json={"model": "fake", "messages": USER, "stream": True})
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [line for line in answer.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)


async def test_max_tokens_and_stop_are_honoured():
    driver = FakeDriver(lambda prompt: "one two three four five six")
    async with server(driver) as srv:
        cut = await srv.ai.chat.completions.create(model="fake", messages=USER, max_tokens=2)
        stopped = await srv.ai.chat.completions.create(model="fake", messages=USER, stop=["four"])
        newer = await srv.ai.chat.completions.create(model="fake", messages=USER, max_completion_tokens=3)
    assert cut.choices[0].message.content == "one two " and cut.choices[0].finish_reason == "length"
    assert stopped.choices[0].message.content == "one two three " and stopped.choices[0].finish_reason == "stop"
    assert newer.usage.completion_tokens == 3
    assert driver.jobs[-1].sampling.max_tokens == 3


async def test_sampling_options_reach_the_generation():
    driver = FakeDriver()
    async with server(driver) as srv:
        await srv.ai.chat.completions.create(model="fake", messages=USER, temperature=0.7, top_p=0.9, seed=7)
    assert (driver.jobs[-1].sampling.temperature, driver.jobs[-1].sampling.top_p) == (0.7, 0.9)
    assert driver.jobs[-1].sampling.seed == 7


async def test_response_format_becomes_the_json_schema_constraint():
    driver = FakeDriver(lambda prompt: '{"city": "Paris"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    async with server(driver) as srv:
        reply = await srv.ai.chat.completions.create(
            model="fake", messages=USER,
            response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
        await srv.ai.chat.completions.create(model="fake", messages=USER,
                                                  response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content) == {"city": "Paris"}
    # Closed to the keys it names (it leaves additionalProperties unsaid), and the model told them.
    assert driver.jobs[0].sampling.json_schema == {**schema, "additionalProperties": False}
    assert driver.jobs[0].messages[0].role == "system" and "- city: string" in driver.jobs[0].messages[0].content
    assert driver.jobs[1].sampling.json_schema == {"type": "object"}


async def test_the_conversation_reaches_the_model_with_its_roles():
    driver = FakeDriver()
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    async with server(driver) as srv:
        await srv.ai.chat.completions.create(model="fake", messages=messages)
    assert [(m.role, m.content) for m in driver.jobs[-1].messages] == [
        ("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "bye")]


# -- tools -----------------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now."}}


async def test_a_tool_call_comes_back_in_openai_form():
    driver = FakeDriver()
    driver.enqueue("get_weather", '{"city": "Paris"}')  # the choice, then the arguments
    async with server(driver) as srv:
        reply = await srv.ai.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, CLOCK])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")


async def test_a_tool_call_streams_as_a_delta():
    driver = FakeDriver()
    driver.enqueue("get_time", "{}")
    async with server(driver) as srv:
        stream = await srv.ai.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "time?"}], tools=[WEATHER, CLOCK], stream=True)
        chunks = [chunk async for chunk in stream]
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name) for c in calls] == [(0, "get_time")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_choice_none_answers_and_a_named_one_is_called():
    driver = FakeDriver()
    async with server(driver) as srv:
        none = await srv.ai.chat.completions.create(model="fake", messages=USER, tools=[WEATHER],
                                                         tool_choice="none")
        driver.enqueue('{"city": "Oslo"}')  # no choice is asked: only the arguments
        named = await srv.ai.chat.completions.create(
            model="fake", messages=USER, tools=[WEATHER, CLOCK],
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert none.choices[0].message.content == "echo: hello there"
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert not any(job.options for job in driver.jobs)  # neither asked the model to choose


async def test_required_never_answers_without_a_tool():
    driver = FakeDriver()
    driver.enqueue("none", "{}")  # "none" is not among the options when a tool is required
    async with server(driver) as srv:
        reply = await srv.ai.chat.completions.create(model="fake", messages=USER, tools=[WEATHER, CLOCK],
                                                          tool_choice="required")
    assert reply.choices[0].finish_reason == "tool_calls"
    assert "none" not in driver.jobs[0].options


async def test_a_tool_result_in_the_history_is_answered():
    driver = FakeDriver()
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    async with server(driver) as srv:
        reply = await srv.ai.chat.completions.create(model="fake", messages=history, tools=[WEATHER])
    assert reply.choices[0].finish_reason == "stop"
    roles = [(m.role, m.content) for m in driver.jobs[-1].messages]
    assert roles[1] == ("assistant", '{"tool": "get_weather", "arguments": {"city": "Paris"}}')
    assert roles[2] == ("tool", "sunny, 21 C")


# -- completions -------------------------------------------------------------------------------------
async def test_completions_of_several_prompts_are_served_together():
    driver = FakeDriver()
    async with server(driver) as srv:
        reply = await srv.ai.completions.create(model="fake", prompt=["a b", "c d"], max_tokens=8)
        stream = await srv.ai.completions.create(model="fake", prompt="e f", stream=True)
        pieces = [chunk.choices[0].text async for chunk in stream]
    assert [c.text for c in reply.choices] == ["echo: a b", "echo: c d"]
    assert reply.usage.completion_tokens == 6
    assert any(len(batch) == 2 for batch in driver.batches)
    assert "".join(pieces) == "echo: e f"


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": USER, "temperature": 9}, "temperature"),
    ({"messages": USER, "n": 2}, "n"),
    ({"messages": USER, "logprobs": True}, "logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
])
async def test_a_bad_field_is_a_400_naming_it(body, param):
    async with server() as srv:
        async with httpx.AsyncClient() as http:
            answer = await http.post(srv.url + "/v1/chat/completions", json={"model": "fake", **body})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


async def test_an_unknown_model_is_a_404():
    async with server() as srv:
        with pytest.raises(openai.NotFoundError) as caught:
            await srv.ai.chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.body["code"] == "model_not_found"


async def test_a_prompt_too_long_for_the_context_is_a_clear_400():
    async with server(FakeDriver(context_length=40)) as srv:
        with pytest.raises(openai.BadRequestError) as caught:
            await srv.ai.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x" * 200}])
        with pytest.raises(openai.BadRequestError):
            await srv.ai.chat.completions.create(model="fake", stream=True,
                                                      messages=[{"role": "user", "content": "x" * 200}])
    assert caught.value.body["code"] == "context_length_exceeded"
    assert "context window" in caught.value.body["message"]


async def test_a_full_queue_is_a_429_with_retry_after():
    driver = FakeDriver(lambda prompt: "w " * 40, step_delay_s=0.02, max_batch=1)
    async with server(driver, max_queue=1) as srv:
        async with httpx.AsyncClient(timeout=30) as http:
            async def ask() -> httpx.Response:
                return await http.post(srv.url + "/v1/chat/completions", json={"model": "fake", "messages": USER})

            answers: list[httpx.Response] = []

            async def record() -> None:
                answers.append(await ask())

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(record)
    refused = [a for a in answers if a.status_code == 429]
    assert refused and all(a.headers["retry-after"] == "1" for a in refused)
    assert refused[0].json()["error"]["type"] == "rate_limit_error"
    assert any(a.status_code == 200 for a in answers)


# -- each request is a process --------------------------------------------------------------------------
async def test_each_request_runs_as_a_child_process_of_the_daemon_and_shows_in_ps():
    driver = FakeDriver(lambda prompt: "w " * 30, step_delay_s=0.02)
    async with server(driver) as srv:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: srv.ai.chat.completions.create(model="fake", messages=USER))
            await until(lambda: any(p.name == "openai.chat" for p in srv.kernel.ps()), timeout=5)
            daemon = next(p for p in srv.kernel.ps() if p.name == "llmosd")
            request = next(p for p in srv.kernel.ps() if p.name == "openai.chat")
            assert request.ppid == daemon.pid and request.capabilities == frozenset({"model.generate"})
        # It ended and was reaped by the daemon; its chat is in the kernel's trace.
        assert request.pid not in srv.kernel.procs.live
        assert [(e.call, e.outcome) for e in srv.kernel.trace if e.pid == request.pid] == [("chat", "ok")]


async def test_a_client_that_leaves_mid_stream_kills_its_process():
    driver = FakeDriver(lambda prompt: "w " * 200, step_delay_s=0.02)
    async with server(driver) as srv:
        stream = await srv.ai.chat.completions.create(model="fake", messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
        request = next(p for p in srv.kernel.ps(include_ended=True) if p.name == "openai.chat")
        await until(lambda: request.pid not in srv.kernel.procs.live, timeout=5)
        daemon = next(p for p in srv.kernel.ps() if p.name == "llmosd")
        # The daemon killed it, and reaped it: no zombie is left behind.
        assert [e.outcome for e in srv.kernel.trace if e.pid == daemon.pid and e.call == "kill"] == ["ok"]
        assert [p.pid for p in srv.kernel.ps(include_ended=True)] == [daemon.pid]
        await until(lambda: not srv.kernel.generation.jobs, timeout=5)  # its generation stopped too


# -- authentication -----------------------------------------------------------------------------------
async def test_with_a_key_every_endpoint_needs_it_and_nothing_runs_without():
    driver = FakeDriver()
    async with server(driver, api_key="sekret") as srv:
        async with client(srv, "wrong") as wrong:
            with pytest.raises(openai.AuthenticationError):
                await wrong.chat.completions.create(model="fake", messages=USER)
        async with httpx.AsyncClient() as http:
            for path in ("/v1/models", "/health"):
                assert (await http.get(srv.url + path)).status_code == 401
            bare = await http.post(srv.url + "/v1/chat/completions", json={"model": "fake", "messages": USER})
            assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
            assert (await http.get(srv.url + "/v1/models", headers={"X-API-Key": "sekret"})).status_code == 200
        assert not driver.jobs and [p.name for p in srv.kernel.ps(include_ended=True)] == ["llmosd"]
        reply = await srv.ai.chat.completions.create(model="fake", messages=USER)
    assert reply.choices[0].message.content == "echo: hello there"


# -- the llmos extension: choose --------------------------------------------------------------------
async def test_choose_is_an_llmos_endpoint_that_runs_as_a_process():
    driver = FakeDriver()
    driver.enqueue("math")  # the FakeDriver scores highest the option its answer names
    async with server(driver) as srv:
        async with httpx.AsyncClient() as http:
            answer = await http.post(srv.url + "/v1/choose", json={
                "model": "fake", "question": "What is 2 + 2?", "options": ["poetry", "math", "travel"]})
            unknown = await http.post(srv.url + "/v1/choose", json={
                "model": "fake", "question": "q", "options": ["a", "b"], "temperature": 0})
            one = await http.post(srv.url + "/v1/choose", json={"model": "fake", "question": "q", "options": ["a"]})
    choice = answer.json()
    assert answer.status_code == 200 and (choice["option"], choice["index"]) == ("math", 1)
    assert abs(sum(choice["probabilities"]) - 1) < 1e-6 and choice["usage"]["prompt_tokens"] > 0
    assert [e.call for e in srv.kernel.trace if e.call == "choose"] == ["choose"]
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "temperature"
    assert one.status_code == 400 and one.json()["error"]["param"] == "options"
