"""Entry point: ``python runner.py exp=NAME key=value ...`` (``-m`` sweeps with Hydra multirun).

Composes the configuration from configs/, hands it to :func:`gmcnn.training.run`, and turns the
errors a user can fix (bad config, missing data, corrupt checkpoint, diverged training) into a
short message and a non-zero exit status instead of a traceback.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gmcnn.training import CheckpointError, ConfigError, TrainingDiverged, run

log = logging.getLogger("gmcnn")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
    except (ConfigError, CheckpointError, TrainingDiverged) as error:
        log.error("%s", error)
        sys.exit(1)
    return metrics.get("test_acc")


if __name__ == "__main__":
    main()
