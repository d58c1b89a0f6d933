"""The `llmos` command. Only assembles commands: the work is in library modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import anyio
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

import llmos
from llmos import plugins
from llmos.home import DATABASE_ENV
from llmos.finetune import DEFAULT_EPOCHS, FinetuneSettings
from llmos.library import default_model
from llmos.model import Quant
from llmos.apps import audit_cli, daemon_cli, demo, durable_cli, models_cli, registry, runner, tools
from llmos.apps.shell import views
from llmos.server.client import ClientError
from llmos.syscalls import DEFAULT_APP_CAPS, RestartPolicy, SyscallError

app = typer.Typer(help="llmos: an operating system for language-model agents.", no_args_is_help=True,
                  add_completion=False)
err = Console(stderr=True, soft_wrap=True)

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (see `llmos models`) or folder "
                                                 "(default: `llmos models default`, else smollm2).")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="Scheduling policy: fifo, priority or rr.")]
FINETUNE = FinetuneSettings()  # `llmos finetune`'s defaults


@app.callback()
def _options(quant: Annotated[Optional[Quant], typer.Option(
        "--quant", case_sensitive=False, help="Weights of the model's decode steps in a kernel this command boots "
        "(LLMOS_QUANT; default auto: measured on this CPU).")] = None,
             kv_cache_mb: Annotated[Optional[int], typer.Option(
        "--kv-cache-mb", metavar="MB", min=1, help="KV memory of a model this command loads, for running agents "
        "and cached prefixes alike (LLMOS_KV_CACHE_MB; default 4096, committed as it is used).")] = None) -> None:
    # Both are read where the model loads (drivers/), here or in a child process.
    if quant is not None:
        os.environ["LLMOS_QUANT"] = quant
    if kv_cache_mb is not None:
        os.environ["LLMOS_KV_CACHE_MB"] = str(kv_cache_mb)


# Words after APP belong to the app (`llmos run qa --docs notes/ "question"`), as with `docker run`.
APP_ARGS = {"allow_interspersed_args": False, "ignore_unknown_options": True}


@app.command(context_settings=APP_ARGS)
def run(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="An app name (`llmos apps`), path/to/app.py:main "
                                           "or package.module:main")],
    args: Annotated[Optional[list[str]], typer.Argument(help="Arguments of the app; --name value words "
                                                        "become keyword arguments.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (see `llmos models`) or folder "
                                                 "(default: `llmos models default`, else smollm2; with a daemon, the "
                                                 "one it serves).")] = None,
    policy: PolicyOpt = "fifo",
    no_model: Annotated[bool, typer.Option("--no-model", help="Boot without a model.")] = False,
    cap: Annotated[Optional[list[str]], typer.Option("--cap", help="Grant only these capabilities.")] = None,
    allow: Annotated[Optional[list[str]], typer.Option("--allow", metavar="CAP", help="Grant this capability "
                                                       "beside the defaults (tool.run_python, tool.write_file, "
                                                       "net, ...).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Token quota of the process.")] = None,
    deadline: Annotated[Optional[float], typer.Option(help="Seconds before the process is killed.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Boot a kernel in this process even if a daemon "
                                        "answers at LLMOS_URL.")] = False,
    remote: Annotated[Optional[str], typer.Option("--remote", metavar="URL", help="Run APP in this process with "
                                                  "its syscalls served by the daemon at URL.")] = None,
    durable: Annotated[bool, typer.Option("--durable", help="Survive the kernel: every syscall is recorded, and "
                                          "the next boot goes on from where it stopped.")] = False,
    restart: Annotated[Optional[str], typer.Option("--restart", metavar="never|on-failure|always",
                                                   help="Restart the (durable) process when it ends.")] = None,
    max_restarts: Annotated[int, typer.Option(help="With --restart: at most this many restarts ...")]
    = RestartPolicy().max_restarts,
    within: Annotated[float, typer.Option(help="... within this many seconds, else it fails for good.")]
    = RestartPolicy().within_s,
) -> None:
    """Run APP as a process and print its result; exit with its status. With a daemon
    (`llmos serve`, at LLMOS_URL or http://127.0.0.1:8000) the process runs there; else a
    kernel boots in this process."""
    quotas = {"max_tokens": max_tokens, "deadline_s": deadline}
    caps = (frozenset(cap) if cap else DEFAULT_APP_CAPS) | frozenset(allow or ())
    argv = list(args or [])
    console = runner.StdioConsole()
    if durable or restart is not None:
        try:
            restart_policy = RestartPolicy(restart=restart or "never", max_restarts=max_restarts, within_s=within)
        except ValidationError as exc:
            raise typer.BadParameter(f"--restart is never, on-failure or always; --max-restarts >= 0; --within > 0 "
                                     f"({exc.error_count()} wrong)") from None
        _run_durable(app_ref, argv, model=model, no_model=no_model, policy=policy, caps=caps, quotas=quotas,
                     restart=restart_policy, local=local, console=console)
    if remote is not None:
        _refuse_kernel_options(remote, no_model=no_model, policy=policy)
        status = _guard(lambda: anyio.run(lambda: daemon_cli.run_remote_app(remote, app_ref, argv, caps=caps,
                                                                             quotas=quotas, console=console)))
    elif (client := _guard(lambda: daemon_cli.daemon(local))) is not None:
        _refuse_kernel_options(client.url, no_model=no_model, policy=policy)
        status = _guard(lambda: anyio.run(lambda: daemon_cli.run_in_daemon(client, app_ref, argv, model=model,
                                                                            caps=caps, quotas=quotas,
                                                                            console=console)))
    else:
        status = _guard(lambda: anyio.run(lambda: runner.run_app(
            app_ref, argv, model=None if no_model else _model(model), policy=policy, caps=caps,
            quotas=quotas, console=console)))
    raise typer.Exit(runner.report(status, runner.stdout_console(), err, console=console))


def _run_durable(app_ref: str, argv: list[str], *, model: str | None, no_model: bool, policy: str,
                 caps: frozenset[str], quotas: dict[str, Any], restart: RestartPolicy, local: bool,
                 console: runner.StdioConsole) -> None:
    client = _guard(lambda: daemon_cli.daemon(local))
    if client is not None:  # --model names one of the daemon's models, as `llmos run` without --durable
        _refuse_kernel_options(client.url, no_model=no_model, policy=policy)
        status = _guard(lambda: anyio.run(lambda: durable_cli.run_in_daemon(
            client, app_ref, argv, model=model, caps=caps, quotas=quotas, restart=restart, console=console)))
    else:
        status = _guard(lambda: anyio.run(lambda: durable_cli.run_local(
            app_ref, argv, model=None if no_model else _model(model), policy=policy, caps=caps, quotas=quotas,
            restart=restart, console=console)))
    if status is None:  # left unfinished (Ctrl-C): it goes on later
        raise typer.Exit(130)
    raise typer.Exit(runner.report(status, runner.stdout_console(), err, console=console))


def _refuse_kernel_options(url: str, *, no_model: bool, policy: str) -> None:
    """--no-model and --policy shape the kernel `llmos run` boots; where the daemon at `url`
    runs the app in a kernel of its own they would be ignored, so they are refused (exit 2)."""
    shaping = [*(["--no-model"] if no_model else []), *([f"--policy {policy}"] if policy != "fifo" else [])]
    if shaping:
        raise typer.BadParameter(f"{' and '.join(shaping)} shape a kernel this command boots, but the daemon at "
                                 f"{url} runs the app in its own: add --local to boot one here")


def _client() -> Any:
    """The daemon, or exit with a one-line error saying how to start one."""
    client = _guard(daemon_cli.daemon)
    if client is None:
        from llmos.server.client import daemon_url

        err.print(f"[bold red]error:[/] no llmos daemon answers at {daemon_url()}; start one with `llmos serve` "
                  "(or set LLMOS_URL)")
        raise typer.Exit(1)
    return client


@app.command()
def ps(all_: Annotated[bool, typer.Option("--all", "-a", help="Include ended processes not yet reaped.")] = False,
       durable: Annotated[bool, typer.Option("--durable", help="The durable processes of this LLMOS_HOME (or the "
                                             "daemon's), running or not, with how far each got.")] = False) -> None:
    """The daemon's processes."""
    if durable:
        client = _guard(daemon_cli.daemon)
        _guard(lambda: anyio.run(durable_cli.ps, client, runner.stdout_console()))
        return
    client = _client()
    _guard(lambda: anyio.run(daemon_cli.ps, client, all_, runner.stdout_console()))


@app.command()
def audit(pid: Annotated[Optional[int], typer.Option("--pid", help="Only this process's entries.")] = None,
          denied: Annotated[bool, typer.Option("--denied", help="Only refused calls.")] = False,
          limit: Annotated[int, typer.Option("--limit", "-n", help="The last this many entries.")] = 50,
          as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False) -> None:
    """The audit log: refused calls and sensitive ones (LLMOS_HOME/audit.log)."""
    audit_cli.show(pid=pid, denied=denied, limit=limit, as_json=as_json, console=runner.stdout_console())


@app.command("resume")
def resume_cmd(durable_id: Annotated[str, typer.Argument(metavar="ID", help="A durable process (llmos ps --durable).")],
               model: ModelOpt = None,
               no_model: Annotated[bool, typer.Option("--no-model", help="Boot without a model.")] = False) -> None:
    """Go on with an unfinished (or cancelled) durable process from where it stopped: in the
    daemon if one runs (it uses the daemon's model), else here until it ends."""
    client = _guard(daemon_cli.daemon)
    console = runner.StdioConsole()
    model = None if no_model else _model(model)
    status = _guard(lambda: anyio.run(lambda: durable_cli.resume(client, durable_id, model=model, console=console)))
    if status is not None:
        raise typer.Exit(runner.report(status, runner.stdout_console(), err, console=console))


@app.command("cancel")
def cancel_cmd(durable_id: Annotated[str, typer.Argument(metavar="ID", help="A durable process (llmos ps --durable).")],
               reason: Annotated[str, typer.Option(help="Why (shown in ps --durable).")] = "cancelled from the command line"
               ) -> None:
    """Stop a durable process for good, wherever it runs; it is never resumed."""
    client = _guard(daemon_cli.daemon)
    info = _guard(lambda: anyio.run(durable_cli.cancel, client, durable_id, reason))
    runner.stdout_console().print(views.durable_table([info]))


@app.command()
def kill(pids: Annotated[list[int], typer.Argument(metavar="PID...", help="Processes of the daemon to end.")],
         reason: Annotated[str, typer.Option(help="Why (shown in ps and wait).")] = "killed from the command line"
         ) -> None:
    """End processes of the daemon now."""
    client = _client()
    _guard(lambda: anyio.run(daemon_cli.kill, client, pids, reason))


@app.command()
def logs(pid: Annotated[int, typer.Argument(help="A process of the daemon.")],
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Go on until the process ends.")] = False
         ) -> None:
    """What a process of the daemon wrote; with -f, what it writes until it ends."""
    client = _client()
    status = _guard(lambda: anyio.run(daemon_cli.logs, client, pid, follow, runner.StdioConsole()))
    if status is not None:
        raise typer.Exit(runner.report(status, runner.stdout_console(), err, shown=True))


@app.command()
def top(count: Annotated[Optional[int], typer.Option("-n", help="Show this many frames, then leave.")] = None
        ) -> None:
    """A live view of the daemon's processes and model engine (Ctrl-C leaves)."""
    client = _client()
    try:
        _guard(lambda: anyio.run(daemon_cli.top, client, runner.stdout_console(), count))
    except KeyboardInterrupt:
        pass


@app.command("demo")
def demo_cmd(model: ModelOpt = None) -> None:
    """Several agent processes share the real model through one kernel."""
    raise typer.Exit(_guard(lambda: anyio.run(demo.run_demo, runner.stdout_console(), _model(model))))


@app.command()
def shell(model: ModelOpt = None, policy: PolicyOpt = "fifo",
          no_model: Annotated[bool, typer.Option("--no-model", help="Boot without a model.")] = False,
          local: Annotated[bool, typer.Option("--local", help="Boot a kernel in this process even if a daemon "
                                              "answers at LLMOS_URL.")] = False) -> None:
    """The interactive shell: one kernel for the session, jobs, ps/top, chat. With a daemon
    running (`llmos serve`), the shell is a process of the daemon's kernel."""
    from llmos.apps.shell import session  # prompt_toolkit loads only for the shell

    client = _guard(lambda: daemon_cli.daemon(local))
    if client is not None:
        raise typer.Exit(_guard(lambda: anyio.run(session.main_on_daemon, client)))
    raise typer.Exit(_guard(lambda: anyio.run(session.main, None if no_model else _model(model), policy)))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (beyond loopback only with an API key).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: ModelOpt = None,
    policy: PolicyOpt = "fifo",
    max_queue: Annotated[Optional[int], typer.Option(help="Generations that may wait; more get HTTP 429.")] = None,
    new_key: Annotated[bool, typer.Option("--new-key", help="Write a fresh API key to LLMOS_HOME/api_key, "
                                          "print it, and require it.")] = False,
    cluster: Annotated[Optional[str], typer.Option("--cluster", metavar="POSTGRESQL_URL",
                                                   help="Join the cluster of kernels sharing this PostgreSQL "
                                                   "database (default: LLMOS_DATABASE_URL, if set).")] = None,
    capacity: Annotated[Optional[int], typer.Option(help="In a cluster: durable processes each kernel runs at "
                                                    "once (one number for the cluster: the kernel started last "
                                                    "sets it); more wait for a kernel with room.", min=1)] = None,
    memory: Annotated[Optional[str], typer.Option(help="Where memory lives: 'embedded' (LLMOS_HOME) or a "
                                                  "`chroma run` server's http://host:port.")] = None,
) -> None:
    """Run the kernel as a daemon: an OpenAI-compatible API, the process API and a dashboard."""
    from llmos.apps import serving  # FastAPI and uvicorn load only here

    raise typer.Exit(_guard(lambda: serving.run(host=host, port=port, model=_model(model), policy=policy,
                                                max_queue=max_queue, new_key=new_key,
                                                cluster=cluster or os.environ.get(DATABASE_ENV),
                                                capacity=capacity, memory=memory)))


