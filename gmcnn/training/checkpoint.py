"""Checkpoints and the progress of a run.

``checkpoints/last.pt`` holds everything needed to continue a run bit-for-bit: the trainer's
state (model, optimizer, scheduler, AMP scaler), the RNG states, the :class:`Progress` record and
the run's configuration; ``checkpoints/best.pt`` the best-validation model weights
(:func:`save_best`). Both are written with :func:`gmcnn.io.atomic_write` (fsynced, renamed) after
every epoch, and last.pt also when a signal stops the run mid-epoch (``Progress.step`` > 0, with
the epoch's running sums). Where they lie is :class:`gmcnn.training.rundir.RunFiles`'s.

Everything is stored as tensors, lists, dicts, numbers and strings, and read back with
``torch.load(weights_only=True)``: a checkpoint cannot run code when it is loaded, and one
crafted to (any other pickled object) is refused with :class:`CheckpointError`. Plain data is not
trusted either: :func:`load` checks what it read against the schema the trainer writes
(:data:`LAST`, :data:`BEST`: every key, its type, tensors where tensors belong) and refuses a file
with anything else, naming the entry; the saved configuration is plain data whose ``_target_``
names are checked against the allow-list (:mod:`gmcnn.training.targets`) before the run uses it.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from gmcnn.io import atomic_write
from gmcnn.training.rundir import RunFiles


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, unsafe or does not fit the run."""


@dataclass
class Progress:
    """Where a run stands. ``epoch`` epochs are complete; ``step`` batches of epoch ``epoch + 1``
    are done (non-zero only in a checkpoint written when a signal stopped the run mid-epoch), with
    that epoch's running sums ``loss_sum``, ``score_sum`` over ``seen`` samples and its seconds
    ``epoch_seconds``, in batches of ``batch_size`` (a resume that changes trainer.batch_size
    mid-epoch finishes the epoch with these). ``changes``: the configuration changes made on
    resumes."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    score_sum: float = 0.0
    seen: int = 0
    epoch_seconds: float = 0.0
    batch_size: int | None = None
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)

    def start_epoch(self) -> None:
        self.step, self.loss_sum, self.score_sum, self.seen, self.epoch_seconds = 0, 0.0, 0.0, 0, 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Progress:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})


# --- the schema of what a checkpoint may hold ------------------------------------------------

PLAIN = "plain data"  # None, bool, int, float, str, and lists / tuples / dicts (str keys) of them
NUMBER = (int, float)


class MapOf(NamedTuple):
    """A dict whose keys are ``key`` and whose values match ``value``."""
    key: type | tuple[type, ...]
    value: Any


class ListOf(NamedTuple):
    item: Any


class Record(NamedTuple):
    """A dict with these keys (all required unless listed in ``optional``), nothing else."""
    fields: dict[str, Any]
    optional: frozenset[str] = frozenset()


class Maybe(NamedTuple):
    spec: Any


TENSORS = MapOf(str, torch.Tensor)
RNG = Record({"torch": torch.Tensor,
              "numpy": Record({"name": str, "keys": ListOf(int), "pos": int, "has_gauss": int,
                               "gauss": NUMBER}),
              "python": Record({"version": int, "internal": ListOf(int), "gauss_next": Maybe(NUMBER)}),
              "cuda": ListOf(torch.Tensor)}, optional=frozenset({"cuda"}))
PROGRESS = Record({"epoch": int, "step": int, "loss_sum": NUMBER, "score_sum": NUMBER, "seen": int,
                   "epoch_seconds": NUMBER, "batch_size": Maybe(int), "best": Maybe(NUMBER),
                   "best_epoch": Maybe(int), "bad_epochs": int, "train_seconds": NUMBER,
                   "history": ListOf(MapOf(str, PLAIN)), "changes": ListOf(MapOf(str, PLAIN))},
                  optional=frozenset({"batch_size"}))  # absent in checkpoints of older versions
OPTIMIZER = Record({"state": MapOf(int, MapOf(str, (torch.Tensor, *NUMBER))),
                    "param_groups": ListOf(MapOf(str, PLAIN))})
LAST = Record({"trainer": Record({"model": TENSORS, "optimizer": OPTIMIZER,
                                  "scheduler": Maybe(MapOf(str, PLAIN)), "scaler": MapOf(str, PLAIN)}),
               "rng": RNG, "progress": PROGRESS, "config": MapOf(str, PLAIN), "overrides": ListOf(str),
               "wandb_id": str})
BEST = Record({"model": TENSORS, "epoch": int})


def check(value: Any, spec: Any, where: str = "") -> None:
    """Raise ValueError naming the first entry of ``value`` that does not match ``spec``."""
    if spec == PLAIN:
        _check_plain(value, where)
    elif isinstance(spec, Maybe):
        if value is not None:
            check(value, spec.spec, where)
    elif isinstance(spec, Record):
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'the file'} is {type(value).__name__}, not a dict")
        for key in value:
            if key not in spec.fields:
                raise ValueError(f"unexpected entry {where}{key!r}")
        for key, field_spec in spec.fields.items():
            if key in value:
                check(value[key], field_spec, f"{where}{key}.")
            elif key not in spec.optional:
                raise ValueError(f"missing entry {where}{key!r}")
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise ValueError(f"{where.rstrip('.')} is {type(value).__name__}, not a dict")
        for key, item in value.items():
            if not isinstance(key, spec.key) or isinstance(key, bool):
                raise ValueError(f"{where.rstrip('.')} has a key of type {type(key).__name__}")
            check(item, spec.value, f"{where}{key}.")
    elif isinstance(spec, ListOf):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where.rstrip('.')} is {type(value).__name__}, not a list")
        for index, item in enumerate(value):
            check(item, spec.item, f"{where}{index}.")
    elif not isinstance(value, spec) or (isinstance(value, bool) and bool not in _types(spec)):
        raise ValueError(f"{where.rstrip('.')} is {type(value).__name__}, not {_names(spec)}")


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}{index}.")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where.rstrip('.')} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}{key}.")
    else:
        raise ValueError(f"{where.rstrip('.')} is {type(value).__name__}, where only plain data "
                         "(numbers, strings, lists, dicts) belongs")


def _types(spec: Any) -> tuple[type, ...]:
    return spec if isinstance(spec, tuple) else (spec,)


def _names(spec: Any) -> str:
    return " or ".join(t.__name__ for t in _types(spec))


def save(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def save_best(files: RunFiles, weights: dict[str, torch.Tensor], epoch: int) -> None:
    """Write the run's best.pt (:data:`BEST`): the model ``weights`` validated best, after ``epoch``."""
    save(files.best, {"model": weights, "epoch": epoch})


