"""The `choose` syscall: pick among options by how well each fits a question, instead of
letting the model generate its pick.

Two signals, each where the kernel has it: the model's likelihood of each option as the
reply to the question (lm-evaluation-harness's multiple choice: the question's prompt is
computed once in the batching engine, an option of one token costs nothing more, the
longer ones one small pass together), as its mean log-probability per token so that a
long option is not penalised for its length; and the cosine similarity (MiniLM) between
the question and the option with its description, plus, where options come with
`examples` (requests each fits, as semantic routers keep them), the best similarity of the
question to one of them (an option without examples counts its description twice). An
option's score is the first plus params.CHOICE_MEANING_WEIGHT times the second;
`probabilities` are the scores' softmax. A kernel with an embedder but no model chooses by
meaning alone.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmos.kernel import capabilities, generation, params
from llmos.kernel.abi import Request
from llmos.kernel.decisions import DecisionPolicy
from llmos.kernel.errors import ModelError
from llmos.kernel.generation import GenerationService
from llmos.kernel.kernel import Kernel
from llmos.kernel.model import ChatMessage, Embedder, SamplingParams
from llmos.kernel.process import Process


class Choice(BaseModel):
    """What `choose` picked, and how sure it was of each option."""

    model_config = ConfigDict(frozen=True)

    option: str
    index: int
    probabilities: tuple[float, ...]  # per option, summing to 1
    logprobs: tuple[float, ...] | None  # per option: its total log-probability as the reply (None: no model)
    tokens: tuple[int, ...] | None  # per option: its length in the model's tokens
    similarities: tuple[float, ...] | None  # per option: cosine similarity to the question (None: no embedder)
    prompt_tokens: int
    model: str | None
    elapsed_s: float


class Choose(Request[Choice]):
    """The option the model finds the most likely reply to `question` (each option may
    have a description, shown to the model beside it), with a probability per option."""

    call: ClassVar[str] = "choose"
    capability: ClassVar[str | None] = capabilities.MODEL_GENERATE
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("question", "options")

    question: str = Field(min_length=1)
    options: tuple[str, ...] = Field(min_length=2, max_length=params.MAX_CHOICES)
    descriptions: tuple[str, ...] | None = None
    system: str | None = None
    examples: tuple[tuple[str, ...], ...] | None = None  # per option: requests it fits (may be empty)

    @model_validator(mode="after")
    def _distinct_options(self) -> Choose:
        if any(not option.strip() for option in self.options) or len(set(self.options)) < len(self.options):
            raise ValueError("'options' must be distinct and not blank")
        if self.descriptions is not None and len(self.descriptions) != len(self.options):
            raise ValueError("'descriptions' must give one description per option")
        if self.examples is not None and len(self.examples) != len(self.options):
            raise ValueError("'examples' must give one list of examples per option (an empty one for none)")
        if sum(len(e) for e in self.examples or ()) > params.MAX_CHOICE_EXAMPLES:
            raise ValueError(f"at most {params.MAX_CHOICE_EXAMPLES} examples in all")
        return self


def policy(kernel: Kernel) -> DecisionPolicy:
    if kernel.decisions is None:
        raise ModelError("this kernel has no decision policy; boot it with llmos.boot()")
    return kernel.decisions


async def service(kernel: Kernel, caller: Process) -> GenerationService:
    """The generation loop of the caller's model (another base's is loaded if need be)."""
    return await kernel.generation_for(caller)


class _Likelihood(NamedTuple):
    logprobs: list[float]  # total, per option
    tokens: list[int]
    prompt_tokens: int


async def likelihood(service: GenerationService, caller: Process, messages: Sequence[ChatMessage] | None,
                     options: Sequence[str], *, prompt: str | None = None) -> _Likelihood:
    """Each option's log-probability as the reply to `messages` (or as the continuation of a
    raw `prompt`), in the engine, on the caller's behalf."""
    job = await service.submit(caller, SamplingParams(max_tokens=1), prompt=prompt,
                               messages=tuple(messages) if messages is not None else None, options=tuple(options))
    try:
        done = await generation.result(job)
    finally:
        service.cancel(job)
    return _Likelihood([sum(lps) for lps in done.option_logprobs], list(map(len, done.option_ids)),
                       len(done.prompt_ids))


