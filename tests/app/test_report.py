"""Sweeps end to end: real multiruns (basic, joblib and submitit launchers) with failing jobs, and
the sweep report over all of them."""

import csv
import json
import os
import statistics
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir

from gmcnn.report import collect, write_comparison
from gmcnn.report import main as report_main
from gmcnn.training import command
from tests.fakes import write_small_plume
from tests.helpers import FAST, ROOT, metrics_of, runner

FAST = [*FAST, "trainer.epochs=1"]
BAD_LR = "optimizer.lr must be a number > 0, got -1"


def sweep(sweep_dir, *overrides, status=1, fresh=False):
    """Run a sweep; ``status``: the exit status expected (1: some job fails); ``fresh``: in a
    process of its own (the launchers' workers)."""
    result = runner("-m", *FAST, *overrides, f"hydra.sweep.dir={sweep_dir}", fresh=fresh, timeout=240)
    assert result.returncode == status, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Three sweeps under one directory; the first two have jobs with a bad learning rate."""
    root = tmp_path_factory.mktemp("multirun")
    # basic launcher, the failing jobs first: jobs 0, 2 fail, 1, 3 train
    basic = sweep(root / "basic", "model.channels=4,8", "optimizer.lr=-1,0.004")
    joblib = sweep(root / "joblib", "hydra/launcher=parallel", "model.channels=4",
                   "optimizer.lr=-1,0.004", fresh=True)
    # the SLURM launcher's local twin, one job; summary_only: parameters only, no training
    submitit = sweep(root / "submitit", "hydra/launcher=slurm_local",
                     "hydra.launcher.gpus_per_node=0", "summary_only=true", "model.channels=8", status=0,
                     fresh=True)
    return root, {"basic": basic, "joblib": joblib, "submitit": submitit}


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(sweeps):
    root, output = sweeps
    for job in ("0", "2"):
        metrics = metrics_of(root / "basic" / job)  # with the run's model and overrides
        assert metrics.pop("model") == "gmcnn.models.GMCNN" and "optimizer.lr=-1" in metrics.pop("overrides")
        assert metrics == {"name": "quickstart", "status": "failed", "error": BAD_LR}
    sizes = [metrics_of(root / "basic" / job)["num_params"] for job in ("1", "3")]
    assert sizes[0] < sizes[1]
    assert all(0 <= metrics_of(root / "basic" / job)["test_acc"] <= 1 for job in ("1", "3"))
    assert BAD_LR in output["basic"] and "Traceback" not in output["basic"]
    assert "4 jobs (2 failed, 2 finished) in" in output["basic"]  # the summary; the sweep's status is 1


@pytest.mark.slow
def test_an_unexpected_error_is_recorded_and_the_other_jobs_still_run(tmp_path, monkeypatch):
    real_run = command.run

    def crash_at_4_channels(plan, **options):
        if plan.cfg.model.channels == 4:
            raise RuntimeError("simulated crash")
        return real_run(plan, **options)

    monkeypatch.setattr(command, "run", crash_at_4_channels)
    result = runner("-m", "logger=none", "summary_only=true", "model.channels=4,8", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode != 0  # Hydra's own report, after every job ran
    assert "simulated crash" in result.stderr
    assert metrics_of(tmp_path / "0") == {"name": "quickstart", "status": "failed",
                                       "error": "RuntimeError: simulated crash", "model": "gmcnn.models.GMCNN",
                                       "overrides": ["logger=none", "summary_only=True", "model.channels=4"]}
    assert metrics_of(tmp_path / "1")["num_params"] > 0


@pytest.mark.slow
def test_joblib_and_submitit_launchers_run_the_jobs(sweeps):
    root, output = sweeps
    assert "Joblib.Parallel(n_jobs=2" in output["joblib"]
    assert metrics_of(root / "joblib" / "0")["status"] == "failed"
    assert metrics_of(root / "joblib" / "1")["epochs_completed"] == 1
    assert f"| 0 | optimizer.lr=-1 | failed: {BAD_LR} |  | {root / 'joblib' / '0'} |" in output["joblib"]
    best = metrics_of(root / "joblib" / "1")["best_val_acc"]
    assert f"| 1 | optimizer.lr=0.004 | finished | {best:.4f} | {root / 'joblib' / '1'} |" in output["joblib"]
    assert "Submitit 'local'" in output["submitit"]
    assert f"| 0 |  | summary |  | {root / 'submitit' / '0'} |" in output["submitit"]
    assert metrics_of(root / "submitit" / "0")["num_params"] > 0
    assert list((root / "submitit" / ".submitit").glob("*/*_log.out"))


@pytest.mark.slow
def test_report_lists_every_job(sweeps, tmp_path, capsys):
    root, _ = sweeps
    assert report_main([str(root), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("7 jobs (3 failed, 3 finished, 1 summary)")
    with (tmp_path / "report.csv").open() as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"basic/0", "basic/1", "basic/2", "basic/3", "joblib/0", "joblib/1",
                         "submitit/0"}
    assert {row["experiment"] for row in rows.values()} == {"quickstart"}
    assert {row["model"] for row in rows.values()} == {"gmcnn"}
    assert rows["basic/0"]["status"] == "failed" and rows["basic/0"]["error"] == BAD_LR
    assert rows["basic/0"]["swept"] == "model.channels=4 optimizer.lr=-1"  # not logger=none
    assert rows["basic/3"]["swept"] == "model.channels=8 optimizer.lr=0.004"
    assert rows["joblib/1"]["swept"] == "optimizer.lr=0.004"
    assert float(rows["basic/3"]["test_acc"]) == metrics_of(root / "basic" / "3")["test_acc"]
    assert int(rows["basic/3"]["num_params"]) == metrics_of(root / "basic" / "3")["num_params"]
    assert rows["submitit/0"]["status"] == "summary" and rows["submitit/0"]["test_acc"] == ""

    table = (tmp_path / "report.md").read_text().splitlines()
    assert table[0] == ("| experiment | model | swept overrides | parameters | test_acc | epochs "
                        "| status | job |")
    assert len(table) == 2 + 7
    assert sum(f"failed: {BAD_LR}" in line for line in table) == 3
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_directory_without_runs_fails(tmp_path):
    with pytest.raises(SystemExit):
        report_main([str(tmp_path)])


def test_slurm_launcher_keys_can_be_overridden():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.timeout_min=600", "hydra.launcher.partition=gpu", "exp=cifar10"])
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        assert (launcher.gpus_per_node, launcher.timeout_min, launcher.partition) == (4, 600, "gpu")
        assert launcher.name == "cifar10" and launcher.cpus_per_task and launcher.mem_gb
        with pytest.raises(Exception, match="gpus_per_nod"):  # the plugin's schema types the keys
            compose(config_name="config", overrides=["hydra/launcher=slurm",
                                                     "hydra.launcher.gpus_per_nod=4"])


@pytest.mark.slow
def test_slurm_sweep_submits_the_configured_sbatch_script(tmp_path):
    """No cluster here: stub sbatch/srun/sacct, and read the script submitit hands to sbatch."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    submitted = tmp_path / "submitted.sh"
    (stubs / "sbatch").write_text(  # the script is sbatch's last argument
        f'#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" {submitted}.tmp\n'
        f'mv {submitted}.tmp {submitted}\necho "Submitted batch job 4242"\n')
    for name in ("srun", "sacct", "scancel"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), "-m", "hydra/launcher=slurm", "exp=cifar10",
         "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
         "hydra.launcher.timeout_min=600", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not submitted.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
    finally:  # it would wait for the (stubbed) jobs forever
        process.kill()
        process.wait()
    script = submitted.read_text()
    for line in ("--array=0-1", "--partition=gpu", "--gpus-per-node=4", "--time=600",
                 "--cpus-per-task=8", "--mem=32GB", "--job-name=cifar10"):
        assert f"#SBATCH {line}" in script, script


