"""The audit log: one JSON line per refused call and per sensitive one, appended to a file.

The dispatcher (kernel/dispatch.py) hands it each syscall as it traces it, with the call's
`Effects` it worked out already; it writes an `AuditEntry` for every call that was refused
(EPERM: a missing capability, or the injection rule of kernel/security.py) and every call
whose request says it is sensitive (`Effects.audit`); kernel/security.py adds
one for each call a user approved under the injection rule. Each entry: the time, the pid
and name of the process, the call, its arguments with secrets redacted and long texts cut,
the outcome and why it was logged.

The file is opened for appending only (O_APPEND: every line lands at the end, whole, even
with several kernels writing it) and never rewritten; `read_audit` gives it back, filtered, for
`llmos audit`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import reprlib
import threading
import time
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from llmos.kernel.stats import TraceEvent

if TYPE_CHECKING:
    from llmos.kernel.abi import Request
    from llmos.kernel.process import Process
    from llmos.kernel.security import Effects

log = logging.getLogger(__name__)

MAX_TEXT = 300  # characters of one argument's text kept in an entry
MAX_ITEMS = 50  # items of a list or keys of a mapping kept
MAX_DEPTH = 6  # levels of nesting kept
REDACTED = "[redacted]"
# Argument names whose values are secrets whatever they hold.
SECRET_NAME = re.compile(r"(?:^|[_-])(pass|password|passphrase|secret|token|api[-_]?key|key|auth|authorization|"
                         r"credentials?|cookie|private[-_]?key)(?:$|[_-])", re.IGNORECASE)  # whole words: not max_tokens
# Values that look like secrets wherever they are: provider keys, bearer tokens, private keys.
SECRET_VALUE = re.compile(r"(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|"
                          r"AKIA[0-9A-Z]{16}|Bearer\s+[A-Za-z0-9._~+/=-]{8,}|"
                          r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$))")


class AuditEntry(BaseModel):
    time: float
    pid: int
    process: str
    call: str
    arguments: dict[str, Any]
    outcome: str  # "ok", the errno name, or "approved" (by the user, under the injection rule)
    why: str  # "denied: ..." or what made the call sensitive


def redact(value: Any, name: str = "", depth: int = 0) -> Any:
    """`value` as plain JSON with secrets replaced, long texts and collections cut, and no
    deeper than MAX_DEPTH; `name` is its argument's name. Never raises: the arguments of a
    refused call may be any junk, and the refusal must still be logged."""
    if name and SECRET_NAME.search(name) and value not in (None, "", {}, []):
        return REDACTED
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = SECRET_VALUE.sub(REDACTED, value).encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text)} characters)"
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, Mapping):
        return {redact(str(key)): redact(item, str(key), depth + 1) for key, item in islice(value.items(), MAX_ITEMS)}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item, name, depth + 1) for item in islice(value, MAX_ITEMS)]
    return redact(reprlib.repr(value))  # bytes, functions, classes: what they are, briefly


def arguments_of(request: Request | None) -> dict[str, Any]:
    return {} if request is None else redact(dict(request))


class AuditLog:
    """Appends entries to `path`; a kernel whose `audit` it is hands it every syscall."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: each write goes to the end as one piece; 0o600: only the user reads it.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self.written = self.failed = 0

    def record(self, event: TraceEvent, process: Process, request: Request | None, answer: Any,
               effects: Effects) -> None:
        """One traced syscall: written if it was refused or `effects` says it is sensitive.
        Never raises: what goes wrong is counted and logged (`write`)."""
        why = f"denied: {getattr(answer, 'message', answer)}" if event.outcome == "EPERM" else effects.audit
        if why is not None:
            self.write(AuditEntry(time=event.at, pid=process.pid, process=process.name, call=event.call,
                                  arguments=arguments_of(request), outcome=event.outcome, why=why))

    def approved(self, process: Process, request: Request, why: str) -> None:
        """A user let `process` send data out after it read untrusted text (kernel/security.py)."""
        self.write(AuditEntry(time=time.time(), pid=process.pid, process=process.name, call=request.call,
                              arguments=arguments_of(request), outcome="approved", why=why))

    def write(self, entry: AuditEntry) -> None:
        line = memoryview((entry.model_dump_json() + "\n").encode())
        with self._lock:
            if self._fd < 0:
                return
            try:
                while line:  # a short write (a full disk, a signal) goes on where it stopped
                    line = line[os.write(self._fd, line):]
            except OSError as exc:  # the call goes on; the loss is counted and said, never silent
                self.failed += 1
                log.error("audit log %s: an entry was not written (%s); %d lost so far", self.path, exc, self.failed)
                return
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_audit(path: Path, *, pid: int | None = None, denied: bool = False) -> Iterator[AuditEntry]:
    """The entries of the log at `path`, oldest first, filtered; a damaged line is skipped
    with a warning naming it (a crash may cut the last line)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = AuditEntry.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                log.warning("%s, line %d: not an audit entry; skipped", path, number)
                continue
            if (pid is None or entry.pid == pid) and (not denied or entry.outcome == "EPERM"):
                yield entry