class _VectorCache:
    """The vectors of option texts (descriptions, examples), which recur from call to call
    (the same tools are offered again and again), kept per embedder, the newest
    params.CHOICE_VECTOR_CACHE of them: a tool choice embeds only its question."""

    def __init__(self) -> None:
        self._by_embedder: weakref.WeakKeyDictionary[Any, OrderedDict[str, Any]] = weakref.WeakKeyDictionary()

    async def of(self, embedder: Embedder, texts: Sequence[str]) -> list[Any]:
        cache = self._by_embedder.setdefault(embedder, OrderedDict())
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        if missing:
            for text, vector in zip(missing, await anyio.to_thread.run_sync(embedder.embed, missing), strict=True):
                cache[text] = vector
        for text in texts:
            cache.move_to_end(text)
        while len(cache) > params.CHOICE_VECTOR_CACHE:
            cache.popitem(last=False)
        return [cache[text] for text in texts]


_OPTION_VECTORS = _VectorCache()


async def similarity(embedder: Embedder, question: str, options: Sequence[str],
                     descriptions: Sequence[str] | None,
                     examples: Sequence[Sequence[str]] | None = None) -> list[float]:
    """Cosine similarity of the question to each option (with its description), plus its best
    similarity to one of the option's examples, if options have examples."""
    texts = [f"{o}: {d}" if d else o for o, d in zip(options, descriptions or [""] * len(options), strict=True)]
    flat = [example for group in examples or () for example in group]
    asked = (await anyio.to_thread.run_sync(embedder.embed, [question]))[0]
    cosines = [float(vector @ asked) for vector in await _OPTION_VECTORS.of(embedder, [*texts, *flat])]
    described, by_example = cosines[:len(options)], iter(cosines[len(options):])
    if examples is None:
        return described
    best = [max([next(by_example) for _ in group], default=None) for group in examples]
    return [d + (d if b is None else b) for d, b in zip(described, best, strict=True)]


async def decide(kernel: Kernel, caller: Process, question: str, options: Sequence[str],
                 descriptions: Sequence[str] | None = None, system: str | None = None,
                 examples: Sequence[Sequence[str]] | None = None) -> Choice:
    """The choice among `options`, by every signal the kernel has (see the module's docstring)."""
    began = time.perf_counter()
    if kernel.generation is None and kernel.embedder is None:
        raise ModelError("this kernel has neither a model nor an embedder to choose with")
    judged, scorer = None, None
    if kernel.generation is not None:
        scorer = await service(kernel, caller)
        messages = policy(kernel).choice_messages(question, options, descriptions, system)
        judged = await likelihood(scorer, caller, messages, options)
    meant = await similarity(kernel.embedder, question, options, descriptions, examples) if kernel.embedder else None
    scores = [0.0] * len(options)
    if judged is not None:
        scores = [total / n for total, n in zip(judged.logprobs, judged.tokens, strict=True)]
    if meant is not None:
        scores = [s + params.CHOICE_MEANING_WEIGHT * m for s, m in zip(scores, meant, strict=True)]
    peak = max(scores)
    weights = [math.exp(s - peak) for s in scores]
    index = scores.index(peak)
    return Choice(option=options[index], index=index, probabilities=tuple(w / sum(weights) for w in weights),
                  logprobs=tuple(judged.logprobs) if judged else None, tokens=tuple(judged.tokens) if judged else None,
                  similarities=tuple(meant) if meant is not None else None,
                  prompt_tokens=judged.prompt_tokens if judged else 0,
                  model=scorer.driver.name if scorer is not None else None,
                  elapsed_s=time.perf_counter() - began)


async def sys_choose(kernel: Kernel, caller: Process, req: Choose) -> Choice:
    return await decide(kernel, caller, req.question, req.options, req.descriptions, req.system, req.examples)


HANDLERS = {Choose: sys_choose}
