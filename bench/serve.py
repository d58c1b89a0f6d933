"""Serving over HTTP: `llmos serve` against llama.cpp's OpenAI server on the same GGUF.

All in one run, on the real SmolLM2-135M-Instruct, both servers on loopback, pinned to the
same CPUs with the same thread count:
  (1) load: N simulated users (N = 1, 16, 64), each its own HTTP client, all started
      together, each sending streamed chat completions one after another (greedy,
      max_tokens 64, distinct prompts of about 45 tokens). Per N and server: aggregate
      completion tokens/s, time to first token p50/p95, latency; the runs alternate
      llmos, llama.cpp, llmos, ... for --repeat rounds, and medians are reported with the
      ratio llmos / llama.cpp (target: >= 1.5 at 16 users).
  (2) HTTP overhead: the same load at 16 users driven on the engine in this process (a
      kernel, one process per user calling `sys.chat`, as bench/generate.py's "llmos")
      against the same load through `llmos serve`, alternating (target: < 10%).
  (3) CLI latency: `llmos run generate "hi" --max-tokens 8`, wall time of the command,
      in-process (LLMOS_URL at a dead port) and through the daemon (LLMOS_URL at it).

llama.cpp's server is llama-cpp-python's (`python -m llama_cpp.server`): it has no parallel
slots or continuous batching (one model, requests served one at a time under a lock), so
its best setting for concurrent clients is `--interrupt_requests False` (by default a
queued request cuts the streaming one short) with n_threads = n_threads_batch = threads.
Tokens are counted from the stream's usage (llmos) or one per content chunk (llama.cpp
streams a chunk per token; the warm-up checks this against its non-streamed usage). Only
one thing runs at a time: the idle servers' CPU use during the others' runs is recorded.

    .venv/bin/python bench/serve.py [--ns 1 16 64] [--repeat 3] [--threads 2] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from common import llama_cpp_extra_buffers_crash, machine, questions, summarize, use_model_cache

RESULTS = Path(__file__).parent / "results" / "serve.json"
CLI_COMMAND = ["run", "generate", "hi", "--max-tokens", "8"]
VERSIONS = ("llmos", "torch", "transformers", "llama_cpp_python", "fastapi", "uvicorn", "httpx")


# -- the servers -------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str
    model: str  # the model id its requests name
    process: subprocess.Popen
    log: Path

    def cpu_seconds(self) -> float:
        """CPU time the server's process has used so far (user + system)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clean_environ() -> dict[str, str]:
    """This environment without a daemon's address or API key: the servers run keyless on
    loopback, and a command finds only the daemon the bench points it at."""
    return {k: v for k, v in os.environ.items() if k not in ("LLMOS_URL", "LLMOS_API_KEY")}


