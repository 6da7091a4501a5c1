"""Small, format-exact stand-ins for the official dataset files, for the tests and
``benchmarks/bench_datasets.py`` (test-only code: not part of the installed package).

The writers produce the real formats (``.amat`` text, zip / tar.gz archives, NORB binary matrices,
gzipped or not, CIFAR-10 Python pickles and their tar.gz, ``raw_data_*.pt`` task tensors) with few
rows. Real loaders check row counts and checksums of the official files, so :func:`make_fakes`
also returns the patches (expected rows, digests) under which the fakes count as official;
apply them with :func:`patched`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from dataset import cifar, larochelle, norb, plume
from dataset.files import file_digest
from dataset.plume import as_task, task_filename

Patch = tuple[Any, str, Any]  # (object or dict, attribute or key, value)


def amat_bytes(images: np.ndarray, labels: np.ndarray, header: bool = True) -> bytes:
    """``.amat`` text: one row per example, 784 pixel values then the label (written as a float)."""
    lines = ["# fake .amat file\n"] if header else []
    row = " ".join(["%.6g"] * images[0].size) + " %.6e\n"
    for image, label in zip(images.reshape(len(images), -1).tolist(), np.asarray(labels, dtype=float).tolist()):
        lines.append(row % (*image, label))
    return "".join(lines).encode("ascii")


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A .zip or .tar.gz (by suffix) holding ``members`` (name -> bytes; names may contain folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
            for name, data in members.items():
                zipped.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tarred:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tarred.addfile(info, io.BytesIO(data))
    return path


def norb_bytes(array: np.ndarray) -> bytes:
    """A NORB binary matrix: magic, ndim, max(3, ndim) dimensions, then the payload."""
    magic = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}[array.dtype]
    dims = list(array.shape) + [1] * (3 - array.ndim)
    payload = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return struct.pack(f"<Ii{len(dims)}i", magic, array.ndim, *dims) + payload


def write_norb_file(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = norb_bytes(array)
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def cifar_members(per_batch: int, rng: np.random.Generator) -> dict[str, bytes]:
    """The pickles of ``cifar-10-batches-py/`` with ``per_batch`` images per batch."""
    members = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        members[name] = pickle.dumps(batch, protocol=2)
    members["batches.meta"] = pickle.dumps({"label_names": [f"class{k}" for k in range(10)],
                                            "num_cases_per_batch": per_batch, "num_vis": 3072}, protocol=2)
    return members


def write_tasks(root: Path, tasks: Sequence, frames: int, frame_shape: Sequence[int], seed: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for task in tasks:
        torch.save(torch.randn(frames, *frame_shape, generator=generator), root / task_filename(as_task(task)))


def write_manifest(root: Path, dataset: str) -> None:
    """A manifest.json for the task files in ``root`` as tools.plume_generate writes it (its
    ``generator`` entry names this module)."""
    entries = {}
    for path in sorted(root.glob("raw_data_*.pt")):
        content = path.read_bytes()
        entries[path.name] = {**plume.file_record(content, torch.load(io.BytesIO(content), weights_only=True)),
                              "generator": {"name": "tests.fakes"}}
    (root / plume.MANIFEST).write_text(json.dumps({"format": plume.MANIFEST_FORMAT, "dataset": dataset,
                                                   "files": entries}))


def write_translating_fields(root: Path, tasks: Sequence, frames: int = 40) -> None:
    """Smooth random velocity fields moving one cell per frame along x: translation-equivariant
    dynamics that a GM model can learn (64 x 64 task files)."""
    root.mkdir(parents=True, exist_ok=True)
    for n, task in enumerate(tasks):
        generator = torch.Generator().manual_seed(n)
        velocity = torch.nn.functional.avg_pool2d(torch.randn(1, 2, 64, 64, generator=generator), 9, 1, 4,
                                                  count_include_pad=False)[0]
        series = torch.stack([torch.roll(velocity, t, dims=-1) for t in range(frames)])
        torch.save(series.float(), root / task_filename(as_task(task)))


def write_small_plume(data_dir: Path, variant: str = "rotation") -> Path:
    """``data_dir/plume-<variant>-small`` as ``python -m tools.plume_generate --variant <variant> --small``
    leaves it (the same files, frame counts and manifest; translating fields instead of a simulation)."""
    train, test, _ = plume.SMALL_SETS[f"plume-{variant}-small"]
    root = data_dir / f"plume-{variant}-small"
    write_translating_fields(root, [*train, *test], plume.SMALL_STEPS - (variant == "rotation"))
    write_manifest(root, f"plume-{variant}")
    return root


@dataclass
class Fake:
    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    patches: list[Patch] = field(default_factory=list)


def fake_larochelle(root: Path, name: str, rows: Sequence[int], train: int, valid: int, seed: int = 0,
                    extracted: bool = False, level: int = 1) -> Fake:
    """The variant's official archive (or extracted files) with ``rows`` rows per member file."""
    spec = larochelle.VARIANTS[name]
    rng = np.random.default_rng(seed)
    members = {}
    for member, count in zip(spec.members, rows):
        images = rng.random((count, 784), dtype=np.float32)
        labels = rng.integers(0, spec.num_classes, count)
        members[member.format(level=level)] = amat_bytes(images, labels)
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        for member, data in members.items():
            (root / member).write_bytes(data)
        checksum = spec.checksum
    else:
        archive = write_archive(root / spec.archive, {f"{Path(spec.archive).stem}/{m}": d for m, d in members.items()})
        checksum = (spec.checksum[0], file_digest(archive, spec.checksum[0]))
    patched_spec = dataclasses.replace(spec, rows=tuple(rows), train=train, valid=valid, checksum=checksum)
    options = {"noise_level": level} if name == "mnist-noise" else {}
    return Fake(root, {"download": False, **options}, [(larochelle.VARIANTS, name, patched_spec)])


