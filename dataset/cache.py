"""On-disk cache of decoded datasets, so that only the first run pays for parsing.

A cache entry is a ``torch.save``-d ``dict[str, Tensor]`` at ``root/.cache/<name>-<key>.pt``,
next to the source files. ``key`` is a hash of the cache format version, the options that change
the decoded tensors, and the name, size and modification time of every source file, so editing,
replacing or re-downloading a source invalidates it. Entries are written to a temporary name and
renamed into place (atomic), loaded memory-mapped, and rebuilt if unreadable. An unwritable
``root`` only costs the speed-up (a warning), never the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

VERSION = 1
Tensors = dict[str, torch.Tensor]


def cache_path(root: Path, name: str, options: Mapping, sources: Sequence[Path]) -> Path:
    stamps = []
    for source in sources:
        stat = source.stat()
        stamps.append([str(source.relative_to(root)) if source.is_relative_to(root) else str(source),
                       stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"version": VERSION, "name": name, "options": dict(options), "sources": stamps},
                      sort_keys=True, default=str)
    return root / ".cache" / f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}.pt"


def _load(path: Path) -> Tensors | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001  (any unreadable cache is rebuilt)
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, error)
        return None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        log.warning("ignoring malformed cache %s; rebuilding it", path)
        return None
    return data


def save_atomic(data: Tensors, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(data, stream)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def cached(root: Path, name: str, options: Mapping, sources: Sequence[Path],
           build: Callable[[], Tensors], enabled: bool = True) -> Tensors:
    """The tensors ``build()`` returns, from the cache when a matching entry exists."""
    if not enabled:
        return build()
    path = cache_path(root, name, options, sources)
    if path.is_file() and (data := _load(path)) is not None:
        log.info("loaded %s from cache %s", name, path)
        return data
    data = build()
    try:
        save_atomic({k: v.contiguous() for k, v in data.items()}, path)
        log.info("cached %s at %s", name, path)
    except OSError as error:
        log.warning("could not write cache %s (%s); the next run decodes %s again", path, error, name)
    return data
