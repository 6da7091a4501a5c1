"""The RMSE of forecasts that learn nothing, on a dynamics run's test sets: what a model must beat.

    python -m gmcnn.reference RUN_DIR

For the validation windows and every test set of the run's data ("future" and "domain" for the
plumes, docs/design.md §4.2), two forecasts: zeros (the RMSE is then the data's root mean square)
and persistence (the last input frame held for every step). Each is scored exactly as the runner
scores a model (:class:`gmcnn.training.objectives.Dynamics`): the RMSE over all windows, steps,
cells and components, and the RMSE of the first and the last step. Prints a Markdown table; reads
the run's data as the run had it (``data.root``), needs no checkpoint. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from gmcnn.rollout import RolloutError, load_config
from gmcnn.training.config import ConfigError
from gmcnn.training.data import load_data
from gmcnn.training.objectives import Dynamics

FORECASTS = ("zeros", "last frame")


def forecast(name: str, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The forecast ``name`` of the targets (B, L, C, H, W) from the input window (B, F C, H, W)."""
    if name == "zeros":
        return torch.zeros_like(targets)
    last = inputs[:, -targets.shape[2]:]                                     # (B, C, H, W)
    return last[:, None].expand_as(targets)


@torch.no_grad()
def reference_rmse(dataset: Dataset, batch_size: int = 64) -> dict[str, tuple[float, float, float]]:
    """For each forecast of FORECASTS: (RMSE over every step, RMSE of step 1, RMSE of the last step)."""
    objective = Dynamics()
    sums = {name: None for name in FORECASTS}
    count = 0
    for inputs, targets in DataLoader(dataset, batch_size=batch_size):
        for name in FORECASTS:
            steps = objective.step_scores(forecast(name, inputs, targets), targets).double().sum(0)
            sums[name] = steps if sums[name] is None else sums[name] + steps
        count += len(targets)
    return {name: (math.sqrt(steps.mean().item() / count), math.sqrt(steps[0].item() / count),
                   math.sqrt(steps[-1].item() / count)) for name, steps in sums.items()}


def reference_table(cfg: DictConfig) -> str:
    """The Markdown table of :func:`reference_rmse` for the validation set and every test set."""
    splits = load_data(cfg)
    rows = ["| set | windows | steps | forecast | RMSE | step 1 | last step |", "|---|--:|--:|---|--:|--:|--:|"]
    for name, dataset in {"validation": splits.valid, **splits.test_sets}.items():
        steps = dataset[0][1].shape[0]
        for forecast_name, (overall, first, last) in reference_rmse(dataset).items():
            rows.append(f"| {name} | {len(dataset)} | {steps} | {forecast_name} "
                        f"| {overall:.3f} | {first:.3f} | {last:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gmcnn.reference", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a dynamics run directory (its .hydra/config.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        table = reference_table(load_config(args.run_dir))
    except (RolloutError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
