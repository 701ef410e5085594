"""The library's errors, in one place.

`InputError` (and its `ConfigError`) carries one sentence naming the file (and frame, or config key)
at fault; the CLI prints it on one line without a traceback. `StageError` is a stage failing on
one frame (picklable: it crosses Ray actor boundaries); `PipelineError` a sequence of the graph
that stopped. Anything else escaping the CLI is a bug and keeps its traceback.
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


class ConfigError(InputError):
    """A bad config value: the message names the file and the dotted key."""


class StageError(RuntimeError):
    """A stage failed on one frame: names the stage, the sequence, the frame and the camera (None: all).

    Picklable (it crosses Ray actor boundaries); `detail` is the original exception's one-line text.
    """

    def __init__(self, stage: str, seq: str, frame: int, camera: int | None = None, detail: str = ""):
        self.stage, self.seq, self.frame, self.camera, self.detail = stage, seq, frame, camera, detail
        where = f"sequence {seq}, frame {frame}" + ("" if camera is None else f", camera {camera}")
        super().__init__(f"stage {stage} failed on {where}: {detail}")

    def __reduce__(self):
        return StageError, (self.stage, self.seq, self.frame, self.camera, self.detail)


class PipelineError(RuntimeError):
    """A sequence stopped: a stage failed (its `StageError` is the cause) or restarts ran out."""
