"""The user-facing error and the exit codes (one place, as in pre-commit's error_handler)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_BUILD_FAILED = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job), handled like Ctrl-C: every ``finally`` runs."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class FatalError(Exception):
    """A problem the user can fix: bad recipe, bad flag, unreachable source.

    The message is complete as it stands (where, what, what to do); it is printed without a
    traceback and the command exits with EXIT_USER_ERROR.
    """


class Location:
    """A place in a file, printed as path:line:col (1-based)."""

    __slots__ = ("path", "line", "col")

    def __init__(self, path: str, line: int, col: int) -> None:
        self.path = path
        self.line = line
        self.col = col

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"
