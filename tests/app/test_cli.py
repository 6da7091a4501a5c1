"""The command-line front end in-process: the pre-flight messages, threads per job, the sweep
summary's exit status, a command run in this process (runs of runner.py as a user types them are
in tests/app/test_sweeps.py)."""

import contextlib
import importlib.util
import io
import json
import logging
import os
import sys
import time

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gmcnn import cli
from tests.helpers import ROOT

CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("argv,message", [
    (["exp=cifar1"], "unknown exp 'cifar1' (closest: cifar10); choose one of: cifar10, jetflow,"),
    (["-m", "exp=cifar10,nope"], "unknown exp 'nope'; choose one of:"),
    (["model=gmcn"], "unknown model 'gmcn' (closest: gmcnn"),
    (["trainer.epoch=1"], "unknown key trainer.epoch (closest: trainer.epochs"),
    (["model.channel=3"], "unknown key model.channel (closest: model.channels"),
    (["+no_such_key=1"], "+no_such_key=1: nothing reads no_such_key; remove it"),
    (["+trainer.epoch=1"], "+trainer.epoch=1: nothing reads trainer.epoch (closest: trainer.epochs"),
    (["+symmetry.tt=2"], "nothing reads symmetry.tt (closest: symmetry.t"),
    (["+seed=3"], "+seed=3: seed already exists; set it without the +: seed=3"),
    (["hydra/launcher=nosuch"], "unknown hydra/launcher 'nosuch'; choose one of: basic,"),
    (["-m", "hydra/launcher=parallel", "hydra.launcher.n_job=2"],
     "unknown key hydra.launcher.n_job (closest: hydra.launcher.n_jobs)"),
    (["-m", "hparams_search=quickstart_optuna", "trainer.monitor=val_loss"],
     "hydra.sweeper.direction=maximize but trainer.monitor=val_loss is to minimize"),
    (["optimizer.lr=[1"], "cannot parse the override optimizer.lr=[1: "),
    (["hparams_search=null"], "Config group override must be a string or a list"),  # Hydra's line
])
def test_mistakes_get_one_line_with_the_closest_names(argv, message):
    with pytest.raises(cli.CommandLineError) as error:
        cli.preflight(argv, CONFIGS)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("argv", [
    [], ["exp=rot-mnist", "trainer.epochs=10", "optimizer.lr=0.002", "model.rank=1"],
    ["-m", "model.channels=4,8", "seed=1,2"], ["--multirun", "model=cnn,gmcnn"],
    ["--cfg", "job"], ["--help"], ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
    ["hydra.run.dir=/tmp/x", "hydra.sweep.dir=/tmp/y"], ["+model.widht=3"],  # checked at build time
    ["+data.options.noise=1"], ["+my_lr=0.01", "optimizer.lr=${my_lr}"], ["~logger"],
    ["-m", "hparams_search=quickstart_optuna", "optimizer.lr=interval(0.001,0.1)"],
    ["-m", "hparams_search=quickstart_optuna", "trainer.monitor=val_loss",
     "hydra.sweeper.direction=minimize"],
    ["exp=plume-rotation", "data.options.windows.mid=12"], ["logger=none", "summary_only=true"],
])
def test_valid_command_lines_pass(argv):
    cli.preflight(argv, CONFIGS)


def test_an_optuna_storage_with_sqlalchemy_2_is_refused_in_one_line(monkeypatch):
    """optuna 2.10 (the sweeper's optuna<3) with SQLAlchemy 2 stops with an AssertionError when it
    opens the database; with the installed SQLAlchemy (pyproject.toml: <2) the command passes."""
    argv = ["-m", "hparams_search=quickstart_optuna", "hydra.sweeper.storage=sqlite:///optuna.db"]
    cli.preflight(argv, CONFIGS)
    real = cli.metadata.version
    monkeypatch.setattr(cli.metadata, "version", lambda name: "2.1.9" if name == "sqlalchemy" else real(name))
    with pytest.raises(cli.CommandLineError) as error:
        cli.preflight(argv, CONFIGS)
    assert str(error.value) == (f"hydra.sweeper.storage=sqlite:///optuna.db needs SQLAlchemy < 2 with optuna "
                                f'{real("optuna")} (installed: SQLAlchemy 2.1.9): pip install "sqlalchemy>=1.4,<2"')


@pytest.mark.parametrize("argv,package", [
    (["-m", "hydra/launcher=parallel"], "hydra-joblib-launcher"),
    (["-m", "hydra/launcher=slurm"], "hydra-submitit-launcher"),
    (["-m", "hparams_search=quickstart_optuna"], "hydra-optuna-sweeper"),
])
def test_a_missing_plugin_names_the_pip_extra(argv, package, monkeypatch):
    real = importlib.util.find_spec
    hidden = "hydra_plugins." + package.replace("-", "_")
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == hidden else real(name, *a))
    with pytest.raises(cli.CommandLineError, match=f"needs the {package} plugin, which is not "
                                                   r'installed: pip install -e "\.\[cluster\]"'):
        cli.preflight(argv, CONFIGS)


