"""Shared test helpers: a scripted, deterministic model driver.

`FakeDriver` stands in for a model in kernel unit tests (scheduling, isolation, IPC,
quotas); every feature that touches a model is also tested on the real one.
"""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from llmos.drivers.text import advance
from llmos.kernel import Kernel
from llmos.kernel.errors import ContextOverflow, NoConsole, SyscallError
from llmos.kernel.model import ChatMessage, EmitFn, GenerationJob
from llmos.kernel.process import ExitStatus, ProcessInfo, ProcState

_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass
class _FakeState:
    """A job's scripted answer, one word per token, and how much of it was streamed."""

    words: list[str]
    streamed: int = 0


class FakeDriver:
    """Answers from a queue (`enqueue`), else from `script(prompt_text)`, else "echo: <last message>".

    One "token" is one whitespace-separated word of the answer; a prompt counts one
    token per character. `step_delay_s` makes each decoding step take time, so tests
    can kill or suspend a process mid-generation. `batches` records the job ids of
    every step, to assert what was served together; `jobs` keeps every job it was handed.
    A job with `options` (the `choose` syscall) is scored in one step: the option its answer
    names first scores highest (-0.1 a token, the others -3.0), else the first option.
    """

    def __init__(self, script: Callable[[str], str] | None = None, *, context_length: int = 4096,
                 step_delay_s: float = 0.0, fail_with: Exception | None = None, name: str = "fake",
                 max_batch: int = 64) -> None:
        self.name = name
        self.context_length = context_length
        self.max_batch = max_batch
        self.script = script
        self.step_delay_s = step_delay_s
        self.fail_with = fail_with
        self.batches: list[list[int]] = []
        self.jobs: list[GenerationJob] = []
        self.prompts: list[str] = []
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()

    def enqueue(self, *answers: str) -> None:
        self._queue.extend(answers)

    @staticmethod
    def render(job: GenerationJob) -> str:
        return job.prompt or "" if job.messages is None else FakeDriver.render_chat(job.messages)

    @staticmethod
    def render_chat(messages: Sequence[ChatMessage]) -> str:
        return "".join(f"<{m.role}>{m.content}\n" for m in messages) + "<assistant>"

    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        return [ord(c) for c in self.render_chat(messages)]

    def prepare(self, job: GenerationJob) -> None:
        text = self.render(job)
        job.prompt_ids = job.prompt_ids or [ord(c) for c in text]
        job.option_ids = [[ord(c) for c in option] for option in job.options or ()]
        if len(job.prompt_ids) >= self.context_length:
            raise ContextOverflow(f"the prompt is {len(job.prompt_ids)} tokens; the context window is "
                                  f"{self.context_length}")

    def _answer(self, job: GenerationJob) -> _FakeState:
        if job.driver_state is None:
            with self._lock:
                prompt = self.render(job)
                self.prompts.append(prompt)
                if self._queue:
                    answer = self._queue.popleft()
                elif self.script is not None:
                    answer = self.script(prompt)
                else:
                    last = job.messages[-1].content if job.messages else prompt
                    answer = f"echo: {last}"
            job.driver_state = _FakeState(words=_WORDS.findall(answer))
        return job.driver_state

    def _score(self, job: GenerationJob) -> None:
        answer = "".join(self._answer(job).words).lower()
        named = sorted((answer.find(option.lower()), i) for i, option in enumerate(job.options or ())
                       if option.lower() in answer)
        pick = named[0][1] if named else 0
        job.option_logprobs = [[-0.1 if i == pick else -3.0] * len(ids) for i, ids in enumerate(job.option_ids)]
        job.finish_reason = "stop"

    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        self.batches.append([job.id for job in running])
        self.jobs += [job for job in running if job not in self.jobs]
        if self.fail_with is not None:
            raise self.fail_with
        if self.step_delay_s:
            with anyio.CancelScope(shield=True):  # a started step completes, as a real driver's does
                await anyio.sleep(self.step_delay_s)
        else:
            await anyio.lowlevel.checkpoint()
        emit([piece for job in running if not job.finished and (piece := self._step(job))])

    def _step(self, job: GenerationJob) -> tuple[GenerationJob, str] | None:
        if job.cancelled:
            job.finish_reason = "cancelled"
            return None
        if job.options is not None:
            self._score(job)
            return None
        state = self._answer(job)
        words, n = state.words, len(job.token_ids)
        if n >= len(words):
            job.finish_reason = "stop"
            return None
        job.token_ids.append(n)
        final = n + 1 == len(words) or len(job.token_ids) >= job.sampling.max_tokens
        piece, stopped = advance(job, "".join(words[: n + 1]), state.streamed, final)
        state.streamed += len(piece)
        if stopped or n + 1 == len(words):
            job.finish_reason = "stop"
        elif final:
            job.finish_reason = "length"
        return job, piece


