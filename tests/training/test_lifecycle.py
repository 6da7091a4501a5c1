"""The run lifecycle: safe checkpoints, one writer per run directory, resume with the run's own
configuration, signals, a full disk, one-line errors, resumed sweeps."""

import contextlib
import errno
import json
import os
import shlex
import signal
import time
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.types import RunMode

from gmcnn.io import atomic_write_bytes
from gmcnn.training import ConfigError, checkpoint, engine, precise_bn, run
from gmcnn.training import command as command_module
from gmcnn.training.checkpoint import CheckpointError, Progress
from gmcnn.training.command import run_command
from gmcnn.training.config import validate
from gmcnn.training.data import load_data
from gmcnn.training.resume import Plan, plan, reconcile
from gmcnn.training.rundir import RunDirectoryBusy, RunLock, read_metrics
from gmcnn.training.signals import STOP_SIGNALS, RunInterrupted, StopSignals
from tests.helpers import FAST, ROOT, TINY, compose_config, metrics_of, runner, start_runner


class Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "trainer": Payload(marker)}, path)


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, name):
    marker = tmp_path / "pwned"
    craft(tmp_path / "checkpoints" / name, marker)
    with pytest.raises(CheckpointError, match="refused.*could run code.*nothing in it was executed"):
        checkpoint.load(tmp_path / "checkpoints" / name)
    assert not marker.exists()


def test_checkpoint_round_trips_rng_states_as_plain_data(tmp_path):
    checkpoint.seed_everything(3)
    state = {"rng": checkpoint.rng_state(), "progress": Progress(epoch=2, best=0.5).to_dict()}
    checkpoint.save(tmp_path / "last.pt", state)
    expected = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)
    checkpoint.check(loaded["rng"], checkpoint.RNG)
    checkpoint.check(loaded["progress"], checkpoint.PROGRESS)
    checkpoint.set_rng_state(loaded["rng"])
    again = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
    assert Progress.from_dict(loaded["progress"]).epoch == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_second_writer_is_refused_naming_the_first_and_stale_locks_are_taken(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirectoryBusy, match=f"in use by process {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    (tmp_path / ".lock").write_text("process 999999 on elsewhere\n")  # a dead owner's file
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.pt.4242.tmp").write_bytes(b"partial")  # a killed write
    with RunLock(tmp_path):
        assert not (tmp_path / "checkpoints" / ".last.pt.4242.tmp").exists()


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = compose_config(*TINY, "trainer.epochs=2")
    saves = []

    def full_after_first_epoch(path, write):
        saves.append(path.name)
        if saves.count("last.pt") > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    real = checkpoint.atomic_write
    monkeypatch.setattr(checkpoint, "atomic_write", full_after_first_epoch)
    with pytest.raises(OSError) as raised:
        run(Plan(cfg, tmp_path))
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert Progress.from_dict(checkpoint.load(tmp_path / "checkpoints" / "last.pt")["progress"]).epoch == 1
    from gmcnn.training.command import one_line

    message = one_line(raised.value)
    assert "No space left on device" in message and "trainer.resume=true" in message
    assert "\n" not in message


def test_atomic_write_leaves_no_temporary_file_on_error(tmp_path):
    atomic_write_bytes(tmp_path / "f", b"old")

    def fails(handle):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        __import__("gmcnn.io").io.atomic_write(tmp_path / "f", fails)
    assert (tmp_path / "f").read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("overrides,message", [
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["exp=plume-rotation", "model=cnn"], "whose _target_ is a dynamics model of gmcnn.models: CNNDynamics, ConvNet"),
    (["task=dynamics"], "GMCNN is a classification model, but task=dynamics"),
    (["trainer.monitor=val_rmse"], "trainer.monitor=val_rmse does not apply to task=classification"),
])
def test_config_errors_are_found_before_any_data(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(compose_config(*overrides))


def test_data_errors_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=r"data\.num_classes=3, but data rectangles-generated has 2 "
                                          r"classes .*set data\.num_classes=2"):
        load_data(compose_config(*FAST, "data.num_classes=3"))

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/train.amat")

    monkeypatch.setattr("dataset.build_dataset", unreadable)
    with pytest.raises(ConfigError, match="cannot read data .* at /data/train.amat: Permission denied"):
        load_data(compose_config(*FAST))


