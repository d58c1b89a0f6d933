"""What a syscall means for security, and the rule that contains prompt injection.

Each request says, given its caller, what the dispatcher acts on. Before the call
(`Request.effects`):

- `audit`: why the call is sensitive (a tool with side effects, memory of another process's
  namespace, a spawn with capabilities beyond the defaults, the network): it is written to
  the audit log (kernel/audit.py), as every refused call is.
- `egress`: where it could send data out of the kernel (the network, a tool that sends, the
  memory of another namespace).

After it, from its answer (`Request.ingress`): where the text it brought in came from, if
someone other than the user may have written it: a tool's result, a memory of another
namespace. The process's context then holds untrusted text (`Process.untrusted` says from
where). The mark is sticky (text once read cannot be unread) and travels with what the
process passes on: its children, its messages (`Message.untrusted`), its exit status, the
memories it writes. So a message from another agent is untrusted exactly when that agent
had read untrusted text: agents that pass messages among themselves stay free to, and the
mark follows the text to whichever of them would send it out.

The rule ("the lethal trifecta": private data, untrusted text, a way out): a process whose
context holds untrusted text may not make a call with an egress unless a user approves it.
Where a user is attached (the kernel has a console: the shell, `llmos run`, a daemon's
client answering), the kernel asks; elsewhere, or when the user says no, the call is
refused with UntrustedEgress. Untrusted text can still be read, reasoned about and answered
from; it cannot quietly steer the process into sending something out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmos.kernel.errors import NoConsole, UntrustedEgress

if TYPE_CHECKING:
    from llmos.kernel.abi import Request
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.process import Process

MAX_SOURCES = 8  # untrusted sources a process keeps naming (the first ones); it stays untrusted past them
YES = ("y", "yes")


UNTRUSTED_MEMORY = "llmos_untrusted"  # metadata of a memory written by a process holding untrusted text


@dataclass(frozen=True)
class Effects:
    """What one call may do, for the audit log and the injection rule (see the module)."""

    audit: str | None = None
    egress: str | None = None


NONE = Effects()


def mark_untrusted(process: Process, source: str) -> None:
    """Note that text from `source` is now in the process's context."""
    if source not in process.untrusted and len(process.untrusted) < MAX_SOURCES:
        process.untrusted.append(source)


async def check_egress(kernel: Kernel, process: Process, request: Request, egress: str) -> None:
    """Let a call with an egress through if the process holds no untrusted text or the user
    approves it; else UntrustedEgress."""
    if not process.untrusted:
        return
    why = (f"process {process.pid} ({process.name}) has read untrusted text ({', '.join(process.untrusted)}) "
           f"and now asks to {request.call} ({egress})")
    if kernel.console is None:
        raise UntrustedEgress(f"{why}; no user is attached to approve it, so it is refused")
    try:
        answer = await kernel.console.ask(process.pid, f"[llmos] {why}. Allow it? [y/N]")
    except NoConsole:
        raise UntrustedEgress(f"{why}; no user is attached to approve it, so it is refused") from None
    if answer.strip().lower() not in YES:
        raise UntrustedEgress(f"{why}; the user did not approve it")
    if kernel.audit is not None:
        kernel.audit.approved(process, request, f"{why}; the user approved it")
