"""CIFAR-10 through torchvision's dataset class.

Format: ``root/cifar-10-batches-py/`` holds the official Python pickles (``data_batch_1..5``,
``test_batch``: a dict with ``data`` (N, 3072) uint8, channel-major 32 x 32 planes, and ``labels``;
``batches.meta``), which torchvision checks against its md5 list and reads. When the folder is
missing, ``root/cifar-10-python.tar.gz`` (downloaded when missing and allowed; md5-verified) is
extracted into a temporary folder that is renamed into place only when complete.

Splits: the 50,000 training images give 45,000 train and ``valid_size`` = 5,000 validation rows
chosen at random with ``seed``; the 10,000 test images are the test split. Images are divided by
255 and normalised with mean (0.4914, 0.4822, 0.4465), std (0.247, 0.243, 0.261).
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from dataset.cache import cached
from dataset.common import ImageDataset, carve, check_labels
from dataset.files import ensure_file, verify
from dataset.registry import DatasetError, Splits, register

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]  # torchvision is imported only to decode
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
STD = torch.tensor([0.247, 0.243, 0.261]).view(3, 1, 1)


def _extract(archive: Path, root: Path) -> None:
    """Extract the archive's ``cifar-10-batches-py`` folder into ``root`` atomically."""
    verify(archive, ("md5", MD5))
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tarred:
            # the "data" filter refuses links and paths leaving the folder (Python >= 3.10.12)
            tarred.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        if not (staging / FOLDER).is_dir():
            raise DatasetError(f"{archive} has no {FOLDER}/ folder: it is not the CIFAR-10 python archive")
        os.replace(staging / FOLDER, root / FOLDER)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DatasetError(f"{archive} cannot be extracted ({error}); delete it and run again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _decode(root: Path) -> dict[str, torch.Tensor]:
    from torchvision.datasets import CIFAR10
    try:
        train, test = (CIFAR10(str(root), train=flag, download=False) for flag in (True, False))
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
        raise DatasetError(f"{root / FOLDER} is incomplete or corrupt (torchvision: {error}); delete the folder "
                           f"and place {ARCHIVE} in {root} (or set download: true)") from None
    out = {}
    for split, data in (("train", train), ("test", test)):
        out[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(data.data.transpose(0, 3, 1, 2)))
        out[f"{split}_y"] = check_labels(np.asarray(data.targets), 10, root / FOLDER)
    return out


@register("cifar10")
def build_cifar10(root: Path, download: bool = True, valid_size: int = 5000, seed: int = 0) -> Splits:
    """CIFAR-10: 45,000 / 5,000 / 10,000 normalised 3 x 32 x 32 images."""
    folder = root / FOLDER
    if not folder.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        try:
            archive = ensure_file(root, ARCHIVE, URL, ("md5", MD5), download)
        except DatasetError as error:
            raise DatasetError(f"{error} (or put the extracted {FOLDER}/ folder in {root})") from None
        _extract(archive, root)
    sources = [folder / name for name in BATCHES if (folder / name).is_file()]
    data = cached(root, "cifar10", {}, sources, lambda: _decode(root))
    train, valid = carve(len(data["train_y"]), valid_size, seed)
    norm = dict(scale=1 / 255, mean=MEAN, std=STD)
    return Splits(ImageDataset(data["train_x"], data["train_y"], train, **norm),
                  ImageDataset(data["train_x"], data["train_y"], valid, **norm),
                  ImageDataset(data["test_x"], data["test_y"], **norm),
                  num_classes=10, in_channels=3, image_shape=(32, 32))
