"""Entry point: ``python runner.py exp=NAME key=value ...`` (``-m`` sweeps with Hydra multirun).

Composes the configuration from configs/, hands it to :func:`gmcnn.training.run`, and turns the
errors a user can fix (bad config, missing data, corrupt checkpoint, diverged training) into a
short message and a non-zero exit status instead of a traceback. In a sweep (``-m``) a failed job
does not stop the others: its error is logged and written to its metrics.json (``"status":
"failed"``, read by ``python -m gmcnn.report``), and the sweep goes on.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gmcnn.training import CheckpointError, ConfigError, TrainingDiverged, run
from gmcnn.training.tracking import write_json

log = logging.getLogger("gmcnn")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = run(cfg, run_dir, sweep_job=sweeping)
    except (ConfigError, CheckpointError, TrainingDiverged) as error:
        log.error("%s", error)
        if not sweeping:
            sys.exit(1)
        record_failure(cfg, run_dir, str(error))  # sys.exit here would end the whole sweep
        return None
    except Exception as error:
        if sweeping:  # Hydra records it and runs the other jobs, then exits non-zero
            record_failure(cfg, run_dir, f"{type(error).__name__}: {error}")
        raise
    return metrics.get(f"best_{cfg.trainer.monitor}")  # what a sweeper (Optuna) optimises


def record_failure(cfg: DictConfig, run_dir: Path, message: str) -> None:
    """Mark a failed sweep job in its metrics.json, so that reports list it with its error."""
    log.error("job %s failed; the sweep goes on with the other jobs", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", {"name": OmegaConf.select(cfg, "name", default=None),
                                          "status": "failed", "error": message})


if __name__ == "__main__":
    from gmcnn import cli

    sys.exit(cli.main(main, Path(__file__).resolve().parent / "configs"))
