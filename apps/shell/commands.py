"""The shell's commands: each takes the shell and the words after its name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from rich.live import Live
from rich.table import Table

import llmos
from llmos.apps import registry
from llmos.apps.shell import views
from llmos.apps.shell.errors import ShellError
from llmos.syscalls import DEFAULT_APP_CAPS

if TYPE_CHECKING:  # the session imports the commands
    from llmos.apps.shell.session import Command, Shell

TOP_REFRESH_S = 0.5
MEMORY_CAPS = frozenset({"memory", "memory.read.*", "memory.write.*", "console"})  # the user reads every namespace


async def run(shell: Shell, words: list[str]) -> None:
    """run [--allow CAP]... APP [ARGS...] [&]: start an app (with capabilities beyond the
    defaults if allowed); in the foreground unless the line ends with &."""
    background = bool(words) and words[-1] == "&"
    words = words[:-1] if background else words
    command = " ".join(["run", *words])  # the jobs table adds the "&" of a background job
    allowed, words = _allowed(words)
    if not words:
        raise ShellError("usage: run [--allow CAP]... APP [ARGS...] [&]   (`apps` lists the apps)")
    caps = DEFAULT_APP_CAPS | allowed
    if background:
        job = await shell.start(words[0], words[1:], background=True, command=command, caps=caps)
        shell.out.print(f"[{job.number}] {job.pid}", highlight=False)
        return
    await shell.run_in_foreground(words[0], words[1:], command=command, caps=caps)


def _allowed(words: list[str]) -> tuple[frozenset[str], list[str]]:
    """The capabilities of leading `--allow CAP` pairs, and the words after them."""
    allowed: set[str] = set()
    while words and words[0] == "--allow":
        if len(words) < 2:
            raise ShellError("--allow needs a capability: run --allow tool.run_python APP ...")
        allowed.add(words[1])
        words = words[2:]
    return frozenset(allowed), words


async def chat(shell: Shell, words: list[str]) -> None:
    """chat [--model NAME] [MESSAGE]: talk with the model; /exit returns to the shell."""
    args, options = registry.parse_argv(words)
    model = options.pop("model", None)
    if model is not None and model != shell.model:
        raise ShellError(f"this session runs {shell.model}; start `llmos shell --model {model}` to chat with {model}")
    shell.out.print("[dim]chatting with the model; /exit returns to the shell[/]")
    await run(shell, ["chat", *args])


async def jobs(shell: Shell, words: list[str]) -> None:
    """jobs: the shell's jobs and their states."""
    shell.out.print(views.jobs_table(shell.jobs.jobs.values()))


async def fg(shell: Shell, words: list[str]) -> None:
    """fg [%N|PID]: bring a job to the foreground (its kept output first)."""
    job = _job(shell, words)
    if job.status is not None:
        raise ShellError(f"job %{job.number} has already ended")
    shell.out.print(job.command, markup=False, highlight=False)
    await shell.foreground(job)


async def ps(shell: Shell, words: list[str]) -> None:
    """ps [-a]: processes (pid, parent, name, state, priority, tokens, syscalls, time); -a adds ended ones."""
    shell.out.print(views.ps_table(await shell.sys.ps(include_ended="-a" in words)))


async def top(shell: Shell, words: list[str]) -> None:
    """top [-n COUNT]: a live view of processes and the model engine, until Ctrl-C."""
    count = int(words[words.index("-n") + 1]) if "-n" in words else None
    meter = views.Meter()

    async def view() -> Any:
        stats, procs = await shell.sys.stats(), await shell.sys.ps(include_ended=True)
        rate = stats.generation.tokens_per_s if stats.generation is not None else meter.rate(procs)
        return views.top_view(procs, stats, rate, shell.model or "-")

    with shell.interruptible() as interrupted, Live(await view(), console=shell.out, auto_refresh=False) as live:
        shown = 1
        while not interrupted.is_set() and (count is None or shown < count):
            with anyio.move_on_after(TOP_REFRESH_S):
                await interrupted.wait()
            live.update(await view(), refresh=True)
            shown += 1


async def kill(shell: Shell, words: list[str]) -> None:
    """kill PID|%N [REASON]: end a process now."""
    pid = _pid(shell, words)
    await shell.sys.kill(pid, " ".join(words[1:]) or "killed from the shell")
    shell.out.print(f"killed {pid}")


async def suspend(shell: Shell, words: list[str]) -> None:
    """suspend PID|%N: stop a process at its next syscall; its generation leaves the batch."""
    await shell.sys.suspend(_pid(shell, words))


