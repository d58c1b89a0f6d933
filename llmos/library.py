"""The model library: the models a user imported, derived or added, in a manifest under
LLMOS_HOME, beside the built-in ones (the plugins' ModelSpecs, llmos.drivers.registry) and
the remote ones of LLMOS_HOME/models.toml (llmos.drivers.remote_models).

The manifest, LLMOS_HOME/library.json, holds one entry per name:

- "folder": a local Hugging Face folder, by reference (never copied, never deleted);
- "gguf": a GGUF file de-quantized once into LLMOS_HOME/models/NAME/ (deleted with the entry);
- "derived": another model with its own system prompt, default sampling settings and adapter;
- "remote": an OpenAI-compatible server, as a [models.NAME] table of models.toml says it;

and which model loads when none is named (`llmos models default`). It lives beside
LLMOS_HOME/models, not in it: the weights cache may be shared between homes (the test suite
shares one), a home's library never is. It is read at every lookup (as models.toml is), and
written whole: a temporary file renamed over it, under a lock, so readers never see half of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from llmos import plugins
from llmos.drivers import DEFAULT_MODEL, compute, registry, remote_models
from llmos.drivers.errors import ModelUnavailable, UnknownModel
from llmos.drivers.model_info import has_tokenizer, read_config
from llmos.drivers.remote_models import RemoteModel
from llmos.drivers.weights import convert_gguf, ensure_cached, is_cached
from llmos.home import llmos_home
from llmos.kernel.errors import ConfigError
from llmos.kernel.model import SamplingParams

MANIFEST = "library.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # no "/" (a path) and no ":" ("openai:...")
PARAM_NAMES = ("temperature", "top_p", "max_tokens", "stop", "seed")  # what a derived model may preset
MAX_DERIVED_DEPTH = 16  # a hand-edited manifest may chain derived models in a loop


# -- the manifest ------------------------------------------------------------------------------------
def _optional(name: str) -> tuple[Any, None]:
    """SamplingParams' field `name`, with its ranges, made optional (None: not preset)."""
    info = SamplingParams.model_fields[name]
    return Annotated[info.annotation, *info.metadata] | None, None  # type: ignore[valid-type]


SamplingDefaults = create_model("SamplingDefaults", __config__=ConfigDict(extra="forbid", frozen=True),
                                **{name: _optional(name) for name in PARAM_NAMES})  # type: ignore[call-overload]


class FolderEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["folder"] = "folder"
    path: str = Field(min_length=1)  # absolute


class GgufEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gguf"] = "gguf"
    source: str  # the GGUF it came from (it may be gone since: the folder is what loads)
    folder: str = Field(min_length=1)  # the de-quantized safetensors, under LLMOS_HOME/models


class DerivedEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["derived"] = "derived"
    base: str = Field(min_length=1)
    system: str | None = None
    params: SamplingDefaults = Field(default_factory=SamplingDefaults)  # type: ignore[valid-type]
    adapter: str | None = None  # a PEFT LoRA folder, absolute (served by the base's engine: drivers/lora.py)


class RemoteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["remote"] = "remote"
    remote: RemoteModel


Entry = Annotated[FolderEntry | GgufEntry | DerivedEntry | RemoteEntry, Field(discriminator="kind")]


class Library(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    default: str | None = None
    models: dict[str, Entry] = Field(default_factory=dict)

    def find(self, name: str) -> tuple[str, Entry] | None:
        """The entry called `name` (any case) and its name as spelled in the manifest."""
        wanted = name.lower()
        return next(((key, entry) for key, entry in self.models.items() if key.lower() == wanted), None)


def manifest_path(home: Path) -> Path:
    return home / MANIFEST


def read_library(home: Path | None = None) -> Library:
    """The manifest (an empty library if there is none); ConfigError naming the file and the
    entry for a bad one."""
    path = manifest_path(home or llmos_home())
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Library()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
    try:
        return Library.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


def write_library(library: Library, home: Path | None = None) -> None:
    """Replace the manifest atomically: a reader sees the old one or the new one, whole."""
    path = manifest_path(home or llmos_home())
    text = library.model_dump_json(indent=2, exclude_defaults=False) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}-", delete=False) as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


