"""Nothing received is executed: a checkpoint, a config directory or a re-run file from elsewhere
may name code (``_target_``, Hydra callbacks, logging factories, pickles); the runner refuses it
with one line before anything is imported, and the marker file such code would create never
appears (docs/design.md §6, gmcnn/training/targets.py)."""

import pytest
import torch
from omegaconf import OmegaConf

from gmcnn.training import ConfigError, checkpoint, run, targets
from gmcnn.training.build import build_model
from gmcnn.training.checkpoint import CheckpointError
from gmcnn.training.config import instantiate, validate
from gmcnn.training.resume import Plan
from tests.helpers import TINY, compose_config, runner


def system_call(marker):
    return {"_target_": "os.system", "command": f"touch {marker}"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real one-epoch run of the default experiment (in-process), to be tampered with."""
    run_dir = tmp_path_factory.mktemp("run")
    run(Plan(compose_config(*TINY, "trainer.epochs=1"), run_dir))
    return run_dir


def tampered_copy(finished_run, tmp_path, edit):
    """A copy of ``finished_run`` whose last.pt is plain data (weights_only passes) edited by
    ``edit``, the kind of file someone could send."""
    (tmp_path / "checkpoints").mkdir(parents=True)
    saved = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)
    edit(saved)
    torch.save(saved, tmp_path / "checkpoints" / "last.pt")
    (tmp_path / "checkpoints" / "best.pt").write_bytes((finished_run / "checkpoints" / "best.pt").read_bytes())
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("point_at", ["run directory", "checkpoint file"])
def test_received_checkpoint_naming_code_is_refused_before_import(finished_run, tmp_path, point_at):
    marker = tmp_path / "MARKER"
    received = tampered_copy(finished_run, tmp_path / "received",
                             lambda saved: saved["config"].update(model=system_call(marker)))
    where = received if point_at == "run directory" else received / "checkpoints" / "last.pt"
    result = runner(f"trainer.resume={where}", "trainer.epochs=3")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert "model._target_='os.system' is refused" in output
    assert "Traceback" not in output
    assert not marker.exists()


def test_plan_refuses_a_checkpoint_config_naming_code_even_for_a_finished_run(finished_run, tmp_path):
    from gmcnn.training.resume import plan

    marker = tmp_path / "MARKER"
    received = tampered_copy(finished_run, tmp_path / "received",
                             lambda saved: saved["config"].update(optimizer={**system_call(marker), "lr": 0.1}))
    cfg = compose_config(*TINY, f"trainer.resume={received}")
    with pytest.raises(ConfigError, match="optimizer._target_='os.system' is refused"):
        plan(cfg, tmp_path / "new", [], search_siblings=False, under_requeue=False, compose=None)
    assert not marker.exists()


@pytest.mark.parametrize("edit, entry", [
    (lambda s: s.update(extra={"x": 1}), "unexpected entry 'extra'"),
    (lambda s: s["progress"].update(epoch="1"), "progress.epoch is str, not int"),
    (lambda s: s["progress"].update(epoch=True), "progress.epoch is bool, not int"),
    (lambda s: s["trainer"]["model"].update(w=[1.0]), "trainer.model.w is list, not Tensor"),
    (lambda s: s["rng"].pop("torch"), "missing entry rng.'torch'"),
    (lambda s: s.update(overrides=[1]), "overrides.0 is int, not str"),
    (lambda s: s["config"].update(seed=torch.zeros(1)), "config.seed is Tensor, where only plain data"),
])
def test_plain_data_of_another_shape_is_refused_naming_the_entry(finished_run, tmp_path, edit, entry):
    received = tampered_copy(finished_run, tmp_path, edit)
    with pytest.raises(CheckpointError, match="does not have the layout of gmcnn's last.pt") as refused:
        checkpoint.load(received / "checkpoints" / "last.pt")
    assert entry in str(refused.value)


def test_checkpoints_the_trainer_writes_pass_their_schema(finished_run):
    checkpoint.load(finished_run / "checkpoints" / "last.pt")
    checkpoint.load(finished_run / "checkpoints" / "best.pt", checkpoint.BEST)
    with pytest.raises(CheckpointError, match="unexpected entry 'model'"):
        checkpoint.load(finished_run / "checkpoints" / "best.pt")  # weights are not a training state


def test_a_best_pt_received_beside_a_checkpoint_is_checked_before_the_run_takes_it(finished_run, tmp_path):
    """A run continued from a checkpoint file of elsewhere takes the best.pt beside it (its
    weights and epoch), only if that file has best.pt's layout."""
    from gmcnn.training.engine import Trainer
    from gmcnn.training.resume import plan, restore
    from gmcnn.training.rundir import RunFiles

    received = tmp_path / "received"
    received.mkdir()
    for name in ("last.pt", "best.pt"):
        (received / name).write_bytes((finished_run / "checkpoints" / name).read_bytes())
    cfg = compose_config(*TINY, f"trainer.resume={received / 'last.pt'}")
    job = plan(cfg, tmp_path / "new", [], search_siblings=False, under_requeue=False, compose=None)
    files = RunFiles(job.run_dir)
    assert job.run_dir == tmp_path / "new" and not files.best.exists()
    restore(job, Trainer(job.cfg, build_model(job.cfg), torch.device("cpu")), files)
    sent, taken = (checkpoint.load(path, checkpoint.BEST) for path in (received / "best.pt", files.best))
    assert taken["epoch"] == sent["epoch"] == 1 and taken["model"].keys() == sent["model"].keys()
    assert all(torch.equal(taken["model"][k], sent["model"][k]) for k in sent["model"])

    files.best.unlink()
    torch.save({"model": {}, "epoch": 1, "hook": "x"}, received / "best.pt")
    with pytest.raises(CheckpointError, match=r"best.pt \(model weights\): unexpected entry 'hook'"):
        restore(job, Trainer(job.cfg, build_model(job.cfg), torch.device("cpu")), files)
    assert not files.best.exists()


def received_config_dir(tmp_path, marker, body):
    (tmp_path / "received" / "exp").mkdir(parents=True)
    (tmp_path / "received" / "exp" / "received.yaml").write_text("# @package _global_\nname: received\n" + body)
    return tmp_path / "received"


@pytest.mark.parametrize("body, refusal", [
    ("model:\n  _target_: os.system\n  command: touch {marker}\n", "model._target_='os.system' is refused"),
    ("optimizer:\n  _target_: subprocess.run\n  args: [touch, {marker}]\n  lr: 0.1\n",
     "optimizer._target_='subprocess.run' is refused"),
    ("data:\n  hook:\n    _target_: os.system\n    command: touch {marker}\n",
     "data.hook._target_='os.system' is refused: a config may only name nothing"),
    ("hydra:\n  callbacks:\n    evil:\n      _target_: os.system\n      command: touch {marker}\n",
     "hydra.callbacks.evil._target_='os.system' is refused"),
    ("hydra:\n  job_logging:\n    handlers:\n      evil:\n        (): os.system\n        command: touch {marker}\n",
     "hydra.job_logging.handlers.evil.()='os.system' is refused"),
    ("hydra:\n  job_logging:\n    handlers:\n      evil:\n        class: os.system\n        command: touch {marker}\n",
     "hydra.job_logging.handlers.evil.class='os.system' is refused"),
    ("hydra:\n  job:\n    env_set:\n      LD_PRELOAD: {marker}\n", "hydra.job.env_set.LD_PRELOAD is refused"),
    ("defaults:\n  - override /hydra/launcher: slurm\nhydra:\n  launcher:\n    setup: ['touch {marker}']\n",
     "hydra.launcher.setup is refused from a config file"),
])
def test_received_config_dir_naming_code_is_refused_in_one_line(tmp_path, body, refusal):
    marker = tmp_path / "MARKER"
    received = received_config_dir(tmp_path, marker, body.format(marker=marker))
    result = runner("--config-dir", str(received), "exp=received", "logger=none")
    assert result.returncode == 1
    assert refusal in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "outputs").exists()