def test_resume_keeps_the_saved_config_and_applies_new_overrides():
    saved_overrides = [*FAST, "trainer.epochs=4"]
    saved = compose_config(*saved_overrides)
    container = __import__("omegaconf").OmegaConf.to_container(saved, resolve=False)
    cfg, merged, changes = reconcile(container, saved_overrides,
                                     ["trainer.resume=true", "optimizer=sgd", "optimizer.lr=0.01"],
                                     lambda o: compose_config(*o))
    assert cfg.trainer.epochs == 4 and cfg.trainer.resume is False
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.01
    assert changes["optimizer._target_"] == ("torch.optim.AdamW", "torch.optim.SGD")
    assert changes["optimizer.lr"] == (0.004, 0.01) and "trainer.epochs" not in changes
    assert merged == [*saved_overrides, "optimizer=sgd", "optimizer.lr=0.01"]


def plain_checkpoint(cfg, overrides, progress):
    """A last.pt of the trainer's layout (checkpoint.LAST) with an empty trainer state: enough for
    what plans and resumes read (config, overrides, progress)."""
    return {"config": __import__("omegaconf").OmegaConf.to_container(cfg), "overrides": list(overrides),
            "progress": progress.to_dict(), "rng": checkpoint.rng_state(), "wandb_id": "w",
            "trainer": {"model": {}, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None,
                        "scaler": {}}}


def test_requeued_job_continues_its_interrupted_directory(tmp_path):
    cfg = compose_config(*FAST)
    (tmp_path / "checkpoints").mkdir()
    checkpoint.save(tmp_path / "checkpoints" / "last.pt", plain_checkpoint(cfg, FAST, Progress(epoch=1, step=2)))
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(ConfigError, match="already holds a run; continue it with trainer.resume=true"):
        plan(cfg, tmp_path, list(FAST), search_siblings=False, under_requeue=False, compose=None)
    job = plan(cfg, tmp_path, list(FAST), search_siblings=False, under_requeue=True, compose=None)
    assert job.run_dir == tmp_path and job.saved["progress"]["step"] == 2 and not job.changes


def test_stop_signal_sets_a_flag_then_hands_over_to_the_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(RunInterrupted) as raised, StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            assert stop.received == "SIGUSR2" and not calls
            raise RunInterrupted("stopped")
        assert signal.getsignal(signal.SIGUSR2) is not stop._handle  # restored
        raised.value.hand_over()  # e.g. submitit's requeue handler
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


# --- real runs of the runner -------------------------------------------------------------------

def assert_no_files_under(directory):
    """Hydra made a run directory here for a resume command; it must be gone (empty parents may
    stay)."""
    assert not [p for p in directory.rglob("*") if p.is_file()]
    assert not list(directory.glob("*/*"))


SIGNAL_ARGS = [*TINY, "trainer.epochs=3", "data.options.train_size=640"]  # 10 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    result = runner(*SIGNAL_ARGS, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return run_dir


def interrupt(run_dir, signum, *extra):
    """Start a run, send ``signum`` a moment after epoch 1's checkpoint exists (in epoch 2's
    steps, unless the machine is very fast or slow), and again while it stops; (process, output)."""
    process = start_runner(*SIGNAL_ARGS, *extra, f"hydra.run.dir={run_dir}")
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(signum)
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # it may have ended already
        process.send_signal(signum)
    output = process.communicate(timeout=240)[0]
    return process, output


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_resume_is_identical(tmp_path, uninterrupted, signum):
    run_dir = tmp_path / "run"
    wandb = ["logger=wandb", "logger.wandb.mode=offline"] if signum == signal.SIGTERM else []
    process, output = interrupt(run_dir, signum, *wandb)
    assert process.returncode == 3, output[-3000:]
    assert "Traceback" not in output
    assert f"stopped by {signal.Signals(signum).name}" in output
    line = next(x for x in output.splitlines() if "resume with: " in x)
    command = line.split("resume with: ")[1]
    assert command == f"python runner.py trainer.resume={run_dir}"
    assert read_metrics(run_dir)["status"] == "interrupted"

    out_dir = tmp_path / "outputs"
    # as printed; wandb (its service process, its hold on stdout) in a process of its own
    resumed = runner(*command.split()[2:], *wandb, f"paths.output_dir={out_dir}", fresh=bool(wandb))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_no_files_under(out_dir)  # no second run directory
    full, again = metrics_of(uninterrupted), metrics_of(run_dir)
    assert again["status"] == "finished" and again["epochs_completed"] == 3  # the run's own epochs
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc"):
        assert full[key] == again[key], key
    expected = (uninterrupted / "metrics.csv").read_text().splitlines()
    got = (run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:5] for r in got] == [r.split(",")[:5] for r in expected]
    if wandb:
        ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1