@contextmanager
def editing(home: Path | None = None) -> Iterator[Library]:
    """The library to change, written back when the block ends without an error. One writer
    at a time (a lock file beside it), so two `llmos models` commands lose neither's change."""
    home = home or llmos_home()
    with (home / f"{MANIFEST}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        library = read_library(home)
        yield library
        write_library(library, home)


# -- names ---------------------------------------------------------------------------------------------
def builtin(name: str) -> registry.ModelSpec | None:
    """The registered (built-in or plugin) model called `name` or one of its aliases."""
    plugins.load()
    try:
        return registry.find_model(name)
    except UnknownModel:
        return None


def _check_new_name(name: str, library: Library, home: Path) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{name!r} is not a model name: letters, digits, '.', '_' and '-', at most 64, "
                          "starting with a letter or digit")
    if builtin(name) is not None:
        raise ConfigError(f"{name!r} is a built-in model's name; choose another")
    if remote_models.lookup(name, home) is not None:
        raise ConfigError(f"{name!r} is taken by {home / remote_models.CONFIG_FILE}; choose another")
    if library.find(name) is not None:
        raise ConfigError(f"the library has a model named {name!r} already (llmos models rm {name} first)")


def _entry(library: Library, name: str, home: Path) -> tuple[str, Entry]:
    found = library.find(name)
    if found is None:
        known = ", ".join(sorted(library.models)) or "none yet"
        raise UnknownModel(f"the library ({manifest_path(home)}) has no model named {name!r}; its models: {known}")
    return found


def known(name: str, library: Library, home: Path) -> bool:
    """Whether `name` loads: a library entry, a built-in model or a remote one."""
    return library.find(name) is not None or builtin(name) is not None or remote_models.lookup(name, home) is not None


def default_model(home: Path | None = None) -> str:
    """The model loaded when none is named: the library's default if set, else smollm2."""
    return read_library(home).default or DEFAULT_MODEL


# -- changing the library ----------------------------------------------------------------------------
def import_path(path: Path, name: str | None = None, home: Path | None = None,
                convert: Callable[[Path, Path], None] = convert_gguf) -> str:
    """Add a Hugging Face folder (by reference) or a .gguf file (de-quantized into
    LLMOS_HOME/models/NAME/); the name defaults to the folder's or file's. Returns the name."""
    home = home or llmos_home()
    path = path.expanduser().resolve()
    name = name or _name_from(path)
    if path.is_dir():
        _check_folder(path)
        with editing(home) as library:
            _check_new_name(name, library, home)
            library.models[name] = FolderEntry(path=str(path))
        return name
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _import_gguf(path, name, home, convert)
    raise ConfigError(f"{path}: expected a Hugging Face model folder (config.json, *.safetensors, tokenizer) "
                      "or a .gguf file")


def _name_from(path: Path) -> str:
    stem = path.stem if path.suffix.lower() == ".gguf" else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._").lower() or "model"


def _check_folder(path: Path) -> None:
    read_config(path)  # ConfigError naming the file if it is missing or not JSON
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"{path}: no *.safetensors weights (llmos loads safetensors only)")
    if not has_tokenizer(path):
        raise ConfigError(f"{path}: no tokenizer (tokenizer.json, tokenizer.model or tokenizer_config.json)")


def _import_gguf(path: Path, name: str, home: Path, convert: Callable[[Path, Path], None]) -> str:
    with editing(home) as library:  # the name first: a long conversion for a name taken is a waste
        _check_new_name(name, library, home)
    folder = home / "models" / name
    if not is_cached(folder):
        convert(path, folder)
    with editing(home) as library:
        _check_new_name(name, library, home)  # taken meanwhile: the converted folder stays for a retry
        library.models[name] = GgufEntry(source=str(path), folder=str(folder))
    return name


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`--param k=v` words as sampling defaults: `stop` may repeat; ConfigError for a name
    SamplingParams lacks or a value out of its range."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or key not in PARAM_NAMES:
            raise ConfigError(f"--param {pair!r}: expected NAME=VALUE with NAME one of {', '.join(PARAM_NAMES)}")
        if key == "stop":
            values.setdefault("stop", []).append(value)
        else:
            values[key] = value
    return validate_params(values)