@app.command("eval")
def eval_cmd(
    perplexity: Annotated[Optional[Path], typer.Option("--perplexity", metavar="FILE", help="A text file: "
                                                       "its perplexity, scored in windows of ~450 tokens.")] = None,
    qa: Annotated[Optional[Path], typer.Option("--qa", metavar="FILE", help='JSONL of {"question": ..., '
                                               '"answer": ...}: exact-match and contains-answer accuracy of '
                                               'greedy replies.')] = None,
    tools_file: Annotated[Optional[Path], typer.Option("--tools", metavar="FILE", help='JSONL of {"prompt": ..., '
                                                       '"tool": <name or "none">}: tool-choice accuracy and the '
                                                       'parse rate of the calls (no tool is run).')] = None,
    models: Annotated[Optional[str], typer.Option("--models", metavar="A,B", help="Models to compare, side by "
                                                  "side, loaded one at a time (default: `llmos models "
                                                  "default`).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Reply tokens (default: 32 for --qa, 64 for --tools' "
                                                      "arguments).", min=1)] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items (windows) of each file.",
                                                 min=1)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="OUT", help="Where to write the results "
                                                     "(default: LLMOS_HOME/evals/eval-<time>.json).")] = None,
    compare_loop: Annotated[bool, typer.Option("--compare-loop", help="Also run each eval's items one after "
                                               "another, and show examples/s through the kernel against that "
                                               "loop.")] = False,
) -> None:
    """Evaluate models: perplexity, QA accuracy and tool choice, every item a process of one
    kernel (so the engine batches them); one column per model, and every item in the JSON."""
    from llmos.apps import eval_cli  # the evals' modules load only here

    chosen, inputs = _guard(lambda: eval_cli.plan(perplexity=perplexity, qa=qa, tools=tools_file, limit=limit,
                                                  max_tokens=max_tokens, compare_loop=compare_loop))
    names = [name.strip() for name in (models or "").split(",") if name.strip()] or [_model(None)]
    out = json_out or eval_cli.default_output()
    report = _guard(lambda: eval_cli.run(names, chosen, inputs))
    eval_cli.write(report, out)
    eval_cli.show(report, out, runner.stdout_console())