async def resume(shell: Shell, words: list[str]) -> None:
    """resume PID|%N: let a suspended process go on."""
    await shell.sys.resume(_pid(shell, words))


async def nice(shell: Shell, words: list[str]) -> None:
    """nice PID|%N PRIORITY: set a priority, -20 (first) .. 19 (last)."""
    if len(words) != 2:
        raise ShellError("usage: nice PID|%N PRIORITY")
    await shell.sys.nice(int(words[1]), _pid(shell, words))


async def wait(shell: Shell, words: list[str]) -> None:
    """wait [%N|PID]: wait for a job to end (Ctrl-C stops waiting, not the job)."""
    job = _job(shell, words)
    with shell.interruptible() as interrupted:
        async with anyio.create_task_group() as tg:
            async def stop_waiting() -> None:
                await interrupted.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_waiting)
            await job.done.wait()
            tg.cancel_scope.cancel()
    shell.report_finished()


async def trace(shell: Shell, words: list[str]) -> None:
    """trace PID|%N: the syscalls a process made, with their timings and outcomes."""
    pid = _pid(shell, words)
    shell.out.print(views.trace_table(await shell.sys.trace(pid), pid))


async def models(shell: Shell, words: list[str]) -> None:
    """models: the models llmos can load."""
    table = Table("name", "aliases", "status", "description")
    for m in llmos.available_models():
        loaded = " (this session)" if m.name == shell.model else ""
        table.add_row(m.name, ", ".join(m.aliases), ("cached" if m.cached else "not cached yet") + loaded,
                      m.description)
    shell.out.print(table)


async def apps(shell: Shell, words: list[str]) -> None:
    """apps: the apps `run` knows by name."""
    table = Table("name", "what it does")
    for entry in registry.APPS.values():
        table.add_row(entry.name, entry.summary)
    shell.out.print(table)


async def mem(shell: Shell, words: list[str]) -> None:
    """mem search QUERY [--ns NAMESPACE] | mem add TEXT [--ns NAMESPACE]: the memory store."""
    args, options = registry.parse_argv(words[1:])
    action = words[0] if words else ""
    if action == "ls":
        raise ShellError("mem ls is not available yet: the memory syscalls cannot list a namespace; "
                         "use mem search QUERY --ns NAMESPACE")
    if action not in ("search", "add") or not args or set(options) - {"ns"}:
        raise ShellError("usage: mem search QUERY [--ns NAMESPACE] | mem add TEXT [--ns NAMESPACE]")
    text = " ".join(args)  # unquoted words are one text, as the user typed them, wherever --ns stands
    await shell.run_in_foreground(f"llmos.apps.shell.programs:{action}", [text, *_ns(options)],
                                  command=" ".join(["mem", *words]), caps=MEMORY_CAPS)


async def tools(shell: Shell, words: list[str]) -> None:
    """tools: the tools processes may call."""
    await shell.run_in_foreground("llmos.apps.shell.programs:tools", [], command="tools",
                                  caps=frozenset({"tool.*", "console"}))


async def help_(shell: Shell, words: list[str]) -> None:
    """help [COMMAND]: the commands, or one command's usage."""
    chosen = [w for w in words if w in COMMANDS] or list(COMMANDS)
    table = Table("command", "what it does", show_header=False, box=None)
    for name in chosen:
        table.add_row(f"[bold]{name}[/]", (COMMANDS[name][1] or "").strip())
    table.add_row("[bold]exit[/]", "leave the shell (Ctrl-D too); every process ends")
    shell.out.print(table)


def _ns(options: dict[str, Any]) -> list[str]:
    return [f"--namespace={options['ns']}"] if "ns" in options else []


def _job(shell: Shell, words: list[str]) -> Any:
    try:
        return shell.jobs.find(words[0] if words else None)
    except LookupError as exc:
        raise ShellError(str(exc)) from None


def _pid(shell: Shell, words: list[str]) -> int:
    if not words:
        raise ShellError("which process? give a pid or %N")
    if words[0].startswith("%"):
        return _job(shell, words[:1]).pid
    try:
        return int(words[0])
    except ValueError:
        raise ShellError(f"{words[0]!r} is not a pid") from None


COMMANDS: dict[str, tuple[Command, str]] = {
    name: (fn, fn.__doc__ or "") for name, fn in [
        ("run", run), ("jobs", jobs), ("fg", fg), ("ps", ps), ("top", top), ("kill", kill), ("suspend", suspend),
        ("resume", resume), ("nice", nice), ("wait", wait), ("chat", chat), ("models", models), ("apps", apps),
        ("trace", trace), ("mem", mem), ("tools", tools), ("help", help_),
    ]
}
