"""The error hierarchy of :mod:`gateway`. Only the CLI turns these into exit codes."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error raised by :mod:`gateway`."""


class InputError(GatewayError):
    """Bad input or usage: a file, flag, record or config value. The message names it."""


class CheckFailedError(GatewayError):
    """A check that did not pass: verification failed, a rejected batch, a broken chain."""


class UnreachableError(GatewayError):
    """A dependency is unreachable: the database or a running gateway."""
