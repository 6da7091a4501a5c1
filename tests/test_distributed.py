"""Data-parallel training: a 2-process gloo run on CPU equals the single-process run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ENV, ROOT, runner

ARGS = ["logger=none", "model.dropout=0", "data.options.train_size=300",
        "data.options.valid_size=100", "data.options.test_size=300"]


def torchrun(*overrides):
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               str(ROOT / "runner.py"), *overrides]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def history(run_dir: Path):
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    return [[float(v) for v in row.split(",")] for row in rows[1:]]


@pytest.mark.slow
def test_two_process_run_and_its_resume_equal_the_single_process_run(tmp_path):
    single = runner(*ARGS, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-2000:]

    first = torchrun(*ARGS, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data-parallel training on 2 processes (gloo)" in first.stdout + first.stderr
    resumed = torchrun(*ARGS, "trainer.epochs=2", "trainer.resume=true",
                       f"hydra.run.dir={tmp_path / 'ddp'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = history(tmp_path / "single"), history(tmp_path / "ddp")
    assert len(got) == 2
    for row_expected, row_got in zip(expected, got):
        assert row_got == pytest.approx(row_expected, rel=1e-5)
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("single", "ddp")]
    assert metrics[1]["test_loss"] == pytest.approx(metrics[0]["test_loss"], rel=1e-5)
    assert metrics[1]["test_acc"] == metrics[0]["test_acc"]