class ScriptedConsole:
    """A `kernel.console` for tests: records what processes write, answers questions from
    a queue (`NoConsole` once it is empty, as a closed stdin would)."""

    def __init__(self, *answers: str) -> None:
        self.answers = deque(answers)
        self.written: list[tuple[int, str]] = []
        self.questions: list[tuple[int, str]] = []

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.written)

    def write(self, pid: int, text: str) -> None:
        self.written.append((pid, text))

    async def ask(self, pid: int, question: str) -> str:
        self.questions.append((pid, question))
        if not self.answers:
            raise NoConsole("the scripted console has no answers left")
        return self.answers.popleft()


async def spawn_and_wait(kernel: Kernel, app: Any, *args: Any, timeout: float = 5, **options: Any) -> ExitStatus:
    """Run `app` as a process to its end and return its exit status."""
    info = await kernel.spawn(app, *args, **options)
    return await kernel.wait(info.pid, timeout=timeout)


async def run_app(app: Any, *args: Any, driver: Any = None, console: Any = None, timeout: float = 10,
                  memory: Any = None, **options: Any) -> ExitStatus:
    """Run an app as `llmos run` would (a registered name or a reference; `options` as its
    --name value words) on a fresh kernel with `driver` (a FakeDriver by default) and
    `memory` (a store folder; None: no memory store). The kernel has no embedder, so the
    driver alone decides `choose` (a FakeDriver by its script)."""
    from llmos.apps import registry  # user space, loaded only by the tests that run apps
    from llmos.booting import boot

    async with boot(driver if driver is not None else FakeDriver(), memory=memory, embedder=None) as kernel:
        kernel.console = console
        main = registry.bind(app, list(args), options)
        return await spawn_and_wait(kernel, main, *args, timeout=timeout, name=app if isinstance(app, str) else None)


def result(status: ExitStatus) -> Any:
    """The process's return value, failing the test with its reason unless it EXITED."""
    assert status.state is ProcState.EXITED, f"{status.state.name}: {status.reason}\n{status.traceback}"
    return status.result


