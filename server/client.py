"""The daemon's client, for the CLI and for remote apps. httpx only: no FastAPI, no torch.

    client = find_daemon()                     # None when no daemon answers (sync: for the CLI)
    async with DaemonClient() as client:       # LLMOS_URL and LLMOS_API_KEY, or the defaults
        info = await client.spawn("summarize", ["some long text"])
        async for event in client.output(info.pid):
            ...                                # Text, Question (answer it), then Exited
        status = await relay(client, info.pid, console)   # or: as a terminal would, to the end
    status = await run_remote(url, "app.py:main", ["question"])   # the app runs here, its syscalls there

Every DaemonClient method is async; outside `async with` each call opens its own
connection, so a one-shot CLI command can be `anyio.run(client.ps)`.

Errors: a syscall error comes back as the same `SyscallError` subclass the daemon raised
(the error JSON names it, `llmos_error`), so code written against a local `Sys` catches
the same classes. Besides those: `AuthenticationError` (a missing or wrong API key, HTTP
401), `DaemonUnreachable` (nothing answers at the URL, or the connection broke), and
`DaemonError` (any other HTTP error that names no syscall error).
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import anyio
import httpx

from llmos.home import llmos_home
from llmos.server import errors, wire
from llmos.syscalls import (
    DurableInfo, ExitStatus, InvalidRequest, KernelStatistics, ModelCard, ModelRow, NoConsole, ProcessInfo, Quotas, Reply, RestartPolicy, Sys,
    SyscallError, TextStream,
    TraceEvent, resolve_app)
from llmos.syscalls.errors import Errno

URL_ENV, KEY_ENV = "LLMOS_URL", "LLMOS_API_KEY"
KEY_FILE = "api_key"  # in LLMOS_HOME, as `llmos serve --new-key` writes it (llmos.server.auth)
DEFAULT_URL = "http://127.0.0.1:8000"
# Reads wait as long as the daemon takes: a generation on a busy model, a `wait`, a `recv`.
TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=None)
LEASE_S = 60.0  # a remote session's lease; its heartbeat goes every quarter of it
EXIT_TIMEOUT_S = 10.0  # to report a remote app's end when it was cancelled, and to drain its output
_UNSET: Any = object()


# -- errors ------------------------------------------------------------------------------------
class ClientError(Exception):
    """The daemon could not be asked (as opposed to a syscall error it answered with)."""


class DaemonUnreachable(ClientError):
    """Nothing answers at the daemon's URL (start one with `llmos serve`), or the connection broke."""


class AuthenticationError(ClientError):
    """The daemon wants an API key and this one is missing or wrong (HTTP 401)."""


class DaemonError(ClientError):
    """An HTTP error that names no syscall error (a bad route, a server failure)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def error_from(status: int, error: Mapping[str, Any]) -> Exception:
    """The exception an error body ({"message", "code", "llmos_error", ...}) stands for."""
    message = str(error.get("message") or "")
    if status == 401:
        return AuthenticationError(f"{message}; set {KEY_ENV} (or LLMOS_HOME/{KEY_FILE}) to the daemon's key")
    name = error.get("llmos_error")
    if name:
        cls = errors.syscall_error_class(name)
        exc = cls(message)
        code = error.get("code")
        if cls is SyscallError and isinstance(code, str) and code in Errno.__members__:
            exc.code = Errno[code]  # a class this side does not know (RequestEnded): keep its errno
        return exc
    if status == 400:
        return InvalidRequest(message)
    return DaemonError(status, message or "no message")


def raise_for(response: httpx.Response) -> None:
    """Raise what an unsuccessful answer stands for (see the module docstring)."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": response.text.strip() or response.reason_phrase}
    raise error_from(response.status_code, error)


def _unreachable(url: str, exc: httpx.TransportError) -> DaemonUnreachable:
    return DaemonUnreachable(f"no llmos daemon answers at {url} ({type(exc).__name__}: {exc or 'no detail'}); "
                             "start one with `llmos serve`, or set LLMOS_URL")


# -- where the daemon is --------------------------------------------------------------------------
def daemon_url() -> str:
    """LLMOS_URL, else http://127.0.0.1:8000."""
    return (os.environ.get(URL_ENV, "").strip() or DEFAULT_URL).rstrip("/")


