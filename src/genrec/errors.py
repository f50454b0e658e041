"""The one exception type for user mistakes (bad files, bad settings, mismatched artifacts).

The CLI prints its message as a single line and exits with status 2; anything else is a bug and keeps its
traceback. Messages say what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class GenrecError(Exception):
    """A user-facing error whose message is one actionable line."""


class ConfigError(GenrecError):
    """A recipe or an override is invalid; the message says which key and how to fix it."""