@pytest.mark.slow
def test_crafted_checkpoint_given_to_resume_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    craft(tmp_path / "received.pt", marker)
    result = runner(*TINY, f"trainer.resume={tmp_path / 'received.pt'}", f"hydra.run.dir={tmp_path / 'run'}")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert "was refused: it holds pickled objects other than tensors" in output
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_concurrent_writer_is_refused_with_the_other_process(tmp_path):
    run_dir = tmp_path / "run"
    # the first run is long enough to outlive the second's start on a loaded machine; stopped after
    first = start_runner(*TINY, "trainer.epochs=1000", f"hydra.run.dir={run_dir}")
    deadline = time.time() + 120
    while not (run_dir / ".lock").is_file() or not (run_dir / ".lock").read_text():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.02)
    second = runner(*TINY, "trainer.epochs=2", f"hydra.run.dir={run_dir}")
    assert first.poll() is None, "the first run ended before the second was refused"
    assert second.returncode == 1
    lines = [x for x in (second.stdout + second.stderr).splitlines() if "ERROR" in x]
    assert len(lines) == 1 and f"is in use by process {first.pid} on " in lines[0]
    while not (run_dir / "checkpoints" / "last.pt").is_file():   # in the training loop: stop it
        assert first.poll() is None and time.time() < deadline + 120
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=240)
    assert first.returncode == 3
    assert metrics_of(run_dir)["status"] == "interrupted"