async def caught(call: Awaitable[Any]) -> Any:
    """Await a syscall that should fail and return its error (or ("returned", value)).

    Inside a process, return errors to the test body rather than asserting there: a
    pytest failure is a BaseException that would end the process, not the test."""
    try:
        value = await call
    except SyscallError as exc:
        return exc
    return ("returned", value)


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until `predicate()` holds, polling; fail after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until `await predicate()` holds, polling every `interval` s; fail after `timeout`
    seconds (for what only an async call can tell: a durable process's state, say)."""
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(interval)


def process_info(kernel: Kernel, pid: int) -> ProcessInfo:
    """A process's `ps` snapshot, live or ended (until it is reaped)."""
    return {p.pid: p for p in kernel.ps(include_ended=True)}[pid]


async def until_state(kernel: Kernel, pid: int, *states: ProcState, timeout: float = 2.0) -> ProcessInfo:
    """Wait until process `pid` is in one of `states` (any terminal state if none is given),
    and return its snapshot: e.g. `await until_state(kernel, pid, ProcState.BLOCKED)`."""

    def reached() -> bool:
        state = process_info(kernel, pid).state
        return state in states if states else state.terminal

    await until(reached, timeout)
    return process_info(kernel, pid)


# -- memory -----------------------------------------------------------------------------------------
def memory_script(reply: str | Callable[[str], str] = "ok", summary: str = "summary") -> Callable[[str], str]:
    """A FakeDriver script for memory tests: the pager's summary requests get `summary`
    followed by how many summaries were asked so far ("summary 1", "summary 2", ...);
    every other prompt gets `reply` (a string, or a function of the prompt)."""
    asked = itertools.count(1)

    def answer(prompt: str) -> str:
        if "running summary" in prompt:
            return f"{summary} {next(asked)}"
        return reply(prompt) if callable(reply) else reply

    return answer


def free_port() -> int:
    """A TCP port free on loopback just now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """End a child process: SIGTERM, then SIGKILL if it is still there after `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on port {port}") from None
            time.sleep(0.1)


@asynccontextmanager
async def served(model: Any = None, *, api_key: str | None = None, **boot_options: Any) -> AsyncIterator[Any]:
    """A real `llmos serve` (uvicorn) on a free loopback port inside this event loop, over
    `model` (a FakeDriver by default); yields an object with `url`, `key` and `kernel`."""
    from llmos.server.daemon import ServeOptions, serve

    boot_options.setdefault("embedder", None)
    options = ServeOptions(port=free_port(), model=model if model is not None else FakeDriver(), api_key=api_key,
                           boot_options=tuple(boot_options.items()))
    ready = anyio.Event()
    found: dict[str, Any] = {}

    def on_ready(url: str, key: str | None, kernel: Any) -> None:
        found.update(url=url, key=key, kernel=kernel)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, options, on_ready)
        with anyio.fail_after(30):
            await ready.wait()
        try:
            yield SimpleNamespace(**found)
        finally:
            tg.cancel_scope.cancel()


@contextmanager
def llmos_server(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> Iterator[str]:
    """A real `llmos serve` in its own OS process on a free loopback port (`args` go to the
    command, e.g. "--model", "smollm2"); yields its URL. Its output goes to a file beside
    LLMOS_HOME (`server.log`), shown if it fails to start."""
    with llmos_daemon(*args, env=env, timeout=timeout) as (url, _):
        yield url


@contextmanager
def llmos_daemon(*args: str, env: dict[str, str] | None = None,
                 timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`llmos_server`, yielding the OS process too (to kill it as a crash would)."""
    import os

    port = free_port()
    home = Path((env or os.environ).get("LLMOS_HOME") or os.environ["LLMOS_HOME"])
    log_path = home / f"server-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "llmos.apps.cli", "serve", "--host", "127.0.0.1",
                                   "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})})
    try:
        try:
            wait_for_port(port, server, timeout, "`llmos serve`")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log_path.read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{port}", server
    finally:
        stop(server)


@contextmanager
def chroma_server(folder: Path, timeout: float = 60.0) -> Iterator[str]:
    """A real `chroma run` server on a free loopback port, storing in `folder`; yields its URL."""
    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    server = subprocess.Popen([str(chroma), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server, timeout, "`chroma run`")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server, timeout=10)


POSTGRES_BIN = Path("/usr/lib/postgresql")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout), or None."""
    versions = sorted((p for p in POSTGRES_BIN.glob("*/bin") if (p / "initdb").is_file()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


@contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[str]:
    """A real, throwaway PostgreSQL cluster on a free loopback port; yields a postgresql://
    URL of its database `llmos`. PostgreSQL refuses to run as root, so as root it runs as the
    `postgres` user, in a temporary folder of its own (pytest's folders are closed to others)."""
    import os
    import pwd
    import shutil
    import tempfile

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="llmos-pg-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (folder, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = None
    try:
        _run_checked([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "llmos", "--auth=trust",
                      "--no-sync", "-E", "UTF8"])
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=200"
        server = subprocess.Popen([*as_user, str(bin_dir / "postgres"), "-D", str(data), *options.split()],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, server, timeout, "PostgreSQL")
        _run_checked([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "llmos", "llmos"])
        yield f"postgresql://llmos@127.0.0.1:{port}/llmos"
    finally:
        if server is not None:
            stop(server, timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _run_checked(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}")


# -- a tiny model for engine tests ------------------------------------------------------------------
TINY_VOCAB = 300  # the 256 bytes, 43 merges, and "<|endoftext|>" last
_TINY_MERGES = [("Ġ", c) for c in "abcdefghijklmnopqrstuvwxyz"] + [
    (p[0], p[1]) for p in "th he in er an re on at en nd ti es or te of ed is".split()]


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer of TINY_VOCAB tokens, built offline: GPT-2's scheme, as
    SmolLM2's is, so llguidance takes it for constrained decoding. Its eos is the last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in _TINY_MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=_TINY_MERGES))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def tiny_model(seed: int = 0) -> Any:
    """A randomly initialised 2-layer Llama in float32 (hidden 64, 4 query heads over 2 K/V
    heads, 512 positions) over tiny_tokenizer's vocabulary. Weights are drawn wider than
    HF's default (std 0.2, not 0.02), so its logits are spread out and greedy choices are
    never near-ties that float rounding could flip. The global RNG is left untouched."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = TINY_VOCAB - 1
    config = LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, bos_token_id=None, eos_token_id=eos, pad_token_id=eos,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    return model


def tiny_engine(config: Any = None, *, eos_ids: frozenset[int] | None = None, seed: int = 0) -> Any:
    """An `Engine` (llmos.drivers.engine) on `tiny_model(seed)` and `tiny_tokenizer()`, for
    engine tests that run in milliseconds. `config` is an EngineConfig (default: 4 slots,
    16-token prefill chunks, a 64-block prefix cache); `eos_ids` defaults to the
    tokenizer's eos. The HF model is `engine.runner.model`. Its slot cache is small enough
    to come from reused heap memory, garbage and all, as a real engine's may."""
    import torch

    from llmos.drivers.engine import Engine, EngineConfig

    model = tiny_model(seed)
    tokenizer = tiny_tokenizer()
    engine = Engine(model, tokenizer, eos_ids=eos_ids if eos_ids is not None else frozenset({tokenizer.eos_token_id}),
                    context_length=model.config.max_position_embeddings,
                    config=config or EngineConfig(max_batch=4, prefill_chunk=16, prefix_cache_mb=1),
                    dtype=torch.float32, device="cpu")
    return engine
