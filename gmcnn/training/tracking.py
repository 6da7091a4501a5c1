"""Run outputs: a per-epoch CSV, metrics.json, a PNG of the training curves, and wandb.

wandb is optional at run time: mode "auto" logs online when an API key is configured and
offline otherwise (sync later with ``wandb sync``); "disabled" or a missing package writes only
the local files. Each run (each multirun job) gets its own wandb run, always finished; a resumed
run logs into the same wandb run again (its id is kept in the checkpoint), so its curves continue.
Files are written with :func:`gmcnn.io.atomic_write` (fsynced, then renamed).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

from gmcnn.io import atomic_write_text
from gmcnn.training.rundir import RunFiles, write_status

log = logging.getLogger(__name__)


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class RunTracker:
    """Collects per-epoch metrics and writes them to the run directory (and wandb); writes
    nothing when not ``enabled`` (the other ranks of a torchrun job)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], wandb_cfg: Any, name: str,
                 enabled: bool = True, run_id: str | None = None):
        self.run_dir, self.enabled = run_dir, enabled
        self.history: list[dict[str, float]] = []
        self._wandb = None
        mode = wandb_mode(wandb_cfg.mode)
        if mode == "disabled" or not enabled:
            return
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; logging to local files only")
            return
        self._wandb = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity,
                                 tags=list(wandb_cfg.tags), name=f"{name}/{run_dir.name}",
                                 group=name, config=config, dir=str(run_dir), mode=mode,
                                 reinit="finish_previous", id=run_id, resume="allow")
        log.info("wandb run %s (%s)", self._wandb.name, mode)

    def log_epoch(self, row: dict[str, float]) -> None:
        self.history.append(row)
        self._write_csv()
        if self._wandb is not None:
            self._wandb.log(row, step=int(row["epoch"]))

    def restore(self, history: list[dict[str, float]]) -> None:
        self.history = list(history)
        self._write_csv()

    def _write_csv(self) -> None:
        if not self.enabled:
            return
        if not self.history:
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(RunFiles(self.run_dir).history, text.getvalue())

    def finish(self, metrics: dict[str, Any]) -> None:
        """Write metrics.json (status finished) and curves.png, send the summary to wandb and
        close the run."""
        if not self.enabled:
            return
        write_status(self.run_dir, "finished", **metrics)
        if self.history:
            plot_curves(self.history, RunFiles(self.run_dir).curves)
        self.close(metrics)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self._wandb is not None:
            if summary:
                self._wandb.summary.update({k: v for k, v in summary.items()
                                            if isinstance(v, (int, float))})
            self._wandb.finish()
            self._wandb = None


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and the score (accuracy or RMSE) per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    score = next(k[len("val_"):] for k in history[0] if k.startswith("val_") and k != "val_loss")
    panels = [("loss", ["train_loss", "val_loss"]), (score, [f"train_{score}", f"val_{score}"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            values = [row.get(key, math.nan) for row in history]
            axis.plot(epochs, values, marker="o", markersize=3, label=key)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
