"""The observability endpoints (/v1/stats, /v1/trace, /v1/events) over a real server, and the
dashboard (GET /) in a real headless Chromium, driven over the Chrome DevTools Protocol: it
shows a running process, the engine's figures, and a process's trace when its row is clicked."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from llmos.syscalls import KernelStatistics, ProcessInfo, ProcState
from llmos.server import auth
from llmos.testing import FakeDriver, free_port, served, stop, until, until_state

KEY = "llmos-test-key"
LONG_ANSWER = " ".join(f"w{i}" for i in range(3000))  # a minute of steps at 20 ms: killed long before


class PrefixCachingFakeDriver(FakeDriver):
    """A FakeDriver that reports prefix-cache counters as the transformers driver does
    (Engine.statistics: prefix_hit_tokens, prefix_miss_tokens)."""

    def statistics(self) -> dict[str, int]:
        return {"prefix_hit_tokens": 30, "prefix_miss_tokens": 90, "steps": len(self.batches)}


async def slow_writer(sys):  # noqa: ANN001
    await sys.sleep(0.01)
    await sys.getpid()
    return (await sys.chat("write at length", max_tokens=4000)).text


async def spawn_writer(srv: Any) -> int:
    """A process in a long generation: BLOCKED in `chat`, after a `sleep` and a `getpid`."""
    srv.kernel.driver.enqueue(LONG_ANSWER)
    info = await srv.kernel.spawn(slow_writer, name="slow-writer")
    await until_state(srv.kernel, info.pid, ProcState.BLOCKED)
    await until(lambda: srv.kernel.scheduler.statistics().running == 1)
    return info.pid


def sse_events(lines: list[str]) -> list[tuple[str, Any]]:
    """(event name, parsed data) of each complete event in `lines`."""
    found, name = [], "message"
    for line in lines:
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            found.append((name, json.loads(line.split(":", 1)[1])))
            name = "message"
    return found


# -- the endpoints ----------------------------------------------------------------------------------
async def test_stats_and_trace_report_the_kernel_through_the_daemons_syscalls() -> None:
    async with served(FakeDriver(step_delay_s=0.02)) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        pid = await spawn_writer(srv)
        stats = KernelStatistics.model_validate((await client.get("/v1/stats")).json())
        assert stats.scheduler.running == 1 and stats.generation is not None and stats.generation.model == "fake"
        assert stats.live_processes == 2  # llmosd and the writer

        answer = (await client.get("/v1/trace", params={"pid": pid})).json()
        assert answer["object"] == "list"
        assert [e["call"] for e in answer["data"]] == ["sleep", "getpid"]  # the chat is still in flight
        assert set(answer["data"][0]) == {"at", "pid", "call", "duration_s", "outcome"}
        assert answer["data"][0]["pid"] == pid and answer["data"][0]["outcome"] == "ok"

        everyone = (await client.get("/v1/trace", params={"limit": 2})).json()["data"]
        assert [(e["pid"], e["call"]) for e in everyone] == [(1, "stats"), (1, "trace")]  # llmosd's, for us
        refused = await client.get("/v1/trace", params={"limit": 0})
        assert refused.status_code == 400 and "limit" in refused.json()["error"]["message"]
        srv.kernel.kill(pid)


async def test_events_stream_snapshots_with_the_processes_and_stop_when_the_client_leaves() -> None:
    async with served(PrefixCachingFakeDriver(step_delay_s=0.02)) as srv:
        pid = await spawn_writer(srv)
        daemon = srv.kernel.procs.get(1)
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            lines: list[str] = []
            async with client.stream("GET", "/v1/events", params={"interval": 0.1}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    lines.append(line)
                    if len(sse_events(lines)) == 3:
                        break
            stats_calls = daemon.stats.syscalls

        names, snaps = zip(*sse_events(lines))
        assert set(names) == {"snapshot"}
        last = snaps[-1]
        assert last["model"] == "fake" and last["daemon_pid"] == 1 and last["uptime_s"] > 0
        assert last["prefix_cache_hit_rate"] == pytest.approx(0.25)
        assert last["stats"]["scheduler"]["running"] == 1
        assert snaps[0]["at"] < snaps[1]["at"] < snaps[2]["at"]
        [writer] = [p for p in last["processes"] if p["pid"] == pid]
        assert (writer["name"], writer["state_name"], writer["stats"]["syscalls"]) == ("slow-writer", "BLOCKED", 3)
        assert ProcessInfo.model_validate(writer).state is ProcState.BLOCKED  # the ABI's shape, and more
        assert writer["runtime_s"] > 0 and writer["tokens"] == 0  # tokens count when the generation ends

        # The stream ended with the client: llmosd makes no more stats/ps calls for it.
        await anyio.sleep(0.5)  # five intervals: a stream still running would have made ten calls
        assert daemon.stats.syscalls - stats_calls <= 4  # at most the frames in flight as it left (2 calls each)
        srv.kernel.kill(pid)


async def test_the_page_needs_the_key_and_the_key_link_sets_a_strict_httponly_cookie() -> None:
    async with served(api_key=KEY) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        for path in ("/", "/v1/stats", "/v1/events", "/static/dashboard.js"):
            assert (await client.get(path)).status_code == 401, path
        assert (await client.get("/", params={"key": "not-the-key"})).status_code == 401
        assert (await client.get("/v1/stats", params={"key": KEY})).status_code == 401  # only / takes it

        login = await client.get("/", params={"key": KEY})
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        value = cookie.partition(";")[0].removeprefix("llmos_key=")
        assert KEY not in cookie and value == auth.cookie_value(KEY)  # never the key itself
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        client.cookies.set("llmos_key", KEY)
        assert (await client.get("/")).status_code == 401  # the key as a cookie is not the cookie
        client.cookies.set("llmos_key", value)
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (await client.get("/v1/stats")).status_code == 200


async def test_without_a_key_the_page_and_its_files_are_served() -> None:
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and '<script src="/static/dashboard.js"' in page.text
        script = await client.get("/static/dashboard.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "EventSource" in script.text
        assert (await client.get("/static/dashboard.css")).headers["content-type"].startswith("text/css")
        assert (await client.get("/static/index.html")).status_code == 404  # only the listed files
        assert (await client.get("/static/..%2Fapp.py")).status_code == 404
        assert (await client.get("/", params={"key": "x"}, follow_redirects=True)).status_code == 200


# -- a real browser ---------------------------------------------------------------------------------
def find_chromium() -> str | None:
    named = os.environ.get("LLMOS_TEST_CHROMIUM")
    if named:
        return named
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Page:
    """One browser tab over the Chrome DevTools Protocol: commands in order, events ignored."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        with anyio.fail_after(30):
            while True:
                message = json.loads(await self.socket.recv())
                if message.get("id") == call_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """The value of `expression` once it is truthy (the page may be loading meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:  # the page was between documents
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {expression}; its body: "
                                   f"{await self.evaluate('document.body && document.body.innerText')}")
            await anyio.sleep(0.05)

    async def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        where = await self.wait_for(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                    "?.getBoundingClientRect(); return r && {x: r.x + r.width / 2, "
                                    "y: r.y + r.height / 2}; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=where["x"], y=where["y"], button="left",
                            clickCount=1)

    def text(self, selector: str) -> Any:
        return self.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent")


@asynccontextmanager
async def headless_chromium(folder: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one tab, on a free loopback debugging port."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium to drive: `apt-get install chromium` (Debian), or set LLMOS_TEST_CHROMIUM")
    port = free_port()
    flags = ["--headless", f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={folder}", "--no-first-run", "--no-default-browser-check", "--disable-gpu",
             "--disable-dev-shm-usage", "--disable-extensions", "--window-size=1280,900"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    log = open(folder.parent / "chromium.log", "wb")  # noqa: SIM115
    browser = subprocess.Popen([executable, *flags, "about:blank"], stdout=log, stderr=subprocess.STDOUT)
    try:
        socket_url = await _page_socket(port, browser)
        async with connect(socket_url, max_size=None) as socket:
            yield Page(socket)
    finally:
        stop(browser, timeout=10)
        log.close()


async def _page_socket(port: int, browser: subprocess.Popen) -> str:
    """The DevTools websocket of the browser's first tab, once it listens."""
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while True:
            try:
                targets = (await client.get("/json/list")).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except httpx.HTTPError:
                pass
            if browser.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not open its debugging port {port} (exit code {browser.poll()})")
            await anyio.sleep(0.1)


