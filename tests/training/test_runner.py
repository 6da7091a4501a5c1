"""The runner end to end: real configs, real runs into temporary directories (in this process,
as ``python runner.py`` runs; a process of its own to kill it, or to see the interpreter end)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from gmcnn.training import TrainingDiverged, checkpoint, run
from gmcnn.training.build import build_model, count_parameters
from gmcnn.training.data import fixed_subset
from gmcnn.training.engine import Trainer, resolve_micro_batch_size
from gmcnn.training.resume import Plan
from tests.helpers import ENV, FAST, ROOT, compose_config, metrics_of, runner, start_runner

CLASSIFICATION = ["cifar10", "rot-mnist", "mnist-bg-rot", "mnist-noise", "rectangles", "norb",
                  "smallnorb"]
PAPER_PARAMS = {"cifar10": 13_691, "rot-mnist": 48_731, "mnist-bg-rot": 25_691,
                "mnist-noise": 13_451, "rectangles": 12_483, "norb": 12_967, "smallnorb": 12_846}


@pytest.mark.parametrize("exp", CLASSIFICATION)
def test_paper_experiments_compose_and_build(exp):
    cfg = compose_config(f"exp={exp}")
    assert cfg.name == exp
    assert count_parameters(build_model(cfg)) == PAPER_PARAMS[exp]


@pytest.mark.parametrize("exp,group", [("plume-rotation", "C64xC64"), ("plume-translation", "C64xC64"),
                                       ("plume-scale", "C64xC64"), ("jetflow", "D31xC23")])
def test_dynamics_experiments_compose_and_build(exp, group):
    cfg = compose_config(f"exp={exp}")
    model = build_model(cfg)
    assert cfg.task == "dynamics" and model.group.name == group
    first = cfg.data.options.train_tasks[0]
    assert isinstance(first if isinstance(first, int) else first[0], int)  # real lists, not text
    frames = torch.randn(1, 20, *cfg.data.image_size)
    assert model(frames).shape == (1, 2, *cfg.data.image_size)


@pytest.mark.parametrize("exp", ["quickstart", "rot-mnist-generated"])
def test_offline_experiments_compose_and_build(exp):
    cfg = compose_config(f"exp={exp}")
    assert build_model(cfg)(torch.randn(2, 1, 28, 28)).shape == (2, cfg.data.num_classes)


def test_paper_recipe_is_real_config():
    cfg = compose_config("exp=rot-mnist")
    assert cfg.optimizer.lr == 0.004 and cfg.optimizer.weight_decay == 0.0153
    assert (cfg.scheduler.patience, cfg.scheduler.factor) == (5, 0.7)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.seed) == (128, 120, 42)
    assert list(cfg.model.group) == ["D14", "D14"]


@pytest.mark.slow
def test_default_run_learns_and_writes_outputs(tmp_path):
    result = runner("trainer.epochs=3", "logger.wandb.mode=offline", f"hydra.run.dir={tmp_path}",
                    fresh=True)  # the command as a user types it, in a new interpreter
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = metrics_of(tmp_path)
    assert metrics["test_acc"] > 0.7  # two balanced classes: chance is 0.5
    assert metrics["epochs_completed"] == 3 and metrics["num_params"] > 0
    for key in ("best_epoch", "train_seconds"):
        assert key in metrics
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 4  # header + 3 epochs
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_summary_only_prints_num_params_without_data_and_leaves_no_directory(tmp_path):
    result = runner("exp=cifar10", "summary_only=true", "data.root=/nonexistent",
                    f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "13,691" in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_multirun_produces_one_run_per_value(tmp_path):
    result = runner("-m", *FAST, "trainer.epochs=1", "model.channels=4,8",
                    f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    params = sorted(metrics_of(tmp_path / job)["num_params"] for job in ("0", "1"))
    assert params[0] < params[1]

    # the same sweep resumed: the finished job is skipped, the unfinished one continues
    finished_at = (tmp_path / "0" / "metrics.json").stat().st_mtime_ns
    unfinished = metrics_of(tmp_path / "1")
    (tmp_path / "1" / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    again = runner("-m", *FAST, "trainer.epochs=1", "model.channels=4,8", "trainer.resume=true",
                   f"hydra.sweep.dir={tmp_path}")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-2000:]
    assert f"run {tmp_path / '0'} is already finished" in output and "resumed from" in output
    assert (tmp_path / "0" / "metrics.json").stat().st_mtime_ns == finished_at
    resumed = metrics_of(tmp_path / "1")
    assert resumed["status"] == "finished" and resumed["test_acc"] == unfinished["test_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model=gmcnn", "model=cnn"])  # cnn: batch norm, recalibrated
def test_killed_run_resumes_to_the_same_metrics(tmp_path, model):
    args = [*FAST, model, "trainer.epochs=4", "data.options.train_size=600"]
    uninterrupted = runner(*args, f"hydra.run.dir={tmp_path / 'full'}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    process = start_runner(*args, f"hydra.run.dir={killed_dir}")
    last = killed_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "metrics.json").exists()

    resumed = runner(*args, "trainer.resume=true", f"hydra.run.dir={killed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    full, again = metrics_of(tmp_path / "full"), metrics_of(killed_dir)
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc", "epochs_completed"):
        assert full[key] == again[key], key
    assert (tmp_path / "full" / "metrics.csv").read_text().split("\n")[0] == \
        (killed_dir / "metrics.csv").read_text().split("\n")[0]
    rows = [line.split(",") for line in (killed_dir / "metrics.csv").read_text().splitlines()]
    full_rows = [line.split(",") for line in (tmp_path / "full" / "metrics.csv").read_text().splitlines()]
    assert [r[:5] for r in rows] == [r[:5] for r in full_rows]  # epoch, losses, accuracies


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path):
    args = [*FAST, "trainer.epochs=1", "model.dropout=0"]
    eager = runner(*args, f"hydra.run.dir={tmp_path / 'eager'}")
    compiled = runner(*args, "trainer.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-2000:]
    expected, got = metrics_of(tmp_path / "eager"), metrics_of(tmp_path / "compiled")
    assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-3)


@pytest.mark.slow
def test_corrupt_checkpoint_is_reported(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    # a new interpreter: the error ends the process with status 1 and one line, no traceback
    result = runner(*FAST, "trainer.resume=true", f"hydra.run.dir={tmp_path}", fresh=True)
    assert result.returncode == 1
    assert "corrupt" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # no memory check: its probe's forward passes would count as training batches here
    cfg = compose_config(*FAST, "trainer.epochs=3", "trainer.micro_batch_size=null", "trainer.memory_check=false")
    real_build = build_model

    class BreaksInEpochTwo(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, x):
            self.calls += 1 if self.training else 0
            out = self.model(x)
            return out * float("nan") if self.calls > 5 else out  # 5 batches of 64 per epoch

    monkeypatch.setattr("gmcnn.training.engine.build_model",
                        lambda c: BreaksInEpochTwo(real_build(c)))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2.*last good checkpoint"):
        run(Plan(cfg, tmp_path))
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert saved["progress"]["epoch"] == 1


def test_micro_batches_give_the_whole_batch_gradient():
    """trainer.micro_batch_size splits forward/backward; the summed gradient and the reported
    loss equal those of the whole batch at once (no dropout, no batch statistics)."""
    images, labels = torch.randn(12, 1, 28, 28), torch.randint(0, 2, (12,))
    results = []
    for micro in ("5", "null"):
        cfg = compose_config(*FAST, f"trainer.micro_batch_size={micro}", "model.dropout=0")
        torch.manual_seed(0)
        trainer = Trainer(cfg, build_model(cfg), torch.device("cpu"))
        assert trainer.micro_batch_size == (5 if micro == "5" else None)
        loss_sum, score_sum = trainer.train_step(images, labels)
        results.append((loss_sum, score_sum, [p.grad for p in trainer.model.parameters()]))
    (loss_a, score_a, grads_a), (loss_b, score_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5) and score_a == score_b
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batch_size_auto_depends_on_device_and_batch_norm():
    gm, cnn = compose_config(*FAST), compose_config(*FAST, "model=cnn")
    cpu = torch.device("cpu")
    assert resolve_micro_batch_size("auto", build_model(gm), cpu) == 64
    assert resolve_micro_batch_size("auto", build_model(cnn), cpu) is None
    assert resolve_micro_batch_size("auto", build_model(gm), torch.device("cuda")) is None


FAULTS_OF_TRAINING_LIKE_STEPS = """
import resource, sys, torch
from gmcnn.training.memory import retain_freed_memory
if not retain_freed_memory():
    sys.exit(3)
