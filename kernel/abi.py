"""The shape every syscall request has. The concrete requests live in llmos.syscalls.

A request class is the one definition of its syscall: its fields (validated by pydantic),
its name (`call`), whether it may block, the capabilities it needs (`capability`, plus what
`needs` computes from its arguments), its result type (`Request[ResultType]`), and how a
`Sys` method takes its arguments (`positional`, `variadic`, `keywords`). The dispatcher
checks them; nothing else checks capabilities. A process hands the kernel the object; a
remote caller sends the same fields as JSON ({"call": name, **fields}), which the same
class validates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from llmos.kernel.capabilities import Need

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.process import Process
    from llmos.kernel.security import Effects

R = TypeVar("R")


class Request(BaseModel, Generic[R]):
    """A syscall request: a frozen message a process hands the kernel and awaits.

    Subclasses set `call` (the name in traces, in dict form and of the `Sys` method; a
    dotted name "group.name" becomes `sys.group.name`), `capability` (what every call
    needs, or None), override `needs` for what more the arguments call for, and set
    `blocking` when the caller may wait on it (it shows as BLOCKED meanwhile).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    call: ClassVar[str] = ""
    capability: ClassVar[str | None] = None
    blocking: ClassVar[bool] = False
    # Whether a durable process's replay must ask this call with the same arguments as its
    # record (kernel/journal.py), or only the same call: False only where the answer does not
    # depend on them (text written to the console), so printing a time does not stop a resume.
    replay_matches_arguments: ClassVar[bool] = True
    # How the generated `Sys` method takes arguments: these fields by position, then the
    # field `variadic` collects the remaining positional ones (*args) and the field
    # `keywords` the keyword arguments that name no field (**kwargs; the positional fields
    # are then positional-only, so a keyword of the same name goes to `keywords` too). The
    # rest by keyword.
    positional: ClassVar[tuple[str, ...]] = ()
    variadic: ClassVar[str | None] = None
    keywords: ClassVar[str | None] = None

    def needs(self, caller: Process) -> Iterator[Need]:
        """What this call needs from `caller` besides `capability`, given its arguments."""
        return iter(())

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        """What this call may do, for kernel/security.py: why to audit it, where it could
        send data. Nothing, unless a request says."""
        from llmos.kernel.security import NONE

        return NONE

    def ingress(self, kernel: Kernel, caller: Process, answer: Any) -> str | None:
        """Where the text this call brought in (`answer`) came from, if it may be untrusted
        (kernel/security.py); None, unless a request says."""
        return None

    def reapply_on_replay(self) -> bool:
        """Whether a durable process's replay runs this call again (its answer still comes
        from the record): for calls whose effect is on the caller's own state in this
        kernel (a topic subscription, its own priority) and that are safe to repeat. The
        resumed process then has the subscriptions and priority it had set itself."""
        return False

    def streams(self) -> bool:
        """Whether the answer may be a stream the caller reads as it comes (a durable
        process's record keeps such a call's whole text, `kernel/journal.py`)."""
        return False

    def waits_for(self) -> float | None:
        """Seconds this call waits, counted from when it was first made: a durable process
        resumed in the middle of it waits out only the rest (`kernel/journal.py` records
        when it ends). None: the call is no wait."""
        return None

    def waiting(self, seconds: float) -> Request[R]:
        """This call, waiting `seconds` instead (for a call whose `waits_for` is not None)."""
        raise NotImplementedError(f"{self.call} is no wait")

    @classmethod
    def result_type(cls) -> Any:
        """What the call returns, from `class X(Request[ResultType])`."""
        for base in cls.__mro__:
            meta = getattr(base, "__pydantic_generic_metadata__", None)
            if meta and meta["origin"] is Request and meta["args"]:
                return meta["args"][0]
        return Any
