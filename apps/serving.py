"""`llmos serve` in the terminal: what it says when it starts, and how it stops."""

from __future__ import annotations

import sys

import anyio

from llmos.home import llmos_home
from llmos.urls import redacted
from llmos.server import auth
from llmos.server.daemon import ServeOptions, serve


def run(*, host: str, port: int, model: str, policy: str, max_queue: int | None, new_key: bool,
        cluster: str | None = None, capacity: int | None = None, memory: str | None = None) -> int:
    key = auth.write_new_key(llmos_home()) if new_key else None
    options = ServeOptions(host=host, port=port, model=model, policy=policy, max_queue=max_queue, api_key=key,
                           cluster=cluster, capacity=capacity, memory=memory)
    print(f"llmos: loading {model} ...", file=sys.stderr, flush=True)

    def ready(url: str, key: str | None, kernel: object) -> None:
        print(f"llmos: serving {model} at {url}  (OpenAI API: {url}/v1, dashboard: {url}/)", file=sys.stderr)
        if cluster is not None:
            print(f"llmos: a kernel of the cluster in {redacted(cluster)} (durable processes: "
                  f"{capacity or 'the default number'} at once here)", file=sys.stderr)
        resumed = getattr(getattr(kernel, "durability", None), "resumed", [])
        if resumed:
            print(f"llmos: resumed {len(resumed)} unfinished durable process(es): {', '.join(resumed)} "
                  "(`llmos ps --durable`)", file=sys.stderr)
        if key is None:
            print("llmos: no API key is set, so anyone who can reach loopback may use this server; "
                  f"set {auth.ENV} or use --new-key to require one", file=sys.stderr)
        elif new_key:
            print(f"llmos: API key (saved in {llmos_home() / auth.KEY_FILE}): {key}", file=sys.stderr)
            print(f"llmos: the dashboard with it: {url}/?key={key}", file=sys.stderr)
        else:
            print(f"llmos: an API key is required (Authorization: Bearer <key>; the dashboard: {url}/?key=<key>)",
                  file=sys.stderr)
        sys.stderr.flush()

    try:
        anyio.run(serve, options, ready)
    except KeyboardInterrupt:
        pass
    return 0
