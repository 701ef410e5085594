"""Errors a user can act on.

`InputError` carries one sentence naming the file (and frame) at fault; the CLI prints it on one
line without a traceback. Anything else escaping the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike


class InputError(Exception):
    """Bad user input: a missing, truncated or inconsistent file, or an invalid argument."""

    def __init__(self, message: str, path: str | PathLike | None = None, frame: int | None = None):
        self.path = None if path is None else str(path)
        self.frame = frame
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if frame is not None:
                where += f" (frame {frame})"
            where += ": "
        elif frame is not None:
            where = f"frame {frame}: "
        super().__init__(where + message)