def api_key() -> str | None:
    """LLMOS_API_KEY, else the file LLMOS_HOME/api_key, else None (the daemon's own rule)."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key
    path = llmos_home() / KEY_FILE
    return (path.read_text().strip() or None) if path.is_file() else None


_configured_key = api_key  # for the functions whose parameter `api_key` hides it


# How long a daemon may take to answer /health: a glance for the default address (no daemon
# there is the common case, and every command asks), longer for one named in LLMOS_URL,
# which a busy machine may answer late (a CI run's test server did, after 0.3 s).
PROBE_DEFAULT_S = 0.3
PROBE_NAMED_S = 3.0


def find_daemon(url: str | None = None, key: str | None = _UNSET, timeout: float | None = None) -> DaemonClient | None:
    """A client of the daemon at `url` (default `daemon_url()`) if one answers `GET /health`
    within `timeout` seconds (default: PROBE_NAMED_S for an address given or in LLMOS_URL,
    else PROBE_DEFAULT_S), else None. A daemon that refuses the key raises
    AuthenticationError rather than passing for absent."""
    named = url is not None or bool(os.environ.get(URL_ENV, "").strip())
    timeout = timeout if timeout is not None else PROBE_NAMED_S if named else PROBE_DEFAULT_S
    url = (url or daemon_url()).rstrip("/")
    key = _configured_key() if key is _UNSET else key
    try:
        response = httpx.get(f"{url}/health", headers=_auth(key), timeout=timeout)
    except httpx.TransportError:
        return None
    if response.status_code == 401:
        raise_for(response)
    try:
        is_llmos = response.is_success and response.json().get("service") == "llmos"
    except ValueError:
        is_llmos = False
    return DaemonClient(url, key) if is_llmos else None


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


# -- the process API ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Text:
    """Text the process wrote."""

    text: str


@dataclass(frozen=True)
class Question:
    """The process asks the user (`sys.ask_user`): answer with `DaemonClient.answer(pid, text, id)`."""

    id: int
    text: str


@dataclass(frozen=True)
class Exited:
    """The process ended (and was reaped): the last event of an output stream."""

    status: ExitStatus


Output = Text | Question | Exited


def _output_event(event: Mapping[str, Any]) -> Output:
    if "text" in event:
        return Text(event["text"])
    if "question" in event:
        return Question(event["id"], event["question"])
    if "exit" in event:
        return Exited(ExitStatus.model_validate(event["exit"]))
    if "error" in event:
        raise error_from(500, event["error"])
    raise DaemonError(500, f"an output event of an unknown kind: {dict(event)}")


class DaemonClient:
    """The daemon's HTTP API as typed async methods. Use it in `async with` to keep one
    connection pool for many calls; outside one, each call opens its own connection."""

    def __init__(self, url: str | None = None, api_key: str | None = _UNSET, *,
                 timeout: httpx.Timeout = TIMEOUT) -> None:
        self.url = (url or daemon_url()).rstrip("/")
        self.api_key = _configured_key() if api_key is _UNSET else api_key
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> DaemonClient:
        self._http = self.http()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def http(self) -> httpx.AsyncClient:
        """A new httpx client on the daemon's URL with its key (the caller closes it)."""
        return httpx.AsyncClient(base_url=self.url, headers=_auth(self.api_key), timeout=self.timeout)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        async with self.http() as http:
            yield http

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """One call: its JSON answer, or the error it stands for raised."""
        async with self._connection() as http:
            try:
                response = await http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc) from exc
        raise_for(response)
        return response.json()

    async def health(self) -> dict[str, Any]:
        """{"service": "llmos", "model": ..., "daemon_pid": ...}."""
        return await self.request("GET", "/health")

    async def spawn(self, app: str, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
                    name: str | None = None, caps: Iterable[str] | None = None,
                    quotas: Quotas | Mapping[str, Any] | None = None, priority: int | None = None,
                    durable: bool = False, restart: RestartPolicy | None = None,
                    model: str | None = None) -> ProcessInfo:
        """Start an app in the daemon: a registered app's name, "module:attr" or
        "path/app.py:attr" (a path on the daemon's machine, from its working directory).
        `durable`: it survives the daemon (its `durable_id` names it); `restart`: supervised;
        `model`: what it generates with, if not the daemon's model (loaded there first)."""
        body: dict[str, Any] = {"app": app, "args": wire.jsonable(list(args)), "kwargs": wire.jsonable(dict(kwargs or {}))}
        body.update(_options(name=name, caps=caps, quotas=quotas, priority=priority,
                             durable=durable or None, restart=restart, model=model))
        return ProcessInfo.model_validate(await self.request("POST", "/v1/processes", json=body))

    async def ps(self, include_ended: bool = False) -> list[ProcessInfo]:
        """The live processes (and, with `include_ended`, the ended ones not yet reaped)."""
        listing = await self.request("GET", "/v1/processes", params={"all": include_ended})
        return [ProcessInfo.model_validate(info) for info in listing["data"]]

    async def get(self, pid: int) -> ProcessInfo:
        return ProcessInfo.model_validate(await self.request("GET", f"/v1/processes/{pid}"))

    async def wait(self, pid: int, timeout: float | None = None) -> ExitStatus:
        """Wait for the process to end (Timeout after `timeout` s), reap it, say how it ended."""
        return await self._wait(f"/v1/processes/{pid}/wait", timeout)

    async def _wait(self, path: str, timeout: float | None) -> ExitStatus:
        params = {} if timeout is None else {"timeout": timeout}
        return ExitStatus.model_validate(await self.request("POST", path, params=params))

    async def output(self, pid: int) -> AsyncIterator[Output]:
        """What the process wrote, then what it writes and asks, then how it ended (Exited)."""
        async with self._connection() as http:
            try:
                async with http.stream("GET", f"/v1/processes/{pid}/output") as response:
                    if not response.is_success:
                        await response.aread()
                        raise_for(response)
                    async for event in wire.sse_events(response.aiter_lines()):
                        yield _output_event(event)
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc) from exc

    async def logs(self, pid: int) -> str:
        """What the process wrote so far, without following it."""
        return (await self.request("GET", f"/v1/processes/{pid}/logs"))["text"]

    async def stats(self) -> KernelStatistics:
        """The kernel's figures (processes, scheduler, engine)."""
        return KernelStatistics.model_validate(await self.request("GET", "/v1/stats"))

    async def answer(self, pid: int, text: str | None, question_id: int | None = None) -> int:
        """Answer the process's open question; None: nobody can (it fails with NoConsole)."""
        reply = await self.request("POST", f"/v1/processes/{pid}/answer", json={"text": text, "id": question_id})
        return int(reply["id"])

    # -- durable processes (named by durable id: they outlive the daemon's pids) ------------------
    async def durable_ps(self) -> list[DurableInfo]:
        listing = await self.request("GET", "/v1/durable")
        return [DurableInfo.model_validate(info) for info in listing["data"]]

    async def durable_info(self, durable_id: str) -> DurableInfo:
        return DurableInfo.model_validate(await self.request("GET", f"/v1/durable/{durable_id}"))

    async def durable_wait(self, durable_id: str, timeout: float | None = None) -> ExitStatus:
        """Wait for a durable process to end, wherever it runs (Timeout after `timeout` s)."""
        return await self._wait(f"/v1/durable/{durable_id}/wait", timeout)

    async def durable_resume(self, durable_id: str) -> DurableInfo:
        return DurableInfo.model_validate(await self.request("POST", f"/v1/durable/{durable_id}/resume"))

    async def durable_cancel(self, durable_id: str, reason: str = "cancelled") -> DurableInfo:
        return DurableInfo.model_validate(await self.request("POST", f"/v1/durable/{durable_id}/cancel",
                                                             json={"reason": reason}))

    # -- the model library (the daemon's LLMOS_HOME; /v1/library) ---------------------------------
    async def models(self) -> list[ModelRow]:
        listing = await self.request("GET", "/v1/library")
        return [ModelRow.model_validate(row) for row in listing["data"]]

    async def show_model(self, name: str) -> ModelCard:
        return ModelCard.model_validate(await self.request("GET", f"/v1/library/{quote(name, safe='')}"))

    async def import_model(self, path: str, name: str | None = None) -> str:
        """Import a folder or .gguf of the daemon's machine; the name it got."""
        body = {"path": path, "name": name}
        return str((await self.request("POST", "/v1/library/import", json=body))["name"])

    async def create_model(self, name: str, base: str, *, system: str | None = None, adapter: str | None = None,
                           params: dict[str, Any] | None = None) -> None:
        await self.request("POST", "/v1/library", json={"name": name, "base": base, "system": system,
                                                        "adapter": adapter, "params": params or {}})

    async def copy_model(self, source: str, destination: str) -> None:
        await self.request("POST", f"/v1/library/{quote(source, safe='')}/copy", json={"destination": destination})

    async def remove_model(self, name: str) -> str:
        return str((await self.request("DELETE", f"/v1/library/{quote(name, safe='')}"))["message"])

    async def default_model(self) -> str:
        return str((await self.request("GET", "/v1/default-model"))["default"])

    async def set_default_model(self, name: str | None) -> str:
        """Set (None: clear) the default; the default now."""
        return str((await self.request("PUT", "/v1/default-model", json={"name": name}))["default"])

    async def add_remote_model(self, name: str, url: str, *, model_id: str | None = None,
                               api_key_env: str | None = None) -> None:
        await self.request("POST", "/v1/library/remote", json={"name": name, "url": url, "model_id": model_id,
                                                               "api_key_env": api_key_env})

    async def pull_model(self, name: str) -> str:
        return str((await self.request("POST", "/v1/library/pull", json={"name": name}))["message"])

    async def kill(self, pid: int, reason: str | None = None) -> ProcessInfo:
        return await self._control(pid, "kill", {"reason": reason} if reason else None)

    async def suspend(self, pid: int) -> ProcessInfo:
        return await self._control(pid, "suspend")

    async def resume(self, pid: int) -> ProcessInfo:
        return await self._control(pid, "resume")

    async def nice(self, pid: int, priority: int) -> ProcessInfo:
        return await self._control(pid, "nice", {"priority": priority})

    async def _control(self, pid: int, action: str, body: dict[str, Any] | None = None) -> ProcessInfo:
        return ProcessInfo.model_validate(await self.request("POST", f"/v1/processes/{pid}/{action}", json=body))

    async def trace(self, pid: int, limit: int | None = None) -> list[TraceEvent]:
        """The process's most recent syscalls, oldest first."""
        params = {} if limit is None else {"limit": limit}
        listing = await self.request("GET", f"/v1/processes/{pid}/trace", params=params)
        return [TraceEvent(**event) for event in listing["data"]]

    def remote(self, *, name: str = "remote", caps: Iterable[str] | None = None,
               quotas: Quotas | Mapping[str, Any] | None = None, priority: int | None = None,
               lease_s: float = LEASE_S) -> RemoteSession:
        """A remote session (`async with client.remote(...) as session`: `session.sys`)."""
        return RemoteSession(self, name=name, caps=caps, quotas=quotas, priority=priority, lease_s=lease_s)


