"""The Larochelle et al. (2007) "variations" sets: rot-MNIST, MNIST-bg-rot, MNIST-noise, rectangles.

Format (``.amat``): ASCII text, one example per line, whitespace separated: 784 pixel values
(a 28 x 28 image, row-major) then the label; lines starting with ``#`` are comments. The files are
read from the official archive (zip or tar.gz, downloaded and checksum-verified when missing) or,
when present, from their extracted copies under ``root`` (directly or one folder down).

Splits (docs/design.md §4), taken as consecutive rows of the files in the order listed in ``VARIANTS``:

* rot-MNIST, MNIST-bg-rot: ``*_train_valid.amat`` rows 0-9,999 train, 10,000-11,999 valid;
  ``*_test.amat`` (50,000 rows) test. MNIST-bg-rot is standardised per pixel with the statistics
  of the 10,000 training rows; the others are left in [0, 1].
* MNIST-noise: ``mnist_noise_variations_all_{level}.amat`` (14,000 rows): rows 0-9,999 train,
  10,000-11,999 valid, the last 2,000 test.
* rectangles: ``rectangles_train.amat`` rows 0-999 train, 1,000-1,199 valid;
  ``rectangles_test.amat`` (50,000 rows) test.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataset.cache import cached
from dataset.common import ImageDataset, check_labels, pixel_stats
from dataset.files import Checksum, ensure_file, find_extracted, open_member, verify
from dataset.registry import DatasetError, Splits, register

log = logging.getLogger(__name__)

BASE_URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/"
SIDE = 28
PIXELS = SIDE * SIDE


@dataclass(frozen=True)
class Variant:
    archive: str
    checksum: Checksum
    members: tuple[str, ...]   # file names; "{level}" is filled in for MNIST-noise
    rows: tuple[int, ...]      # expected rows per member
    train: int                 # the first `train` rows are the training split,
    valid: int                 # the next `valid` the validation split, the rest the test split
    num_classes: int = 10
    standardize: bool = False


VARIANTS: dict[str, Variant] = {
    "rot-mnist": Variant(
        "mnist_rotation_new.zip", ("md5", "0f9a947ff3d30e95cd685462cbf3b847"),
        ("mnist_all_rotation_normalized_float_train_valid.amat", "mnist_all_rotation_normalized_float_test.amat"),
        (12_000, 50_000), 10_000, 2_000),
    "mnist-bg-rot": Variant(
        "mnist_rotation_back_image_new.zip", ("sha1", "902bb7e96136dd76e9f2924d7fdb9eb832f7bc33"),
        ("mnist_all_background_images_rotation_normalized_train_valid.amat",
         "mnist_all_background_images_rotation_normalized_test.amat"),
        (12_000, 50_000), 10_000, 2_000, standardize=True),
    "mnist-noise": Variant(
        "mnist_noise_variation.tar.gz", ("sha1", "2d2cfa47c4aa51cc7a8fd1e52abadc7df4b7bfbd"),
        ("mnist_noise_variations_all_{level}.amat",), (14_000,), 10_000, 2_000),
    "rectangles": Variant(
        "rectangles.zip", ("sha1", "b8d456b1f83bea5efebe76a47a9535adc4b72586"),
        ("rectangles_train.amat", "rectangles_test.amat"), (1_200, 50_000), 1_000, 200, num_classes=2),
}


def parse_amat(stream: io.IOBase | Path, source: object, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 784) float32 and labels (N,) int64 from ``.amat`` text (a path or a binary stream)."""
    text = stream if isinstance(stream, Path) else io.TextIOWrapper(stream, encoding="ascii")
    try:
        table = np.loadtxt(text, dtype=np.float32, comments="#", ndmin=2)
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{source} is not a valid .amat file ({error}); it is corrupt or truncated: "
                           f"delete it (or its archive) and run again") from None
    if table.shape[1] != PIXELS + 1:
        raise DatasetError(f"{source}: rows have {table.shape[1]} values, expected {PIXELS} pixels and a label")
    if not np.isfinite(table[:, :PIXELS]).all():
        raise DatasetError(f"{source}: pixel values are not all finite; the file is corrupt")
    labels = check_labels(table[:, PIXELS], num_classes, source)
    return torch.from_numpy(np.ascontiguousarray(table[:, :PIXELS])), labels