@app.command("finetune")
def finetune_cmd(
    base: Annotated[str, typer.Argument(metavar="BASE", help="The model to fine-tune (`llmos models list`): a "
                                        "local one, built in or imported.")],
    data: Annotated[Path, typer.Option("--data", metavar="FILE", help='JSONL, one example a line: {"messages": '
                                       '[{"role": ..., "content": ...}, ...]} (the loss on the assistant turns '
                                       'only) or {"text": ...}.')],
    name: Annotated[str, typer.Option("--name", help="The new model: BASE with the adapter, a derived model.")],
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default: by epochs).", min=1)] = None,
    epochs: Annotated[Optional[float], typer.Option(help=f"Passes over the data (default {DEFAULT_EPOCHS:g}).")]
    = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = FINETUNE.lr,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = FINETUNE.rank,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (updates scaled by alpha / rank).")] = FINETUNE.alpha,
    seed: Annotated[int, typer.Option(help="Seed of the split, the batches and the initialisation.")] = FINETUNE.seed,
    val_fraction: Annotated[float, typer.Option(help="Examples held out for the eval loss (0: none, and no early "
                                                "stopping).")] = FINETUNE.val_fraction,
    patience: Annotated[int, typer.Option(help="Stop after this many evals without a lower eval loss.")]
    = FINETUNE.patience,
    batch_size: Annotated[int, typer.Option(help="Examples a step.")] = FINETUNE.batch_size,
    max_length: Annotated[int, typer.Option(help="Longest example, in tokens (a longer one is an error).")]
    = FINETUNE.max_length,
    eval_every: Annotated[Optional[int], typer.Option(help="Steps between evals (default: about ten a run).")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a derived model NAME made before.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Run in this process even if a daemon answers.")] = False,
) -> None:
    """Fine-tune BASE with LoRA on a JSONL file into a new model NAME (its adapter in
    LLMOS_HOME/adapters/NAME). The run is a process, `finetune NAME`, in the daemon if one
    runs: `ps`, `top` and `kill` reach it. The data is checked before any model loads."""
    from llmos.apps import finetune_cli  # the Trainer's modules load in the process, not here

    settings = {"steps": steps, "epochs": epochs, "lr": lr, "rank": rank, "alpha": alpha, "seed": seed,
                "val_fraction": val_fraction, "patience": patience, "batch_size": batch_size,
                "max_length": max_length, "eval_every": eval_every}
    job = _guard(lambda: finetune_cli.check(base, data, name, force=force, **settings))
    status = _guard(lambda: anyio.run(lambda: finetune_cli.run(job, local=local)))
    raise typer.Exit(runner.report(status, runner.stdout_console(), err))


