"""The OpenAI-compatible API on the real model: a real `llmos serve --model smollm2` process
on loopback, used by the official `openai` client and by LangChain's OpenAI integration,
unchanged."""

from __future__ import annotations

import json

import anyio
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.model

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


@pytest.fixture
async def ai(smollm2_server: str):
    async with openai.AsyncOpenAI(base_url=smollm2_server + "/v1", api_key="none", max_retries=0) as client:
        yield client


async def test_chat_answers_and_counts_its_tokens(ai):
    reply = await ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=16,
                                             messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content
    assert 0 < reply.usage.completion_tokens <= 16 and reply.usage.prompt_tokens > 5


async def test_streamed_text_equals_the_whole_reply(ai):
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = await ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=12, messages=messages)
    stream = await ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=12, messages=messages,
                                              stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


async def test_a_json_schema_reply_always_parses(ai):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    for who in ("a pirate", "a teacher", "a cat"):
        reply = await ai.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=48,
            messages=[{"role": "user", "content": f"Invent {who}: a name and an age."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
        person = json.loads(reply.choices[0].message.content)
        assert set(person) == {"name", "age"} and isinstance(person["age"], int)


async def test_the_model_calls_the_tool_that_fits(ai):
    reply = await ai.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=48, tools=[WEATHER, CALCULATOR],
        messages=[{"role": "user", "content": "What's the weather like in Paris today?"}])
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert reply.choices[0].finish_reason == "tool_calls"


async def test_concurrent_clients_all_get_answers(ai):
    answers: dict[int, str] = {}

    async def ask(i: int) -> None:
        reply = await ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=8,
                                                 messages=[{"role": "user", "content": f"Count to {i + 2}."}])
        answers[i] = reply.choices[0].message.content

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(ask, i)
    assert len(answers) == 4 and all(answers.values())


async def test_embeddings_place_related_sentences_close(ai):
    texts = ["The cat sat on the mat.", "A kitten is resting on a rug.", "Quarterly revenue rose by 4%."]
    floats = await ai.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    packed = await ai.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client asks for base64
    vectors = np.array([d.embedding for d in floats.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(vectors, np.array([d.embedding for d in packed.data]), atol=1e-6)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert floats.usage.prompt_tokens > 10


def test_langchain_chat_openai_works_unchanged(smollm2_server: str):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=smollm2_server + "/v1", api_key="none", model="smollm2", temperature=0,
                      max_tokens=12, max_retries=0)
    answer = chat.invoke("What is the capital of France?")
    assert "Paris" in answer.content and answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in chat.stream("What is the capital of France?"))
    assert streamed == answer.content
    with_tools = chat.bind_tools([WEATHER, CALCULATOR]).invoke("What's the weather like in Paris today?")
    assert [call["name"] for call in with_tools.tool_calls] == ["get_weather"]


async def test_choose_over_http_routes_to_the_fitting_specialist(smollm2_server: str):
    import httpx

    async with httpx.AsyncClient(base_url=smollm2_server, timeout=60) as http:
        answer = await http.post("/v1/choose", json={
            "model": "smollm2", "question": "Translate 'good morning' into French.",
            "options": ["translator", "mathematician", "poet"],
            "descriptions": ["translates text between languages", "solves arithmetic", "writes poems"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["option"] == "translator"
    assert len(answer.json()["logprobs"]) == 3 and len(answer.json()["similarities"]) == 3


async def test_a_fine_tune_in_the_library_is_served_by_name_beside_the_base(ai, smollm2, session_llmos_home,
                                                                             tmp_path, monkeypatch):
    from llmos import library
    from llmos.testing import random_lora

    monkeypatch.setenv("LLMOS_HOME", str(session_llmos_home))  # the daemon's library
    library.create("smollm2-shifted", "smollm2",
                   adapter=random_lora(smollm2.driver.hf_model, tmp_path / "shifted", seed=5, b_std=0.2))
    try:
        listed = [m.id for m in (await ai.models.list()).data]
        assert "smollm2-shifted" in listed and "smollm2" in listed
        messages = [{"role": "user", "content": "Name three colours."}]
        base, tuned = [await ai.chat.completions.create(model=name, temperature=0, max_tokens=12, messages=messages)
                       for name in ("smollm2", "smollm2-shifted")]
        assert tuned.model == "smollm2-shifted" and tuned.choices[0].message.content != base.choices[0].message.content
        stream = await ai.chat.completions.create(model="smollm2-shifted", temperature=0, max_tokens=12,
                                                  messages=messages, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == \
            tuned.choices[0].message.content
    finally:
        library.remove("smollm2-shifted")
    with pytest.raises(openai.NotFoundError):
        await ai.chat.completions.create(model="smollm2-shifted", max_tokens=4, messages=messages)