def _read_member(root: Path, spec: Variant, member: str, archive: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    extracted = find_extracted(root, member)
    if extracted is not None:
        return parse_amat(extracted, extracted, spec.num_classes)
    verify(archive, spec.checksum)
    with open_member(archive, member) as stream:
        return parse_amat(stream, f"{archive}:{member}", spec.num_classes)


def load_variant(name: str, root: Path, download: bool = True, level: int | None = None) -> dict[str, torch.Tensor]:
    """Decoded images (N, 1, 28, 28) float32 and labels of all rows of ``name``, in file order."""
    spec = VARIANTS[name]
    members = [m.format(level=level) for m in spec.members]
    extracted = [find_extracted(root, m) for m in members]
    archive = None
    if any(path is None for path in extracted):
        try:
            archive = ensure_file(root, spec.archive, BASE_URL + spec.archive, spec.checksum, download)
        except DatasetError as error:
            wanted = ", ".join(m for m, p in zip(members, extracted) if p is None)
            raise DatasetError(f"{error} (or put the extracted {wanted} there)") from None
    sources = [p for p in extracted if p is not None] + ([archive] if archive else [])

    def build() -> dict[str, torch.Tensor]:
        images, labels = [], []
        for member, expected in zip(members, spec.rows):
            x, y = _read_member(root, spec, member, archive)
            if len(x) != expected:
                raise DatasetError(f"{member} (in {root}) has {len(x)} rows, expected {expected}: it is "
                                   f"truncated or not the official file; delete it and run again")
            images.append(x)
            labels.append(y)
        return {"images": torch.cat(images).reshape(-1, 1, SIDE, SIDE), "labels": torch.cat(labels)}

    return cached(root, name, {"level": level}, sources, build)


def build_variant(name: str, root: Path, download: bool, level: int | None = None) -> Splits:
    spec = VARIANTS[name]
    data = load_variant(name, root, download, level)
    images, labels = data["images"], data["labels"]
    train = torch.arange(spec.train)
    valid = torch.arange(spec.train, spec.train + spec.valid)
    test = torch.arange(spec.train + spec.valid, len(images))
    mean, std = pixel_stats(images[:spec.train]) if spec.standardize else (0.0, 1.0)
    splits = [ImageDataset(images, labels, rows, mean=mean, std=std) for rows in (train, valid, test)]
    return Splits(*splits, num_classes=spec.num_classes, in_channels=1, image_shape=(SIDE, SIDE))


@register("rot-mnist")
def build_rot_mnist(root: Path, download: bool = True) -> Splits:
    """MNIST-rot (mnist_rotation_new): 10,000 / 2,000 / 50,000, pixels in [0, 1]."""
    return build_variant("rot-mnist", root, download)


@register("mnist-bg-rot")
def build_mnist_bg_rot(root: Path, download: bool = True) -> Splits:
    """MNIST-rot-back-image: 10,000 / 2,000 / 50,000, standardised per pixel (train statistics)."""
    return build_variant("mnist-bg-rot", root, download)


@register("mnist-noise")
def build_mnist_noise(root: Path, download: bool = True, noise_level: int = 1) -> Splits:
    """MNIST with background noise of level 1-6 (one file each): 10,000 / 2,000 / 2,000."""
    if isinstance(noise_level, bool) or noise_level not in range(1, 7):
        raise DatasetError(f"mnist-noise: noise_level must be an integer 1..6, got {noise_level!r}")
    return build_variant("mnist-noise", root, download, int(noise_level))


@register("rectangles")
def build_rectangles_amat(root: Path, download: bool = True) -> Splits:
    """The official rectangles set (two classes): 1,000 / 200 / 50,000 28 x 28 images."""
    return build_variant("rectangles", root, download)