def validate_params(values: dict[str, Any]) -> dict[str, Any]:
    try:
        return SamplingDefaults.model_validate(values).model_dump(exclude_none=True)  # type: ignore[attr-defined]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"parameter {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def create(name: str, base: str, *, system: str | None = None, adapter: Path | None = None,
           params: dict[str, Any] | None = None, home: Path | None = None, replace: bool = False) -> None:
    """A derived model: `base` with its own system prompt, sampling defaults and adapter.
    `replace`: a derived model already called `name` is replaced (any other entry is an error)."""
    home = home or llmos_home()
    adapter_path = _check_adapter(adapter) if adapter is not None else None
    defaults = validate_params(params or {})
    with editing(home) as library:
        if replace:
            _drop_derived(library, name)
        _check_new_name(name, library, home)
        if not known(base, library, home):
            raise UnknownModel(f"no model named {base!r} to derive {name!r} from (see `llmos models list`)")
        library.models[name] = DerivedEntry(base=base, system=system, params=defaults, adapter=adapter_path)


def check_new_name(name: str, home: Path | None = None, *, replace: bool = False) -> None:
    """ConfigError unless `create(name, ..., replace=replace)` may use `name`: checked before
    long work (a fine-tuning run) whose result is registered under it."""
    home = home or llmos_home()
    library = read_library(home)
    if replace:
        _drop_derived(library, name)
    _check_new_name(name, library, home)


def _drop_derived(library: Library, name: str) -> None:
    found = library.find(name)
    if found is not None and isinstance(found[1], DerivedEntry):
        del library.models[found[0]]


def _check_adapter(adapter: Path) -> str:
    folder = adapter.expanduser().resolve()
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"{folder}: not a PEFT adapter folder (it has no adapter_config.json)")
    return str(folder)