def load(path: Path, schema: Record = LAST) -> dict[str, Any]:
    """Load a checkpoint as plain data (weights_only) and check it against ``schema`` (:data:`LAST`
    or :data:`BEST`): pickled objects of any other kind, which could run code while loading, and
    plain data of another shape are refused (CheckpointError naming the entry)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error):
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds pickled objects other than tensors and "
                "plain data, which could run code when loaded (not written by gmcnn, or "
                "tampered with); nothing in it was executed. Use a checkpoint you wrote "
                "yourself") from None
        raise _corrupt(path, error) from None
    except Exception as error:  # torch raises many types for damaged files
        raise _corrupt(path, error) from None
    try:
        check(state, schema)
    except ValueError as error:
        kind = "last.pt (a training checkpoint)" if schema is LAST else "best.pt (model weights)"
        raise CheckpointError(f"checkpoint {path} was refused: it does not have the layout of gmcnn's "
                              f"{kind}: {error}; nothing in it was used. Use a checkpoint written "
                              "by gmcnn, or start afresh with trainer.resume=false") from None
    return state


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    details = str(error).splitlines()[0] if str(error) else "no details"
    return CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: "
                           f"{details}); delete it to start afresh or point trainer.resume at "
                           "another run")


def rng_state() -> dict[str, Any]:
    """The RNG states of torch, numpy and python as tensors, lists, numbers and strings."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state((saved["name"], np.array(saved["keys"], dtype=np.uint32), saved["pos"],
                         saved["has_gauss"], saved["gauss"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["internal"]), saved["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
