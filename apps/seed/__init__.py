"""The seed apps: what the seed documents show LLMOS doing, each an app on the syscall API.

Each is registered by name (llmos.apps.registry), so `llmos run translate "你好"` works, and
each backs a convenience method of the `Model` that `llmos.load_model()` returns.
"""
