"""Figure of one held-out roll-out of a trained dynamics run: ground truth against prediction.

    python -m gmcnn.rollout RUN_DIR [--out docs/plume-rollout.png] [--test-set domain] [--sample 0]
                            [--steps 1 5 10 20]

Reads the run's composed config (``RUN_DIR/.hydra/config.yaml``) and its best-validation weights
(``RUN_DIR/checkpoints/best.pt``, the weights its test metrics were computed with), loads the
run's data (``data.root`` as the run had it; relative paths from the current directory), takes
sample ``--sample`` of the test set ``--test-set`` ("domain": held-out tasks; "future": later
starts on the training tasks) and rolls the model out over the test length (20 steps in the
protocol, docs/design.md §4.2). The figure (default ``RUN_DIR/rollout.png``) has one column per
step in ``--steps``: the ground-truth frame and the predicted frame, each shown as the speed
sqrt(v_x^2 + v_y^2) (one colour scale per column, the ground truth's range) with the velocity
arrows on a coarse grid, "up" = +y (``origin="lower"``), and the frame's RMSE; and, for a relaxed
model, a last row with the symmetry-breaking map of every relaxed layer
(gmcnn.training.diagnostics, as in ``relaxation.png``). Runs on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gmcnn.training import checkpoint
from gmcnn.training.build import build_model
from gmcnn.training.config import ConfigError
from gmcnn.training.data import load_data
from gmcnn.training.diagnostics import symmetry_breaking_maps
from gmcnn.training.objectives import rollout
from gmcnn.training.rundir import RunFiles

log = logging.getLogger(__name__)

DEFAULT_STEPS = (1, 5, 10, 20)
ARROW_SPACING = 6  # cells between velocity arrows


class RolloutError(Exception):
    """A run directory or choice the figure cannot be made from (one line, what to do)."""


def load_config(run_dir: Path) -> DictConfig:
    """The composed config of a dynamics run directory (RolloutError, one line, for anything else)."""
    config_path = RunFiles(run_dir).config
    if not config_path.is_file():
        raise RolloutError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    cfg = OmegaConf.load(config_path)
    if cfg.get("task") != "dynamics":
        raise RolloutError(f"{run_dir} is a {cfg.get('task')} run; roll-outs need a dynamics "
                           "experiment (exp=plume-*, jetflow)")
    return cfg


def load_run(run_dir: Path) -> tuple[DictConfig, torch.nn.Module]:
    """The run's config and its model with the best-validation weights, in eval mode on the CPU."""
    cfg, best = load_config(run_dir), RunFiles(run_dir).best
    if not best.is_file():
        raise RolloutError(f"{run_dir} has no checkpoints/best.pt: the run has not finished an epoch")
    model = build_model(cfg)
    model.load_state_dict(checkpoint.load(best, checkpoint.BEST)["model"])
    return cfg, model.eval()


def sample_rollout(cfg: DictConfig, model: torch.nn.Module, test_set: str, sample: int
                   ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(target, prediction), each (L, C, H, W), of sample ``sample`` of ``test_set``, and a label
    naming its task and start index."""
    splits = load_data(cfg)
    if test_set not in splits.test_sets:
        raise RolloutError(f"no test set {test_set!r}; choose one of {', '.join(splits.test_sets)}")
    dataset = splits.test_sets[test_set]
    if not 0 <= sample < len(dataset):
        raise RolloutError(f"--sample must be in 0..{len(dataset) - 1} for test set {test_set}, got {sample}")
    inputs, target = dataset[sample]
    with torch.no_grad():
        prediction = rollout(model, inputs[None], target.shape[0], target.shape[1])[0]
    series, start = dataset.items[sample]
    tasks = cfg.data.options.get("test_tasks" if test_set == "domain" else "train_tasks")
    task = OmegaConf.to_container(tasks)[series] if tasks is not None else series
    return target, prediction, f"{cfg.data.name}, {test_set} test, task {task}, start {start}"


def plot_rollout(target: torch.Tensor, prediction: torch.Tensor, steps: list[int], path: Path,
                 title: str, maps: dict[str, torch.Tensor] | None = None) -> None:
    """The figure described in the module docstring, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = maps or {}
    rows = 2 + bool(maps)
    columns = max(len(steps), len(maps))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.6), squeeze=False)
    height, width = target.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(ARROW_SPACING // 2, height, ARROW_SPACING),
                            torch.arange(ARROW_SPACING // 2, width, ARROW_SPACING), indexing="ij")
    for column, step in enumerate(steps):
        truth, guess = target[step - 1], prediction[step - 1]
        vmax = truth.norm(dim=0).max().item()  # the truth's range: a prediction beyond it saturates
        rmse = (guess - truth).pow(2).mean().sqrt().item()
        for row, (frame, name) in enumerate([(truth, "ground truth"), (guess, "prediction")]):
            axis = axes[row, column]
            shown = axis.imshow(frame.norm(dim=0).numpy(), origin="lower", cmap="viridis", vmin=0, vmax=vmax)
            axis.quiver(xs, ys, frame[0, ys, xs], frame[1, ys, xs], color="white", scale=vmax * 12, width=0.004)
            axis.set_title(f"step {step}: {name}" + (f"\nRMSE {rmse:.3g}" if row else ""), fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        fig.colorbar(shown, ax=axes[:2, column], fraction=0.046, label="speed")
    for column in range(len(steps), columns):
        axes[0, column].axis("off")
        axes[1, column].axis("off")
    for column in range(columns) if maps else ():
        axis = axes[2, column]
        if column >= len(maps):
            axis.axis("off")
            continue
        name, image = list(maps.items())[column]
        shown = axis.imshow(image.numpy(), origin="lower", cmap="magma")
        axis.set_title(f"relaxation map\n{name}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
        fig.colorbar(shown, ax=axis, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def make_figure(run_dir: Path, out: Path | None = None, test_set: str = "domain", sample: int = 0,
                steps: list[int] | tuple[int, ...] = DEFAULT_STEPS) -> Path:
    """Write the roll-out figure of ``run_dir`` to ``out`` (default ``run_dir/rollout.png``)."""
    cfg, model = load_run(run_dir)
    target, prediction, label = sample_rollout(cfg, model, test_set, sample)
    bad = [s for s in steps if not 1 <= s <= len(target)]
    if bad or not steps:
        raise RolloutError(f"--steps must lie in 1..{len(target)} (the test roll-out length), got {list(steps)}")
    out = out or run_dir / "rollout.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_rollout(target, prediction, list(steps), out,
                 f"{label} ({run_dir.parent.name}/{run_dir.name}, {cfg.model._target_})",
                 symmetry_breaking_maps(model))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gmcnn.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished (or checkpointed) dynamics run directory")
    parser.add_argument("--out", type=Path, help="the PNG to write (default RUN_DIR/rollout.png)")
    parser.add_argument("--test-set", default="domain", help="domain (held-out tasks, default) or future")
    parser.add_argument("--sample", type=int, default=0, help="index of the window in that test set (default 0)")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS),
                        help="roll-out steps to show, 1-based (default 1 5 10 20)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        out = make_figure(args.run_dir, args.out, args.test_set, args.sample, args.steps)
    except (RolloutError, ConfigError, checkpoint.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
