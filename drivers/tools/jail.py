"""The jail an untrusted tool runs in: bubblewrap (`bwrap`), and the refusal where it cannot.

What a jailed tool sees (`command`): the system's programs and libraries read-only (/usr and
the /bin, /lib... links to it), a few files of /etc (the dynamic linker's cache, the time
zone; with the network, name resolution and certificates: nothing else, so no /etc/passwd),
the Python installation and environment, llmos's packages and the tool's own file or
package read-only (`code_paths`: no other sys.path folder, never HOME itself or an ancestor
of it, nothing of LLMOS_HOME; a Python installed inside HOME, pyenv's or a virtualenv, is
shown), its caller's workspace as the one writable folder (also its working folder), a
fresh /tmp, its own /proc and /dev. It runs in
new PID, IPC, UTS, cgroup and (unless the caller holds the `net` capability) network
namespaces, in a new session (no terminal to type into), dies with its parent, and can
never gain privileges (bwrap sets no_new_privs; every mount is nosuid).

Run as root, bwrap makes no user namespace: it keeps only CAP_SETUID and CAP_SETGID, which
the worker uses at once to become `nobody` (JAIL_UID), so the tool holds no capability and
RLIMIT_NPROC counts (root is exempt from it). The workspace is handed to `nobody` then.
Run as another user, bwrap's user namespace does the same.

Where the jail cannot be set up (`problem()` says why), untrusted tools are refused
(JailUnavailable) unless the user opts in to the weaker rlimit-only sandbox with
LLMOS_WEAK_SANDBOX=1, which is warned about on every call. Never a silent downgrade.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llmos.kernel.errors import JailUnavailable

log = logging.getLogger("llmos.jail")

WEAK_SANDBOX_ENV = "LLMOS_WEAK_SANDBOX"  # "1": without bwrap, run untrusted tools under rlimits only
JAIL_UID_ENV = "LLMOS_JAIL_UID"  # set for the worker: the uid (and gid) it drops to before anything else
JAIL_UID = 65534  # nobody
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; `make setup` does), "
                f"or set {WEAK_SANDBOX_ENV}=1 to run untrusted tools under resource limits only, unjailed")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf",
                 "/etc/services", "/etc/protocols", "/etc/ssl", "/etc/ca-certificates")


@dataclass(frozen=True)
class JailPlan:
    """What one jail shows its tool besides the system: the writable workspace, the network
    or not, and files of code outside sys.path (a script's own tool module)."""

    workspace: str
    network: bool = False
    files: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()  # folders never shown, nor any folder holding them (LLMOS_HOME)


def as_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def problem() -> str | None:
    """Why the jail cannot be set up here (None: it can). Probed once: bwrap is found and
    jails `true`."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [*_bwrap_options(JailPlan(workspace="/"), bwrap, probe=True), "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not be run: {exc}"
    if done.returncode != 0:
        return f"bwrap cannot make a jail here: {done.stderr.strip()[:300] or f'exit status {done.returncode}'}"
    return None


def weak_sandbox_allowed() -> bool:
    return os.environ.get(WEAK_SANDBOX_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_or_refuse(tool: str) -> bool:
    """True to jail `tool`; False to run it unjailed because the user opted in (warned each
    time); JailUnavailable otherwise."""
    reason = problem()
    if reason is None:
        return True
    if weak_sandbox_allowed():
        log.warning("tool %r runs WITHOUT a jail (%s=1: resource limits only; it can read and write what "
                    "you can and reach the network): %s", tool, WEAK_SANDBOX_ENV, reason)
        return False
    raise JailUnavailable(f"tool {tool!r} is untrusted and must run in a jail, but {reason}: {INSTALL_HINT}")


def command(plan: JailPlan, argv: list[str]) -> list[str]:
    """The bwrap command line that runs `argv` jailed as `plan` says."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise JailUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    return [*_bwrap_options(plan, bwrap), "--", *argv]


def prepare_workspace(plan: JailPlan) -> None:
    """The workspace exists and, when the jail drops to `nobody`, is nobody's to write."""
    folder = Path(plan.workspace)
    folder.mkdir(parents=True, exist_ok=True)
    if as_root():  # nobody's to write; others may pass through it (bwrap chdirs in holding no capability)
        os.chown(folder, JAIL_UID, JAIL_UID)
        os.chmod(folder, 0o711)


def jail_env() -> dict[str, str]:
    """What the worker needs to know inside: the uid to drop to, when bwrap runs as root."""
    return {JAIL_UID_ENV: str(JAIL_UID)} if as_root() else {}


# -- the command line --------------------------------------------------------------------------------
def _bwrap_options(plan: JailPlan, bwrap: str, probe: bool = False) -> list[str]:
    options = [bwrap, *_namespaces(plan.network), "--die-with-parent", "--new-session"]
    if as_root():  # no user namespace: keep only what the worker needs to become nobody
        options += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    options += _system(plan.network)
    options += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    if not probe:  # after the fresh /tmp, so that a workspace or code under /tmp shows above it
        options += _mounts(code_paths(plan.files, plan.hidden), plan.workspace)
        options += ["--chdir", plan.workspace]
    return options


def _namespaces(network: bool) -> list[str]:
    names = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root():  # as root a user namespace would map nobody to no one: the worker drops instead
        names.append("--unshare-user")
    if not network:
        names.append("--unshare-net")
    return names


def _system(network: bool) -> list[str]:
    options: list[str] = []
    for folder in SYSTEM_DIRS:
        if os.path.islink(folder):  # merged /usr: /bin -> usr/bin, kept as the same link
            options += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            options += ["--ro-bind", folder, folder]
    options += ["--perms", "0755", "--dir", "/etc"]  # else made as closed as the host's parent folder
    for path in (*SYSTEM_FILES, *(NETWORK_FILES if network else ())):
        options += ["--ro-bind-try", path, path]
    return options


def code_paths(extra: Iterable[str] = (), hidden: Iterable[str] = ()) -> list[str]:
    """Everything of Python a tool may need, read-only: the installation and the environment
    (sys.path's folders inside them: the standard library, site-packages), llmos's own
    packages (an editable install maps them elsewhere), and `extra` (the tool's own file or
    package folder). No other sys.path folder: a script's folder or the working folder of
    `python -m` is no code to show (a project with its .env, the host's /tmp). Never HOME or
    a folder holding it, nor anything of the `hidden` folders (they, what holds them, what
    is in them)."""
    installed = [sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    prefixes = [Path(p).resolve() for p in installed]
    in_installation = [p for p in sys.path if p and any(Path(p).resolve().is_relative_to(x) for x in prefixes)]
    wanted = [*installed, *in_installation, *_llmos_package_dirs(), *extra]
    home = Path.home().resolve()
    secret = [Path(folder).resolve() for folder in hidden]
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted if os.path.exists(p)}):
        resolved = Path(path)
        if any(s.is_relative_to(resolved) or resolved.is_relative_to(s) for s in secret):
            continue
        if home.is_relative_to(resolved) or resolved in (Path("/"), Path("/tmp")):
            continue  # HOME and its ancestors (code inside HOME, a virtualenv, is kept), the root, /tmp
        if resolved.parts[:2] in (("/", "etc"), ("/", "proc"), ("/", "dev")):
            continue
        if not any(resolved.is_relative_to(k) for k in kept):  # a folder already shown shows this one
            kept.append(path)
    return kept


