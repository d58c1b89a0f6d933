"""What `llmos models list` and `llmos models show` print: every model llmos can load (built-in,
in the library, in models.toml), described from its files alone (config.json, safetensors
headers, chat template): listing loads no torch and no weights."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from llmos import plugins
from llmos.drivers import model_info, registry, remote_models
from llmos.drivers.errors import UnknownModel
from llmos.drivers.model_info import (REMOTE, FolderInfo, chat_template, folder_info, kept_quantizations,
                                      format_parameters, template_head, tool_format)
from llmos.drivers.remote_models import RemoteModel
from llmos.drivers.weights import is_cached
from llmos.home import llmos_home
from llmos.kernel.errors import ConfigError
from llmos.kernel.library import ModelCard, ModelRow
from llmos.library import (DerivedEntry, Entry, FolderEntry, GgufEntry, RemoteEntry, Library, default_model,
                           derivation, manifest_path, read_library)

GGUF_QUANT = re.compile(r"(?i)(?:^|[.\-_])((?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=\.gguf$)")


def list_models(home: Path | None = None, loaded: Collection[str] | None = None) -> list[ModelRow]:
    """Every model `load_model` knows. `loaded`: the names a running kernel has loaded (None:
    not known here, as in a fresh `llmos models` process)."""
    plugins.load()
    home = home or llmos_home()
    library = read_library(home)
    default = default_model(home).lower()
    rows = [*(_builtin_row(spec, home) for spec in registry.models()),
            *(_library_row(name, entry, library, home) for name, entry in sorted(library.models.items())),
            *(_remote_row(spec.name, "models.toml", config) for spec, config in _configured(home))]
    for row in rows:
        row.default = row.name.lower() == default
        if loaded is not None:
            row.loaded = "yes" if row.name in loaded else "no"
    return rows


def _configured(home: Path) -> list[tuple[registry.ModelSpec, RemoteModel]]:
    tables = remote_models.read_models(home / remote_models.CONFIG_FILE)
    return [(spec, tables[spec.name]) for spec in remote_models.configured(home)]


def _builtin_row(spec: registry.ModelSpec, home: Path) -> ModelRow:
    folder = spec.cache_folder(home)
    if is_cached(folder):
        return _folder_row(spec.name, "built-in", folder, _gguf_origin(spec.source.filename if spec.source else None))
    quant = _gguf_quant(spec.source.filename) if spec.source else None
    return ModelRow(name=spec.name, kind="built-in", dtype=f"{quant or ''} GGUF, unconverted".strip(),
                    location=f"pip {spec.source.pip_name}" if spec.source else "-")


def _gguf_origin(filename: str | None) -> str | None:
    """"SmolLM2-135M-Instruct.Q4_1.gguf" -> "from Q4_1 GGUF"."""
    if filename is None:
        return None
    quant = _gguf_quant(filename)
    return f"from {quant} GGUF" if quant else "from GGUF"


def _gguf_quant(filename: str) -> str | None:
    """The quantization a GGUF's file name states, as llama.cpp names them (Q4_1, Q4_K_M, F16...)."""
    found = GGUF_QUANT.search(filename)
    return found.group(1).upper() if found else None


def _folder_row(name: str, kind: str, folder: Path, origin: str | None = None) -> ModelRow:
    try:
        info = folder_info(folder)
    except ConfigError:
        return ModelRow(name=name, kind=kind, location=f"{folder} (missing or unreadable)")
    return _info_row(name, kind, info, str(folder), origin)


def _info_row(name: str, kind: str, info: FolderInfo, location: str, origin: str | None = None) -> ModelRow:
    dtype = info.dtype or "-"
    if info.quantization:
        dtype = f"{info.quantization} ({dtype})"
    if origin:
        dtype = f"{dtype}, {origin}"
    return ModelRow(name=name, kind=kind, architecture=info.architecture or "-",
                    parameters=format_parameters(info.parameters),
                    context_length=str(info.context_length) if info.context_length else "-", dtype=dtype,
                    location=location, driver=info.driver)


def _library_row(name: str, entry: Entry, library: Library, home: Path) -> ModelRow:
    if isinstance(entry, FolderEntry):
        return _folder_row(name, "folder", Path(entry.path))
    if isinstance(entry, GgufEntry):
        return _folder_row(name, "gguf", Path(entry.folder), _gguf_origin(Path(entry.source).name))
    if isinstance(entry, RemoteEntry):
        return _remote_row(name, "remote", entry.remote)
    return _derived_row(name, entry, library, home)


def _derived_row(name: str, entry: DerivedEntry, library: Library, home: Path) -> ModelRow:
    try:
        root = derivation(name, entry, home)[-1][1].base
    except ConfigError:
        return ModelRow(name=name, kind="derived", location="(derives from itself: see the manifest)")
    base = _base_row(root, library, home)
    return base.model_copy(update={"name": name, "kind": "derived", "location": f"from {entry.base}"})


