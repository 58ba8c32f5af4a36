"""The one base class of every error a user can act on.

Each subclass's message is ONE sentence: what is wrong (the file, the field, the flag) and how to fix
it. Command-line entry points catch `DualpromptError`, print the message alone (no traceback) and exit
with code 2, so anything raised as one must stand on its own. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class DualpromptError(ValueError):
    """A user-facing error: bad configuration, data, results, storage or command-line usage."""


class UsageError(DualpromptError):
    """A bad command line (a flag, its value, or a combination of flags)."""
