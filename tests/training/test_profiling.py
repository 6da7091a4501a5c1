"""trainer.profile: wall time per phase of a run (gmcnn/training/profiling.py)."""

import time

import pytest
import torch

from gmcnn.training.profiling import DATA, TRAIN_LOOP, TRAIN_STEPS, PhaseTimes
from tests.helpers import TINY, metrics_of, runner


def test_phase_times_split_the_training_loop_and_cost_nothing_when_off():
    times = PhaseTimes(True, torch.device("cpu"))
    for _ in range(2):
        with times.phase(TRAIN_STEPS):
            time.sleep(0.02)
    times.add(TRAIN_LOOP, 1.0)                     # the loop's own clock: the steps and the rest
    with times.phase("validation"):
        time.sleep(0.01)
    summary = times.summary()
    assert set(summary) == {TRAIN_STEPS, DATA, "validation"}
    assert 0.04 <= summary[TRAIN_STEPS] < 0.5
    assert summary[DATA] == pytest.approx(1.0 - summary[TRAIN_STEPS], abs=1e-3)
    assert times.calls[TRAIN_STEPS] == 2
    lines = times.table().splitlines()
    share = 100 * summary[DATA] / sum(summary.values())
    assert lines[1].startswith(DATA) and lines[1].split()[-2:] == ["1", f"{share:.1f}%"]
    off = PhaseTimes(False, torch.device("cpu"))
    with off.phase("validation"):
        pass
    off.add(TRAIN_LOOP, 1.0)
    assert off.summary() == {}


@pytest.mark.slow
def test_profiled_run_reports_every_phase(tmp_path):
    result = runner(*TINY, "trainer.epochs=2", "trainer.profile=true", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    profile = metrics_of(tmp_path)["profile"]
    assert set(profile) == {TRAIN_STEPS, DATA, "batch-norm recalibration", "validation", "scheduler",
                            "checkpoint best.pt", "checkpoint last.pt", "metrics files and logger",
                            "test and equivariance metric (once)"}
    assert all(seconds >= 0 for seconds in profile.values()) and profile[TRAIN_STEPS] > 0
    assert "time per phase (trainer.profile)" in (tmp_path / "runner.log").read_text()
    plain = runner(*TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'plain'}")
    assert plain.returncode == 0 and "profile" not in metrics_of(tmp_path / "plain")
    bad = runner(*TINY, "trainer.profile=yes", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "trainer.profile must be true or false" in bad.stdout + bad.stderr