def fake_job(job_dir, model, overrides, metrics_json=None):
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job_dir / ".hydra" / "config.yaml").write_text(
        f"name: plume-rotation\nmodel:\n  _target_: gmcnn.models.{model}\n")
    if metrics_json is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics_json))


def test_report_of_regression_jobs_and_an_unfinished_one(tmp_path, capsys):
    done = {"name": "plume-rotation", "epochs_completed": 2, "test_future_rmse": 0.5,
            "test_domain_rmse": 0.7}
    fake_job(tmp_path / "0", "GMDynamics", ["model.rank=1"], {**done, "num_params": 100})
    fake_job(tmp_path / "1", "GMDynamics", ["model.rank=2"], {**done, "num_params": 200})
    fake_job(tmp_path / "2", "CNNDynamics", ["model.rank=3"], None)  # killed
    assert report_main([str(tmp_path)]) == 0
    assert "3 jobs (2 finished, 1 incomplete)" in capsys.readouterr().out
    table = (tmp_path / "report.md").read_text().splitlines()
    assert "| test_future_rmse | test_domain_rmse |" in table[0] and "test_acc" not in table[0]
    assert table[2].startswith("| plume-rotation | CNNDynamics | model.rank=3 |")
    assert "incomplete: no metrics.json" in table[2]
    assert "| GMDynamics | model.rank=2 | 200 | 0.5000 | 0.7000 | 2 | finished |" in table[4]
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_comparison_gives_mean_and_std_over_seeds_per_model_and_setting(tmp_path):
    """Jobs of two models and two ranks over seeds; the seed is what repeats, everything else swept
    is the setting. A failed job counts as a job, not as a run."""
    rmse = {("GMDynamics", "1", "1"): (0.5, 0.7), ("GMDynamics", "1", "2"): (0.7, 0.8),
            ("GMDynamics", "1", "3"): (0.9, 0.9), ("GMDynamics", "2", "1"): (0.4, 0.6),
            ("CNNDynamics", "0", "1"): (1.0, 1.5), ("CNNDynamics", "0", "2"): None}
    for n, ((model, rank, seed), scores) in enumerate(rmse.items()):
        metrics = ({"status": "failed", "error": "boom"} if scores is None else
                   {"epochs_completed": 3, "num_params": 100 * int(rank) + len(model),
                    "test_future_rmse": scores[0], "test_domain_rmse": scores[1],
                    "test_future_rmse_per_step": [scores[0]] * 4})
        fake_job(tmp_path / str(n), model, [f"model={model}", f"model.rank={rank}", f"seed={seed}"],
                 {"name": "plume-rotation", **metrics})
    lines = write_comparison(collect(tmp_path), tmp_path)
    assert lines == (tmp_path / "comparison.md").read_text().splitlines()
    assert lines[0] == ("| experiment | model | setting | parameters | runs | test_future_rmse (mean ± std) "
                        "| test_domain_rmse (mean ± std) |")
    assert lines[2:] == [  # std: sample (n - 1): of 0.5, 0.7, 0.9 it is 0.2; of 0.7, 0.8, 0.9 0.1
        "| plume-rotation | CNNDynamics | model=CNNDynamics model.rank=0 | 11 | 1 of 2 | 1.0000 | 1.5000 |",
        "| plume-rotation | GMDynamics | model=GMDynamics model.rank=1 | 110 | 3 | 0.7000 ± 0.2000 "
        "| 0.8000 ± 0.1000 |",
        "| plume-rotation | GMDynamics | model=GMDynamics model.rank=2 | 210 | 1 | 0.4000 | 0.6000 |"]
    with (tmp_path / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["seeds"] == "1 2 3" and float(rows[1]["test_future_rmse_std"]) == pytest.approx(0.2)
    assert rows[0]["test_future_rmse_std"] == "" and rows[0]["jobs"] == "2"
    assert (tmp_path / "comparison_steps.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_model_comparison_sweep_on_small_plumes(tmp_path):
    """docs/sweeps.md's comparison command on the --small set (format-exact fakes), 1 epoch, 8 channels:
    two models x two seeds end with the table of mean ± std per model in the sweep directory."""
    write_small_plume(tmp_path / "data", "rotation")
    sweep_dir = tmp_path / "sweep"
    result = runner("-m", "exp=plume-rotation", "data=plume-rotation-small", "model=gm_dynamics,cnn_dynamics",
                    "seed=1,2", "trainer.epochs=1", "model.channels=8", "logger=none",
                    f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep_dir}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"mean ± std over seeds ({sweep_dir / 'comparison.md'})" in output
    table = (sweep_dir / "comparison.md").read_text().splitlines()
    assert table[0] == ("| experiment | model | setting | parameters | runs | test_future_rmse (mean ± std) "
                        "| test_domain_rmse (mean ± std) |")
    assert [line.split(" | ")[1:3] for line in table[2:]] == [["cnn_dynamics", "model=cnn_dynamics"],
                                                             ["gm_dynamics", "model=gm_dynamics"]]
    for line, model in zip(table[2:], ("cnn_dynamics", "gm_dynamics")):
        jobs = [metrics_of(job) for job in sorted(sweep_dir.glob("[0-9]"))
                if f"model={model}" in (job / ".hydra" / "overrides.yaml").read_text()]
        future = [job["test_future_rmse"] for job in jobs]
        assert len(future) == 2 and line.split(" | ")[4] == "2"
        mean, std = statistics.fmean(future), statistics.stdev(future)
        assert f"| {mean:.4f} ± {std:.4f} |" in line and f" {jobs[0]['num_params']:,} " in line
    assert (sweep_dir / "comparison.csv").is_file()
