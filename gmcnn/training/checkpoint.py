"""Atomic checkpoints: written to a temporary file in the same directory, then renamed, so a
killed run never leaves a half-written checkpoint behind."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or does not fit the run."""


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no details'}); "
                              "delete it to start afresh or point trainer.resume at another "
                              "checkpoint") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_resume_checkpoint(resume: bool | str, run_dir: Path,
                           search_siblings: bool = True) -> Path | None:
    """The checkpoint to resume from: ``resume`` may be false, true (this run directory, else,
    with ``search_siblings``, the newest sibling run of the same experiment), a run directory or
    a ``.pt`` file."""
    if resume is False or resume is None:
        return None
    if resume is True:
        own = run_dir / "checkpoints" / "last.pt"
        if own.is_file():
            return own
        if not search_siblings:
            return None
        siblings = sorted(run_dir.parent.glob("*/checkpoints/last.pt"),
                          key=lambda p: p.stat().st_mtime)
        if not siblings:
            raise CheckpointError(f"trainer.resume=true but no earlier run of this experiment has "
                                  f"a checkpoint under {run_dir.parent}; pass a run directory or "
                                  "a .pt file instead")
        return siblings[-1]
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"trainer.resume={resume!r}: {path} does not exist")
    return path
