"""Dynamics experiments: window arithmetic, roll-outs, the equivariance of the regression model,
and a real run of the runner on small task files."""

import json
from types import SimpleNamespace

import pytest
import torch

from dataset import DatasetError, build_dataset
from dataset.plume import WindowDataset
from gmcnn import reference
from gmcnn import rollout as figure
from gmcnn.equivariance import equivariance_error
from gmcnn.models import GMDynamics
from gmcnn.training import engine
from gmcnn.training.data import load_data
from gmcnn.training.diagnostics import plot_step_scores
from gmcnn.training.engine import Trainer, build_model, window_stalled
from gmcnn.training.objectives import Dynamics, rollout
from tests.fakes import write_small_plume, write_translating_fields
from tests.helpers import compose_config, runner

SMALL_WINDOWS = ("{input_frames: 10, mid: 12, train_starts: [0, 10], valid_starts: [10, 14], "
                 "train_out_len: 3, future_starts: [14, 18], domain_starts: [0, 8], "
                 "test_out_len: 4}")


def test_window_indices_match_hand_computed_frames():
    frames = torch.arange(40.0)[:, None, None, None].expand(40, 2, 3, 3).contiguous()
    windows = WindowDataset([frames, frames + 100], starts=[0, 5], input_frames=10, mid=12, out_len=6)
    assert len(windows) == 10
    inputs, target = windows[3]  # first series, t = 3: inputs frames 5..14, target 15..20
    assert inputs.shape == (20, 3, 3) and target.shape == (6, 2, 3, 3)
    assert inputs[::2, 0, 0].tolist() == list(range(5, 15))
    assert target[:, 0, 0, 0].tolist() == list(range(15, 21))
    inputs, target = windows[5]  # second series, t = 0: inputs 2..11, target 12..17
    assert inputs[::2, 0, 0].tolist() == [100 + f for f in range(2, 12)]
    assert target[:, 1, 0, 0].tolist() == [100 + f for f in range(12, 18)]


def test_rollout_feeds_predictions_back():
    model = lambda window: window[:, -2:] + 1  # noqa: E731  (next frame = last frame + 1)
    window = torch.zeros(1, 20, 4, 4)
    predictions = rollout(model, window, steps=3, field_channels=2)
    assert predictions[:, :, 0, 0, 0].tolist() == [[1.0, 2.0, 3.0]]
    targets = predictions + 0.5
    assert Dynamics().finish(Dynamics().sample_scores(predictions, targets).mean().item()) == 0.5