x = torch.randn(1_000_000)
def step():
    activations = [x * 2 for _ in range(8)]  # 4 MB each, all freed at the end of the step
for _ in range(3):
    step()
faults = []  # per window of 10 steps; the least of three (the kernel's NUMA balancing adds
for _ in range(3):  # occasional minor faults of its own)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(10):
        step()
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
print(min(faults))
"""


def test_retain_freed_memory_stops_page_faults():
    """After retain_freed_memory, steps that allocate and free the same activation-sized
    tensors reuse them: no page faults (glibc's defaults give about 1,000 to 40,000 here)."""
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_TRAINING_LIKE_STEPS], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=60)
    if result.returncode == 3:
        pytest.skip("needs glibc")
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) < 100


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    (["exp=nope"], "unknown exp 'nope'"),
    (["model.group=[Q8,C28]"], "unknown group 'Q8'"),
    (["model.group=[C32,C32]"], "laid out on 32x32 images, but data rectangles-generated has 28x28"),
    (["optimizer.lr=-1"], "optimizer.lr must be a number > 0"),
    (["trainer.device=tpu"], "trainer.device='tpu'"),
    (["logger.wandb.mode=sometimes"], "choose one of auto, online, offline, disabled"),
    (["trainer.epochs=0"], "trainer.epochs must be an integer >= 1"),
    (["trainer.compile=sometimes"], "trainer.compile must be true or false"),
    (["trainer.micro_batch_size=0"], "trainer.micro_batch_size (or auto, or null) must be"),
    (["model.channel_mode=depthwise"], "channel_mode must be one of"),
    (["trainer.foo=1"], "foo"),
    (["+model.widht=3"], "unknown key model.widht"),
    (["exp=rectangles", "data.root=/nonexistent/rectangles", "data.options.download=false"],
     "/nonexistent/rectangles"),
])
def test_bad_overrides_exit_with_a_short_message(tmp_path, overrides, message):
    result = runner("logger=none", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert message in output, output[-2000:]
    assert "Traceback" not in output
    assert not (tmp_path / "run").exists()  # a run that fails before training leaves nothing


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_runner_makes_openmp_threads_sleep_unless_told_otherwise(given, expected):
    """OMP_WAIT_POLICY=PASSIVE before torch loads (spinning threads starve other jobs); an
    explicit setting wins."""
    env = {k: v for k, v in ENV.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import runner, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "True"]


class SmallBatchNormNet(torch.nn.Module):
    """conv -> BatchNorm2d -> dropout -> linear -> BatchNorm1d: the second layer's inputs depend
    on the first's train-mode normalisation and would be changed by dropout."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn2d = torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3, momentum=0.3)
        self.dropout, self.linear = torch.nn.Dropout(0.5), torch.nn.Linear(3 * 26 * 26, 10)
        self.bn1d = torch.nn.BatchNorm1d(10)

    def forward(self, x):
        return self.bn1d(self.linear(self.dropout(self.bn2d(self.conv(x))).flatten(1)))


def population_statistics(model, images, batch_size):
    """Each batch-norm layer's inputs over ``images`` in batches (the earlier layer normalising
    each batch with its own statistics, no dropout): per channel mean and unbiased variance."""
    first, second = [], []
    for x in images.split(batch_size):
        h = model.conv(x)
        first.append(h.transpose(0, 1).flatten(1))
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        normed = (h - mean) / torch.sqrt(var + model.bn2d.eps)
        normed = normed * model.bn2d.weight.view(1, -1, 1, 1) + model.bn2d.bias.view(1, -1, 1, 1)
        second.append(model.linear(normed.flatten(1)).T)
    return [(torch.cat(v, 1).double().mean(1), torch.cat(v, 1).double().var(1)) for v in (first, second)]


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_recalibration_gives_the_population_statistics(training):
    """trainer.bn_recalibration=100: running mean / var of every batch-norm layer become the
    statistics of its inputs over a fixed set of 100 of the 150 training samples (in batches of
    32: 32, 32, 32, 4), whatever they were; dropout off meanwhile; modes, momentum and batch
    counts kept."""
    cfg = compose_config(*FAST, "trainer.batch_size=32", "trainer.micro_batch_size=null",
                         "trainer.bn_recalibration=100")
    torch.manual_seed(0)
    model = SmallBatchNormNet()
    for layer in (model.bn2d, model.bn1d):  # stale statistics, learned affine parameters
        layer.running_mean.uniform_(-5, 5), layer.running_var.uniform_(3, 9)
        layer.weight.data.uniform_(0.5, 2), layer.bias.data.uniform_(-1, 1)
        layer.num_batches_tracked.fill_(7)
    model.train(training)
    images = torch.randn(150, 1, 28, 28) * 2 + 0.5
    data = torch.utils.data.TensorDataset(images, torch.zeros(150).long())
    indices = fixed_subset(data, 100).indices
    assert indices == fixed_subset(data, 100).indices and indices == sorted(indices)
    assert len(set(indices)) == 100 and max(indices) >= 100  # spread over the data, not its head
    trainer = Trainer(cfg, model, torch.device("cpu"))
    assert trainer.recalibrate_batch_norm(data)
    with torch.no_grad():
        expected = population_statistics(model, images[indices], 32)
    for layer, (mean, var) in zip((model.bn2d, model.bn1d), expected):
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-6, atol=1e-6)
        assert layer.num_batches_tracked.item() == 7
    assert (model.bn2d.momentum, model.bn1d.momentum) == (0.3, 0.1)
    assert all(m.training == training for m in model.modules())


def test_batch_norm_recalibration_leaves_models_without_batch_norm_alone():
    """The GM-CNN (LayerNorm): no extra forward pass, state and evaluation bit-identical with
    trainer.bn_recalibration on and off."""
    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 28, 28), torch.randint(0, 2, (40,)))
    results = []
    for samples in (2048, 0):
        cfg = compose_config(*FAST, f"trainer.bn_recalibration={samples}", "trainer.batch_size=16")
        torch.manual_seed(0)
        trainer = Trainer(cfg, build_model(cfg), torch.device("cpu"))
        calls = []
        trainer.model.register_forward_pre_hook(lambda module, args, calls=calls: calls.append(1))
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        assert not trainer.recalibrate_batch_norm(data) and not calls
        assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in state.items())
        loader = torch.utils.data.DataLoader(data, batch_size=16)
        results.append(trainer.evaluate(loader, "test"))
    assert results[0] == results[1]


@pytest.mark.slow
def test_best_checkpoint_holds_recalibrated_batch_norm_statistics(tmp_path):
    """A real p4 run (BatchNorm) validates with recalibrated statistics: best.pt's running
    statistics equal a fresh recalibration of its weights, and best.pt alone reproduces the best
    validation accuracy and the test metrics."""
    from gmcnn.training.data import load_data, make_loader

    overrides = ["exp=rot-mnist-generated-p4", *FAST, "data.options.train_size=200", "trainer.epochs=2",
                 "trainer.batch_size=32", "model.channels=[4,4]", "trainer.bn_recalibration=100"]
    result = runner(*overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "running statistics recomputed from 100 training samples" in result.stdout + result.stderr
    cfg = compose_config(*overrides)
    model = build_model(cfg)
    model.load_state_dict(checkpoint.load(tmp_path / "checkpoints" / "best.pt", checkpoint.BEST)["model"])
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert saved
    splits = load_data(cfg)
    trainer = Trainer(cfg, model, torch.device("cpu"))
    for name, buffer in model.named_buffers():
        if "running" in name:
            buffer.fill_(1.0)  # stale
    trainer.recalibrate_batch_norm(splits.train)
    for name, buffer in model.named_buffers():
        if "running" in name:
            torch.testing.assert_close(buffer, saved[name], rtol=1e-6, atol=1e-6, msg=name)
    test = trainer.evaluate(make_loader(splits.test, 32, False, 0, cfg, trainer.device), "test")
    valid = trainer.evaluate(make_loader(splits.valid, 32, False, 0, cfg, trainer.device), "valid")
    metrics = metrics_of(tmp_path)
    assert valid["acc"] == metrics["best_val_acc"]
    assert test["acc"] == metrics["test_acc"]
    assert test["loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)


def test_batch_norm_recalibration_keeps_the_variance_of_inputs_far_from_zero():
    """Per-batch var_mean combined in float64: the population variance of float32 inputs with a
    large mean (1000 + N(0, 1)) in unequal batches, to 1e-5, where float32 sums of x^2 would
    lose it entirely."""
    from gmcnn.training import precise_bn

    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(3)
    data = torch.randn(70, 3, 50, dtype=torch.float64) + 1000
    batches = [(x.float(), x) for x in data.split(32)]                       # 32, 32, 6
    assert precise_bn.recalibrate(norm, batches, lambda x, _: norm(x), torch.device("cpu")) == 70
    flat = data.float().double().transpose(0, 1).flatten(1)
    torch.testing.assert_close(norm.running_mean.double(), flat.mean(1), rtol=1e-7, atol=0)
    torch.testing.assert_close(norm.running_var.double(), flat.var(1), rtol=1e-5, atol=0)
