"""`llmos.load_model(...)`: the model library's face, for use without a kernel.

A `Model` is synchronous, like the seed documents' examples. It drives the same driver a
kernel would, so a loaded model can also be handed to `llmos.boot(model=...)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from llmos.drivers import DEFAULT_MODEL, load_driver
from llmos.drivers.registry import models
from llmos.drivers.weights import is_cached
from llmos.home import llmos_home
from llmos.kernel.model import ChatMessage, GenerationJob, ModelDriver, SamplingParams

_job_ids = itertools.count(1)


class Model:
    def __init__(self, driver: ModelDriver) -> None:
        self.driver = driver

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def context_length(self) -> int:
        return self.driver.context_length

    def generate_text(self, prompt: str, **sampling: Any) -> str:
        """Continue `prompt` as plain text. Sampling: max_tokens (default 256), temperature
        (0 = greedy, the default), top_p, seed, stop."""
        return self._run(GenerationJob(id=next(_job_ids), pid=0, sampling=SamplingParams(**sampling),
                                       prompt=prompt))

    def chat(self, message: str | Sequence[ChatMessage | dict[str, str]], *, system: str | None = None,
             **sampling: Any) -> str:
        """The assistant's reply to one message, or to a whole conversation."""
        turns = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
        if system is not None:
            turns.insert(0, {"role": "system", "content": system})
        messages = tuple(ChatMessage.model_validate(t) for t in turns)
        return self._run(GenerationJob(id=next(_job_ids), pid=0, sampling=SamplingParams(**sampling),
                                       messages=messages))

    def _run(self, job: GenerationJob) -> str:
        self.driver.prepare(job)
        while not job.finished:
            self.driver.step([job], lambda pieces: None)
        return job.text

    def __repr__(self) -> str:
        return f"<llmos.Model {self.name} context={self.context_length}>"


def load_model(name: str = DEFAULT_MODEL) -> Model:
    """Load a model by name (`llmos models` lists them) or a local Hugging Face folder by path.

    Raises `UnknownModel` (listing the names that exist) or `ModelUnavailable`."""
    return Model(load_driver(name, llmos_home()))  # type: ignore[arg-type]


class ModelListing(BaseModel):
    name: str
    aliases: tuple[str, ...]
    description: str
    cached: bool  # weights are ready under LLMOS_HOME: loading takes about a second


def available_models() -> list[ModelListing]:
    """The models `load_model` knows, and whether each is ready on this machine."""
    home = llmos_home()
    return [ModelListing(name=s.name, aliases=s.aliases, description=s.description,
                         cached=is_cached(s.cache_folder(home))) for s in models()]