def _base_row(root: str, library: Library, home: Path) -> ModelRow:
    found = library.find(root)
    if found is not None:
        return _library_row(found[0], found[1], library, home)
    spec = _builtin(root)
    if spec is not None:
        return _builtin_row(spec, home)
    remote = remote_models.lookup(root, home)
    return ModelRow(name=root, kind="remote", driver=REMOTE) if remote is not None else ModelRow(name=root, kind="?")


def _builtin(name: str) -> registry.ModelSpec | None:
    try:
        return registry.find_model(name)
    except ConfigError:
        return None


def _remote_row(name: str, kind: str, config: RemoteModel) -> ModelRow:
    return ModelRow(name=name, kind=kind, context_length=str(config.context_length) if config.context_length else "-",
                    dtype="(the server's)", location=f"{config.model or 'its only model'} at {config.base_url}",
                    driver=REMOTE)


# -- one model in detail ---------------------------------------------------------------------------------
def show(name: str, home: Path | None = None) -> ModelCard:
    """The model's configuration, chat template, tool format; for a derived model, its
    system prompt, sampling defaults and adapter too."""
    home = home or llmos_home()
    row = _row(name, home)
    library = read_library(home)
    card = ModelCard(name=row.name, facts=_facts(row))
    folder = _weights_folder(row.name, library, home)
    if folder is not None and folder.is_dir():
        _describe_folder(card, folder)
    found = library.find(row.name)
    if found is not None and isinstance(found[1], DerivedEntry):
        _describe_derived(card, found[0], found[1], home)
    return card


def forget_quantizations(name: str, home: Path | None = None) -> int:
    """Forget what loads of `name` measured on this machine (its next load measures again);
    how many choices were kept. A `ConfigError` for a model without weights here (remote),
    `UnknownModel` for a name no one knows."""
    home = home or llmos_home()
    folder = _weights_folder(_row(name, home).name, read_library(home), home)
    if folder is None:
        raise ConfigError(f"{name} has no weights here to quantize (a remote model)")
    return model_info.forget_quantizations(folder)


def _row(name: str, home: Path) -> ModelRow:
    """`name`'s row of `list_models` (any case); `UnknownModel` if there is none."""
    plugins.load()
    row = next((r for r in list_models(home) if r.name.lower() == name.lower()), None)
    if row is None:
        raise UnknownModel(f"no model named {name!r} (see `llmos models list`)")
    return row


def _facts(row: ModelRow) -> list[tuple[str, str]]:
    facts = [("kind", row.kind), ("architecture", row.architecture), ("parameters", row.parameters),
             ("context length", row.context_length), ("weights", row.dtype), ("location", row.location),
             ("driver", row.driver)]
    return [*facts, ("default", "yes")] if row.default else facts


def _weights_folder(name: str, library: Library, home: Path) -> Path | None:
    """The safetensors folder the model (or its root base) loads from, if it has one."""
    found = library.find(name)
    if found is None:
        spec = _builtin(name)
        return spec.cache_folder(home) if spec is not None else None
    entry = found[1]
    if isinstance(entry, FolderEntry):
        return Path(entry.path)
    if isinstance(entry, GgufEntry):
        return Path(entry.folder)
    if isinstance(entry, DerivedEntry):
        try:
            return _weights_folder(derivation(found[0], entry, home)[-1][1].base, library, home)
        except ConfigError:
            return None
    return None


def _describe_folder(card: ModelCard, folder: Path) -> None:
    try:
        info = folder_info(folder)
    except ConfigError:
        return
    card.facts += [("layers", str(info.layers or "-")), ("hidden size", str(info.hidden_size or "-")),
                   ("vocabulary", str(info.vocab_size or "-")), ("model type", info.model_type or "-")]
    # What a load measured on this machine and kept (the next load takes it as it is).
    card.facts += [(f"quantization ({asked})", chosen) for asked, chosen in kept_quantizations(folder)]
    template = chat_template(folder)
    card.chat_template = template_head(template)
    card.tool_format = tool_format(template)


def _describe_derived(card: ModelCard, name: str, entry: DerivedEntry, home: Path) -> None:
    chain = derivation(name, entry, home)
    card.facts.insert(1, ("derived from", " -> ".join([*(n for n, _ in chain[1:]), chain[-1][1].base])))
    card.system = next((link.system for _, link in chain if link.system is not None), None)
    for _, link in reversed(chain):
        card.params.update(link.params.model_dump(exclude_none=True))
    card.adapters = [link.adapter for _, link in chain if link.adapter is not None]
