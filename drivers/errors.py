"""Errors of the model library. Both are raised at load time, never inside a syscall."""

from llmos.kernel.errors import ConfigError


class UnknownModel(ConfigError):
    """No model has that name; the message lists the names that exist."""


class ModelUnavailable(ConfigError):
    """The model is known but cannot be loaded here (its package is missing); the message says how to fix it."""