@pytest.mark.slow
def test_diverged_run_resumes_with_a_lower_lr_and_refuses_another_model(tmp_path):
    run_dir = tmp_path / "run"
    at = f"hydra.run.dir={run_dir}"
    assert runner(*TINY, "trainer.epochs=1", at).returncode == 0
    diverged = runner("trainer.resume=true", "trainer.epochs=3", "optimizer.lr=1e30", at)
    output = diverged.stdout + diverged.stderr
    assert diverged.returncode == 1, output[-3000:]
    assert "loss became" in output and f"python runner.py trainer.resume={run_dir} optimizer.lr=1e+29" in output
    assert read_metrics(run_dir)["status"] == "failed"
    # the failed attempt wrote no checkpoint: its changes are given again, with a lower lr
    resumed = runner("trainer.resume=true", "trainer.epochs=3", "optimizer.lr=0.001", at)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = metrics_of(run_dir)
    assert metrics["status"] == "finished" and metrics["epochs_completed"] == 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    lr = rows[0].split(",").index("lr")
    assert [float(r.split(",")[lr]) for r in rows[1:]] == [0.004, 0.001, 0.001]
    assert metrics["config_changes"] == [{"epoch": 1, "step": 0, "changes": {
        "optimizer.lr": [0.004, 0.001], "trainer.epochs": [1, 3]}}]

    sgd = runner("trainer.resume=true", "trainer.epochs=4", "optimizer=sgd", at)
    assert sgd.returncode == 0, sgd.stdout[-3000:] + sgd.stderr[-3000:]
    assert "optimizer changed (torch.optim.AdamW -> torch.optim.SGD)" in sgd.stdout + sgd.stderr
    assert metrics_of(run_dir)["epochs_completed"] == 4

    finished = runner(f"trainer.resume={run_dir}", f"paths.output_dir={tmp_path / 'out'}")
    assert finished.returncode == 0 and "already finished" in finished.stdout + finished.stderr
    assert_no_files_under(tmp_path / "out")
    wider = runner("trainer.resume=true", "model.channels=16", at)
    output = wider.stdout + wider.stderr
    assert wider.returncode == 1 and "Traceback" not in output
    assert "model.channels=16: it was trained with model.channels=8" in output
    assert metrics_of(run_dir)["status"] == "finished"
    assert "channels: 8" in (run_dir / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes_by_itself(tmp_path):
    """slurm_local runs the job under submitit's LocalExecutor, whose SIGUSR2 handler requeues
    it (exit 144, restarted by the local controller): the job checkpoints, hands over, and its
    second start continues the run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    process = start_runner("-m", "hydra/launcher=slurm_local", "hydra.launcher.gpus_per_node=0",
                           *SIGNAL_ARGS, "trainer.epochs=2", f"hydra.sweep.dir={sweep}")
    job = sweep / "0"
    deadline = time.time() + 300
    while not (job / "checkpoints" / "last.pt").exists():
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.05)
    os.kill(int((job / ".lock").read_text().split()[1]), signal.SIGUSR2)  # the job's process
    output = process.communicate(timeout=400)[0]
    assert process.returncode == 0, output[-3000:]
    log = (job / "runner.log").read_text()
    assert "stopped by SIGUSR2" in log and "resumed from" in log
    metrics = metrics_of(job)
    assert metrics["status"] == "finished" and metrics["epochs_completed"] == 2


# --- a stop signal at every point of a run, in this process ----------------------------------

# cnn: batch norm, so that the recalibrations before validation and the final test run too;
# 4 steps an epoch
POINT_ARGS = [*FAST, "model=cnn", "model.width=4", "data.options.train_size=128", "data.options.valid_size=64",
              "data.options.test_size=64", "trainer.batch_size=32", "trainer.bn_recalibration=64",
              "trainer.epochs=2"]


@pytest.fixture
def restored_signals():
    """run_command leaves the stop signals ignored after an interruption (its process is ending)."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def command(run_dir, *overrides, multirun_dir=None):
    """``python runner.py *overrides hydra.run.dir=run_dir`` (or ``-m ... hydra.sweep.dir``) as
    runner.main runs it once Hydra has composed it: run_command, in this process; its exit status
    (a sweep job's: 0 or 1)."""
    mode = RunMode.MULTIRUN if multirun_dir else RunMode.RUN
    hydra_cfg = SimpleNamespace(
        runtime=SimpleNamespace(output_dir=str(run_dir)), mode=mode, sweep=SimpleNamespace(dir=str(multirun_dir)),
        overrides=SimpleNamespace(hydra=[] if multirun_dir else [f"hydra.run.dir={run_dir}"], task=list(overrides)))
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
        try:
            value = run_command(cfg, hydra_cfg)
        except SystemExit as exit_:
            return exit_.code
    return 1 if multirun_dir and value is None else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    assert command(run_dir, *POINT_ARGS) == 0
    return metrics_of(run_dir), (run_dir / "metrics.csv").read_text()


def deliver(signum, times=1):
    for _ in range(times):
        os.kill(os.getpid(), signum)


def at_call(monkeypatch, owner, name, call, signum, times=1, when=lambda *a, **k: True):
    """Patch ``owner.name`` to deliver ``signum`` (``times`` times) before its ``call``-th call
    (counting calls for which ``when(*args)`` holds)."""
    real, calls = getattr(owner, name), []

    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                deliver(signum, times)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


POINTS = {  # name -> (where the signal arrives, what the interruption says)
    "planning": (lambda mp, s, n: at_call(mp, command_module, "plan", 1, s, n), "before training"),
    "data loading": (lambda mp, s, n: at_call(mp, engine, "load_data", 1, s, n), "before training"),
    "training step": (lambda mp, s, n: at_call(mp, engine.Trainer, "train_step", 6, s, n),
                      "in epoch 2 after step 2"),
    "recalibration": (lambda mp, s, n: at_call(mp, precise_bn, "recalibrate", 1, s, n), "after epoch 1"),
    "validation": (lambda mp, s, n: at_call(mp, engine.Trainer, "evaluate", 1, s, n,
                                            when=lambda self, loader, desc: desc.startswith("valid")),
                   "after epoch 1"),
    "checkpoint": (lambda mp, s, n: at_call(mp, checkpoint, "save", 1, s, n,
                                            when=lambda path, state: path.name == "last.pt"), "after epoch 1"),
    "final recalibration": (lambda mp, s, n: at_call(mp, precise_bn, "recalibrate", 3, s, n),
                            "during the final test"),
    "final test": (lambda mp, s, n: at_call(mp, engine, "test_metrics", 1, s, n), "during the final test"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point,signum,times", [
    ("planning", signal.SIGTERM, 1), ("data loading", signal.SIGINT, 1), ("training step", signal.SIGUSR1, 2),
    ("recalibration", signal.SIGTERM, 1), ("validation", signal.SIGINT, 2), ("checkpoint", signal.SIGTERM, 2),
    ("final recalibration", signal.SIGUSR1, 1), ("final test", signal.SIGINT, 1)])
def test_a_signal_at_any_point_interrupts_and_the_resume_ends_as_uninterrupted(
        tmp_path, monkeypatch, restored_signals, reference, point, signum, times):
    """A signal at ``point`` (``times`` 2: twice, the second while the run finishes its step or
    epoch), then SIGTERM while the run writes its status: exit 3, status interrupted with the
    run's model and overrides, a resume command for the shell that gives the uninterrupted run's
    metrics and leaves no other directory."""
    run_dir = tmp_path / "my runs, 1" / "run"  # a space and a comma: quoted for the shell and Hydra
    arrange, says = POINTS[point]
    arrange(monkeypatch, signum, times)
    at_call(monkeypatch, command_module, "write_status", 1, signal.SIGTERM,
            when=lambda where, status, **fields: status == "interrupted")
    assert command(run_dir, *POINT_ARGS) == 3
    metrics = metrics_of(run_dir)
    assert metrics["status"] == "interrupted" and metrics["model"] == "gmcnn.models.CNN"
    assert metrics["overrides"] == POINT_ARGS
    assert f"stopped by {signal.Signals(signum).name} {says}" in metrics["message"]
    resume = metrics["message"].split("resume with: ")[1]
    assert shlex.split(resume) == ["python", "runner.py", f"trainer.resume='{run_dir}'"]  # Hydra's quotes
    monkeypatch.undo()
    assert command(tmp_path / "resume", *shlex.split(resume)[2:]) == 0
    again = metrics_of(run_dir)
    assert again["status"] == "finished", again
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc", "epochs_completed", "model", "overrides"):
        assert again[key] == reference[0][key], key
    rows = lambda text: [r.split(",")[:5] for r in text.splitlines()]  # noqa: E731
    assert rows((run_dir / "metrics.csv").read_text()) == rows(reference[1])
    assert not (tmp_path / "resume").exists()


# --- what trainer.resume continues ------------------------------------------------------------

def hydra_compose(overrides, hydra_config=False):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


def fake_run(run_dir, overrides, status=None, epoch=1, step=0, age=0.0):
    """A run directory as a run leaves it: a checkpoint of its config (no weights: planning does
    not read them), metrics.json with ``status`` (None: none, as after a kill), ``age`` seconds old."""
    cfg = compose_config(*overrides)
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint.save(run_dir / "checkpoints" / "last.pt",
                    plain_checkpoint(cfg, overrides, Progress(epoch=epoch, step=step)))
    if status:
        (run_dir / "metrics.json").write_text(json.dumps({"status": status, "model": cfg.model._target_}))
    stamp = time.time() - age
    for path in (run_dir / "checkpoints" / "last.pt", run_dir / "metrics.json"):
        if path.exists():
            os.utime(path, (stamp, stamp))
    return run_dir


def test_resume_true_continues_the_latest_unfinished_run_of_the_same_model(tmp_path, caplog):
    experiment = tmp_path / "quickstart"
    killed = fake_run(experiment / "1-killed", FAST, age=50)
    older = fake_run(experiment / "0-older", FAST, status="interrupted", age=60)
    cnn = fake_run(experiment / "2-cnn", [*FAST, "model=cnn"], status="interrupted", age=40)
    fake_run(experiment / "3-finished", FAST, status="finished", age=30)
    own = experiment / "4-this-command"
    own.mkdir()
    caplog.set_level("INFO", logger="gmcnn.training.resume")
    job = plan(compose_config(*FAST, "trainer.resume=true"), own, ["trainer.resume=true"],
               search_siblings=True, under_requeue=False, compose=hydra_compose)
    assert job.run_dir == killed and job.saved is not None
    assert (f"continuing {killed}, the latest unfinished run of model gmcnn.models.GMCNN (killed); "
            "skipped newer runs: 3-finished (finished), 2-cnn (model gmcnn.models.CNN)") in caplog.text
    job = plan(compose_config(*FAST, "model=cnn", "trainer.resume=true"), own, ["model=cnn", "trainer.resume=true"],
               search_siblings=True, under_requeue=False, compose=hydra_compose)
    assert job.run_dir == cnn
    for run_dir in (killed, older):
        (run_dir / "metrics.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(ConfigError, match=f"no unfinished run of model gmcnn.models.GMCNN is under {experiment} "
                                          r"\(skipped: .*2-cnn \(model gmcnn.models.CNN\).*\); pass a run "):
        plan(compose_config(*FAST, "trainer.resume=true"), own, ["trainer.resume=true"],
             search_siblings=True, under_requeue=False, compose=hydra_compose)


def test_another_model_on_resume_is_refused_like_any_change_and_leaves_nothing(tmp_path, restored_signals):
    run_dir = fake_run(tmp_path / "run", TINY, status="interrupted")
    with pytest.raises(ConfigError, match=f"cannot continue run {run_dir} with model='cnn': it was "
                                          "trained with model='gmcnn'; resume without that override"):
        plan(compose_config("model=cnn", f"trainer.resume={run_dir}"), tmp_path / "new",
             [f"trainer.resume={run_dir}", "model=cnn"],
             search_siblings=False, under_requeue=False, compose=hydra_compose)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert command(tmp_path / "new", f"trainer.resume={run_dir}", "model=cnn") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert metrics_of(run_dir)["status"] == "interrupted"


def test_resuming_a_run_on_a_read_only_mount_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, caplog,
                                                                            restored_signals):
    run_dir = fake_run(tmp_path / "mounted" / "run", TINY, status="interrupted")
    monkeypatch.setattr(command_module, "unwritable",
                        lambda path: tmp_path / "mounted" if str(path).startswith(str(tmp_path / "mounted")) else None)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert command(tmp_path / "new", f"trainer.resume={run_dir}") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"cannot continue run {run_dir}: {tmp_path / 'mounted'} is not writable (a read-only "
                      "file system or its permissions); copy the run directory somewhere writable and "
                      "resume from the copy"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_resume_of_a_run_in_use_is_refused_without_touching_it(tmp_path, restored_signals):
    """Its lock is taken before this command's log moves there: the refusal stays out of the
    run's log, and this command's own directory goes."""
    import logging

    run_dir = fake_run(tmp_path / "run", TINY, status="interrupted")
    (run_dir / "runner.log").write_text("the run's log\n")
    own = tmp_path / "new"
    own.mkdir()
    handler = logging.FileHandler(own / "runner.log")  # as Hydra opens it
    logging.getLogger().addHandler(handler)
    try:
        with RunLock(run_dir):
            assert command(own, f"trainer.resume={run_dir}") == 1
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert (run_dir / "runner.log").read_text() == "the run's log\n"
    assert not own.exists() and metrics_of(run_dir)["status"] == "interrupted"