def pinned(cpus: list[int]) -> Any:
    """A preexec_fn that keeps a server on `cpus`: llmos takes its torch thread count from its
    CPU affinity, so pinning both servers to the same cores gives both the same threads."""
    return lambda: os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def started(name: str, command: list[str], port: int, cpus: list[int], health: str,
            timeout: float = 180.0) -> Iterator[Server]:
    """Run `command` (a server on 127.0.0.1:port) until the block ends; wait until GET
    `health` answers 200. Its output goes to a log beside LLMOS_HOME."""
    from llmos.home import llmos_home

    log = llmos_home() / f"{name.replace(' ', '-')}-{port}.log"
    env = {**clean_environ(), "OMP_NUM_THREADS": str(len(cpus))}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=pinned(cpus))
    url = f"http://127.0.0.1:{port}"
    try:
        model = wait_healthy(url, health, process, timeout, name, log)
        yield Server(name, url, model, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_healthy(url: str, health: str, process: subprocess.Popen, timeout: float, name: str, log: Path) -> str:
    """Poll `health` until it answers; return the first model id of /v1/models."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {process.returncode}" if process.returncode is not None else f"not up in {timeout:.0f} s"
            raise RuntimeError(f"{name} {why}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["id"]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def llmos_command(port: int) -> list[str]:
    return [sys.executable, "-m", "llmos.apps.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--model", "smollm2"]


def llama_cpp_command(port: int, gguf: Path, threads: int, n_ctx: int, fixes: list[str]) -> list[str]:
    """llama_cpp.server through bench/llama_cpp_server.py, with `fixes` (its flags
    --no-extra-buffers, --one-model-thread: see there)."""
    return [sys.executable, str(Path(__file__).with_name("llama_cpp_server.py")), *fixes,
            "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
            "--interrupt_requests", "False", "--verbose", "False"]


# -- the load ------------------------------------------------------------------------------------------
@dataclass
class Completion:
    ttft: float | None
    latency: float
    tokens: int
    counted_by: str  # "usage" or "chunks"
    finish: str | None
    chunks: int


class LoadError(RuntimeError):
    pass


def request_body(model: str, question: str, max_tokens: int, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}],
                            "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
    if stream:  # llmos sends a last chunk with the usage; llama-cpp-python ignores the field
        body["stream_options"] = {"include_usage": True}
    return body


async def streamed(client: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int) -> Completion:
    """One streamed chat completion: its first token's time, duration and token count."""
    sent = time.perf_counter()
    first, chunks, usage, finish = None, 0, None, None
    async with client.stream("POST", f"{url}/v1/chat/completions",
                             json=request_body(model, question, max_tokens)) as response:
        if response.status_code != 200:
            raise LoadError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators and keep-alive comments
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise LoadError(f"error mid-stream: {chunk['error']}")
            usage = (chunk.get("usage") or {}).get("completion_tokens", usage)
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    chunks += 1
                finish = choice.get("finish_reason") or finish
    done = time.perf_counter()
    return Completion(None if first is None else first - sent, done - sent, chunks if usage is None else usage,
                      "chunks" if usage is None else "usage", finish, chunks)


@dataclass
class LoadRun:
    completions: list[Completion] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def user(url: str, model: str, asks: list[str], max_tokens: int, run: LoadRun, timeout: float) -> None:
    """One simulated user: its own HTTP client, its questions one after another."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0)) as client:
        for question in asks:
            try:
                run.completions.append(await streamed(client, url, model, question, max_tokens))
            except (LoadError, httpx.HTTPError) as exc:
                run.errors.append(f"{type(exc).__name__}: {exc}"[:300])


def per_user(n: int, per_client: int, min_requests: int, first: int) -> list[list[str]]:
    """The questions of n users (each asks the same number, at least min_requests in all),
    numbered from `first` so that no run repeats another's prompts."""
    k = max(per_client, math.ceil(min_requests / n))
    qs = questions(n * k, first)
    return [qs[i * k:(i + 1) * k] for i in range(n)]


def http_load(server: Server, users: list[list[str]], max_tokens: int, time_limit: float) -> dict[str, Any]:
    """All users at once against `server`, bounded by `time_limit` seconds."""
    run = LoadRun()

    async def main() -> float:
        started_at = time.perf_counter()
        with anyio.move_on_after(time_limit):
            async with anyio.create_task_group() as tg:
                for asks in users:
                    tg.start_soon(user, server.url, server.model, asks, max_tokens, run, time_limit)
        return time.perf_counter() - started_at

    wall = anyio.run(main)
    return load_summary(run, sum(map(len, users)), wall, time_limit)


def load_summary(run: LoadRun, requests: int, wall: float, time_limit: float) -> dict[str, Any]:
    done = run.completions
    timed_out = len(done) + len(run.errors) < requests
    out: dict[str, Any] = {"requests": requests, "completed": len(done), "errors": run.errors[:5],
                           "error_count": len(run.errors), "timed_out": timed_out, "time_limit_s": time_limit}
    if not done:
        return out | {"tokens": 0, "wall_s": wall, "tokens_per_s": 0.0}
    ttfts = [c.ttft if c.ttft is not None else c.latency for c in done]
    return out | summarize(ttfts, [c.latency for c in done], sum(c.tokens for c in done), wall) | {
        "tokens_per_request_mean": statistics.mean(c.tokens for c in done),
        "counted_by": sorted({c.counted_by for c in done}), "finish_reasons": dict(Counter(c.finish for c in done))}


# -- the same load in this process: a kernel, one process per user --------------------------------
def in_process_load(model: Any, users: list[list[str]], max_tokens: int, time_limit: float) -> dict[str, Any]:
    """What `llmos serve` does for these users, without HTTP: a kernel (booted as the daemon
    boots it), and per user a process calling `sys.chat` for each question in turn."""
    import llmos

    run = LoadRun()

    async def client(sys: Any, asks: list[str]) -> None:
        for question in asks:
            sent = time.perf_counter()
            stream = await sys.chat(question, stream=True, max_tokens=max_tokens, temperature=0.0)
            first, chunks = None, 0
            async for piece in stream:
                if piece:
                    first = first or time.perf_counter()
                    chunks += 1
            run.completions.append(Completion(None if first is None else first - sent, time.perf_counter() - sent,
                                              stream.reply.completion_tokens, "usage", stream.reply.finish_reason,
                                              chunks))

    async def main() -> float:
        async with llmos.boot(model) as kernel:
            started_at = time.perf_counter()
            with anyio.move_on_after(time_limit):
                pids = [(await kernel.spawn(client, asks)).pid for asks in users]
                for pid in pids:
                    status = await kernel.wait(pid)
                    if not status.ok:
                        run.errors.append(f"{status.state.name}: {status.reason}"[:300])
            return time.perf_counter() - started_at

    wall = anyio.run(main)
    return load_summary(run, sum(map(len, users)), wall, time_limit)


# -- measuring, alternating ------------------------------------------------------------------------
class Idle:
    """The CPU time servers use while another is being measured (they should be idle)."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.wall_s: dict[str, float] = {}

    @contextlib.contextmanager
    def watching(self, idle: list[Server]) -> Iterator[None]:
        before = {s.name: s.cpu_seconds() for s in idle}
        began = time.perf_counter()
        yield
        took = time.perf_counter() - began
        for s in idle:
            self.cpu_s[s.name] = self.cpu_s.get(s.name, 0.0) + s.cpu_seconds() - before[s.name]
            self.wall_s[s.name] = self.wall_s.get(s.name, 0.0) + took

    def report(self) -> dict[str, Any]:
        return {name: {"cpu_s": cpu, "wall_s": self.wall_s[name], "share_of_a_core": cpu / self.wall_s[name]}
                for name, cpu in self.cpu_s.items()}


def progress(what: str, run: dict[str, Any]) -> None:
    errors = f", {run['error_count']} errors" if run["error_count"] else ""
    late = ", timed out" if run["timed_out"] else ""
    print(f"  {what}: {run.get('tokens_per_s', 0):.1f} tok/s{errors}{late}", file=sys.stderr, flush=True)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs, and every run beside them."""
    keys = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s", "tokens_per_request_mean")
    out = {k: statistics.median(r[k] for r in runs if k in r) for k in keys if any(k in r for r in runs)}
    return out | {"tokens_per_s_runs": [r["tokens_per_s"] for r in runs], "runs": runs}


def ratios(ours: dict[str, Any], theirs: dict[str, Any], paired: list[tuple[dict, dict]]) -> dict[str, Any]:
    """llmos / the other, of the medians; and per round (runs next to each other in time)."""
    out: dict[str, Any] = {}
    for key in ("tokens_per_s", "ttft_p50_s", "ttft_p95_s"):
        if ours.get(key) and theirs.get(key):
            out[key] = ours[key] / theirs[key]
    out["tokens_per_s_per_round"] = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in paired if b["tokens_per_s"]]
    return out


