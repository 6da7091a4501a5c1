"""Training: config checks, the engine (loops), checkpoints and run logging."""

from gmcnn.training.checkpoint import CheckpointError
from gmcnn.training.config import ConfigError
from gmcnn.training.engine import TrainingDiverged, run

__all__ = ["CheckpointError", "ConfigError", "TrainingDiverged", "run"]
