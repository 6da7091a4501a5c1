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


def recalibrate_on_a_shard(rank: int, init_file: str, results: str) -> None:
    """One of two gloo processes: recalibrate the seeded conv -> BatchNorm2d on this rank's share
    of every batch of 10 (rows rank::2) and save the running statistics."""
    import torch
    import torch.distributed as dist

    from gmcnn.training import precise_bn

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
        images = torch.randn(35, 1, 8, 8) * 2 + 1
        batches = [(x[rank::2], x[rank::2]) for x in images.split(10)]
        samples = precise_bn.recalibrate(model, batches, lambda x, _: model(x), torch.device("cpu"))
        torch.save({"samples": samples, "mean": model[1].running_mean, "var": model[1].running_var},
                   f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batch_norm_recalibration_under_two_processes_gives_every_rank_the_whole_statistics(tmp_path):
    """Each rank passes its share; the all-reduced sums give both ranks the statistics of all 35
    samples (equal to a single process computing them directly)."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(recalibrate_on_a_shard, args=(str(tmp_path / "init"), str(tmp_path / "stats")), nprocs=2)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        inputs = conv(torch.randn(35, 1, 8, 8) * 2 + 1).transpose(0, 1).flatten(1).double()
    for rank in (0, 1):
        stats = torch.load(tmp_path / f"stats.{rank}")
        assert stats["samples"] == 35
        torch.testing.assert_close(stats["mean"].double(), inputs.mean(1), rtol=0, atol=1e-6)
        torch.testing.assert_close(stats["var"].double(), inputs.var(1), rtol=1e-6, atol=1e-6)
