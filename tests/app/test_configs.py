"""The experiment configs hold the paper's recipe (docs/design.md §3.1) and the dynamics protocol
(§3.2, §4.2): every configs/exp/*.yaml composed and its hyper-parameters checked value by value."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT, compose_config
from tests.models.test_p4_models import EXPERIMENTS as IMAGE_GROUP_EXPERIMENTS  # p4 / p4m: checked there

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "exp").glob("*.yaml") if not p.stem.startswith("_"))

# exp -> (group per axis, t, batch size, epochs, dropout): the original GM-CNN configs, except
# quickstart and rot-mnist-generated (offline variants, docs/design.md §3.1 "recipe").
RECIPE = {
    "cifar10": (["C32", "C32"], 3, 256, 100, 0.2),
    "rot-mnist": (["D14", "D14"], 3, 128, 120, 0.3),
    "mnist-bg-rot": (["D14", "D14"], 2, 256, 100, 0.3),
    "mnist-noise": (["C28", "C28"], 3, 128, 20, 0.3),
    "rectangles": (["C28", "C28"], 3, 512, 100, 0.3),
    "norb": (["C32", "C32"], 3, 256, 150, 0.3),
    "smallnorb": (["C24", "C24"], 3, 256, 120, 0.3),
    "quickstart": (["C28", "C28"], 3, 64, 8, 0.1),
    "rot-mnist-generated": (["D14", "D14"], 3, 128, 30, 0.3),
}
# exp -> (data, group per axis): everything else is shared through configs/exp/_dynamics.yaml
DYNAMICS = {
    "plume-rotation": ("plume-rotation", ["C64", "C64"]),
    "plume-translation": ("plume-translation", ["C64", "C64"]),
    "plume-scale": ("plume-scale", ["C64", "C64"]),
    "jetflow": ("jetflow", ["D31", "C23"]),
}


def test_every_experiment_is_checked():
    assert sorted([*RECIPE, *DYNAMICS, *IMAGE_GROUP_EXPERIMENTS]) == EXPERIMENTS


@pytest.mark.parametrize("exp", sorted(RECIPE))
def test_classification_recipe(exp):
    group, t, batch_size, epochs, dropout = RECIPE[exp]
    cfg = compose_config(f"exp={exp}")
    assert (cfg.name, cfg.task, cfg.seed) == (exp, "classification", 42)
    assert cfg.model._target_ == "gmcnn.models.GMCNN"
    assert (list(cfg.model.group), cfg.model.t) == (group, t)
    assert (cfg.model.blocks, cfg.model.layers_per_block, cfg.model.channels) == (2, 1, 120)
    assert (cfg.model.channel_mode, cfg.model.rank, cfg.model.dropout) == ("shared", 0, dropout)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (batch_size, epochs)
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("torch.optim.AdamW", 0.004,
                                                                                       0.0153)
    scheduler = cfg.scheduler
    assert (scheduler._target_, scheduler.mode, scheduler.patience, scheduler.factor) == (
        "torch.optim.lr_scheduler.ReduceLROnPlateau", "min", 5, 0.7)
    assert (cfg.trainer.amp, cfg.trainer.amp_dtype, cfg.trainer.monitor) == (True, "float16", "val_acc")
    assert (cfg.trainer.relaxation_penalty, cfg.trainer.grad_clip, cfg.trainer.early_stopping_patience) == (
        0.0, None, None)


def test_dropout_override_still_wins():
    assert compose_config("exp=cifar10", "model.dropout=0").model.dropout == 0
    assert compose_config("exp=cifar10", "model=cnn").model.dropout == 0.2  # the baseline gets the exp's


@pytest.mark.parametrize("exp", sorted(DYNAMICS))
def test_dynamics_recipe(exp):
    data, group = DYNAMICS[exp]
    cfg = compose_config(f"exp={exp}")
    assert (cfg.name, cfg.task, cfg.data.name, list(cfg.model.group)) == (exp, "dynamics", data, group)
    assert cfg.model._target_ == "gmcnn.models.GMDynamics"
    assert (cfg.model.t, cfg.model.channels, cfg.model.blocks, cfg.model.rank) == (1, 120, 2, 1)
    assert (cfg.model.input_frames, cfg.model.relaxation) == (10, "additive")
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("torch.optim.AdamW", 0.001,
                                                                                       0.0153)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.monitor) == (50, 16, "val_rmse")
    assert (cfg.trainer.relaxation_penalty, cfg.seed) == (0.0001, 42)
    windows = cfg.data.options.windows
    assert (windows.input_frames, windows.mid, windows.train_out_len, windows.test_out_len) == (10, 12, 6, 20)


def _without_task_specific(exp: str) -> dict:
    cfg = OmegaConf.to_container(compose_config(f"exp={exp}"), resolve=True)
    for key in ("name", "data"):
        cfg.pop(key)
    cfg["symmetry"].pop("group")
    cfg["model"].pop("group")
    cfg["model"].pop("image_size")  # the data's
    return cfg


def test_dynamics_experiments_differ_only_in_name_data_and_group():
    reference = _without_task_specific("plume-rotation")
    for exp in DYNAMICS:
        assert _without_task_specific(exp) == reference, exp


def test_dynamics_base_is_not_an_experiment():
    """configs/exp/_dynamics.yaml carries no name, so it cannot be run by mistake as one."""
    text = Path(ROOT / "configs" / "exp" / "_dynamics.yaml").read_text()
    assert "\nname:" not in text and "override /data" not in text
