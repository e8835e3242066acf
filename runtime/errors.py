"""Errors caused by what the user gave, and the one way the command-line tools stop on them."""
from __future__ import annotations

import os
import re
import sys
import warnings
from typing import Callable

DEBUG_VARIABLE = "SPEAKERNET_DEBUG"  # set to 1 (or pass --debug) to see the traceback of a user error


class UserError(Exception):
    """Bad input (a flag, YAML key, list line, audio file, path or checkpoint): reported in one line, no traceback.

    Subclasses also derive from the built-in type that describes the problem (ValueError, FileNotFoundError),
    so callers that catch those keep working."""

    def __init__(self, message: str = ""):
        super().__init__(own_message(str(message), type(self).__name__))


def own_message(message: str, class_name: str) -> str:
    """The error's own text; a DataLoader worker's error re-raised in the main process also carries the
    worker's traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."), which is dropped."""
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    starts = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(class_name)}: ", message, re.MULTILINE))
    return message[starts[-1].end():].rstrip() if starts else message


class ConfigError(UserError, ValueError):
    """A flag or YAML value that cannot be used."""


class DataError(UserError, ValueError):
    """A train list, trial list or data folder that cannot be used."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named by the user that does not exist."""


class PeerStopped(UserError):
    """Another process of the job stopped with an error; it printed the message, this one stops quietly."""


def debugging(argv: list[str]) -> bool:
    """Whether the user asked for tracebacks (--debug on the command line or SPEAKERNET_DEBUG=1)."""
    return "--debug" in argv or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def process_label() -> str:
    """' (rank R of N)' inside a multi-process job, else ''."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    return f" (rank {rank} of {world})" if rank is not None and world not in (None, "1") else ""


def report(error: UserError, label: str | None = None) -> None:
    """Print the one-line stop message (nothing for PeerStopped: its cause was printed by the failing process)."""
    if not isinstance(error, PeerStopped):
        print(f"Error{process_label() if label is None else label}: {error}", file=sys.stderr, flush=True)


def plain_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as users read it: 'Warning: <message>' without the source line that raised it."""
    return f"Warning: {message}\n"


def run_command(run: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a tool's run(argv) and return its exit status: a UserError prints its one line and gives 1.

    With --debug or SPEAKERNET_DEBUG=1 the error propagates with its traceback, and warnings show their source."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not debugging(argv):
        warnings.formatwarning = plain_warning
    try:
        status = run(argv)
    except UserError as error:
        if debugging(argv):
            raise
        report(error)
        return 1
    return status if isinstance(status, int) else 0
