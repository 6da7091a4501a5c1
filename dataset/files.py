"""Source files of the datasets: find them, download them, verify them, read archive members.

Every loader goes through this module, so that all of them behave the same way:

* :func:`ensure_file` returns ``root/filename``; when it is missing it is downloaded (if allowed)
  to a temporary name in ``root``, its checksum is verified, and only then renamed into place, so
  an interrupted or corrupt download never leaves a file that a later run would trust.
* :func:`verify` checks a local file against a known ``(algorithm, hex digest)`` (md5, sha1 or
  sha256, as docs/design.md §4 lists them) and raises :class:`DatasetError` naming the file on mismatch.
* :func:`open_source` opens a file by name, either extracted somewhere under ``root`` (directly or
  one folder down) or as a member of a ``.zip`` / ``.tar.gz`` archive, as a binary stream.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

from dataset.registry import DatasetError

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    tqdm = None

log = logging.getLogger(__name__)

Checksum = tuple[str, str]  # (hashlib algorithm name, lowercase hex digest)
CHUNK = 1 << 20
TIMEOUT_S = 60.0
_verified: set[tuple] = set()  # (path, size, mtime_ns, algorithm, digest) verified in this process


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of the file's bytes by ``hashlib`` algorithm ``algorithm`` (e.g. sha256, md5)."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _stamp(path: Path, checksum: Checksum) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, checksum[0], checksum[1].lower()


def verify(path: Path, checksum: Checksum | None) -> None:
    """Raise :class:`DatasetError` unless ``path`` has the expected digest (no-op without one)."""
    if checksum is None or _stamp(path, checksum) in _verified:
        return
    algorithm, expected = checksum
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise DatasetError(
            f"{path} is corrupt or incomplete: its {algorithm} is {actual}, expected {expected}. "
            f"Delete it and run again with download: true, or replace it with a fresh copy.")
    _verified.add(_stamp(path, checksum))


def download(url: str, dest: Path, checksum: Checksum | None, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` via a temporary file, verified before the final rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    hasher = hashlib.new(checksum[0]) if checksum else None
    log.info("downloading %s to %s", url, dest)
    try:
        with urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            progress = tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name, disable=None,
                            leave=False) if tqdm else nullcontext()
            with progress as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    if hasher:
                        hasher.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        size = partial.stat().st_size
        if total and size != total:
            raise DatasetError(f"download of {url} was cut off ({size} of {total} bytes); run again, "
                               f"or place {dest.name} in {dest.parent} by hand")
        if hasher and hasher.hexdigest() != checksum[1].lower():
            raise DatasetError(
                f"downloaded {url} but its {checksum[0]} is {hasher.hexdigest()}, expected {checksum[1]} "
                f"(a proxy error page or a changed file); nothing was kept. Run again, or place a "
                f"verified {dest.name} in {dest.parent}")
        os.replace(partial, dest)
    except HTTPError as error:
        raise DatasetError(f"could not download {url} (HTTP {error.code} {error.reason}); "
                           f"place {dest.name} in {dest.parent} and run again") from None
    except (URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DatasetError(f"could not download {url} ({reason}); you appear to be offline: "
                           f"place {dest.name} in {dest.parent} and run again") from None
    except OSError as error:
        raise DatasetError(f"could not write {dest} while downloading {url} ({error})") from None
    finally:
        partial.unlink(missing_ok=True)
    if checksum:
        _verified.add(_stamp(dest, checksum))
    return dest


def ensure_file(root: Path, filename: str, url: str | None, checksum: Checksum | None,
                allow_download: bool) -> Path:
    """``root/filename``, downloaded (and verified) first when it is missing and allowed."""
    path = root / filename
    if path.is_file():
        return path
    if url is None:
        raise DatasetError(f"{filename} not found in {root} and it cannot be downloaded: place it there")
    if not allow_download:
        raise DatasetError(f"{filename} not found in {root} and download is off: place it there "
                           f"(from {url}) or set download: true")
    return download(url, path, checksum)


def find_extracted(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/<folder>/name`` if such a file exists."""
    for candidate in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if candidate.is_file():
            return candidate
    return None


@contextmanager
def open_member(archive: Path, name: str) -> Iterator[IO[bytes]]:
    """Binary stream of the member whose base name is ``name`` in a zip or tar(.gz) archive."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                members = [m for m in zipped.namelist() if m.rsplit("/", 1)[-1] == name]
                if not members:
                    raise DatasetError(f"{archive} has no member {name}: it is not the expected archive; "
                                       f"delete it and run again with download: true")
                with zipped.open(members[0]) as stream:
                    yield stream
        else:
            with tarfile.open(archive, "r:*") as tarred:
                members = [m for m in tarred.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == name]
                if not members:
                    raise DatasetError(f"{archive} has no member {name}: it is not the expected archive; "
                                       f"delete it and run again with download: true")
                yield tarred.extractfile(members[0])
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise DatasetError(f"{archive} is corrupt or truncated ({error}); delete it and run again "
                           f"with download: true, or replace it with a fresh copy") from None
