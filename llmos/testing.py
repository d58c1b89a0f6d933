"""Shared test helpers: a scripted, deterministic model driver.

`FakeDriver` stands in for a model in kernel unit tests (scheduling, isolation, IPC,
quotas); every feature that touches a model is also tested on the real one.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.lowlevel

from llmos.drivers.text import advance
from llmos.kernel import Kernel
from llmos.kernel.errors import ContextOverflow, NoConsole, SyscallError, ToolFailed
from llmos.kernel.memory import MemoryItem, MemoryStore, Metadata
from llmos.kernel.model import ChatMessage, EmitFn, GenerationJob, ModelDriver
from llmos.kernel.process import ExitStatus, ProcessInfo, ProcState
from llmos.kernel.tools import ToolContext, ToolProvider, ToolSpec

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

    prepares_inline = True  # as the engine's driver: short jobs are prepared on the kernel's loop

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


class WideDriver(FakeDriver):
    """Another tokenizer: two tokens a character."""

    def tokenize(self, messages):  # noqa: ANN001, ANN201
        return [ord(c) for c in self.render_chat(messages) for _ in range(2)]

    def prepare(self, job):  # noqa: ANN001, ANN201
        job.prompt_ids = job.prompt_ids or [ord(c) for c in self.render(job) for _ in range(2)]
        super().prepare(job)


class FakeLoader:
    """A kernel's ModelLoader (kernel/model_pool.py) over FakeDrivers, named as a library would
    name them: bases "other", "third" (another tokenizer) and "fourth"; "other-terse" derives
    from "other" (a variant over its engine). Set it as `kernel.models.loader`."""

    BASES = {"other": "other", "other-terse": "other", "third": "third", "fourth": "fourth"}

    def __init__(self, step_delay_s: float = 0.0, memory_bytes: int = 0) -> None:
        self.step_delay_s, self.memory_bytes = step_delay_s, memory_bytes
        self.loaded: list[str] = []

    def base_of(self, name: str) -> str:
        if name not in self.BASES:
            raise ValueError(f"no model named {name!r}")
        return self.BASES[name]

    def load_base(self, name: str) -> FakeDriver:
        self.loaded.append(name)
        kind = WideDriver if name == "third" else FakeDriver
        driver = kind(lambda prompt, name=name: f"{name} says hi", name=name, step_delay_s=self.step_delay_s,
                      context_length=1000 if name == "third" else 4096)
        driver.memory_bytes = self.memory_bytes  # type: ignore[attr-defined]
        return driver

    def load_variant(self, name: str, base: FakeDriver) -> FakeDriver:
        return base  # a base is its own variant; a derived one prepares on its base's engine here


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


class InMemoryStore:
    """A `MemoryStore` in a dict, for kernel tests that need a store but not its search quality
    (the real one, chromadb with MiniLM, takes seconds to load and about 70 ms to make each
    namespace's collection). A query ranks items by the words they share with it (score: the
    fraction of the query's words found); `where` filters by equal metadata values only."""

    location = "memory:"

    def __init__(self) -> None:
        self.items: dict[str, dict[str, MemoryItem]] = {}  # namespace -> id -> item
        self.closed = False

    @staticmethod
    def _words(text: str) -> set[str]:
        return set(re.findall(r"\w+", text.lower()))

    async def add(self, namespace: str, texts: Sequence[str], metadatas: Sequence[Metadata],
                  ids: Sequence[str]) -> None:
        await anyio.lowlevel.checkpoint()
        space = self.items.setdefault(namespace, {})
        for text, metadata, item_id in zip(texts, metadatas, ids, strict=True):
            space[item_id] = MemoryItem(id=item_id, text=text, namespace=namespace, metadata=dict(metadata))

    async def query(self, namespace: str, text: str, k: int, where: Metadata | None = None) -> list[MemoryItem]:
        await anyio.lowlevel.checkpoint()
        asked = self._words(text) or {""}
        found = [item.model_copy(update={"score": len(asked & self._words(item.text)) / len(asked)})
                 for item in self.items.get(namespace, {}).values()
                 if all(item.metadata.get(key) == value for key, value in (where or {}).items())]
        return sorted(found, key=lambda item: -(item.score or 0))[:k]

    async def get(self, namespace: str, ids: Sequence[str]) -> list[MemoryItem]:
        await anyio.lowlevel.checkpoint()
        space = self.items.get(namespace, {})
        return [space[item_id] for item_id in ids if item_id in space]

    async def delete(self, namespace: str, ids: Sequence[str]) -> None:
        await anyio.lowlevel.checkpoint()
        for item_id in ids:
            self.items.get(namespace, {}).pop(item_id, None)

    async def count(self, namespace: str) -> int:
        return len(self.items.get(namespace, {}))

    async def aclose(self) -> None:
        self.closed = True


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


def library_folder(folder: Path, context_length: int = 2048) -> Path:
    """A Hugging Face model folder as far as the model library looks (a Llama config.json, a
    safetensors header over one small tensor, a tokenizer.json): importable, not loadable."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                    "max_position_embeddings": context_length}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    (folder / "tokenizer.json").write_text("{}")
    return folder


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


def one_torch_thread() -> Iterator[None]:
    """torch on one thread while a test runs (as an autouse fixture of tiny-model tests): a
    model this small gains nothing from more threads, and on a busy machine every operator
    would wait at OpenMP's barrier for a worker whose core is taken."""
    with torch_threads(1):
        yield


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` inside the block, restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# What caps torch's own kernels at AVX2 (read when torch loads, so set before it starts).
AVX2_TORCH_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
AVX2_EMULATION_ENV = "LLMOS_TEST_AVX2"  # "1": tests/conftest.py emulates an AVX2-only CPU (emulate_avx2)


def emulate_avx2() -> None:
    """This process as llmos runs on a CPU with AVX2 and no AVX-512, on a machine that has
    AVX-512: llmos blind to the avx512 and amx flags (so float32 and the integer kernels,
    and the quantized weights and choices kept under an AVX2 machine's keys), and its
    compiled operators built for x86-64-v3 (AVX2, FMA, F16C) in place of -march=native.
    Call it before the operators are first built; torch must have been started under
    AVX2_TORCH_ENV (a RuntimeError says so otherwise)."""
    import os

    wrong = [f"{name}={value}" for name, value in AVX2_TORCH_ENV.items() if os.environ.get(name) != value]
    if wrong:
        raise RuntimeError(f"an AVX2 emulation needs torch started with {' '.join(wrong)}")
    from llmos.drivers import compute, paged, quant_cache, transformers_driver

    def avx2_only() -> set[str]:
        return {flag for flag in compute.cpu_flags() if not flag.startswith(("avx512", "amx"))}

    for module in (paged, quant_cache, transformers_driver):  # the readers of the flags, each by its own name
        module.cpu_flags = avx2_only  # type: ignore[attr-defined]
    paged.FLAGS[:] = ["-march=x86-64-v3" if flag.startswith("-march") else flag for flag in paged.FLAGS]


def threads_cpus() -> dict[int, set[int]]:
    """The CPUs each of the process's threads may run on, by native thread id (Linux)."""
    import os

    cpus = {}
    for task in os.listdir("/proc/self/task"):
        try:
            cpus[int(task)] = os.sched_getaffinity(int(task))
        except OSError:  # the thread ended meanwhile
            continue
    return cpus


def pinned_while(work: Callable[[], None]) -> tuple[int, list[dict[int, int]]]:
    """Runs `work` on a thread of its own while this one looks at every thread of the process
    as often as it can (bounded by `work`): that thread's native id, and at each look the
    threads then pinned to one CPU (thread id -> CPU). Re-raises what `work` raised."""
    leader: list[int] = []
    failed: list[Exception] = []

    def run() -> None:
        leader.append(threading.get_native_id())
        try:
            work()
        except Exception as error:  # noqa: BLE001 - handed to the watching thread, which raises it
            failed.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    looks = []
    while worker.is_alive():
        looks.append({tid: next(iter(cpus)) for tid, cpus in threads_cpus().items() if len(cpus) == 1})
        time.sleep(0)  # the GIL to `work` between looks
    worker.join()
    if failed:
        raise failed[0]
    return leader[0], looks


def tiny_engine(config: Any = None, *, eos_ids: frozenset[int] | None = None, seed: int = 0) -> Any:
    """An `Engine` (llmos.drivers.engine) on `tiny_model(seed)` and `tiny_tokenizer()`, for
    engine tests that run in milliseconds. `config` is an EngineConfig (default: 4
    sequences, 16-token prefill chunks, 1 MB of KV blocks); `eos_ids` defaults to the
    tokenizer's eos. The HF model is `engine.runner.model`. Its KV pool is small enough to
    come from reused heap memory, garbage and all, as a real engine's may."""
    import torch

    from llmos.drivers.engine import Engine, EngineConfig

    model = tiny_model(seed)
    tokenizer = tiny_tokenizer()
    engine = Engine(model, tokenizer, eos_ids=eos_ids if eos_ids is not None else frozenset({tokenizer.eos_token_id}),
                    context_length=model.config.max_position_embeddings,
                    config=config or EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1),
                    dtype=torch.float32, device="cpu")
    return engine


def tiny_driver(config: Any = None, *, endless: bool = False) -> Any:
    """A transformers driver (the engine, KV blocks and all) on `tiny_model()`: milliseconds a
    step, for kernel tests of the real generation path. `config` as tiny_engine's; `endless`:
    it never samples eos, so only max_tokens or a cancel ends a generation."""
    from llmos.drivers.engine import EngineConfig
    from llmos.drivers.transformers_driver import TransformersDriver

    driver = TransformersDriver("tiny", tiny_model(), tiny_tokenizer(),
                                config=config or EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1))
    if endless:
        driver.engine.eos_ids = frozenset()
    return driver


def greedy_tokens(engine: Any, prompts: Sequence[Sequence[int]], tokens: int = 24) -> list[list[int]]:
    """Each prompt's reply (`tokens` tokens at most), greedy, the prompts run side by side on an
    `Engine` until every one is finished."""
    from llmos.kernel.model import SamplingParams

    jobs = [GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=tokens), prompt_ids=list(prompt))
            for i, prompt in enumerate(prompts)]
    while any(not job.finished for job in jobs):
        engine.step([job for job in jobs if not job.finished], lambda pieces: None)
    return [job.token_ids for job in jobs]


def first_logits(engine: Any, prompt_ids: Sequence[int]) -> Any:
    """The logits (vocab,) an `Engine` samples a prompt's first token from: the prompt is run
    alone, with whatever of it the prefix cache holds, and the pass that takes it in is read."""
    from llmos.kernel.model import SamplingParams

    seen: list[Any] = []
    runner = engine.runner
    forward, own = runner.forward_spans, vars(runner).get("forward_spans")  # own: a test's watch already on it

    def watched(batch: Any, spans: Any) -> Any:
        logits, spanned = forward(batch, spans)
        seen.append(logits[0].clone())
        return logits, spanned

    job = GenerationJob(id=0, pid=0, sampling=SamplingParams(max_tokens=1), prompt_ids=list(prompt_ids))
    runner.forward_spans = watched
    try:
        while not job.finished:
            engine.step([job], lambda pieces: None)
        engine.step([], lambda pieces: None)
    finally:
        if own is None:
            del runner.forward_spans  # the class's method shows again
        else:
            runner.forward_spans = own
    return seen[-1]


# Varied prose: prompts cut from it after 48 and 176 tokens end inside a 32-query block of
# sdpa's, where a tail of 1-3 tokens computed alone came out other bits than in its prompt's
# own pass before prompt passes padded their queries (drivers/llama.py `query_padding`).
STORY = (
    'On the morning the ferry stopped running, Ada Lindqvist counted the crates on the pier twice, wrote '
    'the numbers in a green notebook, and walked up the hill to the weather station. The anemometer had '
    'frozen overnight; its cups hung still above the roof like a question nobody wanted to answer. '
    'Inside, the radio hissed between stations. She tuned it to the coast guard frequency and heard a '
    'voice reading tide tables in a flat, patient tone: high water at 06:42, low water at 12:57, high '
    'again at 19:13. Her brother Elias arrived at noon with bread, two tins of sardines, and a theory '
    'about the broken pump. "It\'s the impeller," he said, setting the bag on the table. "Or the valve. '
    'Probably both." They spent the afternoon taking the pump apart on sheets of newspaper, labelling '
    "each screw with masking tape, arguing gently about the order of the gaskets. By four o'clock the "
    'light was going, the sea had turned the colour of pewter, and the pump, reassembled, coughed once '
    'and began to hum. Ada wrote 16:08 in the notebook and underlined it. Later, while the kettle ticked '
    'on the stove, Elias read aloud from an old almanac: the year the harbour froze solid, the winter a '
    'whale beached on the north shore, the summer of the three eclipses that never happened because the '
    'printer had mixed up the tables.'
)


def prefix_cache_prompts(tokenizer: Any) -> list[list[int]]:
    """Prompts of STORY whose tails after their cached blocks are 1, 2, 3 and 9 tokens long,
    after 48 and 176 cached tokens (neither a multiple of sdpa's 32-query blocks)."""
    ids = tokenizer.encode(STORY)
    return [ids[:cached + tail] for cached in (48, 176) for tail in (1, 2, 3, 9)]


def assert_prefix_cache_blind(engine: Any, prompt_ids: Sequence[int]) -> None:
    """A prompt's first-token logits once its full blocks are found in the prefix cache are,
    bitwise, the ones it had computed whole: its tail runs with the weights of the prompt's own
    pass, and no matrix product of it has fewer rows than sum alike (drivers/llama.py
    `ROWS_SUMMED_ALIKE`). (Before, other weights moved them by 0.09 to 0.6; a tail's queries in
    a small block of sdpa's, by up to 0.7.)"""
    import torch

    from llmos.kernel.blocks import BLOCK

    engine.blocks.clear_cache()
    whole = first_logits(engine, prompt_ids)
    hits = engine.blocks.hit_tokens
    cached = first_logits(engine, prompt_ids)
    assert engine.blocks.hit_tokens - hits == (len(prompt_ids) - 1) // BLOCK * BLOCK
    assert torch.equal(cached, whole), f"differ by {(cached - whole).abs().max().item()}"


class BurstsOut:
    """Counts the bursts of steps a driver has handed to its compute thread and not got back
    (`out`): wraps `driver.burst`, so a reader can tell whether text reached it mid-burst."""

    def __init__(self, driver: Any) -> None:
        self.out = 0
        burst = driver.burst

        async def counted(*args: Any) -> Any:
            self.out += 1
            try:
                return await burst(*args)
            finally:
                self.out -= 1

        driver.burst = counted


def random_lora(model: Any, folder: Path, *, seed: int = 0, rank: int = 4,
                targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                b_std: float = 0.05, **config: Any) -> Path:
    """A PEFT LoRA adapter of `model` with random (non-zero) factors, saved to `folder` as
    `peft`'s save_pretrained writes it; `model` itself is left untouched. `config`: more
    LoraConfig settings (lora_alpha, use_rslora, ...). `b_std`: the spread of the B factors
    (A is peft's random init): how far the adapter moves the model."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    settings = {"r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets), "init_lora_weights": False, **config}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuned = get_peft_model(copy.deepcopy(model), LoraConfig(**settings))
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name:  # small beside the base's weights, as after real training
                parameter.data.normal_(0.0, b_std)
    tuned.save_pretrained(str(folder))
    return folder


def merged_with_lora(model: Any, folder: Path) -> Any:
    """A copy of `model` with the adapter in `folder` merged into its weights (peft's own
    arithmetic): the reference an engine serving the adapter must match."""
    import copy

    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).merge_and_unload().eval()


# -- fault injection --------------------------------------------------------------------------------
FaultKind = Literal["step", "tool", "store"]  # a driver step, a tool call, a memory store write
FaultAction = Literal["fail", "hang"]


class InjectedFault(RuntimeError):
    """What an injected failure raises where the interface names no error of its own (a driver
    step, a store write): an untyped exception, as a broken driver or chromadb would raise."""


@dataclass(frozen=True)
class FaultRates:
    """The fractions of one kind of call that fail and that hang (never return until cancelled)."""

    fail: float = 0.0
    hang: float = 0.0

    def __post_init__(self) -> None:
        if self.fail < 0 or self.hang < 0 or self.fail + self.hang > 1:
            raise ValueError(f"fault rates must be fractions that add up to at most 1, not fail={self.fail}, "
                             f"hang={self.hang}")


@dataclass(frozen=True)
class Fault:
    """One injected fault: which call it struck (`key`: "driver call 12", "pid 7 call 2") and the
    processes it hit (a step's: every job's owner in the batch; none for an empty step)."""

    kind: FaultKind
    action: FaultAction
    key: str
    pids: tuple[int, ...]


class FaultInjector:
    """Makes a chosen fraction of driver steps, tool calls and memory store writes fail or hang,
    by wrapping the real parts at the kernel's interfaces: `driver(ModelDriver)`,
    `tools(ToolProvider)`, `store(MemoryStore)`. Boot a kernel with the wrapped parts, e.g.
    `llmos.boot(injector.driver(FakeDriver()), memory=injector.store(store))` and
    `kernel.tools = injector.tools(kernel.tools)`.

    Deterministic given `seed`: whether a call is struck depends only on the seed, its kind
    and its key, never on timing. A tool call's key is its caller's pid and how many tool
    calls that process made before it; a store write's, the writing process's pid (or, outside
    a process, the namespace) and its count likewise; a step's, how many steps came before it.

    - fail: a step raises InjectedFault from inside the step, after the wrapped driver did its
      work (from `emit`, on the driver's own thread, so the driver's code after `emit` does not
      run); a tool call raises ToolFailed (the provider's contract for a failed tool); a store
      write raises InjectedFault before it reaches the store.
    - hang: the call never returns until cancelled (before it reaches the wrapped part).

    `faults` records every fault injected and whom it hit (`hit_pids`); `calls` counts the
    calls seen per kind. `enabled = False` lets every call through untouched.
    """

    def __init__(self, seed: int = 0, *, steps: FaultRates = FaultRates(), tools: FaultRates = FaultRates(),
                 store: FaultRates = FaultRates()) -> None:
        self.seed = seed
        self.rates: dict[FaultKind, FaultRates] = {"step": steps, "tool": tools, "store": store}
        self.enabled = True
        self.faults: list[Fault] = []
        self.calls: Counter[FaultKind] = Counter()
        self._made: Counter[tuple[FaultKind, object]] = Counter()  # calls made so far, per kind and caller

    # -- wrapping the real parts ------------------------------------------------------------------
    def driver(self, inner: ModelDriver) -> FaultyDriver:
        return FaultyDriver(inner, self)

    def tools(self, inner: ToolProvider) -> FaultyTools:
        return FaultyTools(inner, self)

    def store(self, inner: MemoryStore) -> FaultyStore:
        return FaultyStore(inner, self)

    # -- what was injected ------------------------------------------------------------------------
    def hit_pids(self) -> set[int]:
        """Every process some injected fault hit."""
        return {pid for fault in self.faults for pid in fault.pids}

    def injected(self, kind: FaultKind | None = None, action: FaultAction | None = None) -> int:
        """How many faults were injected (of a kind, an action)."""
        return sum(1 for f in self.faults if kind in (None, f.kind) and action in (None, f.action))

    # -- deciding ---------------------------------------------------------------------------------
    def decide(self, kind: FaultKind, key: str) -> FaultAction | None:
        """The fault (if any) for the call `key` of `kind`: a pure function of seed, kind and key."""
        rates = self.rates[kind]
        draw = random.Random(f"{self.seed}:{kind}:{key}").random()
        if draw < rates.fail:
            return "fail"
        if draw < rates.fail + rates.hang:
            return "hang"
        return None

    def strike(self, kind: FaultKind, caller: object, pids: tuple[int, ...]) -> Fault | None:
        """Count one call of `kind` by `caller` and return the fault to inject in it, recorded,
        if any."""
        self.calls[kind] += 1
        n = self._made[kind, caller]
        self._made[kind, caller] += 1
        key = f"{caller} call {n}"
        action = self.decide(kind, key) if self.enabled else None
        if action is None:
            return None
        fault = Fault(kind, action, key, pids)
        self.faults.append(fault)
        return fault


async def _hang() -> None:
    """Never return: the call stays in flight until whoever waits on it cancels it."""
    await anyio.sleep_forever()


def _current_pid() -> int | None:
    """The pid of the process whose task runs now (the kernel names each process's task
    "llmos-pid-N"), or None outside a process."""
    match = re.fullmatch(r"llmos-pid-(\d+)", anyio.get_current_task().name or "")
    return int(match.group(1)) if match else None


class FaultyDriver:
    """A `ModelDriver` whose steps fail or hang as its injector decides (see FaultInjector).
    Everything else (tokenizing, `statistics`, the wrapped driver's own attributes such as a
    transformers driver's `engine`) is the wrapped driver's."""

    def __init__(self, inner: ModelDriver, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector
        self.name = inner.name
        self.context_length = inner.context_length
        self.max_batch = inner.max_batch

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy in the making): no recursion through it
            raise AttributeError(name)
        return getattr(self.inner, name)

    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self.inner.tokenize(messages)

    def prepare(self, job: GenerationJob) -> None:
        self.inner.prepare(job)

    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        fault = self._strike(running)
        if fault is None:
            return await self.inner.step(running, emit)
        await self._faulty_step(fault, running, emit)

    async def burst(self, running: Sequence[GenerationJob], emit: EmitFn, go_on: Callable[[], bool],
                    max_steps: int) -> int:
        """The wrapped driver's burst (if it has none, a step), unless a fault strikes: a burst
        counts as one call, and a struck one is a faulty step."""
        fault = self._strike(running)
        if fault is not None:
            await self._faulty_step(fault, running, emit)
            return 1
        inner = getattr(self.inner, "burst", None)
        if inner is None:
            await self.inner.step(running, emit)
            return 1
        return await inner(running, emit, go_on, max_steps)

    def _strike(self, running: Sequence[GenerationJob]) -> Fault | None:
        return self.injector.strike("step", "driver", tuple(sorted({job.pid for job in running})))

    async def _faulty_step(self, fault: Fault, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        if fault.action == "hang":
            return await _hang()
        emitted = False

        def failing_emit(pieces: Sequence[tuple[GenerationJob, str]]) -> None:
            nonlocal emitted
            emitted = True
            raise InjectedFault(f"injected fault: {fault.kind} {fault.key} failed mid-step")

        await self.inner.step(running, failing_emit)
        if not emitted:  # a driver that had nothing to hand on fails all the same
            raise InjectedFault(f"injected fault: {fault.kind} {fault.key} failed")


class FaultyTools:
    """A `ToolProvider` whose calls fail (ToolFailed) or hang as its injector decides."""

    def __init__(self, inner: ToolProvider, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector

    def specs(self) -> list[ToolSpec]:
        return self.inner.specs()

    def get(self, name: str) -> ToolSpec | None:
        return self.inner.get(name)

    async def call(self, name: str, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        fault = self.injector.strike("tool", f"pid {context.pid}", (context.pid,))
        if fault is not None and fault.action == "hang":
            await _hang()
        if fault is not None:
            raise ToolFailed(f"tool {name!r} failed: injected fault ({fault.key})")
        return await self.inner.call(name, arguments, context)


class FaultyStore:
    """A `MemoryStore` whose writes (`add`, `delete`) fail (InjectedFault) or hang as its
    injector decides; reads go through untouched."""

    def __init__(self, inner: MemoryStore, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector
        self.location = inner.location

    async def _write(self, namespace: str) -> None:
        pid = _current_pid()
        fault = self.injector.strike("store", f"pid {pid}" if pid is not None else f"namespace {namespace}",
                                     (pid,) if pid is not None else ())
        if fault is not None and fault.action == "hang":
            await _hang()
        if fault is not None:
            raise InjectedFault(f"injected fault: store write {fault.key} failed")

    async def add(self, namespace: str, texts: Sequence[str], metadatas: Sequence[Metadata],
                  ids: Sequence[str]) -> None:
        await self._write(namespace)
        await self.inner.add(namespace, texts, metadatas, ids)

    async def delete(self, namespace: str, ids: Sequence[str]) -> None:
        await self._write(namespace)
        await self.inner.delete(namespace, ids)

    async def query(self, namespace: str, text: str, k: int, where: Metadata | None = None) -> list[MemoryItem]:
        return await self.inner.query(namespace, text, k, where)

    async def get(self, namespace: str, ids: Sequence[str]) -> list[MemoryItem]:
        return await self.inner.get(namespace, ids)

    async def count(self, namespace: str) -> int:
        return await self.inner.count(namespace)

    async def aclose(self) -> None:
        await self.inner.aclose()


LAG_TICK_S = 0.01  # each `lag_ticker` await


async def lag_ticker(sys: Any, seconds: float) -> list[tuple[float, float]]:
    """An app that makes short awaits for `seconds` and returns each one's (start, end): how
    much later than LAG_TICK_S each ended is the event loop's lag as a process feels it."""
    samples: list[tuple[float, float]] = []
    stop = time.perf_counter() + seconds
    for _ in range(int(seconds / LAG_TICK_S) + 1):  # bounded; the clock ends it first
        began = time.perf_counter()
        if began >= stop:
            break
        await sys.sleep(LAG_TICK_S)
        samples.append((began, time.perf_counter()))
    return samples
