"""The model library through the daemon: /v1/library and /v1/default-model over a real
server on loopback (uvicorn in the test's loop, over the FakeDriver), by raw HTTP, by the
daemon's client, and by `llmos models` finding the daemon at LLMOS_URL; then on the real
model, a derived model made through a real `llmos serve --model smollm2` answers at once."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import openai
import pytest
from typer.testing import CliRunner

from llmos import library
from llmos.apps.cli import app as cli
from llmos.server.client import DaemonClient
from llmos.syscalls import InvalidRequest, NoSuchModel
from llmos.testing import FakeDriver, library_folder, served

KEY = "library-test-key"



async def test_the_library_round_trip_over_http(llmos_home, tmp_path):
    folder = library_folder(tmp_path / "imported", 4096)
    async with served(FakeDriver(name="smollm2"), api_key=KEY) as srv, \
            httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        assert (await http.post("/v1/library/import", json={"path": str(folder), "name": "mine"})).status_code == 201
        created = await http.post("/v1/library", json={"name": "pirate", "base": "mine", "system": "Arr.",
                                                       "params": {"temperature": 0.2}})
        assert created.status_code == 201 and created.json() == {"ok": True, "name": "pirate"}
        assert (await http.post("/v1/library/pirate/copy", json={"destination": "pirate2"})).status_code == 201
        assert (await http.put("/v1/default-model", json={"name": "pirate"})).json() == {"default": "pirate"}
        rows = {row["name"]: row for row in (await http.get("/v1/library")).json()["data"]}
        card = (await http.get("/v1/library/pirate")).json()
        removed = (await http.delete("/v1/library/pirate2")).json()
        default = (await http.get("/v1/default-model")).json()
        remote = await http.post("/v1/library/remote", json={"name": "far", "url": "http://127.0.0.1:9/v1",
                                                               "model_id": "m"})
    assert rows["smollm2"]["loaded"] == "yes" and rows["mine"]["loaded"] == "no"
    assert rows["pirate"]["default"] and rows["pirate"]["kind"] == "derived" and rows["mine"]["context_length"] == "4096"
    assert card["system"] == "Arr." and card["params"] == {"temperature": 0.2}
    assert removed == {"ok": True, "message": "removed pirate2"} and default == {"default": "pirate"}
    assert remote.status_code == 201
    assert set(library.read_library(llmos_home).models) == {"mine", "pirate", "far"}  # the daemon's LLMOS_HOME


async def test_mistakes_are_errors_in_the_apis_shape(llmos_home):
    async with served(FakeDriver(name="smollm2")) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        unknown = await http.get("/v1/library/nope")
        bad_name = await http.post("/v1/library", json={"name": "bad name", "base": "smollm2"})
        extra = await http.post("/v1/library", json={"name": "x", "base": "smollm2", "colour": "red"})
        builtin = await http.delete("/v1/library/smollm2")
        not_pulled = await http.post("/v1/library/pull", json={"name": "no-such-package"})
    assert unknown.status_code == 404 and unknown.json()["error"]["llmos_error"] == "NoSuchModel"
    assert "'nope'" in unknown.json()["error"]["message"]
    assert bad_name.status_code == 400 and "not a model name" in bad_name.json()["error"]["message"]
    assert extra.status_code == 400 and "colour" in extra.json()["error"]["message"]
    assert builtin.status_code == 400 and "built-in model" in builtin.json()["error"]["message"]
    assert not_pulled.status_code == 404
    assert library.read_library(llmos_home).models == {}


async def test_the_client_raises_the_syscall_errors(llmos_home):
    async with served(FakeDriver(name="smollm2")) as srv, DaemonClient(srv.url, None) as client:
        await client.create_model("quiet", "smollm2", params={"max_tokens": 8})
        assert [row.name for row in await client.models()][:1] == ["smollm2"]
        assert (await client.show_model("quiet")).params == {"max_tokens": 8}
        with pytest.raises(NoSuchModel):
            await client.copy_model("nope", "other")
        with pytest.raises(InvalidRequest, match="already"):
            await client.create_model("quiet", "smollm2")
        assert await client.set_default_model(None) == "smollm2"


async def test_llmos_models_uses_the_daemon_it_finds(llmos_home, tmp_path, monkeypatch):
    """`llmos models` at LLMOS_URL acts on the daemon's LLMOS_HOME, which here is the test's
    own too; `--local` reads this machine's directly (and knows nothing of what is loaded)."""
    runner = CliRunner()

    def models(*args: str):  # noqa: ANN202
        return runner.invoke(cli, ["models", *args], env={"COLUMNS": "200"})

    async with served(FakeDriver(name="smollm2")) as srv:
        monkeypatch.setenv("LLMOS_URL", srv.url)
        created = await anyio.to_thread.run_sync(lambda: models("create", "terse", "--from", "smollm2",
                                                                "--system", "Be brief."))
        listed = await anyio.to_thread.run_sync(lambda: models("list"))
        local = await anyio.to_thread.run_sync(lambda: models("--local", "list"))
        shown = await anyio.to_thread.run_sync(lambda: models("show", "terse"))
        failed = await anyio.to_thread.run_sync(lambda: models("rm", "nope"))
    assert created.exit_code == 0 and "created terse from smollm2" in created.output
    line = next(line for line in listed.output.splitlines() if line.startswith("│ smollm2"))
    assert line.rstrip(" │").endswith("yes")  # loaded: the daemon's kernel says
    assert "terse" in listed.output and "terse" in local.output
    assert next(line for line in local.output.splitlines() if line.startswith("│ smollm2")).rstrip(" │").endswith("-")
    assert "Be brief." in shown.output
    assert failed.exit_code == 1 and "error:" in failed.output and "'nope'" in failed.output


# -- on the real model ---------------------------------------------------------------------------------
@pytest.mark.model
async def test_a_model_created_through_the_daemon_answers_at_once(smollm2_server, session_llmos_home):
    """Create a derived model of SmolLM2 in a running daemon; its OpenAI API serves it without
    a restart, with its system prompt, and the library lists it as loaded once used."""
    async with DaemonClient(smollm2_server, None) as client:
        await client.create_model("smol-capitals", "smollm2", system="Answer with the city's name only.",
                                  params={"temperature": 0, "max_tokens": 8})
        try:
            async with openai.AsyncOpenAI(base_url=smollm2_server + "/v1", api_key="none", max_retries=0) as ai:
                reply = await ai.chat.completions.create(
                    model="smol-capitals", messages=[{"role": "user", "content": "What is the capital of France?"}])
            rows = {row.name: row for row in await client.models()}
        finally:
            await client.remove_model("smol-capitals")
    assert "Paris" in reply.choices[0].message.content and reply.usage.completion_tokens <= 8
    assert rows["smol-capitals"].loaded == "yes" and rows["smollm2"].loaded == "yes"
    assert library.read_library(session_llmos_home).find("smol-capitals") is None
