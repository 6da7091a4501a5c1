"""Training: config checks (config), the model (build) and data (data) of a run, the engine's
loops (engine), checkpoints and progress (checkpoint), what a resume continues and restoring it
(resume), the run directory's files, lock and status (rundir), stop signals (signals) and run
logging (tracking).

The names below are imported on first use (``from gmcnn.training import run`` imports the engine
and torch with it), so that a module that needs only the run directory's layout
(``gmcnn.training.rundir``, read by the sweep report) does not pay for torch."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gmcnn.training.checkpoint import CheckpointError
    from gmcnn.training.config import ConfigError
    from gmcnn.training.engine import TrainingDiverged, run

__all__ = ["CheckpointError", "ConfigError", "TrainingDiverged", "run"]
_HOMES = {"CheckpointError": "checkpoint", "ConfigError": "config", "TrainingDiverged": "engine", "run": "engine"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