def tool_code(module: str, file: str | None) -> tuple[str, ...]:
    """What a jailed tool's code needs shown: its file, or the folder of the top package it
    is in (its sibling modules), unless that is a script's module (`__main__`)."""
    if not file:
        return ()
    depth = module.count(".") if module not in ("__main__", "") else 0
    root = Path(file).resolve().parents[depth] if depth else None
    return (str(root),) if root is not None and (root / "__init__.py").exists() else (file,)


def _llmos_package_dirs() -> list[str]:
    return [os.path.dirname(module.__file__) for name, module in list(sys.modules.items())
            if (name == "llmos" or name.count(".") == 1 and name.startswith("llmos."))
            and getattr(module, "__path__", None) and getattr(module, "__file__", None)]


def _mounts(read_only: list[str], workspace: str) -> list[str]:
    """Bind `read_only` and then the workspace writable, each at its own path; the folders
    above them are made first, readable by anyone (bwrap would copy their modes, and a
    folder such as /root is closed to `nobody`)."""
    options: list[str] = []
    made: set[str] = set()
    for path, flag in [*((p, "--ro-bind") for p in read_only), (workspace, "--bind")]:
        for parent in reversed(Path(path).parents[:-1]):
            covered = any(Path(str(parent)).is_relative_to(p) for p in read_only)
            if str(parent) not in made and not covered and not str(parent).startswith(SYSTEM_DIRS):
                options += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        options += [flag, path, path]
    return options