def server_load(llmos_server: Server, llama: Server, ns: list[int], args: argparse.Namespace,
                idle: Idle) -> dict[str, Any]:
    """(1): per N, llmos and llama.cpp in turn, --repeat rounds."""
    out: dict[str, Any] = {}
    first = 1000  # the warm-up used the first questions
    for n in ns:
        runs: dict[str, list[dict[str, Any]]] = {"llmos_serve": [], "llama_cpp_server": []}
        for _ in range(args.repeat):
            users = per_user(n, args.per_client, args.min_requests, first)
            first += sum(map(len, users))
            for key, server, other in (("llmos_serve", llmos_server, llama), ("llama_cpp_server", llama, llmos_server)):
                with idle.watching([other]):
                    runs[key].append(http_load(server, users, args.max_tokens, args.time_limit))
                progress(f"N={n} {server.name}", runs[key][-1])
        row: dict[str, Any] = {key: medians(r) for key, r in runs.items()}
        row["llmos_over_llama_cpp"] = ratios(row["llmos_serve"], row["llama_cpp_server"],
                                             list(zip(runs["llmos_serve"], runs["llama_cpp_server"])))
        row["requests_per_run"] = runs["llmos_serve"][0]["requests"]
        out[str(n)] = row
    return out


def http_overhead(llmos_server: Server, args: argparse.Namespace, idle: Idle, first: int) -> dict[str, Any]:
    """(2): the same users in this process and through `llmos serve`, alternating."""
    import torch

    import llmos
    from llmos.drivers import compute

    model = llmos.load_model("smollm2")
    compute.call(torch.set_num_threads, args.threads)  # loading sets the default again
    in_process_load(model, per_user(2, 1, 2, 0), args.max_tokens, args.time_limit)  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {"in_process": [], "llmos_serve": []}
    for _ in range(args.repeat):
        users = per_user(args.overhead_clients, args.per_client, args.min_requests, first)
        first += sum(map(len, users))
        with idle.watching([llmos_server]):
            runs["in_process"].append(in_process_load(model, users, args.max_tokens, args.time_limit))
        progress(f"{args.overhead_clients} users in process", runs["in_process"][-1])
        runs["llmos_serve"].append(http_load(llmos_server, users, args.max_tokens, args.time_limit))
        progress(f"{args.overhead_clients} users through llmos serve", runs["llmos_serve"][-1])
    row: dict[str, Any] = {key: medians(r) for key, r in runs.items()}
    row["serve_over_in_process"] = ratios(row["llmos_serve"], row["in_process"],
                                          list(zip(runs["llmos_serve"], runs["in_process"])))
    row["overhead"] = 1 - row["serve_over_in_process"]["tokens_per_s"]
    row["users"] = args.overhead_clients
    row["dtype"] = str(model.driver.model.dtype).removeprefix("torch.")
    row["torch_threads"] = compute.call(torch.get_num_threads)
    return row