def test_experimental_rerun_is_refused_without_unpickling(tmp_path):
    import pickle

    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    crafted = tmp_path / "config.pickle"
    crafted.write_bytes(pickle.dumps(Payload()))
    result = runner("--experimental-rerun", str(crafted))
    assert result.returncode == 1
    assert "--experimental-rerun is refused" in result.stderr
    assert not marker.exists()


def test_allow_list_holds_the_projects_targets_and_what_the_user_trusts(monkeypatch):
    assert set(targets.allowed("model")) >= {"gmcnn.models.GMCNN", "gmcnn.models.CNN",
                                             "gmcnn.models.GMDynamics", "gmcnn.models.CNNDynamics"}
    assert {"torch.optim.AdamW", "torch.optim.SGD"} <= set(targets.allowed("optimizer"))
    assert "torch.optim.lr_scheduler.ReduceLROnPlateau" in targets.allowed("scheduler")
    cfg = compose_config(*TINY, "model._target_=collections.OrderedDict")
    with pytest.raises(ConfigError, match="model._target_='collections.OrderedDict' is refused"):
        validate(cfg)
    with pytest.raises(ConfigError, match="is refused"):
        instantiate("model", cfg.model)
    with pytest.raises(ConfigError, match="optimizer._target_='gmcnn.models.CNN' is refused"):
        instantiate("optimizer", compose_config(*TINY, "optimizer._target_=gmcnn.models.CNN").optimizer)
    monkeypatch.setenv(targets.TRUSTED_ENV, "torch.nn.Identity, collections.OrderedDict")
    validate(cfg)  # trusted on purpose, in the environment
    model = instantiate("model", OmegaConf.create({"_target_": "torch.nn.Identity"}))
    assert isinstance(model, torch.nn.Identity)


def test_every_shipped_model_declares_its_task():
    for path, cls in targets.models().items():
        assert cls.task in ("classification", "dynamics"), path
