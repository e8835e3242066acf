"""Writing files so that a crash or a kill never leaves a half-written one under the final name."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from runtime.errors import ConfigError


def check_output_file(output: str, flag: str = "--output") -> None:
    """Refuse an output file whose folder does not exist, or that names a folder."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"The folder of {flag} {output} does not exist; create {folder} first")
    if os.path.isdir(output):
        raise ConfigError(f"{flag} {output} is a folder; give a file name")


def check_output_folder(folder: str, flag: str) -> None:
    """Create an output folder now, before any work; refuse a file, or a folder that cannot be created or written."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{flag} {folder} is a file; give a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"Cannot create {flag} {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder}: cannot write there; choose a folder you can write to")


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file: links and relative parts resolved (os.path.samefile when both exist)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.realpath(first) == os.path.realpath(second)


def check_not_an_input(output: str, flag: str, inputs: Iterable[tuple[str, str | None]]) -> None:
    """Refuse an output that names one of the tool's own inputs, given as (what the tool calls it, path) pairs."""
    for what, path in inputs:
        if path and same_file(output, path):
            raise ConfigError(f"{flag} {output} would overwrite {what} {path}; write to another file")


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name beside `path`: hidden, never matched by the checkpoint pattern model0*.model.

    Writers that pick a format from the extension must be told the format (or given an open handle)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` survive a power cut (no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def publish(temporary: str | os.PathLike, path: str | os.PathLike, durable: bool = False) -> None:
    """Rename a complete temporary file over `path`; `durable` also flushes the file and its folder to disk."""
    if durable:
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
        fsync_folder(Path(path).parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any error it is removed."""
    temporary = partial_path(path)
    try:
        yield temporary
        publish(temporary, path, durable)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_write(path, durable) as temporary:
        temporary.write_text(text, encoding="utf-8")
