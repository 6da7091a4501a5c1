"""On-disk cache of decoded datasets, keyed by the content of the source files.

An entry is a ``torch.save``-d ``dict[str, Tensor]`` at ``root/.cache/<name>-<slot>.pt``, next to
the source files; ``slot`` hashes the cache format version, the name and the options that change
the decoded tensors, so each (dataset, options) pair has one entry, overwritten (never
accumulated) when its sources change. ``root/.cache/index.json`` records, for every entry, its
content ``key`` and the sha256 of its file:

* key = sha256 of (version, name, options, every source's path and sha256): a source replaced by
  one with the same size and modification time (a re-extracted archive, ``rsync -t``) still
  changes the key. Source digests are computed once and stored with the file's (size, mtime_ns,
  ctime_ns, inode); a source is re-hashed only when one of those changes.
* an entry is used only if its recorded key is the key of the current sources and its file is the
  one recorded: same (size, mtime_ns, ctime_ns, inode) as when it was written or last verified,
  else same sha256 (re-hashed before anything is unpickled). Any write to the file changes its
  ctime, which a user cannot set, so a tampered, truncated or swapped entry is re-hashed, fails
  and is decoded again.

Verified entries are loaded memory-mapped with ``torch.load(weights_only=True)``: no code in a
cache file is ever run, and a warm start reads no more than the tensors it uses. Entries and the
index are written to a temporary name and renamed into place (atomic); two processes racing on
the index cost at most a re-hash. An unwritable ``root`` only costs the speed-up (a warning).
The cache is as trusted as the data folder it lives in: it binds the tensors to the sources'
content, it does not authenticate the sources.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dataset.files import file_digest
from gmcnn.io import atomic_write

log = logging.getLogger(__name__)

VERSION = 2
INDEX = "index.json"
Tensors = dict[str, torch.Tensor]


def _stamp(path: Path) -> list[int]:
    """What changes whenever the file's bytes may have changed: size, mtime, ctime, inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return {"sources": {}, "entries": {}}
    if not isinstance(index, dict):
        return {"sources": {}, "entries": {}}
    return {part: index.get(part) if isinstance(index.get(part), dict) else {}
            for part in ("sources", "entries")}


def _write_index(folder: Path, sources: dict[str, Any], entries: dict[str, Any]) -> None:
    """Merge these records into the index on disk (re-read first: another process may have
    added its own) and replace it atomically."""
    index = _read_index(folder)
    index["sources"].update(sources)
    index["entries"].update(entries)
    atomic_write(folder / INDEX, lambda stream: stream.write(json.dumps(index, indent=1).encode()))


def save_atomic(data: Tensors, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    atomic_write(path, lambda stream: torch.save(data, stream))


def _source_digests(root: Path, sources: Sequence[Path], known: dict[str, Any]) -> dict[str, Any]:
    """{name: {"stamp", "sha256"}} of every source, re-hashing only those whose stamp changed."""
    records = {}
    for source in sources:
        name = str(source.relative_to(root)) if source.is_relative_to(root) else str(source.resolve())
        stamp = _stamp(source)
        record = known.get(name)
        if not isinstance(record, dict) or record.get("stamp") != stamp or "sha256" not in record:
            log.info("hashing %s", source)
            record = {"stamp": stamp, "sha256": file_digest(source, "sha256")}
        records[name] = record
    return records


def content_key(name: str, options: Mapping, digests: Mapping[str, Any]) -> str:
    blob = json.dumps({"version": VERSION, "name": name, "options": dict(options),
                       "sources": sorted((n, r["sha256"]) for n, r in digests.items())},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(root: Path, name: str, options: Mapping) -> Path:
    """The entry of this dataset and these options (one, whatever the sources' content)."""
    blob = json.dumps({"version": VERSION, "name": name, "options": dict(options)}, sort_keys=True,
                      default=str)
    return root / ".cache" / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"


def _verified(path: Path, record: Any, key: str) -> bool:
    """The entry at ``path`` is the one written for ``key``, unmodified since."""
    if not isinstance(record, dict) or record.get("key") != key or not path.is_file():
        return False
    if record.get("stamp") == _stamp(path):
        return True
    if file_digest(path, "sha256") == record.get("sha256"):
        record["stamp"] = _stamp(path)  # same bytes (e.g. a copied folder): remember the new stamp
        return True
    log.warning("cache %s does not match its recorded digest (modified or replaced); decoding "
                "the sources again", path)
    return False


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


def cached(root: Path, name: str, options: Mapping, sources: Sequence[Path],
           build: Callable[[], Tensors], enabled: bool = True) -> Tensors:
    """The tensors ``build()`` returns, from the cache when a verified entry for the current
    content of ``sources`` exists."""
    if not enabled:
        return build()
    folder = root / ".cache"
    index = _read_index(folder)
    digests = _source_digests(root, sources, index["sources"])
    key = content_key(name, options, digests)
    path = cache_path(root, name, options)
    recorded = index["entries"].get(path.name)
    record = dict(recorded) if isinstance(recorded, dict) else None
    if _verified(path, record, key) and (data := _load(path)) is not None:
        log.info("loaded %s from cache %s", name, path)
        if record != recorded or any(index["sources"].get(n) != r for n, r in digests.items()):
            _try_write_index(folder, digests, {path.name: record})
        return data
    data = build()
    try:
        save_atomic({k: v.contiguous() for k, v in data.items()}, path)
        _write_index(folder, digests, {path.name: {"key": key, "sha256": file_digest(path, "sha256"),
                                                   "stamp": _stamp(path)}})
        log.info("cached %s at %s", name, path)
    except OSError as error:
        log.warning("could not write cache %s (%s); the next run decodes %s again", path, error, name)
    return data


def _try_write_index(folder: Path, sources: dict[str, Any], entries: dict[str, Any]) -> None:
    try:
        _write_index(folder, sources, entries)
    except OSError as error:
        log.warning("could not update the cache index in %s (%s)", folder, error)
