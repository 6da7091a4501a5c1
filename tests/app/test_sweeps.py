"""``python runner.py`` as a user runs it: one-line messages, --help, the sweep summary and exit
status (also when a sweep runs twice into one folder), threads per parallel job, an Optuna
search with a failing trial and its study in a sqlite file, and a fresh install without the
Hydra plugins of the ``cluster`` extra."""

import os
import subprocess
import sysconfig
import venv

import pytest

from gmcnn import cli
from tests.helpers import ENV, FAST, ROOT, metrics_of, runner

FAST = [*FAST, "trainer.epochs=1"]
BAD_LR = "optimizer.lr must be a number > 0, got -1"
pytestmark = pytest.mark.slow


def output_of(result):
    return result.stdout + result.stderr


@pytest.mark.parametrize("overrides,message", [
    (["exp=cifar1"], "error: unknown exp 'cifar1' (closest: cifar10); choose one of: cifar10,"),
    (["+no_such_key=1"], "error: +no_such_key=1: nothing reads no_such_key; remove it"),
    (["-m", "trainer.epoch=1,2"], "error: unknown key trainer.epoch (closest: trainer.epochs)"),
])
def test_a_mistake_is_one_line_and_status_1(overrides, message, tmp_path):
    result = runner(*overrides, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 1
    assert result.stdout == "" and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_help_shows_the_common_commands_and_the_config_groups():
    result = runner("--help")
    assert result.returncode == 0
    for line in ("python runner.py -m model.channels=30,60 seed=1,2", "trainer.resume=true",
                 "summary_only=true", "python -m gmcnn.report", "hparams_search=quickstart_optuna",
                 "cifar10, jetflow, mnist-bg-rot",
                 "model: cnn, cnn_dynamics, convnet, e2cnn, gm_dynamics, gm_dynamics_p4, gmcnn, gmcnn_p4, gmcnn_p4m, lift, "
                 "rgroup, rgroup_translation, rpp, rsteer",
                 'pip install -e ".[cluster]"'):
        assert line in result.stdout, result.stdout
    exp_line = next(line for line in result.stdout.splitlines() if line.startswith("exp: "))
    experiments = exp_line.removeprefix("exp: ").split(", ")
    assert {"cifar10", "plume-rotation", "rot-mnist-generated-p4"} <= set(experiments)
    assert "_dynamics" not in experiments  # the shared base of the dynamics experiments


def summary_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| job ")]


def test_a_sweep_with_a_failed_job_ends_with_the_summary_and_status_1(tmp_path):
    sweep = tmp_path / "sweep"
    command = ["-m", *FAST, "summary_only=true", "optimizer.lr=-1,0.004", f"hydra.sweep.dir={sweep}"]
    for _ in range(2):  # the same sweep again into the same folder: the same summary
        result = runner(*command)
        assert result.returncode == 1, output_of(result)[-3000:]
        assert summary_rows(result.stderr) == [
            f"| 0 | optimizer.lr=-1 | failed: {BAD_LR} |  | {sweep / '0'} |",
            f"| 1 | optimizer.lr=0.004 | summary |  | {sweep / '1'} |"], result.stderr[-3000:]
        assert "2 jobs (1 failed, 1 summary)" in result.stderr
        assert (sweep / "summary.md").read_text().splitlines()[2:] == summary_rows(result.stderr)
    # a smaller sweep into the folder: only its own job counts, the old failed job does not
    result = runner("-m", *FAST, "summary_only=true", "model.channels=4,8", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, output_of(result)[-3000:]
    assert [row.split(" | ")[2] for row in summary_rows(result.stderr)] == ["summary", "summary"]


def test_a_parallel_sweep_splits_the_cores_and_reports_the_best_metric(tmp_path):
    sweep = tmp_path / "sweep"
    result = runner("-m", *FAST, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                    "model.channels=4", "seed=1,2", f"hydra.sweep.dir={sweep}", fresh=True)  # joblib's workers
    assert result.returncode == 0, output_of(result)[-3000:]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for job in ("0", "1"):
        assert f"torch threads: {threads} (" in (sweep / job / "runner.log").read_text()
        best = metrics_of(sweep / job)["best_val_acc"]
        assert f"| {job} | seed={int(job) + 1} | finished | {best:.4f} | {sweep / job} |" in result.stderr


def test_an_optuna_search_goes_on_past_a_failed_trial_and_keeps_its_study_in_sqlite(tmp_path):
    """Two trials, 2 at a time; the sampler (seeded) gives the first the bad learning rate. The
    study goes to the sqlite storage docs/sweeps.md recommends (optuna 2.10 with SQLAlchemy 2
    stopped there with an AssertionError: pyproject.toml pins sqlalchemy<2)."""
    sweep, database = tmp_path / "search", tmp_path / "optuna.db"
    result = runner("-m", "hparams_search=quickstart_optuna", "hydra.sweeper.n_trials=2", *FAST,
                    "model.channels=4", "optimizer.lr=choice(-1,0.004)", f"hydra.sweep.dir={sweep}",
                    f"hydra.sweeper.storage=sqlite:///{database}")
    output = output_of(result)
    assert result.returncode == 1, output[-3000:]  # a trial failed
    rows = summary_rows(result.stderr)
    assert len(rows) == 2 and sum(f"| failed: {BAD_LR} |" in row for row in rows) == 1
    finished, = (job for job in ("0", "1") if metrics_of(sweep / job).get("status") != "failed")
    best = metrics_of(sweep / finished)["best_val_acc"]
    assert f"Best value: {best}" in output  # the trial's return value: best_<monitor>
    assert "optimization_results.yaml" in os.listdir(sweep)
    import optuna  # here: importing it warns (SQLAlchemy 1.4's notice about 2.0) in every collection

    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{database}")
    states = sorted(trial.state.name for trial in study.trials)
    assert states == ["COMPLETE", "FAIL"] and study.best_value == best
    assert study.best_params["optimizer.lr"] == 0.004


@pytest.fixture(scope="module")
def python_without_plugins(tmp_path_factory):
    """The python of a real venv that has every package of this one except the Hydra plugins of
    the ``cluster`` extra (a fresh ``pip install -e .``): its site-packages links every entry of
    this venv's but ``hydra_plugins/`` and the plugins' dist-info. Installing the packages into it
    instead would take minutes and the network, and ``venv --system-site-packages`` would see the
    base interpreter's packages (no torch), not this venv's. Monkeypatching the import check in
    process (tests/app/test_cli.py) missed that without any plugin ``hydra_plugins`` itself is gone."""
    root = tmp_path_factory.mktemp("venv-without-plugins")
    venv.create(root, with_pip=False)
    source = sysconfig.get_path("purelib")
    target = sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)})
    plugins = set(cli.PLUGINS.values())
    for entry in os.listdir(source):
        if entry != "hydra_plugins" and entry.partition("-")[0] not in plugins:
            os.symlink(os.path.join(source, entry), os.path.join(target, entry))
    return str(root / "bin" / "python")


def test_without_the_cluster_extra_a_plugin_option_names_it_and_help_works(python_without_plugins):
    def run(*arguments):
        return subprocess.run([python_without_plugins, "runner.py", *arguments], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)

    for option, package in [("hparams_search=quickstart_optuna", "hydra-optuna-sweeper"),
                            ("hydra/launcher=parallel", "hydra-joblib-launcher")]:
        result = run("-m", option)
        assert result.returncode == 1 and result.stdout == "", result.stderr[-3000:]
        assert result.stderr == (f"error: {option} needs the {package} plugin, which is not installed: "
                                 'pip install -e ".[cluster]"\n')
    result = run("--help")
    assert result.returncode == 0 and "hparams_search: quickstart_optuna" in result.stdout, result.stderr
