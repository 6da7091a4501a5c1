"""``debug=fast`` and ``data.max_samples``: a quick end-to-end check of an experiment."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import TensorDataset

from dataset import Splits
from gmcnn.training.config import ConfigError, validate
from gmcnn.training.data import limit_samples, load_data
from tests.helpers import FAST, ROOT, compose_config


def test_debug_fast_is_one_epoch_on_small_splits_without_wandb_outside_the_runs():
    cfg = compose_config("exp=cifar10", "debug=fast")
    assert cfg.data.max_samples == 256 and cfg.trainer.epochs == 1
    assert cfg.logger.wandb.mode == "disabled"
    # the experiment's own settings stay (a check of that experiment, not of a default one)
    assert cfg.name == "cifar10" and cfg.model.dropout == 0.2
    assert compose_config("exp=cifar10").data.max_samples is None


def test_debug_runs_live_apart_from_the_experiment_runs():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        run_dir = compose("config", overrides=["exp=cifar10", "debug=fast"], return_hydra_config=True).hydra.run.dir
        plain = compose("config", overrides=["exp=cifar10"], return_hydra_config=True).hydra.run.dir
    assert run_dir.startswith("outputs/debug/cifar10/") and plain.startswith("outputs/cifar10/")


def test_max_samples_cuts_every_split_to_the_same_seeded_subset():
    def data(n, offset):
        return TensorDataset(torch.arange(offset, offset + n), torch.zeros(n, dtype=torch.long))
    splits = Splits(data(1000, 0), data(50, 10_000), None, 2, 1, (1,),
                    test_sets={"future": data(400, 20_000), "domain": data(30, 30_000)})
    cut = limit_samples(splits, 100)
    assert [len(d) for d in (cut.train, cut.valid, *cut.test_sets.values())] == [100, 50, 100, 30]
    assert list(cut.test_sets) == ["future", "domain"] and cut.test is None
    again = limit_samples(splits, 100)
    assert cut.train.indices == again.train.indices          # the same samples in every run
    assert cut.train.indices != list(range(100))             # drawn across the split, not its head


def test_max_samples_applies_to_a_real_dataset():
    splits = load_data(compose_config(*FAST, "data.max_samples=40"))
    assert len(splits.train) == 40 and len(splits.valid) == 40 and len(splits.test) == 40


@pytest.mark.parametrize("value", ["0", "abc", "true"])
def test_max_samples_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match=r"data\.max_samples \(or null\) must be an integer >= 1"):
        validate(compose_config(f"data.max_samples={value}"))