def _options(**options: Any) -> dict[str, Any]:
    """The options given (not None), as JSON."""
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, (Quotas, RestartPolicy)):
            value = value.model_dump(mode="json")
        elif key == "caps":
            value = sorted(value)
        out[key] = value
    return out


# -- remote syscalls ---------------------------------------------------------------------------
class RemoteSys(Sys):
    """A `Sys` whose syscalls go over HTTP to a remote session: the same methods (made from
    the same table), the same results and the same errors as a local one. A value that
    cannot cross the wire (a Python callable as `spawn`'s app) fails with InvalidRequest."""

    __slots__ = ()


class RemoteTextStream(TextStream):
    """A streamed generation arriving over HTTP, with `TextStream`'s interface (`async for
    piece`, `.reply` once drained, `text()`, `aclose()`); leaving it early cancels the
    generation in the daemon."""

    def __init__(self, call: str, response: httpx.Response, url: str) -> None:
        # TextStream.__init__ is not called: it takes a local generation job, and this has none.
        self._call, self._response, self._url = call, response, url
        self.reply: Reply | None = None

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            async for event in wire.sse_events(self._response.aiter_lines()):
                if "text" in event:
                    yield event["text"]
                elif "reply" in event:
                    self.reply = wire.decode_result(self._call, event["reply"])
                elif "error" in event:
                    raise error_from(500, event["error"])
        except httpx.TransportError as exc:
            raise _unreachable(self._url, exc) from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class _RemoteKernel:
    """What a RemoteSys takes for its kernel: `syscall(proc, request)` sends the request to
    the session and decodes the answer into the request class's result type."""

    def __init__(self, session: RemoteSession) -> None:
        self._session = session

    async def syscall(self, proc: Any, request: Any) -> Any:
        session = self._session
        body = wire.request_body(request)
        http = session.connection
        sent = http.build_request("POST", f"/v1/remote/{session.pid}/syscalls", json=body,
                                  headers={wire.SESSION_HEADER: session.token})
        try:
            response = await http.send(sent, stream=True)
        except httpx.TransportError as exc:
            raise _unreachable(session.url, exc) from exc
        if response.is_success and response.headers.get("content-type", "").startswith(wire.SSE_MEDIA_TYPE):
            return RemoteTextStream(body["call"], response, session.url)
        try:
            await response.aread()
        finally:
            await response.aclose()
        raise_for(response)
        return wire.decode_result(body["call"], response.json())


