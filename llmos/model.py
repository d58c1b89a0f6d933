"""`llmos.load_model(...)`: the model library's face, for synchronous code.

A `Model` is synchronous, like the seed documents' examples; behind it, each call runs as
a process on a kernel in a background thread (llmos.runtime). A loaded model can also be
handed to `llmos.boot(model=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from llmos.drivers import DEFAULT_MODEL, load_driver
from llmos.drivers.registry import models
from llmos.drivers.weights import is_cached
from llmos.home import llmos_home
from llmos.kernel.model import ChatMessage, ModelDriver

if TYPE_CHECKING:
    from llmos.runtime import LLMOS


class Model:
    """A loaded model. Its methods are synchronous; each runs as a process on a kernel in a
    background thread (`runtime`, by default the one `llmos.load_model` models share), so
    calls from many threads at once are batched together."""

    def __init__(self, driver: ModelDriver, runtime: LLMOS | None = None) -> None:
        self.driver = driver
        self._runtime = runtime

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def context_length(self) -> int:
        return self.driver.context_length

    def generate_text(self, prompt: str, **sampling: Any) -> str:
        """Continue `prompt` as plain text. Sampling: max_tokens (default 256), temperature
        (0 = greedy, the default), top_p, seed, stop."""
        return self.run("llmos.apps.seed.text:complete", prompt, **sampling)

    def chat(self, message: str | Sequence[ChatMessage | dict[str, str]], *, system: str | None = None,
             **sampling: Any) -> str:
        """The assistant's reply to one message, or to a whole conversation."""
        turns = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
        turns = [ChatMessage.model_validate(t).model_dump() for t in turns]
        return self.run("llmos.apps.seed.text:converse", turns, system=system, **sampling)

    def translate(self, text: str, target_lang: str = "en") -> str:
        """`text` in another language: en, zh, fr, es, de or ja."""
        return self.run("translate", text, target_lang=target_lang)

    def summarize(self, text: str, **options: Any) -> str:
        """A short summary; long text is chunked and summarized map-reduce style."""
        return self.run("summarize", text, **options)

    def codegen(self, description: str, language: str = "python", **options: Any) -> str:
        """Code that does what `description` says (just the code, out of its fenced block)."""
        return self.run("codegen", description, language=language, **options)

    def qa(self, question: str, docs: str, **options: Any) -> str:
        """An answer to `question` from the text files under folder `docs`, naming its sources."""
        return self.run("qa", question, docs=docs, **options)

    def run(self, app: Any, *args: Any, **options: Any) -> Any:
        """Run any app (a registered name, a "module:attr" or a coroutine function) on this
        model as a process, and return its result."""
        from llmos.runtime import default_runtime  # the runtime imports this module

        return (self._runtime or default_runtime()).run(self.driver, app, *args, **options)

    def __repr__(self) -> str:
        return f"<llmos.Model {self.name} context={self.context_length}>"


Dtype = Literal["auto", "float32", "bfloat16"]


def load_model(name: str = DEFAULT_MODEL, *, dtype: Dtype | None = None) -> Model:
    """Load a model by name (`llmos models` lists them) or a local Hugging Face folder by path.

    `dtype` ("float32", "bfloat16" or "auto") sets the precision on the CPU; by default
    LLMOS_DTYPE, else bfloat16 where the CPU multiplies it natively, else float32.
    Raises `UnknownModel` (listing the names that exist), `ModelUnavailable`, or
    `ConfigError` for a dtype that is not one of those."""
    from llmos.drivers.transformers_driver import requested_dtype

    with requested_dtype(dtype):
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