def test_resume_records_the_runs_own_model_choice_for_the_report(tmp_path, restored_signals):
    """A resume command in the run's own directory (hydra.run.dir) gets Hydra's record of this
    command (the default model); the run's record is put back, so the report names its model."""
    from gmcnn.report import read_job

    run_dir = fake_run(tmp_path / "run", [*FAST, "model=cnn"], status="finished", epoch=100)
    hydra_record = hydra_compose(["trainer.resume=true"], hydra_config=True)  # as Hydra writes it
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        __import__("omegaconf").OmegaConf.to_yaml({"hydra": hydra_record.hydra}))
    assert read_job(run_dir, tmp_path, set())["model"] == "gmcnn"
    assert command(run_dir, "trainer.resume=true") == 0  # finished: records, trains nothing
    assert read_job(run_dir, tmp_path, set())["model"] == "cnn"


@pytest.mark.parametrize("path", ["/runs/plain", "/my  runs/x", "/my runs/a,b", "/x/[1]/{y}", "/it's here",
                                  "/q\"uo'te", "/$HOME x"])
def test_resume_argument_is_one_shell_word_that_hydra_reads_as_the_path(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gmcnn.training.resume import resume_argument

    words = shlex.split(resume_argument(path))
    assert len(words) == 1
    if "runs/" in path and "," not in path:  # spaces alone need no Hydra quotes
        assert words[0] == f"trainer.resume={path}"
    override = OverridesParser.create().parse_overrides(words)[0]
    assert override.key_or_group == "trainer.resume" and override.value() == path


@pytest.mark.slow
def test_batch_size_changed_mid_epoch_applies_from_the_next_epoch(tmp_path, monkeypatch, reference, caplog,
                                                                  restored_signals):
    at_call(monkeypatch, engine.Trainer, "train_step", 2, signal.SIGTERM)  # epoch 1, after step 2 of 4
    assert command(tmp_path / "run", *POINT_ARGS) == 3
    monkeypatch.undo()
    # that resume stopped before training: its command says the new batch size again
    at_call(monkeypatch, engine, "load_data", 1, signal.SIGINT)
    assert command(tmp_path / "resume", f"trainer.resume={tmp_path / 'run'}", "trainer.batch_size=16") == 3
    monkeypatch.undo()
    resume = metrics_of(tmp_path / "run")["message"].split("resume with: ")[1]
    assert resume == f"python runner.py trainer.resume={tmp_path / 'run'} trainer.batch_size=16"
    caplog.set_level("INFO", logger="gmcnn.training.resume")
    assert command(tmp_path / "resume", *shlex.split(resume)[2:]) == 0
    assert "trainer.batch_size changes from epoch 2: epoch 1 finishes with its batches of 32" in caplog.text
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    expected = reference[1].splitlines()
    assert rows[1].split(",")[:3] == expected[1].split(",")[:3]  # epoch 1's training: the same samples
    assert rows[2].split(",")[:3] != expected[2].split(",")[:3]  # epoch 2: batches of 16
    assert metrics_of(tmp_path / "run")["config_changes"][0]["changes"] == {"trainer.batch_size": [32, 16]}


# --- files: what a run removes, where it cannot write -----------------------------------------

def test_the_run_files_are_named_in_one_place():
    """rundir.RunFiles is the only module of the package that spells a run's file names."""
    names = ("checkpoints", "last.pt", "best.pt", "metrics.json", "metrics.csv", "curves.png", "overrides.yaml")
    sources = {path: path.read_text() for path in (ROOT / "gmcnn").rglob("*.py")}
    spelled = {name: [path.name for path, text in sources.items() if f'"{name}"' in text] for name in names}
    assert spelled == {name: ["rundir.py"] for name in names}


def test_a_failed_run_removes_only_the_directories_it_created(tmp_path, monkeypatch):
    from gmcnn.training import rundir

    monkeypatch.setattr(rundir, "_existed", {})
    mine = tmp_path / "my folder"  # the user's, empty
    mine.mkdir()
    given = tmp_path / "given"  # the user's, empty, given as hydra.run.dir
    given.mkdir()
    rundir.record_existing(mine / "new" / "deeper" / "run")
    rundir.record_existing(given)
    for run_dir in (mine / "new" / "deeper" / "run", given):  # as Hydra leaves them
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("a: 1\n")
        (run_dir / "runner.log").write_text("")
    assert rundir.remove_fresh(mine / "new" / "deeper" / "run") and rundir.remove_fresh(given)
    assert mine.is_dir() and not list(mine.iterdir())  # new/deeper/run: made by the command
    assert given.is_dir() and not list(given.iterdir())


def test_the_output_directory_is_checked_before_hydra_creates_it(tmp_path):
    from gmcnn import cli

    for argv, key in ((["paths.output_dir=/proc/1/gmcnn-outputs"], "paths.output_dir"),
                      (["-m", "paths.multirun_dir=/proc/1/gmcnn-sweeps", "seed=1,2"], "paths.multirun_dir")):
        with pytest.raises(cli.CommandLineError) as raised:
            cli.preflight(argv, ROOT / "configs")
        message = str(raised.value)
        assert message.startswith("cannot create the output directory /proc/1/gmcnn-")
        assert "/proc/1 is not writable (a read-only file system or its permissions)" in message
        assert f"choose another with {key}=DIR" in message and "\n" not in message
    cli.preflight([f"paths.output_dir={tmp_path / 'out'}"], ROOT / "configs")
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []  # the probe is gone


def test_a_full_disk_names_the_file(tmp_path):
    from gmcnn.training.command import one_line

    def fails(handle):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() raises it: no file name

    with pytest.raises(OSError) as raised:
        __import__("gmcnn.io").io.atomic_write(tmp_path / "checkpoints" / "last.pt", fails)
    assert raised.value.errno == errno.ENOSPC
    assert one_line(raised.value).startswith(f"cannot write or read {tmp_path / 'checkpoints' / 'last.pt'}: "
                                             "No space left on device; the last good checkpoint is kept")