class RemoteSession:
    """One remote app's session in the daemon: a process there stands for it, and `sys`
    (a RemoteSys) issues its syscalls. While open, a heartbeat keeps its lease; leaving
    the `async with` without `exit()` ends it (FAILED, with the exception that left it)."""

    def __init__(self, client: DaemonClient, *, name: str, caps: Iterable[str] | None,
                 quotas: Quotas | Mapping[str, Any] | None, priority: int | None, lease_s: float) -> None:
        self.url = client.url
        self._client = client
        self._open = {"name": name, "lease_s": lease_s, **_options(caps=caps, quotas=quotas, priority=priority)}
        self.pid, self.token, self.lease_s = 0, "", lease_s
        self.info: ProcessInfo | None = None
        self.status: ExitStatus | None = None  # set by exit()
        self._sys: RemoteSys | None = None
        self._connection: httpx.AsyncClient | None = None
        self._tg: Any = None

    @property
    def sys(self) -> RemoteSys:
        """The app's handle: every syscall goes to this session's process in the daemon."""
        assert self._sys is not None, "open the session first: `async with client.remote() as session`"
        return self._sys

    @property
    def connection(self) -> httpx.AsyncClient:
        assert self._connection is not None, "open the session first: `async with client.remote() as session`"
        return self._connection

    async def __aenter__(self) -> RemoteSession:
        self._connection = self._client.http()
        try:
            opened = await self._call("POST", "/v1/remote", json=self._open, session=False)
        except BaseException:
            await self._connection.aclose()
            raise
        self.pid, self.token, self.lease_s = opened["pid"], opened["token"], opened["lease_s"]
        self.info = ProcessInfo.model_validate(opened["process"])
        self._sys = RemoteSys(_RemoteKernel(self), self.info)  # type: ignore[arg-type]  # stand-ins for both
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._heartbeat)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self.status is None:
                with anyio.move_on_after(EXIT_TIMEOUT_S, shield=True):
                    await self.exit(error=exc or RuntimeError("the remote session was left without exit()"))
        except (ClientError, SyscallError):
            pass  # the daemon or the session is gone already (its lease ends it there)
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            await self.connection.aclose()

    async def exit(self, result: Any = None, error: BaseException | None = None) -> ExitStatus:
        """End the session: EXITED with `result` (JSON; otherwise its repr), or FAILED with
        `error`. Returns the session process's ExitStatus (KILLED, if it was killed first)."""
        body: dict[str, Any] = {"result": wire.jsonable(result)}
        if error is not None:
            body = {"error": {"type": type(error).__name__, "message": str(error),
                              "traceback": "".join(traceback.format_exception(error))}}
        self.status = ExitStatus.model_validate(await self._call("POST", f"/v1/remote/{self.pid}/exit", json=body))
        return self.status

    async def heartbeat(self) -> None:
        await self._call("POST", f"/v1/remote/{self.pid}/heartbeat")

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.lease_s / 4)
            try:
                await self.heartbeat()
            except SyscallError:
                return  # the session has ended: the next syscall says how
            except ClientError:
                pass  # the daemon did not answer this time; the lease may still hold for the next

    async def _call(self, method: str, path: str, *, json: Any = None, session: bool = True) -> Any:
        headers = {wire.SESSION_HEADER: self.token} if session else {}
        try:
            response = await self.connection.request(method, path, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        raise_for(response)
        return response.json()


# -- running an app remotely ---------------------------------------------------------------------
class Console(Protocol):
    """Where a remote app's output and questions go (llmos.kernel.console.Console's shape:
    `llmos run`'s StdioConsole fits)."""

    def write(self, pid: int, text: str) -> None: ...

    async def ask(self, pid: int, question: str) -> str: ...


async def run_remote(url: str | None, app: Any, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
                     caps: Iterable[str] | None = None, quotas: Quotas | Mapping[str, Any] | None = None, *,
                     api_key: str | None = _UNSET, name: str | None = None, console: Console | None = None,
                     lease_s: float = LEASE_S) -> ExitStatus:
    """Run `app` here, with its syscalls served by the daemon at `url` (default
    `daemon_url()`): `await main(sys, *args, **kwargs)` with a RemoteSys. `app` is what
    `resolve_app` takes: an `async def main(sys, ...)`, a class with one, or
    "module:attr" / "path/app.py:attr", imported in this process (a registered app's name
    is the caller's to look up). What the app writes and asks goes to `console` (None:
    dropped; questions fail with NoConsole). Returns the session's ExitStatus: EXITED with
    the result (as JSON), FAILED with the app's exception, KILLED if the daemon killed it."""
    main = resolve_app(app)
    args, kwargs = list(args), dict(kwargs or {})
    try:
        inspect.signature(main).bind(None, *args, **kwargs)
    except TypeError as exc:
        raise InvalidRequest(f"{exc} (the signature is {inspect.signature(main)})") from None
    client = DaemonClient(url, api_key)
    session_name: str = name or getattr(main, "__qualname__", None) or "remote"
    relayed = anyio.Event()
    async with client, client.remote(name=session_name, caps=caps, quotas=quotas, lease_s=lease_s) as session:
        async with anyio.create_task_group() as tg:
            if console is not None:
                tg.start_soon(_relay, client, session.pid, console, relayed)
            status = await _run_main(session, main, args, kwargs)
            if console is not None:
                with anyio.move_on_after(EXIT_TIMEOUT_S):  # the rest of the output, up to its end
                    await relayed.wait()
            tg.cancel_scope.cancel()
        return status


async def _run_main(session: RemoteSession, main: Any, args: list[Any], kwargs: dict[str, Any]) -> ExitStatus:
    try:
        result = await main(session.sys, *args, **kwargs)
    except SystemExit as exc:  # as the kernel takes it: 0 or None is a normal exit
        if exc.code in (0, None):
            return await session.exit()
        return await session.exit(error=exc)
    except Exception as exc:  # the app's failure is its own: reported, not raised here
        return await session.exit(error=exc)
    return await session.exit(result=result)


async def relay(client: DaemonClient, pid: int, console: Console) -> ExitStatus:
    """Follow process `pid`'s output to its end as a terminal would: its text to `console`,
    its questions to `console.ask` (whose NoConsole tells the process nobody can answer);
    returns how it ended. What `llmos run` does with a process it started in the daemon."""
    async for event in client.output(pid):
        if isinstance(event, Text):
            console.write(pid, event.text)
        elif isinstance(event, Question):
            try:
                answer: str | None = await console.ask(pid, event.text)
            except NoConsole:
                answer = None
            await client.answer(pid, answer, event.id)
        else:
            return event.status
    raise DaemonError(502, f"the output stream of process {pid} ended before the process did")


async def _relay(client: DaemonClient, pid: int, console: Console, done: anyio.Event) -> None:
    """`relay` for a remote app: a broken relay loses output, never the app's run."""
    try:
        await relay(client, pid, console)
    except (ClientError, SyscallError):
        pass
    finally:
        done.set()
