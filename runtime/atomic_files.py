"""Writing files so that a crash or a kill never leaves a half-written one under the final name."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from runtime.errors import ConfigError


def check_output_file(output: str, flag: str = "--output") -> None:
    """Refuse an output file whose folder does not exist, or that names a folder."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"The folder of {flag} {output} does not exist; create {folder} first")
    if os.path.isdir(output):
        raise ConfigError(f"{flag} {output} is a folder; give a file name")


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