# -- the CLI ---------------------------------------------------------------------------------------------
def llmos_cli() -> list[str]:
    script = Path(sys.executable).with_name("llmos")
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmos.apps.cli"]


def cli_once(env: dict[str, str], timeout: float) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        done = subprocess.run([*llmos_cli(), *CLI_COMMAND], env={**clean_environ(), **env}, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"wall_s": time.perf_counter() - began, "returncode": None, "error": f"timed out after {timeout} s"}
    out = {"wall_s": time.perf_counter() - began, "returncode": done.returncode, "stdout": done.stdout[-200:]}
    return out if done.returncode == 0 else out | {"error": done.stderr[-600:]}


def model_less_home() -> Path:
    """An LLMOS_HOME where loading the model fails at once (its cached config.json is not
    JSON, so llmos neither converts the GGUF again nor loads weights): a command that
    succeeds there did not load the model itself, so it used the daemon."""
    home = Path(tempfile.mkdtemp(prefix="llmos-bench-serve-client-"))
    cache = home / "models" / "smollm2"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("not JSON: this home has no model, on purpose\n")
    (cache / "model.safetensors").write_bytes(b"")
    return home


def cli_latency(llmos_server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """(3): `llmos run generate "hi" --max-tokens 8`, in-process and through the daemon, in turn."""
    from llmos.testing import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client_home = model_less_home()
    runs: dict[str, list[dict[str, Any]]] = {"in_process": [], "daemon": []}
    try:
        for _ in range(args.repeat):
            runs["in_process"].append(cli_once({"LLMOS_URL": dead}, args.time_limit))
            runs["daemon"].append(cli_once({"LLMOS_URL": llmos_server.url, "LLMOS_HOME": str(client_home)},
                                           args.time_limit))
    finally:
        shutil.rmtree(client_home, ignore_errors=True)
    out: dict[str, Any] = {"command": f"llmos {' '.join(CLI_COMMAND)}", "runs": runs}
    for mode, rs in runs.items():
        ok = [r["wall_s"] for r in rs if r["returncode"] == 0]
        out[mode] = ({"wall_s": statistics.median(ok)} if len(ok) == len(rs)
                     else {"unavailable": "client mode not available" if mode == "daemon" else "failed",
                           "error": next(r.get("error") for r in rs if r["returncode"] != 0)})
    if "wall_s" in out["in_process"] and "wall_s" in out["daemon"]:
        out["daemon_over_in_process"] = out["daemon"]["wall_s"] / out["in_process"]["wall_s"]
    return out


# -- the report ----------------------------------------------------------------------------------------
def warm_up(server: Server, max_tokens: int) -> dict[str, Any]:
    """One request non-streamed (its usage: the prompt's token count, the reply's) and the same
    streamed (its chunk count), so the first measured run pays no first-call costs."""
    question = questions(1)[0]
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=request_body(server.model, question, max_tokens,
                       stream=False), timeout=120).json()

    async def stream() -> Completion:
        async with httpx.AsyncClient(timeout=120) as client:
            return await streamed(client, server.url, server.model, question, max_tokens)

    chunked = anyio.run(stream)
    return {"prompt_tokens": reply["usage"]["prompt_tokens"], "completion_tokens": reply["usage"]["completion_tokens"],
            "streamed_tokens": chunked.tokens, "streamed_chunks": chunked.chunks, "counted_by": chunked.counted_by}


def fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\n{m['cpu']} ({m['simd']}: {' '.join(m['cpu_flags']) or 'none'}), {results['threads']} threads, "
          f"max_tokens {results['max_tokens']}, medians of {results['repeat']}")
    print(f"llama.cpp server: {results['llama_cpp_server']['config']}")
    if results.get("load"):
        print(f"\n{'N':>3} {'server':18} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} {'lat p50':>8} {'tok/req':>8}")
    for n, row in results.get("load", {}).items():
        for key in ("llmos_serve", "llama_cpp_server"):
            r = row.get(key)
            if r:
                print(f"{n:>3} {key:18} {r['tokens_per_s']:8.1f} {fmt(r.get('ttft_p50_s')):>9} "
                      f"{fmt(r.get('ttft_p95_s')):>9} {fmt(r.get('latency_p50_s')):>8} "
                      f"{fmt(r.get('tokens_per_request_mean'), '.1f'):>8}")
        ratio = row.get("llmos_over_llama_cpp")
        if ratio:
            target = "  (target >= 1.5)" if n == "16" else ""
            print(f"{n:>3} {'llmos / llama.cpp':18} {'x' + fmt(ratio.get('tokens_per_s')):>8} "
                  f"{'x' + fmt(ratio.get('ttft_p50_s')):>9} {'x' + fmt(ratio.get('ttft_p95_s')):>9}{target}")
    over = results.get("http_overhead")
    if over:
        print(f"\nHTTP overhead at {over['users']} users: in process {over['in_process']['tokens_per_s']:.1f} tok/s, "
              f"through llmos serve {over['llmos_serve']['tokens_per_s']:.1f} tok/s: {over['overhead'] * 100:+.1f}% "
              f"(target < 10%); ttft p50 {fmt(over['in_process'].get('ttft_p50_s'))} s vs "
              f"{fmt(over['llmos_serve'].get('ttft_p50_s'))} s")
    cli = results.get("cli")
    if cli:
        print(f"\n`{cli['command']}` wall time:")
        for mode in ("in_process", "daemon"):
            r = cli[mode]
            print(f"  {mode:11} " + (f"{r['wall_s']:.2f} s" if "wall_s" in r else f"{r['unavailable']}"))
        if "daemon_over_in_process" in cli:
            print(f"  daemon / in process: x{cli['daemon_over_in_process']:.2f}")
    idle = results.get("idle_servers", {})
    if idle:
        print("\nidle servers' CPU while the others ran: " + ", ".join(
            f"{name} {r['share_of_a_core'] * 100:.1f}% of a core" for name, r in idle.items()))


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 16, 64], help="concurrent users to measure")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement, alternating")
    parser.add_argument("--threads", type=int, default=2, help="threads (and CPUs) of each server, torch threads here")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=2, help="requests each user sends, one after another")
    parser.add_argument("--min-requests", type=int, default=8, help="requests per run at least (users ask more)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds a run may take at most")
    parser.add_argument("--overhead-clients", type=int, default=16, help="users of the HTTP overhead runs")
    parser.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp's context size")
    parser.add_argument("--llama-cpp-extra-buffers", choices=["auto", "on", "off"], default="auto",
                        help="llama.cpp's extra buffer types (AMX, repacked weights); auto: off where they "
                             "crash the installed build (an AMX CPU)")
    parser.add_argument("--llama-cpp-as-shipped", action="store_true",
                        help="let llama.cpp's server call the model from any worker thread, as shipped (it slows "
                             "to about half speed after concurrent requests; see bench/llama_cpp_server.py)")
    parser.add_argument("--parts", nargs="+", default=["load", "overhead", "cli"], choices=["load", "overhead", "cli"])
    parser.add_argument("--quick", action="store_true", help="N = 1, 4, one round, 4 users for the overhead")
    args = parser.parse_args()
    if args.quick:
        args.ns, args.repeat, args.overhead_clients, args.min_requests = [1, 4], 1, 4, 4

    from llmos.drivers.smollm2 import SOURCE
    from llmos.testing import free_port

    home = use_model_cache("llmos-bench-serve-")
    cpus = sorted(os.sched_getaffinity(0))
    if args.threads > len(cpus):
        raise SystemExit(f"--threads {args.threads}: this process may use only {len(cpus)} CPUs")
    cpus = cpus[:args.threads]
    gguf = SOURCE.path()
    extra_buffers = (args.llama_cpp_extra_buffers == "on" or
                     args.llama_cpp_extra_buffers == "auto" and not llama_cpp_extra_buffers_crash())
    fixes = ([] if extra_buffers else ["--no-extra-buffers"]) + ([] if args.llama_cpp_as_shipped
                                                                 else ["--one-model-thread"])
    results: dict[str, Any] = {
        "machine": machine(args.threads), "versions": versions(), "threads": args.threads, "server_cpus": cpus,
        "max_tokens": args.max_tokens, "repeat": args.repeat, "per_client": args.per_client,
        "min_requests": args.min_requests, "time_limit_s": args.time_limit, "gguf": gguf.name,
        "llmos_serve": {"command": "llmos serve --model smollm2", "threads": f"{args.threads} (CPU affinity)"},
        "llama_cpp_server": {"config": f"llama_cpp.server n_threads={args.threads} n_threads_batch={args.threads} "
                                       f"n_ctx={args.n_ctx} interrupt_requests=False use_extra_bufts={extra_buffers} "
                                       f"model calls on {'any worker thread' if args.llama_cpp_as_shipped else 'one thread'}"
                                       f" (no parallel slots: requests are served one at a time)",
                             "launcher_flags": fixes}}
    idle = Idle()
    print(f"LLMOS_HOME={home}; servers on CPUs {cpus}", file=sys.stderr)
    if os.getloadavg()[0] >= 1.0:
        print(f"warning: load average {os.getloadavg()[0]:.2f}: the machine is busy, figures will be noisy",
              file=sys.stderr)
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(started("llmos serve", llmos_command(port := free_port()), port, cpus, "/health"))
        results["llmos_serve"]["warm_up"] = warm_up(ours, args.max_tokens)
        if "load" in args.parts:
            with started("llama.cpp server", llama_cpp_command(port := free_port(), gguf, args.threads, args.n_ctx, fixes),
                         port, cpus, "/v1/models") as llama:
                results["llama_cpp_server"]["warm_up"] = warm_up(llama, args.max_tokens)
                results["load"] = server_load(ours, llama, args.ns, args, idle)
        if "overhead" in args.parts:
            results["http_overhead"] = http_overhead(ours, args, idle, first=100_000)
        if "cli" in args.parts:
            results["cli"] = cli_latency(ours, args)
    results["idle_servers"] = idle.report()
    results["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    print_report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {RESULTS}")


if __name__ == "__main__":
    main()