# Blue pixels of the tokens/s line (#2f7de1) on the chart's canvas.
CHART_LINE_PIXELS = """(() => { const c = document.getElementById('tps-chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 90 && d[i + 2] > 180 && d[i + 3] > 200) n++;
  return n; })()"""


async def test_the_dashboard_shows_a_running_process_the_engine_and_on_a_click_its_trace(tmp_path: Path) -> None:
    async with served(PrefixCachingFakeDriver(step_delay_s=0.02), api_key=KEY) as srv, \
            headless_chromium(tmp_path / "chromium") as page:
        pid = await spawn_writer(srv)
        await page.send("Page.enable")
        await page.send("Page.navigate", url=f"{srv.url}/?key={KEY}")  # sets the cookie, then on to /
        row = f'#procs tr[data-pid="{pid}"]'
        await page.wait_for(f"location.pathname === '/' && !!document.querySelector('{row}')")

        assert await page.text(f"{row} td:nth-child(2)") == "slow-writer"
        assert await page.text(f"{row} td:nth-child(3)") == "BLOCKED"
        assert await page.text(f"{row} td:nth-child(6)") == "3"  # sleep, getpid, and the chat in flight
        assert await page.text("#model") == "fake"
        assert await page.text("#connection") == "live"
        assert await page.text("#running") == "1" and await page.text("#waiting") == "0"
        assert await page.text("#hit-rate") == "25.0%"
        assert await page.text("#preemptions") == "0"
        assert await page.text('#procs tr[data-pid="1"] td:nth-child(2)') == "llmosd"
        await page.wait_for("parseFloat(document.getElementById('tps').textContent) > 0")
        await page.wait_for(f"{CHART_LINE_PIXELS} > 20")  # the line, once two snapshots came
        assert await page.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read the key

        await page.click(row)
        await page.wait_for(f"document.getElementById('trace-panel').dataset.pid === '{pid}'")
        calls = await page.evaluate("[...document.querySelectorAll('#trace tbody tr td:nth-child(2)')]"
                                    ".map(td => td.textContent)")
        assert calls == ["getpid", "sleep"]  # newest first
        assert f"pid {pid} (slow-writer)" in await page.text("#trace-title")
        assert "selected" in await page.evaluate(f"document.querySelector('{row}').className")

        srv.kernel.kill(pid, "test over")
        await page.wait_for(f"document.querySelector('{row} td:nth-child(3)')?.textContent === 'KILLED'")


@pytest.mark.model
async def test_the_real_engine_reports_its_prefix_cache_hit_rate() -> None:
    system = "You are a terse assistant. " * 20  # a long shared prefix, cached after the first request
    async with served(model="smollm2") as srv, httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
        for question in ("Name a colour.", "Name a fruit."):
            answer = await client.post("/v1/chat/completions", json={
                "model": "smollm2", "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]})
            assert answer.status_code == 200, answer.text
        lines: list[str] = []
        async with client.stream("GET", "/v1/events") as stream:
            async for line in stream.aiter_lines():
                lines.append(line)
                if sse_events(lines):
                    break
    [(_, snap)] = sse_events(lines)
    counters = snap["stats"]["generation"]["driver"]
    hits, misses = counters["prefix_hit_tokens"], counters["prefix_miss_tokens"]
    assert hits > 0 and snap["prefix_cache_hit_rate"] == pytest.approx(hits / (hits + misses))
