"""What the kernel needs from a model driver, and the generation job they share.

The kernel never imports torch: a driver (in llmos.drivers) implements `ModelDriver`
and the composition root plugs it in. `step` is awaited on the event loop; the driver
runs its tensor work on a thread of its own choosing (llmos.drivers.compute), so the
kernel stays responsive and holds no threading policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from llmos.kernel import params

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class SamplingParams(BaseModel):
    """Per-request decoding settings. temperature 0 means greedy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=params.DEFAULT_REPLY_TOKENS, ge=1, le=1_000_000)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)  # what a 64-bit generator seed holds
    stop: tuple[str, ...] = Field(default=(), max_length=16)
    # Constrain the reply to JSON that follows this schema: it always parses, unless
    # max_tokens cuts it short (finish_reason "length").
    json_schema: dict[str, Any] | None = None


@dataclass(eq=False)
class GenerationJob:
    """One generation request: the one record the generation service, the scheduler and
    the driver share, from submission until it finishes.

    Each part has its owner: the driver writes the progress fields during a step (on its
    compute thread); the scheduler the scheduling fields and the service the delivery
    fields, both on the event loop (the driver never reads those two).
    """

    id: int
    pid: int
    sampling: SamplingParams
    prompt: str | None = None  # raw completion...
    messages: tuple[ChatMessage, ...] | None = None  # ...or a chat, rendered by the driver
    # Score these continuations of the prompt instead of generating (the `choose` syscall):
    # the driver fills `option_logprobs`, one log-probability per token of each option.
    options: tuple[str, ...] | None = None
    # The LoRA adapter of the driver's model it runs with (a name the driver has loaded; set by
    # the driver of a derived model at `prepare`), None for the base model.
    adapter: str | None = None
    # Progress, written by the driver.
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    option_ids: list[list[int]] = field(default_factory=list)  # each option's tokens, set by `prepare`
    option_logprobs: list[list[float]] = field(default_factory=list)
    computed: int = 0  # prompt and reply tokens whose K/V the driver holds (kernel/blocks.py keeps them)
    finish_reason: FinishReason | None = None
    error: str | None = None
    cancelled: bool = False  # set by the kernel; the driver drops the job at its next step
    driver_state: Any = None  # a driver's own per-job state (its decoder, RNG...), kept across runs
    # Scheduling, written by the scheduler.
    priority: int = 0  # the owner's nice value: lower is served first under the priority policy
    arrival: int = 0  # order of arrival
    last_turn: int = -1  # round-robin: when it was last preempted (-1: never ran)
    turn_tokens: int = 0  # tokens decoded since it was last admitted
    # Delivery, written by the generation service.
    submitted_at: float = 0.0  # time.perf_counter() at submission
    first_token_at: float | None = None
    outbox: Any = None  # the service's channel to the owner: text pieces as they come, and the end

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def max_new_tokens(self) -> int:
        return self.sampling.max_tokens - len(self.token_ids)

@runtime_checkable
class Embedder(Protocol):
    """A sentence-embedding model (llmos.drivers.embeddings.MINILM): what the memory store
    searches with, and what `choose` measures meaning with."""

    def embed(self, texts: Sequence[str]) -> Any:
        """A (len(texts), dimensions) array of unit vectors, in the order of `texts`.
        Blocking: call it in a worker thread, never on the event loop."""


# Called by the driver (from its compute thread) with the text each job gained in a step.
EmitFn = Callable[[Sequence[tuple[GenerationJob, str]]], None]


class ModelDriver(Protocol):
    """A model the kernel serves. A driver that cannot score `options` (a model behind an
    OpenAI-compatible server, llmos.drivers.remote) says so with a class attribute
    `can_score = False`: its `prepare` refuses such jobs, and the composition root has
    tool choices generated as constrained JSON rather than scored. A driver that keeps K/V
    in blocks exposes its `kv` (kernel/blocks.py BlockManager): the kernel's scheduler then
    admits and preempts by its free blocks. A driver whose `prepare` does no I/O says so with
    `prepares_inline = True`: the kernel then prepares short jobs on its event loop, without
    a thread hop (kernel/generation.py `quick_to_prepare`), counting the `prepare_adds_chars`
    it says its `prepare` adds to a job's texts (a derived model's system prompt)."""

    name: str
    context_length: int  # tokens the model can attend to, prompt and reply together
    max_batch: int  # sequences it can hold at once; the scheduler never runs more

    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        """A chat prompt's token ids, the model's chat template and generation prompt
        applied; no checks. Blocking, and thread-safe."""

    def prepare(self, job: GenerationJob) -> None:
        """Tokenize the job's prompt into `job.prompt_ids` (unless they are set already: the
        caller rendered it with this driver before) and its `options` into `option_ids`;
        check the job (ContextOverflow if it cannot fit, InvalidRequest for a bad
        json_schema or an option of no tokens). Blocking, and thread-safe: the kernel calls it
        in a worker thread, or on its event loop for a job of short texts without a JSON schema
        where the driver says `prepares_inline = True` (it then never waits on I/O or a step)."""

    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        """Advance every job in `running` by at most one token, together, and set each
        finished job's `finish_reason` (a job with `options` is scored instead: options of
        one token with the prompt's last pass, the longer ones after it). Jobs it holds that
        are not in `running` are let go (preempted, cancelled); a job that comes back resumes
        where it stopped. Newcomers may spend several steps on their prompt before their
        first token."""


@runtime_checkable
class BurstingDriver(Protocol):
    """A driver that can also run several steps of one batch back to back on its own thread
    (`burst`): the kernel uses it when nothing waits for a slot, and saves the two thread
    hand-offs a step otherwise costs (about 0.6 ms a step on 2 cores: 5% of a 13 ms decode)."""

    async def burst(self, running: Sequence[GenerationJob], emit: EmitFn, go_on: Callable[[], bool],
                    max_steps: int) -> int:
        """Steps of `running`, as `step` does them, until `max_steps` are done or one of
        them ends a job (finished or cancelled), or `go_on()` says no, or a job's next step
        would find no free KV block; at least one. `emit` and `go_on` are called on the
        driver's thread, after each step. Returns the steps run."""