class Persistence(torch.nn.Module):
    """Predicts the last input frame again (times a weight of 1, so that an optimizer has a parameter)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, window):
        return window[:, -2:] * self.weight


def test_per_step_rmse_matches_a_hand_computation(tmp_path):
    """Series n has every value equal to (n + 1) t at frame t; persistence predicts frame mid + t - 1
    for every step, so step k errs by (n + 1) k everywhere: over series 0 and 1 (equal numbers of
    windows), RMSE_k = k sqrt((1 + 4) / 2) and the overall RMSE (docs/design.md §4.2) is
    sqrt(mean over samples of the mean over steps of the MSE) = sqrt(2.5 mean_k k^2). Batches of 3
    over 10 windows (3, 3, 3, 1) must combine exactly."""
    frames = torch.arange(40.0)[:, None, None, None].expand(40, 2, 4, 4)
    series = [frames * (n + 1) for n in range(2)]
    test = WindowDataset(series, starts=[0, 5], input_frames=10, mid=12, out_len=6)
    cfg = compose_config("exp=plume-rotation", "trainer.batch_size=3", "trainer.device=cpu")
    trainer = Trainer(cfg, Persistence(), torch.device("cpu"))
    splits = SimpleNamespace(test_sets={"future": test, "domain": WindowDataset(series[:1], [0, 2], 10, 12, 4)})
    metrics = engine.test_metrics(cfg, trainer, splits)
    steps = torch.arange(1.0, 7.0, dtype=torch.float64)
    assert metrics["test_future_rmse_per_step"] == pytest.approx((steps * 2.5 ** 0.5).tolist(), rel=1e-12)
    assert metrics["test_future_rmse"] == pytest.approx((2.5 * steps.pow(2).mean()).sqrt().item(), rel=1e-7)
    assert metrics["test_domain_rmse_per_step"] == pytest.approx([1.0, 2.0, 3.0, 4.0], rel=1e-12)
    assert metrics["test_domain_rmse"] == pytest.approx(7.5 ** 0.5, rel=1e-7)  # mean of 1, 4, 9, 16
    assert plot_step_scores(metrics, tmp_path / "steps.png")
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_step_scores({"test_acc": 0.5}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_exact_dynamics_model_is_equivariant_and_relaxed_is_not():
    exact = GMDynamics(["C16", "C16"], channels=8, rank=0).eval()
    x = exact.example_input(2)
    assert equivariance_error(exact, x, elements=range(0, 256, 7), reduction="max") < 1e-5
    relaxed = GMDynamics(["C16", "C16"], channels=8, rank=1).eval()
    with torch.no_grad():
        for block in relaxed.stream.blocks:
            block.layers[0].conv.relaxation.coefficients.normal_()
    assert equivariance_error(relaxed, x, elements=range(1, 256, 7)) > 1e-3


def test_missing_and_short_task_files_are_reported(tmp_path):
    with pytest.raises(DatasetError, match=r"2 of 2 task files missing.*raw_data_8_5\.pt"):
        build_dataset("plume-translation", tmp_path, train_tasks=[[8, 5], [8, 10]],
                      test_tasks=[[8, 5]])
    write_translating_fields(tmp_path, [(8, 5)], frames=30)
    with pytest.raises(DatasetError, match="fewer than 281 frames"):
        build_dataset("plume-translation", tmp_path, train_tasks=[[8, 5]], test_tasks=[[8, 5]])


@pytest.mark.slow
def test_generated_plumes_train_and_report_both_rmses(tmp_path):
    """A tiny generated plume set (2 tasks, 36 steps) trains and validation RMSE goes down."""
    pytest.importorskip("phi")
    from tools.plume_generate import generate

    data = tmp_path / "data"
    generate("translation", data, tasks=["8,5", "16,10"], steps=36, workers=2, progress=False)
    run_dir = tmp_path / "run"
    result = runner("exp=plume-translation", "logger=none", f"data.root={data}",
                    "data.options.train_tasks=[[8,5]]", "data.options.test_tasks=[[16,10]]",
                    f"data.options.windows={SMALL_WINDOWS}", "model.channels=16",
                    "trainer.epochs=3", "trainer.batch_size=2", "optimizer.lr=0.003",
                    f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_future_rmse", "test_domain_rmse", "equivariance_error", "num_params"):
        assert key in metrics
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_rmse = [float(r.split(",")[header.index("val_rmse")]) for r in rows[1:]]
    assert val_rmse[-1] < val_rmse[0]  # validation RMSE goes down
    assert metrics["equivariance_error"] > 0  # rank-1 relaxed layers moved off exact symmetry
    assert (run_dir / "relaxation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_grid_must_match_group(tmp_path):
    result = runner("exp=jetflow", "model.group=[C64,C64]", "logger=none",
                    f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "laid out on 64x64 images, but data jetflow has 62x23" in result.stdout + result.stderr


def test_the_cnn_baseline_trains_with_the_dynamics_penalty_configured():
    """The dynamics experiments weigh the relaxed layers' penalty (1e-4); a model without relaxed
    layers has none, and its training step must not try to differentiate a constant."""
    cfg = compose_config("exp=plume-rotation", "model=cnn_dynamics", "model.channels=4", "model.blocks=1")
    assert cfg.trainer.relaxation_penalty > 0
    trainer = Trainer(cfg, build_model(cfg), torch.device("cpu"))
    frames, targets = torch.randn(2, 20, 64, 64), torch.randn(2, 2, 2, 64, 64)
    loss_sum, _ = trainer.train_step(frames, targets)
    assert loss_sum > 0 and all(p.grad is not None for p in trainer.model.parameters())


@pytest.mark.parametrize("exp", ["plume-rotation", "jetflow"])
def test_upstream_recipe(exp):
    """recipe=upstream: Adam with weight decay 4e-4, the learning rate times 0.9 after every epoch,
    up to 1000 epochs, the window early stop from epoch 100; the rest is the experiment's."""
    cfg = compose_config(f"exp={exp}", "recipe=upstream")
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("torch.optim.Adam", 0.001, 4e-4)
    assert (cfg.scheduler._target_, cfg.scheduler.gamma) == ("torch.optim.lr_scheduler.ExponentialLR", 0.9)
    assert (cfg.trainer.epochs, cfg.trainer.early_stopping_window, cfg.trainer.early_stopping_after) == (1000, 5, 100)
    assert (cfg.name, cfg.trainer.monitor, cfg.trainer.batch_size) == (exp, "val_rmse", 16)
    default = compose_config(f"exp={exp}")
    assert default.trainer.early_stopping_window is None and default.scheduler._target_.endswith("ReduceLROnPlateau")
    cfg = compose_config(f"exp={exp}", "recipe=upstream", "model=cnn_dynamics", "model.channels=4")
    trainer = Trainer(cfg, build_model(cfg), torch.device("cpu"))
    for _ in range(3):
        trainer.optimizer.step()  # no gradients: an epoch that changed nothing
        trainer.step_scheduler(val_loss=1.0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 * 0.9 ** 3, rel=1e-12)


