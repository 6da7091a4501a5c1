"""What a task predicts, its loss and its score.

* classification: logits = model(images); cross-entropy; score "acc" = mean of correct.
* dynamics (docs/design.md §4.2): the target is ``out_len`` future frames; the model is rolled out
  autoregressively, each predicted frame appended to the input window (the oldest frame dropped);
  loss = mean per-step MSE; score "rmse" = sqrt(mean over samples of the per-sample mean per-step
  MSE); per-step score (``step_scores``): RMSE_k = sqrt(mean over samples of the MSE of roll-out
  step k), so that mean_k RMSE_k^2 = RMSE^2.

``sample_scores`` returns one number per sample (``step_scores``, dynamics only: one per sample and
roll-out step), so that scores of many batches combine exactly (``finish`` turns their mean into
the reported score).

:data:`OBJECTIVES` (task name -> objective) is the one table of the tasks: the configuration's
choices of ``task`` and ``trainer.monitor`` (``val_loss`` or ``val_<score>``) and the direction
of a sweep over a monitor (:data:`MAXIMIZED`) are derived from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Classification:
    score = "acc"
    higher_is_better = True

    def predict(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        return model(inputs)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def sample_scores(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs.argmax(1) == targets).float()

    def finish(self, mean_score: float) -> float:
        return mean_score


def rollout(model: nn.Module, window: Tensor, steps: int, field_channels: int) -> Tensor:
    """Predict ``steps`` frames: (B, frames * C, H, W) -> (B, steps, C, H, W)."""
    predictions = []
    for _ in range(steps):
        frame = model(window)
        predictions.append(frame)
        window = torch.cat([window[:, field_channels:], frame.to(window.dtype)], 1)
    return torch.stack(predictions, 1)


class Dynamics:
    score = "rmse"
    higher_is_better = False

    def predict(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        return rollout(model, inputs, targets.shape[1], targets.shape[2])

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs.float(), targets)

    def sample_scores(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs.float() - targets).pow(2).flatten(1).mean(1)

    def step_scores(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """(B, L): the MSE of every sample at every roll-out step."""
        return (outputs.float() - targets).pow(2).flatten(2).mean(2)

    def finish(self, mean_score: float) -> float:
        return math.sqrt(mean_score)


OBJECTIVES = {"classification": Classification, "dynamics": Dynamics}
# what trainer.monitor may name: the validation loss (minimised) and each task's validation score
MONITORS = ("val_loss", *(f"val_{objective.score}" for objective in OBJECTIVES.values()))
MAXIMIZED = frozenset(f"val_{objective.score}" for objective in OBJECTIVES.values() if objective.higher_is_better)
