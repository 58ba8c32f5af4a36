"""The one exception type of the data layer, and its "something is missing on disk" flavour."""

from __future__ import annotations

from dualprompt.errors import DualpromptError


class DataError(DualpromptError):
    """Bad data input. The message is ONE sentence: what is wrong and how to fix it.

    Command-line entry points print the message alone (no traceback), so it must stand on its own.
    """


class MissingDataError(DataError):
    """A file or folder the data layer needs is not on disk.

    `missing` is the short name of what is missing (a file or folder name as a user would look for it),
    `expected_at` the full path where it was looked for. `python -m dualprompt.data check` prints both.
    """

    def __init__(self, message: str, missing: str, expected_at: str) -> None:
        super().__init__(message)
        self.missing = missing
        self.expected_at = expected_at