def test_window_early_stopping_rule():
    """Stop when the mean of the last W monitored values is no better than the mean of the W before."""
    rmse = [5.0, 4.0, 3.0, 3.5]
    assert not window_stalled(rmse[:3], 2, sign=-1)  # fewer than 2 W values
    assert not window_stalled(rmse, 2, sign=-1)  # mean 3.25 < 4.5: still improving
    assert window_stalled([3.0, 3.0, 3.1, 2.9], 2, sign=-1)  # equal means: stalled
    assert window_stalled([4.0, 3.0, 3.6, 3.5], 2, sign=-1)
    assert not window_stalled([0.5, 0.6, 0.7, 0.8], 2, sign=1) and window_stalled([0.8, 0.7, 0.6, 0.5], 2, sign=1)


# the README's try-it command (after `python -m tools.plume_generate --variant rotation --small`)
SMALL_COMMAND = ("exp=plume-rotation", "data=plume-rotation-small")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """SMALL_COMMAND with 2 epochs on the files `--small` writes (format-exact, manifest included;
    translating fields instead of a simulation)."""
    data = tmp_path_factory.mktemp("data")
    write_small_plume(data, "rotation")
    run_dir = tmp_path_factory.mktemp("run")
    result = runner(*SMALL_COMMAND, "trainer.epochs=2", "logger=none", f"paths.data_dir={data}",
                    f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return data, run_dir, result.stdout + result.stderr


@pytest.mark.slow
def test_the_small_set_runs_with_one_command(small_run):
    data, run_dir, output = small_run
    assert "no manifest" not in output and "Traceback" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs_completed"] == 2
    for test_set in ("future", "domain"):
        steps = metrics[f"test_{test_set}_rmse_per_step"]
        assert len(steps) == 20 and all(s > 0 for s in steps)
        overall = metrics[f"test_{test_set}_rmse"]  # docs/design.md §4.2: RMSE^2 = mean_k RMSE_k^2
        assert overall == pytest.approx((sum(s * s for s in steps) / 20) ** 0.5, rel=1e-5)
    assert (run_dir / "rollout_rmse.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "relaxation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_rollout_figure_of_a_run(small_run, tmp_path, capsys):
    data, run_dir, _ = small_run
    out = tmp_path / "docs" / "plume-rollout.png"
    assert figure.main([str(run_dir), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and capsys.readouterr().out.strip() == str(out)
    cfg, model = figure.load_run(run_dir)
    target, prediction, label = figure.sample_rollout(cfg, model, "domain", 3)
    held_out = torch.load(data / "plume-rotation-small" / "raw_data_6_1.pt", weights_only=True)
    assert torch.equal(target, held_out[12 + 3:12 + 3 + 20])  # domain window t = 3 of the held-out task
    assert prediction.shape == target.shape and label == "plume-rotation-small, domain test, task [6, 1], start 3"
    assert figure.main([str(run_dir), "--out", str(out), "--steps", "1", "21"]) == 1
    assert "--steps must lie in 1..20" in capsys.readouterr().err
    assert figure.main([str(data), "--out", str(out)]) == 1
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_reference_forecasts_of_a_run(small_run, capsys):
    """python -m gmcnn.reference: zeros and the last input frame, scored as the runner scores a
    model, against a hand computation on the held-out windows; one line for a non-run."""
    data, run_dir, _ = small_run
    assert reference.main([str(run_dir)]) == 0
    table = capsys.readouterr().out
    cfg = figure.load_config(run_dir)
    domain = load_data(cfg).test_sets["domain"]
    inputs, targets = zip(*(domain[i] for i in range(len(domain))))
    inputs, targets = torch.stack(inputs).double(), torch.stack(targets).double()  # (N, 20, 2, 64, 64)
    held = inputs[:, -2:, None].transpose(1, 2)                              # the last frame, (N, 1, 2, 64, 64)
    errors = (held - targets).pow(2).mean((0, 2, 3, 4))                      # per step
    row = (f"| domain | {len(domain)} | 20 | last frame | {errors.mean().sqrt():.3f} | "
           f"{errors[0].sqrt():.3f} | {errors[-1].sqrt():.3f} |")
    assert row in table.splitlines()
    assert f"| domain | {len(domain)} | 20 | zeros | {targets.pow(2).mean().sqrt():.3f} |" in table
    assert reference.main([str(data)]) == 1
    assert "not a run directory" in capsys.readouterr().err