def fake_norb(root: Path, name: str, rows: int, seed: int = 0) -> Fake:
    """Every dat / cat file of NORB or smallNORB with ``rows`` examples; NORB alternates plain and
    gzipped files, smallNORB is gzipped as downloaded (its sha256 digests are patched)."""
    spec = norb.SPECS[name]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    patches: list[Patch] = []
    for k, stem in enumerate(spec.train + spec.test):
        gz = name == "smallnorb" or k % 2 == 1
        side = spec.source_side
        images = rng.integers(0, 256, (rows, 2, side, side), dtype=np.uint8)
        labels = rng.integers(0, spec.num_classes, rows).astype(np.int32)
        for kind, array in (("dat", images), ("cat", labels)):
            path = write_norb_file(root / f"{stem}-{kind}.mat{'.gz' if gz else ''}", array, gz)
            if name == "smallnorb":
                patches.append((spec.sha256, path.name, file_digest(path, "sha256")))
    return Fake(root, {"download": False}, patches)


def fake_cifar(root: Path, per_batch: int, seed: int = 0) -> Fake:
    """``cifar-10-python.tar.gz`` with ``per_batch`` images per batch; patches the md5 lists."""
    members = cifar_members(per_batch, np.random.default_rng(seed))
    archive = write_archive(root / cifar.ARCHIVE, {f"{cifar.FOLDER}/{n}": d for n, d in members.items()})
    md5 = {n: hashlib.md5(d).hexdigest() for n, d in members.items()}
    patches = [(CIFAR10, "train_list", [[f"data_batch_{k}", md5[f"data_batch_{k}"]] for k in range(1, 6)]),
               (CIFAR10, "test_list", [["test_batch", md5["test_batch"]]]),
               (CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]}),
               (cifar, "MD5", file_digest(archive, "md5"))]
    return Fake(root, {"download": False, "valid_size": per_batch}, patches)


def make_fakes(base: Path, rows: int = 20, seed: int = 0) -> dict[str, Fake]:
    """Fake files of every real registered dataset under ``base/<name>``, about ``rows`` per split."""
    return {
        "cifar10": fake_cifar(base / "cifar10", rows, seed),
        "rot-mnist": fake_larochelle(base / "rot-mnist", "rot-mnist", (2 * rows, rows), rows, rows, seed),
        "mnist-bg-rot": fake_larochelle(base / "mnist-bg-rot", "mnist-bg-rot", (2 * rows, rows), rows, rows, seed),
        "mnist-noise": fake_larochelle(base / "mnist-noise", "mnist-noise", (3 * rows,), rows, rows, seed, level=3),
        "rectangles": fake_larochelle(base / "rectangles", "rectangles", (2 * rows, rows), rows, rows, seed),
        "norb": fake_norb(base / "norb", "norb", max(1, rows // 5), seed),
        "smallnorb": fake_norb(base / "smallnorb", "smallnorb", rows, seed),
    }


@contextmanager
def patched(patches: Sequence[Patch]) -> Iterator[None]:
    """Apply ``(object or dict, name, value)`` patches for the duration of the block."""
    missing = object()
    saved = []
    try:
        for target, name, value in patches:
            is_dict = isinstance(target, dict)
            saved.append((target, name, target.get(name, missing) if is_dict else getattr(target, name)))
            if is_dict:
                target[name] = value
            else:
                setattr(target, name, value)
        yield
    finally:
        for target, name, old in reversed(saved):
            if isinstance(target, dict):
                if old is missing:
                    target.pop(name, None)
                else:
                    target[name] = old
            else:
                setattr(target, name, old)
