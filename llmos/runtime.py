"""`Model` and `LLMOS`: a kernel in a background thread, for synchronous code.

    from llmos import LLMOS
    llmos_ = LLMOS()
    model = llmos_.load_model("smollm2")
    print(model.translate("你好，世界！", target_lang="en"))

The seed documents' API is synchronous, yet every call still runs as a process on a real
kernel: the kernel lives on its own event loop in a daemon thread (an anyio blocking
portal), one per model driver, and each sync call spawns an app there and blocks until it
ends. Calls made at once from several threads meet in that one kernel, so the engine
batches their generation as it does for any processes. A `Model` (what `llmos.load_model`
returns) is a driver and the LLMOS whose kernels run its calls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from llmos import plugins
from llmos.booting import boot, load_driver
from llmos.kernel import params
from llmos.kernel.kernel import Kernel
from llmos.kernel.loader import resolve_app
from llmos.kernel.model import ChatMessage, ModelDriver


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
        return (self._runtime or default_runtime()).run(self.driver, app, *args, **options)

    def __repr__(self) -> str:
        return f"<llmos.Model {self.name} context={self.context_length}>"


class AppFailed(RuntimeError):
    """The app behind a sync call was killed or ended abnormally without raising an error of its own."""


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


class LLMOS:
    """A kernel per model, on one background event loop; sync calls run there as processes."""

    def __init__(self, *, policy: str = params.DEFAULT_POLICY, max_batch: int = params.MAX_BATCH,
                 quantum: int = params.RR_QUANTUM_TOKENS) -> None:
        self._options = {"policy": policy, "max_batch": max_batch, "quantum": quantum}
        self._lock = threading.Lock()
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._kernels: dict[int, tuple[Kernel, AbstractContextManager[Kernel]]] = {}  # id(driver) -> kernel
        # Ended before the interpreter joins its threads, so no worker thread keeps it waiting.
        threading._register_atexit(self.close)  # type: ignore[attr-defined]

    def load_model(self, name: str | None = None) -> Model:
        """Load a model (see `llmos models`) whose calls run on this LLMOS's kernels (None: the
        library's default, else smollm2)."""
        from llmos.library import default_model

        return Model(load_driver(name or default_model()), runtime=self)

    def run(self, driver: ModelDriver, app: Any, *args: Any, **options: Any) -> Any:
        """Run `app(sys, *args, **options)` as a process on the kernel of `driver` and return
        its result; an error the app raised is raised here."""
        kernel = self.kernel(driver)
        name = app if isinstance(app, str) else getattr(app, "__name__", "app")
        outcome = self._started().call(_spawn_and_wait, kernel, resolve_app(plugins.lookup_app(app)), name, args,
                                       options)
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def kernel(self, driver: ModelDriver) -> Kernel:
        """The kernel serving `driver`, booted on first use."""
        with self._lock:
            if id(driver) not in self._kernels:
                booted = self._started().wrap_async_context_manager(boot(driver, **self._options))
                self._kernels[id(driver)] = (booted.__enter__(), booted)
            return self._kernels[id(driver)][0]

    def close(self) -> None:
        """End every kernel (and the processes on them) and the background thread. Idempotent."""
        with self._lock:
            kernels, self._kernels = list(self._kernels.values()), {}
            portal_cm, self._portal_cm, self._portal = self._portal_cm, None, None
        for _, booted in kernels:
            booted.__exit__(None, None, None)
        if portal_cm is not None:
            portal_cm.__exit__(None, None, None)

    def __enter__(self) -> LLMOS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _started(self) -> BlockingPortal:
        if self._portal is None:
            self._portal_cm = start_blocking_portal(name="llmos-kernel")
            self._portal = self._portal_cm.__enter__()
        return self._portal


async def _spawn_and_wait(kernel: Kernel, main: Any, name: str, args: tuple[Any, ...],
                          options: dict[str, Any]) -> _Outcome:
    async def call(sys: Any) -> _Outcome:
        try:
            return _Outcome(await main(sys, *args, **options))
        except Exception as exc:  # handed to the calling thread, to raise there as itself
            return _Outcome(error=exc)

    proc = await kernel.spawn(call, name=name)
    status = await kernel.wait(proc.pid)
    if status.ok:
        return status.result
    return _Outcome(error=AppFailed(f"process {status.pid} ({status.name}) {status.state.name}: {status.reason}"))


_default: LLMOS | None = None
_default_lock = threading.Lock()


def default_runtime() -> LLMOS:
    """The LLMOS that `llmos.load_model()` models run on, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LLMOS()
        return _default