def add_remote(name: str, url: str, *, model_id: str | None = None, api_key_env: str | None = None,
               home: Path | None = None) -> None:
    """A model an OpenAI-compatible server serves, as a models.toml table would configure it."""
    home = home or llmos_home()
    try:
        remote = RemoteModel(base_url=url, model=model_id, api_key_env=api_key_env)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, first['loc']))}: {first['msg']} (--url is http(s)://host:port/v1)") \
            from None
    with editing(home) as library:
        _check_new_name(name, library, home)
        library.models[name] = RemoteEntry(remote=remote)


def copy(source: str, destination: str, home: Path | None = None) -> None:
    """A second name for a library model (its entry, copied: weights are shared, not copied).
    A built-in or models.toml model is copied as a derived model with nothing changed."""
    home = home or llmos_home()
    with editing(home) as library:
        _check_new_name(destination, library, home)
        found = library.find(source)
        if found is not None:
            library.models[destination] = found[1]
        elif known(source, library, home):
            library.models[destination] = DerivedEntry(base=source)
        else:
            _entry(library, source, home)  # the error, listing the library's models


def remove(name: str, home: Path | None = None) -> str:
    """Remove a library model; an imported GGUF's converted folder goes too (unless another
    entry uses it), a Hugging Face folder never does. Returns what was done, for the user."""
    home = home or llmos_home()
    if builtin(name) is not None and read_library(home).find(name) is None:
        raise ConfigError(f"{name!r} is a built-in model: it cannot be removed")
    with editing(home) as library:
        key, entry = _entry(library, name, home)
        users = sorted(k for k, e in library.models.items() if isinstance(e, DerivedEntry) and e.base.lower() == key.lower())
        if users:
            raise ConfigError(f"{key!r} is the base of {', '.join(users)}: remove those first")
        del library.models[key]
        if library.default is not None and library.default.lower() == key.lower():
            library.default = None
        shared = isinstance(entry, GgufEntry) and any(
            isinstance(e, GgufEntry) and e.folder == entry.folder for e in library.models.values())
    if isinstance(entry, GgufEntry) and not shared:
        shutil.rmtree(entry.folder, ignore_errors=True)
        return f"removed {key} and its converted weights ({entry.folder})"
    if isinstance(entry, FolderEntry):
        return f"removed {key} (its folder {entry.path} is left as it was)"
    return f"removed {key}"


def set_default(name: str | None, home: Path | None = None) -> None:
    """The model loaded when none is named (None: back to smollm2)."""
    home = home or llmos_home()
    with editing(home) as library:
        if name is not None and not known(name, library, home):
            raise UnknownModel(f"no model named {name!r} (see `llmos models list`)")
        found = library.find(name) if name is not None else None
        library.default = found[0] if found is not None else name


# -- loading -------------------------------------------------------------------------------------------
class NoLocalFolder(ConfigError):
    """The model has no Hugging Face folder on this machine to train from: a remote model, a
    derived one (its base has), or a registered model whose weights llmos does not fetch."""


def local_folder(name: str, home: Path | None = None) -> Path:
    """The Hugging Face folder (config.json, safetensors, tokenizer) of the local model `name`,
    resolved in `llmos.booting.load_driver`'s order: remote, registered name or folder path,
    then the library. A registered model's GGUF is de-quantized first if it is not yet."""
    home = home or llmos_home()
    plugins.load()
    if remote_models.lookup(name, home) is not None:
        raise NoLocalFolder(f"{name!r} is a remote model: its weights are on its server, not here")
    path = Path(name).expanduser()
    if path.is_dir():
        return _cached_folder(path.resolve(), name)
    spec = builtin(name)
    if spec is not None:
        if spec.source is None:
            raise NoLocalFolder(f"{spec.name!r} is registered without a GGUF source: llmos does not know its folder "
                                "(import its Hugging Face folder with `llmos models import` and use that name)")
        ensure_cached(spec.source, spec.cache_folder(home))
        return spec.cache_folder(home)
    key, entry = _entry(read_library(home), name, home)
    if isinstance(entry, FolderEntry):
        return _cached_folder(Path(entry.path), key)
    if isinstance(entry, GgufEntry):
        return _cached_folder(Path(entry.folder), key)
    if isinstance(entry, DerivedEntry):
        raise NoLocalFolder(f"{key!r} is a derived model (of {entry.base!r}): name a model with weights of its own")
    raise NoLocalFolder(f"{key!r} is a remote model: its weights are on its server, not here")


def _cached_folder(folder: Path, name: str) -> Path:
    if not is_cached(folder):
        raise ModelUnavailable(f"{name!r}: {folder} holds no config.json and *.safetensors")
    return folder


def lookup(name: str, home: Path) -> tuple[str, Entry] | None:
    """The library entry a name loads, or None: built-in names and folder paths come first
    (a corrupt manifest then stops no built-in model from loading)."""
    if builtin(name) is not None or Path(name).expanduser().is_dir():
        return None
    return read_library(home).find(name)


def load(name: str, entry: Entry, home: Path, load_other: Callable[[str], Any]) -> Any:
    """The driver of the library model `name`; `load_other` loads a derived model's base
    when that is not a library model of its own (a built-in or remote one). Blocking."""
    if isinstance(entry, DerivedEntry):
        return _load_derived(name, entry, home, load_other)
    if isinstance(entry, RemoteEntry):
        return entry.remote.driver(name, f"{manifest_path(home)} [{name}]")
    folder = Path(entry.path if isinstance(entry, FolderEntry) else entry.folder)
    if not is_cached(folder):
        what = (f"its folder {folder} is gone or holds no config.json and *.safetensors" if isinstance(entry, FolderEntry)
                else f"its converted weights {folder} are gone; import {entry.source} again")
        raise ModelUnavailable(f"library model {name!r}: {what} (or `llmos models rm {name}`)")
    from llmos.drivers.transformers_driver import load_transformers_folder  # torch loads here

    return compute.call(load_transformers_folder, folder, name=name)


def _load_derived(name: str, entry: DerivedEntry, home: Path, load_other: Callable[[str], Any],
                  base: Any = None) -> Any:
    """`base`: the root base's driver, when it is loaded already (a kernel's)."""
    from llmos.drivers.derived import DerivedDriver

    chain = derivation(name, entry, home)
    # The nearest adapter counts, served under the name of the model that declares it, so the
    # models derived from one fine-tune share its weights in the engine.
    adapter = next(((link_name, Path(link.adapter)) for link_name, link in chain if link.adapter is not None), None)
    if adapter is not None:
        if not adapter[1].is_dir():
            raise ModelUnavailable(f"library model {name!r}: its adapter folder {adapter[1]} is gone (or "
                                   f"`llmos models rm {adapter[0]}`)")
        from llmos.drivers.lora import read_config

        read_config(adapter[1])  # a bad adapter fails before its base loads
    system = next((link.system for _, link in chain if link.system is not None), None)
    params: dict[str, Any] = {}
    for _, link in reversed(chain):  # the nearer the derivation, the later it writes, the more it counts
        params.update(link.params.model_dump(exclude_none=True))
    root = chain[-1][1].base
    if base is None:
        found = read_library(home).find(root)
        base = load(found[0], found[1], home, load_other) if found is not None else load_other(root)
    return DerivedDriver(name, base, system=system, sampling=params, adapter=adapter)


def load_variant(name: str, running: Any, home: Path) -> Any:
    """A driver for the library model `name` over the model a kernel runs (`running`: its
    driver; a derived model's driver counts as its base): `name` must derive from that base,
    its system prompt, defaults and adapter applied by the variant, the base's engine shared.
    Blocking (it may read an adapter's weights)."""
    from llmos.drivers.derived import DerivedDriver

    engine = running.base if isinstance(running, DerivedDriver) else running
    if name == engine.name:
        return engine
    found = read_library(home).find(name)
    if found is None or not isinstance(found[1], DerivedEntry):
        raise UnknownModel(f"{name!r} is not a derived model of the library (`llmos models create` / "
                           f"`llmos finetune` make them): a kernel serves variants of {engine.name!r} only")
    chain = derivation(found[0], found[1], home)
    root = chain[-1][1].base
    if root != engine.name:
        raise ModelUnavailable(f"{found[0]!r} derives from {root!r}; this kernel runs {engine.name!r} "
                               "(one base model per kernel)")
    return _load_derived(found[0], found[1], home, lambda base: engine, base=engine)


def root_base(name: str, home: Path) -> str:
    """The base model `name` runs on: the root of a derived model's derivation, else `name`
    itself (a built-in, library, remote or plugin model, or a model folder's path)."""
    library = read_library(home)
    found = library.find(name)
    if found is not None and isinstance(found[1], DerivedEntry):
        return derivation(found[0], found[1], home)[-1][1].base
    if found is not None:
        return found[0]
    if known(name, library, home) or Path(name).expanduser().is_dir():
        return name
    raise UnknownModel(f"no model named {name!r} (see `llmos models list`)")


def variants_of(base: str, home: Path) -> list[str]:
    """The library's derived models whose root base is `base` (what a kernel running it can
    serve beside it: Kernel.set_model); a broken entry is left out, not raised."""
    library = read_library(home)
    names = []
    for name, entry in library.models.items():
        if isinstance(entry, DerivedEntry):
            try:
                if derivation(name, entry, home)[-1][1].base == base:
                    names.append(name)
            except ConfigError:
                continue
    return sorted(names)


def derivation(name: str, entry: DerivedEntry, home: Path) -> list[tuple[str, DerivedEntry]]:
    """The derived models from `name` down to the first base that is not one."""
    library = read_library(home)
    chain = [(name, entry)]
    while (found := library.find(chain[-1][1].base)) is not None and isinstance(found[1], DerivedEntry):
        if len(chain) >= MAX_DERIVED_DEPTH or any(found[0] == seen for seen, _ in chain):
            raise ConfigError(f"{manifest_path(home)}: {name!r} derives from itself ({' -> '.join(n for n, _ in chain)})")
        chain.append(found)
    return chain
