"""NORB (jittered-cluttered, 6 classes) and smallNORB (5 classes) from the official binary matrices.

Format (docs/design.md §4.1): little-endian int32 magic (0x1E3D4C55 uint8 matrix, 0x1E3D4C54 int32 matrix),
int32 ndim, max(3, ndim) int32 dimensions (unused trailing ones are 1), then the C-order payload.
``*-dat.mat`` is (N, 2, H, W) uint8 with index 0 the left camera, ``*-cat.mat`` (N,) int32 labels.
Files may be gzipped (detected by content, ``.mat`` or ``.mat.gz``), under ``root`` or one folder
down. The ``*-info.mat`` files are not needed and not read.

Only the left image is kept, resized by nearest neighbour sampled at pixel centres (source pixel
``floor((k + 0.5) * H / side)``, like PIL's NEAREST) to 32 x 32 (NORB) or 24 x 24 (smallNORB).
NORB is standardised per pixel with the statistics of the whole official training set; smallNORB
is divided by 255. The validation split is ``valid_fraction`` of the official training rows,
chosen at random with ``seed`` (the original code used 20%); the official test set is the test split.
Only smallNORB is downloaded (sha256-verified .gz files); NORB (about 3 GB) must be placed by hand.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch

from dataset.cache import cached
from dataset.common import ImageDataset, carve, check_labels, pixel_stats
from dataset.files import ensure_file, find_extracted, verify
from dataset.registry import DatasetError, Splits, register

MAGIC = {0x1E3D4C55: np.dtype(np.uint8), 0x1E3D4C54: np.dtype("<i4")}
CHUNK_ROWS = 1024


@dataclass(frozen=True)
class NorbSpec:
    train: tuple[str, ...]       # file stems; files are f"{stem}-dat.mat" and f"{stem}-cat.mat"
    test: tuple[str, ...]
    source_side: int
    side: int
    num_classes: int
    url: str | None = None       # folder of the .mat.gz files, when downloadable
    sha256: dict[str, str] = field(default_factory=dict)  # .mat.gz name -> digest


SPECS: dict[str, NorbSpec] = {
    "norb": NorbSpec(
        tuple(f"norb-5x46789x9x18x6x2x108x108-training-{k:02d}" for k in range(1, 11)),
        tuple(f"norb-5x01235x9x18x6x2x108x108-testing-{k:02d}" for k in range(1, 3)),
        source_side=108, side=32, num_classes=6),
    "smallnorb": NorbSpec(
        ("smallnorb-5x46789x9x18x6x2x96x96-training",), ("smallnorb-5x01235x9x18x6x2x96x96-testing",),
        source_side=96, side=24, num_classes=5, url="https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/",
        sha256={
            "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat.gz":
                "5ffd6272a07d32695ee1082a26a41a93a37aab8c28da047f8c34ed348d214873",
            "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat.gz":
                "2784e542c1922060691090952b6cd6278879a216c90f81476f0f00256d42cdaa",
            "smallnorb-5x46789x9x18x6x2x96x96-training-info.mat.gz":
                "de7eb932ebe7a4ee16217fead60660d0eb3d23632c2f4d1c51f88c501c17bf32",
            "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz":
                "cf7104eed3e51174d2f65b66d1e5878b9da233b886f161b0d88f4510ba2c7474",
            "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat.gz":
                "ecaf6d5bb8c3bc5eab9cf0258f6d2198dd474e016e374836fc097f2e5ff509ff",
            "smallnorb-5x01235x9x18x6x2x96x96-testing-info.mat.gz":
                "16adf314226327ee006d1a44db8cfef52773c06c829951d5653a9f6f310248a2",
        }),
}


@contextmanager
def open_matrix(path: Path) -> Iterator[tuple[IO[bytes], np.dtype, tuple[int, ...]]]:
    """(stream positioned at the payload, element dtype, shape) of a binary matrix file."""
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
            magic, ndim = struct.unpack("<Ii", _read(stream, 8, path))
            if magic not in MAGIC or not 1 <= ndim <= 8:
                raise DatasetError(f"{path} is not a NORB uint8/int32 binary matrix (magic {magic:#x}, "
                                   f"ndim {ndim}); it is corrupt or another file")
            dims = struct.unpack(f"<{max(3, ndim)}i", _read(stream, 4 * max(3, ndim), path))
            yield stream, MAGIC[magic], tuple(dims[:ndim])
            if stream.read(1):
                raise DatasetError(f"{path} has data past the size its header declares; it is corrupt")
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path} cannot be read ({error}); it is corrupt or truncated: replace it") from None


def _read(stream: IO[bytes], size: int, path: Path) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DatasetError(f"{path} is truncated (expected {size} more bytes, got {len(data)}); replace it")
    return data


def read_left_images(path: Path, source_side: int, side: int) -> torch.Tensor:
    """Left-camera images of a ``-dat`` file resized to (N, 1, side, side) uint8."""
    pick = ((np.arange(side) + 0.5) * source_side / side).astype(np.int64)
    with open_matrix(path) as (stream, dtype, shape):
        if dtype != np.uint8 or shape[1:] != (2, source_side, source_side):
            raise DatasetError(f"{path}: expected a uint8 matrix (N, 2, {source_side}, {source_side}), "
                               f"got {dtype} {shape}; it is not this dataset's image file")
        out = np.empty((shape[0], 1, side, side), dtype=np.uint8)
        example = 2 * source_side * source_side
        for start in range(0, shape[0], CHUNK_ROWS):
            rows = min(CHUNK_ROWS, shape[0] - start)
            block = np.frombuffer(_read(stream, rows * example, path), dtype=np.uint8)
            block = block.reshape(rows, 2, source_side, source_side)[:, 0]
            out[start:start + rows, 0] = block[:, pick[:, None], pick[None, :]]
    return torch.from_numpy(out)


def read_labels(path: Path, num_classes: int) -> torch.Tensor:
    with open_matrix(path) as (stream, dtype, shape):
        if dtype != np.dtype("<i4") or len(shape) != 1:
            raise DatasetError(f"{path}: expected an int32 vector of labels, got {dtype} {shape}")
        labels = np.frombuffer(_read(stream, 4 * shape[0], path), dtype="<i4")
    return check_labels(labels, num_classes, path)


def _locate(root: Path, spec: NorbSpec, download: bool) -> dict[str, Path]:
    """Paths of every needed ``-dat``/``-cat`` file, keyed by ``.mat`` name; all missing ones listed."""
    names = [f"{stem}-{kind}.mat" for stem in spec.train + spec.test for kind in ("dat", "cat")]
    found = {n: find_extracted(root, n) or find_extracted(root, n + ".gz") for n in names}
    missing = [n for n, path in found.items() if path is None]
    if missing and (spec.url is None or not download):
        how = "set download: true or place them there" if spec.url else "place them there (.mat or .mat.gz)"
        raise DatasetError(f"{len(missing)} NORB file(s) missing in {root}: {', '.join(missing)}; {how}")
    for name in missing:
        gz = name + ".gz"
        found[name] = ensure_file(root, gz, spec.url + gz, ("sha256", spec.sha256[gz]), download)
    return found


def build_norb_family(name: str, root: Path, download: bool, valid_fraction: float, seed: int) -> Splits:
    spec = SPECS[name]
    files = _locate(root, spec, download)

    def read(stems: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for stem in stems:
            dat, cat = files[f"{stem}-dat.mat"], files[f"{stem}-cat.mat"]
            for path in (dat, cat):
                verify(path, ("sha256", spec.sha256[path.name]) if path.name in spec.sha256 else None)
            x, y = read_left_images(dat, spec.source_side, spec.side), read_labels(cat, spec.num_classes)
            if len(x) != len(y):
                raise DatasetError(f"{dat} has {len(x)} images but {cat} {len(y)} labels; one is not the official file")
            images.append(x)
            labels.append(y)
        return torch.cat(images), torch.cat(labels)

    def build() -> dict[str, torch.Tensor]:
        (train_x, train_y), (test_x, test_y) = read(spec.train), read(spec.test)
        mean, std = pixel_stats(train_x)
        return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "mean": mean, "std": std}

    data = cached(root, name, {"side": spec.side}, sorted(files.values()), build)
    if not 0 < valid_fraction < 1:
        raise DatasetError(f"{name}: valid_fraction must be in (0, 1), got {valid_fraction}")
    train, valid = carve(len(data["train_y"]), max(1, round(valid_fraction * len(data["train_y"]))), seed)
    norm = dict(mean=data["mean"], std=data["std"]) if name == "norb" else dict(scale=1 / 255)
    return Splits(ImageDataset(data["train_x"], data["train_y"], train, **norm),
                  ImageDataset(data["train_x"], data["train_y"], valid, **norm),
                  ImageDataset(data["test_x"], data["test_y"], **norm),
                  num_classes=spec.num_classes, in_channels=1, image_shape=(spec.side, spec.side))


@register("norb")
def build_norb(root: Path, download: bool = False, valid_fraction: float = 0.2, seed: int = 0) -> Splits:
    """NORB jittered-cluttered: 291,600 training rows (less the validation rows) / 58,320 test, 6
    classes, 32 x 32, standardised per pixel. ``download`` is accepted but the files cannot be fetched."""
    return build_norb_family("norb", root, download, valid_fraction, seed)


@register("smallnorb")
def build_smallnorb(root: Path, download: bool = True, valid_fraction: float = 0.2, seed: int = 0) -> Splits:
    """smallNORB: 24,300 training rows (less the validation rows) / 24,300 test, 5 classes, 24 x 24, /255."""
    return build_norb_family("smallnorb", root, download, valid_fraction, seed)
