"""Entry point: ``python runner.py exp=NAME key=value ...`` (``-m`` sweeps with Hydra multirun).

:mod:`gmcnn.cli` checks the command line before Hydra composes the configuration from configs/;
:func:`gmcnn.training.command.run_command` then runs it (lock, plan or resume, train, status) and
returns the best monitored validation value, which sweepers such as Optuna optimise. Exit status
0 done, 1 an error the user can fix (one line), 3 interrupted and resumable. :func:`run` is the
same command in the calling process (the tests), without the interpreter's start.
"""
# ruff: noqa: E402  (the OpenMP setting below must precede the first import of torch)

import os
import sys
from pathlib import Path

# OpenMP threads sleep between parallel regions instead of spinning: with another job on the
# machine (a sweep, a second run) spinning threads hold the cores the others need. Measured with
# benchmarks/bench_training.py: the fused cifar10 step 2.0x faster against a competing training
# job (and the competitor 2.5x), 7% slower alone. Set before torch starts OpenMP; export
# OMP_WAIT_POLICY=ACTIVE for a lone job on a dedicated machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gmcnn import cli
from gmcnn.training.command import run_command

CONFIGS = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")  # found when imported too
def main(cfg: DictConfig) -> float | None:
    return run_command(cfg, HydraConfig.get())


def run(args: list[str], cwd: str | os.PathLike[str] | None = None) -> int:
    """``python runner.py *args`` from ``cwd`` (default: the working directory), in this process:
    the exit status; what the command changed in the process is put back (gmcnn.cli.in_process)."""
    where = os.fspath(cwd) if cwd is not None else os.getcwd()
    return cli.in_process(main, CONFIGS, [os.path.relpath(__file__, where), *args], where)


if __name__ == "__main__":
    sys.exit(cli.in_process(main, CONFIGS, sys.argv))
