"""Training: config checks (config), the model (build) and data (data) of a run, the engine's
loops (engine), checkpoints and progress (checkpoint), what a resume continues (resume), the
run directory's lock and status (rundir), stop signals (signals) and run logging (tracking)."""

from gmcnn.training.checkpoint import CheckpointError
from gmcnn.training.config import ConfigError
from gmcnn.training.engine import TrainingDiverged, run

__all__ = ["CheckpointError", "ConfigError", "TrainingDiverged", "run"]