@app.command("apps")
def apps_cmd() -> None:
    """The apps `llmos run NAME` knows."""
    table = Table("name", "what it does")
    for entry in registry.APPS.values():
        table.add_row(entry.name, entry.summary)
    runner.stdout_console().print(table)


@app.command("tools")
def tools_cmd(cap: Annotated[Optional[list[str]], typer.Option("--cap", help="List only what these capabilities "
                                                                "grant (default: every tool).")] = None) -> None:
    """The tools processes can call: built-in, from plugins, and from MCP servers (LLMOS_HOME/mcp.json)."""
    caps = frozenset(cap) if cap else frozenset({"tool.*"})
    status = _guard(lambda: anyio.run(lambda: runner.run_app("llmos.apps.tools:list_tools", [], model=None,
                                                              policy="fifo", caps=caps, quotas={})))
    if not status.ok:
        raise typer.Exit(runner.report(status, runner.stdout_console(), err))
    runner.stdout_console().print(tools.tools_table(status.result))


@app.command("plugins")
def plugins_cmd() -> None:
    """The plugins loaded (built-in and installed), where each comes from, and its hooks.
    LLMOS_PLUGINS=name,name loads only those installed plugins."""
    runner.stdout_console().print(tools.plugins_table(plugins.plugins()))


app.add_typer(models_cli.app, name="models")

