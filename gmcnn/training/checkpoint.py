"""Checkpoints and the progress of a run.

``checkpoints/last.pt`` holds everything needed to continue a run bit-for-bit: the trainer's
state (model, optimizer, scheduler, AMP scaler), the RNG states, the :class:`Progress` record and
the run's configuration; ``checkpoints/best.pt`` the best-validation model weights. Both are
written with :func:`gmcnn.io.atomic_write` (fsynced, renamed) after every epoch, and last.pt also
when a signal stops the run mid-epoch (``Progress.step`` > 0, with the epoch's running sums).

Everything is stored as tensors, lists, dicts, numbers and strings, and read back with
``torch.load(weights_only=True)``: a checkpoint cannot run code when it is loaded, and one
crafted to (any other pickled object) is refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmcnn.io import atomic_write


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


def save(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint as plain data (weights_only): pickled objects of any other kind, which
    could run code while loading, are refused."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