def test_help_lists_the_options_a_user_can_choose():
    """--help's config groups (configs/hydra/help/gmcnn.yaml): not exp/_dynamics, nor Hydra's groups."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        lines = cli.config_groups().splitlines()
    groups = dict(line.split(": ", 1) for line in lines)
    assert len(groups) == len(lines) and sorted(groups) == list(groups)
    assert sorted(groups) == ["data", "debug", "exp", "hparams_search", "logger", "model", "optimizer", "paths",
                              "recipe", "scheduler", "trainer"]
    experiments = groups["exp"].split(", ")
    assert {"cifar10", "plume-rotation", "quickstart", "rot-mnist-generated-p4"} <= set(experiments)
    assert "_dynamics" not in experiments and experiments == sorted(experiments)
    assert groups["optimizer"] == "adam, adamw, sgd"


@pytest.mark.parametrize("n_jobs,cores,threads", [(2, 16, 8), (2, 2, 1), (3, 16, 5), (8, 2, 1),
                                                   (-1, 8, 1), (-2, 8, 1), (-4, 8, 1), (1, 4, 4)])
def test_threads_per_job_split_the_cores(n_jobs, cores, threads):
    assert cli.threads_per_job(n_jobs, cores) == threads


def fake_job(sweep, number, overrides, metrics=None):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text("name: quickstart\ntrainer:\n  monitor: val_acc\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"name": "quickstart", **metrics}))


FINISHED = {"status": "finished", "best_val_acc": 0.75, "test_acc": 0.7, "epochs_completed": 1}


@pytest.mark.parametrize("statuses,code", [
    (["finished", "finished"], 0), (["finished", "summary"], 0), (["finished", "failed"], 1),
    (["finished", "crashed"], 1), (["failed", "interrupted"], 3), ([], 1)])
def test_the_summary_decides_the_exit_status(tmp_path, statuses, code):
    for number, status in enumerate(statuses):
        metrics = {"finished": FINISHED, "summary": {"num_params": 5}, "crashed": None,
                   "failed": {"status": "failed", "error": "optimizer.lr must be > 0"},
                   "interrupted": {"status": "interrupted"}}[status]
        fake_job(tmp_path, number, [f"seed={number}"], metrics)
    assert cli.summarise(tmp_path) == code
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0] == "| job | overrides | status | best val_acc | run directory |" or not statuses
    assert len(table) == 2 + len(statuses)
    if "finished" in statuses:
        assert f"| 0 | seed=0 | finished | 0.7500 | {tmp_path / '0'} |" in table
    if "failed" in statuses:
        assert any("| failed: optimizer.lr must be > 0 |" in line for line in table)
    if "crashed" in statuses:
        assert any("| crashed: no metrics.json" in line for line in table)


def test_the_summary_keeps_to_the_last_sweep_into_the_folder(tmp_path):
    fake_job(tmp_path, 0, ["seed=0"], FINISHED)
    fake_job(tmp_path, 1, ["seed=1"], {"status": "failed", "error": "boom"})
    old = time.time() - 60
    for path in tmp_path.rglob("*"):
        os.utime(path, (old, old))
    cli.SweepCallback().on_multirun_start(config=_sweep_config(tmp_path))
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")  # rewritten by the job
    assert cli.sweep_jobs(tmp_path) == [tmp_path / "0"]
    assert cli.summarise(tmp_path) == 0


def _sweep_config(sweep_dir):
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})


def test_main_turns_an_interrupted_sweep_into_status_3(tmp_path):
    def interrupted_sweep():
        cli.SweepCallback().on_multirun_start(config=_sweep_config(tmp_path))
        fake_job(tmp_path, 0, ["seed=0"], FINISHED)
        raise KeyboardInterrupt

    def failing_sweep():
        cli.SweepCallback().on_multirun_start(config=_sweep_config(tmp_path / "b"))
        fake_job(tmp_path / "b", 0, ["seed=0"], {"status": "failed", "error": "x"})

    assert cli.main(interrupted_sweep, CONFIGS, ["-m", "seed=0"]) == 3
    assert cli.main(failing_sweep, CONFIGS, ["-m", "seed=0"]) == 1
    assert cli.main(lambda: None, CONFIGS, ["+no_such_key=1"]) == 1
    assert cli.main(lambda: None, CONFIGS, ["seed=1"]) == 0  # a single run: no summary


def test_help_lists_the_same_groups_without_hydras_private_helper(monkeypatch):
    """config_groups reads one copy of the config repository through a private helper of Hydra
    1.3's loader; where that is missing it lists the same groups the public way."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        fast = cli.config_groups()
        hydra = GlobalHydra.instance().hydra

        class WithoutHelper:  # the loader, less the private helper (Hydra's own calls keep theirs)
            def __init__(self, loader):
                self.loader = loader

            def __getattr__(self, name):
                if name == "_parse_overrides_and_create_caching_repo":
                    raise AttributeError(name)
                return getattr(self.loader, name)

        monkeypatch.setattr(hydra, "config_loader", WithoutHelper(hydra.config_loader))
        assert cli.config_groups() == fast and "debug: fast" in fast


def test_a_command_run_in_process_puts_back_what_it_changed(tmp_path):
    """runner.run (``python runner.py ARGS`` in this process, as the tests run it), after a call of
    cli.main and twice: each command's output goes to the streams of its own call, and afterwards
    Hydra's global state, sys.argv, the working directory and the loggers are as before, and its
    log file is closed."""
    import runner

    root, console = logging.getLogger(), logging.getLogger("gmcnn.cli")
    state = lambda: (list(root.handlers), root.level, list(console.handlers), console.propagate, sys.argv,
                     os.getcwd(), GlobalHydra.instance().is_initialized())
    before = state()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert cli.main(lambda: None, CONFIGS, ["+no_such_key=1"]) == 1
    assert stderr.getvalue().startswith("error: +no_such_key=1: nothing reads") and state() == before
    for _ in range(2):
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = runner.run(["logger=none", "summary_only=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        assert status == 0 and "[gmcnn.training.engine][INFO] - parameters: 12,483" in stdout.getvalue()
        assert state() == before
        open_files = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, closed since
                open_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        assert not [name for name in open_files if name.startswith(str(tmp_path))], open_files