mcp_app = typer.Typer(help="The Model Context Protocol: serve llmos's tools to other agent systems.",
                      no_args_is_help=True)
app.add_typer(mcp_app, name="mcp")


@mcp_app.command("serve")
def mcp_serve(cap: Annotated[Optional[list[str]], typer.Option("--cap", help="Serve only the tools these "
                                                               "capabilities grant (default: the built-in ones).")]
              = None) -> None:
    """Serve the tools over MCP on stdin/stdout (add it to an MCP client as a stdio server)."""
    caps = frozenset(cap) if cap else DEFAULT_APP_CAPS
    status = _guard(lambda: anyio.run(lambda: runner.run_app("llmos.apps.mcp_serve:main", [], model=None,
                                                              policy="fifo", caps=caps, quotas={})))
    raise typer.Exit(runner.report(status, runner.stdout_console(), err))


def _model(name: str | None) -> str:
    """The model named, else the library's default (`llmos models default`), else smollm2."""
    return name or _guard(default_model)


def _guard(action):  # noqa: ANN001, ANN202 - prints library errors as one line
    try:
        return action()
    except (SyscallError, llmos.ConfigError, ClientError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        if os.environ.get("LLMOS_DEBUG"):
            raise
        raise typer.Exit(1) from None


plugins.register_commands(app)  # installed plugins add their own subcommands


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
