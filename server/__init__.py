"""llmos.server: `llmos serve`, the kernel as a daemon over HTTP, and its clients.

The daemon side (FastAPI on uvicorn, loaded only by `llmos serve`) and the client side
(httpx only, light enough for every CLI command) live here. Every action the HTTP API takes
on the kernel is a syscall of a process: the daemon's own (`llmosd`), or a process made for
the request, so capabilities, quotas, accounting and traces apply as they do locally.
"""
