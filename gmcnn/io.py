"""Durable atomic file writes, shared by checkpoints, run metrics and dataset caches.

``atomic_write(path, write)`` writes to ``.<name>.<pid>.tmp`` in the same directory, flushes and
fsyncs it, renames it over ``path`` (atomic on POSIX) and fsyncs the directory, so that after a
crash or power loss ``path`` holds either its old or its new content, never a mix. A kill between
the write and the rename leaves only the temporary file, which :func:`remove_temporaries` deletes
on the next start. No torch import: dataset code may use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    """The temporary sibling ``atomic_write`` writes ``path`` to (one per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(handle)`` on a temporary binary file, then durably replace ``path`` by it.
    On any error (a full disk: OSError ENOSPC) the temporary file is removed, ``path`` is
    untouched and the error propagates (an OSError naming ``path`` as its filename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, str(tmp)):  # name the file
            raise type(error)(error.errno, error.strerror or str(error), str(path)) from error
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``directory`` (not recursive); call it
    only while no other process writes there (e.g. holding the run directory's lock)."""
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
