"""The data of a run: the dataset splits of ``cfg.data``, checked against the config (and cut to
``data.max_samples`` per split if set, as ``debug=fast`` does), and the loaders that draw batches
from them.

Every loader has its own seeded generators (the sampler's permutation and the DataLoader's base
seed), so drawing batches never touches the global RNG, which then serves only the model (e.g.
dropout): a run resumed mid-epoch replays exactly the batches and random numbers it would have
seen.

The datasets are the repository's ``dataset/`` folder, which is not installed with the package
(pyproject.toml installs ``gmcnn`` only, so that no bare ``dataset`` module shadows the PyPI
package of that name): :func:`datasets` imports it from the repository (the runner's folder, or
the working directory for ``python -m``/pytest) and refuses, in one line, another package that
answers to the name.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, TensorDataset

from gmcnn.training import distributed
from gmcnn.training.config import ConfigError

if TYPE_CHECKING:
    from dataset import Splits

log = logging.getLogger(__name__)


def datasets() -> ModuleType:
    """The repository's ``dataset`` package (it marks itself ``PROJECT = "gmcnn"``); ConfigError if
    it cannot be imported or another package of that name is found first."""
    where = "run from the repository root (python runner.py) or put the repository first on PYTHONPATH"
    try:
        module = importlib.import_module("dataset")
    except ModuleNotFoundError:
        raise ConfigError(f"the datasets are the repository's dataset/ folder, which is not installed with "
                          f"gmcnn; {where}") from None
    if getattr(module, "PROJECT", None) != "gmcnn":
        raise ConfigError(f"the module 'dataset' at {getattr(module, '__file__', None)} is another package of "
                          f"that name, not the repository's dataset/ folder; {where}")
    return module


def load_data(cfg: DictConfig) -> Splits:
    """The dataset splits of ``cfg.data``; data problems become a one-line ConfigError."""
    data = datasets()
    root = cfg.data.root
    try:
        splits = data.build_dataset(cfg.data.name, root,
                                    **OmegaConf.to_container(cfg.data.options, resolve=True))
    except data.DatasetError as error:
        raise ConfigError(str(error)) from None
    except OSError as error:  # a data root that is a file, an unreadable file, ...
        where = error.filename or root
        raise ConfigError(f"cannot read data {cfg.data.name} at {where}: {error.strerror or error}; "
                          "check data.root and the files' permissions") from None
    if tuple(splits.image_shape) != tuple(cfg.data.image_size):
        raise ConfigError(f"data {cfg.data.name} has images of {splits.image_shape}, but "
                          f"data.image_size says {list(cfg.data.image_size)}")
    if cfg.task == "classification":
        check_num_classes(cfg, splits)
    limit = cfg.data.get("max_samples")
    if limit is not None:
        splits = limit_samples(splits, limit)
        log.warning("data.max_samples=%d: every split cut to at most %d samples (fixed, seeded); "
                    "the metrics are those of the subsets", limit, limit)
    return splits


def limit_samples(splits: Splits, count: int) -> Splits:
    """Every split (train, valid, each test set) cut to :func:`fixed_subset` of ``count``."""
    test_sets = {name: fixed_subset(test, count) for name, test in splits.test_sets.items()}
    return dataclasses.replace(splits, train=fixed_subset(splits.train, count),
                               valid=fixed_subset(splits.valid, count),
                               test=test_sets.get("test"), test_sets=test_sets)


def check_num_classes(cfg: DictConfig, splits: Splits) -> None:
    """data.num_classes must equal the data's number of classes and exceed every label."""
    expected = cfg.data.num_classes
    labels = [d.tensors[1] for d in (splits.train, splits.valid, *splits.test_sets.values())
              if isinstance(d, TensorDataset) and len(d.tensors) > 1]
    largest = max((int(t.max()) for t in labels if t.numel()), default=-1)
    found = max(splits.num_classes, largest + 1)
    if found != expected:
        raise ConfigError(f"data.num_classes={expected}, but data {cfg.data.name} has {found} "
                          f"classes (labels 0..{found - 1}); set data.num_classes={found}")


def fixed_subset(dataset: Dataset, count: int) -> torch.utils.data.Subset:
    """``count`` samples of ``dataset`` (all if it has fewer), the same in every run and process:
    drawn with a fixed seed (never the global RNG), so that a dataset stored in order (by class,
    by simulation) is still represented, and kept in index order; indexed a whole batch at a time
    if ``dataset`` is."""
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count]
    subset = torch.utils.data.Subset(dataset, indices.sort().values.tolist())
    subset.batch_indexable = isinstance(dataset, TensorDataset) or getattr(dataset, "batch_indexable", False)
    return subset


class SkipBatches(Sampler[list[int]]):
    """``batches`` without its first ``skip`` batches (resuming mid-epoch)."""

    def __init__(self, batches: Sampler[list[int]], skip: int):
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        for index, batch in enumerate(self.batches):
            if index >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, cfg: DictConfig,
                device: torch.device, skip_batches: int = 0) -> DataLoader:
    """Global batches drawn from a generator seeded by ``seed`` (this process's share of each
    under torchrun), the first ``skip_batches`` left out. Datasets that take a list of indices
    (tensor datasets, ``batch_indexable`` ones) are indexed a whole batch at a time, much faster
    than collating single samples."""
    sampler = (RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle
               else SequentialSampler(dataset))
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    if distributed.world_size() > 1:
        batches = distributed.ShardedBatches(batches)
    if skip_batches:
        batches = SkipBatches(batches, skip_batches)
    common = dict(num_workers=cfg.trainer.num_workers, pin_memory=device.type == "cuda",
                  generator=torch.Generator().manual_seed(seed))
    if cfg.trainer.num_workers > 0:  # also inside joblib/submitit workers, whose default fails
        common["multiprocessing_context"] = "fork"
    if isinstance(dataset, TensorDataset) or getattr(dataset, "batch_indexable", False):
        return DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(dataset, batch_sampler=batches, **common)
